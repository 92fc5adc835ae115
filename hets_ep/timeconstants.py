"""Per-neuron time steps ``dt_i = Δt/τ_i``, drawn once per run.

Every distribution is a family with **mean 1** and a shape set by its coefficient of variation
``c``, scaled by ``a`` and **truncated** to ``[dt_min, dt_max]``:

==========  =============================================================================
scalar      every neuron steps by ``mean`` (cv must be 0)
uniform     ``Z ~ U(1 − √3c, 1 + √3c)``
normal      ``Z ~ N(1, c²)``
lognormal   ``Z = exp(σn − σ²/2)``, ``σ² = ln(1 + c²)``, ``n ~ N(0, 1)``
gamma       ``Z ~ Gamma(k = 1/c², θ = c²)``
layerwise   one value per state layer, the same for every seed (heterogeneity across layers only)
==========  =============================================================================

``sample: dt`` sets ``dt = a·Z``; ``sample: tau`` draws the *time constant* and sets
``dt = a/Z``. Draws come from the truncated distribution by inverse CDF,
``Z_i = F⁻¹(F(z_lo) + u_i (F(z_hi) − F(z_lo)))`` with ``u_i ~ U(0, 1)`` and ``[z_lo, z_hi]``
the interval that maps onto ``[dt_min, dt_max]``, so no neuron sits exactly at a bound
(clipping would pile the tail there and freeze neurons at ``dt_min``).

Truncation moves the mean and narrows the spread, and a smaller mean step alone changes
stability. So ``a`` is solved (Brent's method) until the realised value over neurons of the
**matched statistic** ``match`` equals ``mean``:

==========  =============================================================================
mean        the arithmetic mean of dt (the default)
geomean     the geometric mean of dt
tau         the harmonic mean of dt, i.e. the mean time constant ``τ = Δt/dt`` equals ``Δt/mean``
            (the same neurons on average, only heterogeneous)
none        no rescaling: ``a = mean``
==========  =============================================================================

and with ``match_cv`` (the default) ``c`` is solved as well until the realised cv of dt equals
the requested one: conditions labelled "cv 0.5" then have cv 0.5 whatever the family. A
request the bounds cannot hold is refused, naming the largest cv that fits. All three means,
the cv of dt and of τ are recorded next to the nominal request, whatever was matched.

``layerwise`` gives layer ``l`` of ``L`` (input side first) ``dt.layers[l]`` if given, else the
``(l + ½)/L`` quantile of the ``base`` family (mean 1, cv ``c``) scaled so that the layers'
matched statistic (each layer counted once) equals ``mean``: a fixed rule, the same draw for
every seed, so the output layer's step cannot wander from seed to seed.

Conv layers get one dt per unit (channel × position) or, with ``per: channel``, one per
channel; statistics are over neurons, so a shared value counts once per neuron it drives.
The draw uses its own stream ``dt/<distribution>`` of the run's seed: the same seed draws the
same dt, and changing the distribution never moves the weights or data order. Every cv and
mean at one seed reuses the same uniforms ``u_i``, so conditions differ only by the transform.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np
from scipy import optimize, stats

from hets_ep import seeding
from hets_ep.errors import ConfigError

if TYPE_CHECKING:
    from hets_ep.config import DtConfig


# The family's shape c is searched upwards from the requested cv in steps of _C_STEP up to
# _C_MAX: beyond, every family is flat (log-)uniform over the bounds and its cv no longer grows.
_C_STEP, _C_MAX = 1.25, 50.0
_BRACKET_STEPS = 40
_XTOL = 1e-10


def family(name: str, c: float):
    """The frozen scipy distribution of ``Z`` (mean 1, coefficient of variation ``c > 0``)."""
    if name == "uniform":
        half = math.sqrt(3.0) * c
        return stats.uniform(loc=1.0 - half, scale=2.0 * half)
    if name == "normal":
        return stats.norm(loc=1.0, scale=c)
    if name == "lognormal":
        sigma = math.sqrt(math.log1p(c**2))
        return stats.lognorm(s=sigma, scale=math.exp(-0.5 * sigma**2))
    return stats.gamma(a=1.0 / c**2, scale=c**2)


def _truncated_ppf(dist, u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``Z`` at uniforms ``u`` for ``dist`` truncated to ``[lo, hi]``, by inverse CDF.

    Above the median the survival function keeps the precision the CDF loses there. Where the
    window holds too little mass to resolve (a far tail, or a window narrow next to the
    family's scale) the density is log-linear across it, ``p(z) ∝ exp(t (z − lo)/(hi − lo))``
    with ``t = log p(hi) − log p(lo)``: the draws crowd the nearer bound in a tail and spread
    uniformly in the bulk, as the exact truncated family does in those limits.
    """
    upper = dist.cdf(lo) > 0.5
    p_lo, p_hi = (dist.sf(lo), dist.sf(hi)) if upper else (dist.cdf(lo), dist.cdf(hi))
    if abs(p_hi - p_lo) > 1e-9 * max(p_lo, p_hi):
        return dist.isf(p_lo - u * (p_lo - p_hi)) if upper else dist.ppf(p_lo + u * (p_hi - p_lo))
    log_lo, log_hi = dist.logpdf(lo), dist.logpdf(hi)
    if not (np.isfinite(log_lo) or np.isfinite(log_hi)):  # the window lies outside the support
        return np.full_like(u, hi if hi <= dist.support()[0] else lo)
    t = float(np.clip(np.nan_to_num(log_hi - log_lo, posinf=700.0, neginf=-700.0), -700.0, 700.0))
    if abs(t) < 1e-9:
        g = u
    elif t > 0:
        g = 1.0 + np.log(u + (1.0 - u) * math.exp(-t)) / t
    else:
        g = np.log1p(u * math.expm1(t)) / t
    return lo + (hi - lo) * g


def _truncated(u: np.ndarray, name: str, c: float, a: float, spec: DtConfig) -> np.ndarray:
    """``dt_i`` for uniforms ``u_i``: the family at shape ``c`` and scale ``a``, truncated to the bounds."""
    lo, hi = (spec.dt_min / a, spec.dt_max / a) if spec.sample == "dt" else (a / spec.dt_max, a / spec.dt_min)
    z = np.clip(_truncated_ppf(family(name, c), u, lo, hi), lo, hi)
    dt = a * z if spec.sample == "dt" else a / z
    return np.clip(dt, spec.dt_min, spec.dt_max)  # round-off only


def matched(dt: np.ndarray, match: str, weights=None) -> float:
    """The statistic ``match`` holds equal: the arithmetic, geometric or harmonic mean of dt."""
    if match == "geomean":
        return float(np.exp(np.average(np.log(dt), weights=weights)))
    if match == "tau":
        return float(1.0 / np.average(1.0 / dt, weights=weights))
    return float(np.average(dt, weights=weights))


def _weighted_stats(dt: np.ndarray, weights: np.ndarray, match: str) -> tuple[float, float]:
    """``(the matched statistic, the cv of dt)`` over neurons."""
    mean = float(np.average(dt, weights=weights))
    return matched(dt, match, weights), float(math.sqrt(np.average((dt - mean) ** 2, weights=weights)) / mean)


class _Unreachable(Exception):
    """No scale gives the requested mean at this shape (the truncated family cannot hold it)."""


def _match_scale(u, name, c, weights, spec: DtConfig) -> float:
    """The scale ``a`` with realised matched statistic = ``spec.mean`` (it rises with ``a``)."""
    def gap(log_a):
        return _weighted_stats(_truncated(u, name, c, math.exp(log_a), spec), weights, spec.match)[0] - spec.mean

    lo = hi = math.log(spec.mean)
    for _ in range(_BRACKET_STEPS):
        if gap(lo) <= 0:
            break
        lo -= 1.0
    else:
        raise _Unreachable
    for _ in range(_BRACKET_STEPS):
        if gap(hi) >= 0:
            break
        hi += 1.0
    else:
        raise _Unreachable
    return math.exp(optimize.brentq(gap, lo, hi, xtol=_XTOL)) if lo < hi else math.exp(lo)


def _solve(u: np.ndarray, name: str, weights: np.ndarray, spec: DtConfig) -> tuple[float, float]:
    """``(c, a)``: the family's shape and scale for this draw (see the module docstring)."""
    def scale(c):
        return _match_scale(u, name, c, weights, spec) if spec.match != "none" else spec.mean

    def realised_cv(c):
        return _weighted_stats(_truncated(u, name, c, scale(c), spec), weights, spec.match)[1]

    statistic = {"mean": "mean", "geomean": "geometric mean", "tau": "harmonic mean"}.get(spec.match, "mean")
    unreachable_mean = ConfigError(f"dt.mean: {name} with cv {spec.cv} truncated to [{spec.dt_min}, {spec.dt_max}] "
                                   f"cannot reach {statistic} {spec.mean}; lower dt.cv or widen dt.dt_min/dt.dt_max")
    if not spec.match_cv:
        try:
            return spec.cv, scale(spec.cv)
        except _Unreachable:
            raise unreachable_mean from None
    # The realised cv grows with c until the family is flat over the bounds. Bracket the
    # request by stepping c from the requested cv (down if the draw already exceeds it, as a
    # finite sample may), then solve in between.
    def solve_between(lo, hi):
        c = math.exp(optimize.brentq(lambda lc: realised_cv(math.exp(lc)) - spec.cv, math.log(lo), math.log(hi),
                                     xtol=_XTOL))
        return c, scale(c)

    c = spec.cv
    try:
        reached = realised_cv(c)
    except _Unreachable:
        raise unreachable_mean from None
    if reached >= spec.cv:
        while realised_cv(c / _C_STEP) >= spec.cv:
            c /= _C_STEP
        return solve_between(c / _C_STEP, c)
    while c * _C_STEP <= _C_MAX:
        try:
            cv = realised_cv(c * _C_STEP)
        except _Unreachable:
            break
        if cv >= spec.cv:
            return solve_between(c, c * _C_STEP)
        c, reached = c * _C_STEP, max(reached, cv)
    raise ConfigError(f"dt.cv: {name} truncated to [{spec.dt_min}, {spec.dt_max}] at {statistic} {spec.mean} reaches cv "
                      f"{reached:.3g} at most; lower dt.cv, widen dt.dt_min/dt.dt_max, or set dt.match_cv=false")


def _layer_values(spec: DtConfig, n_layers: int) -> np.ndarray:
    """``layerwise``: the given values, or the quantile rule of the module docstring."""
    if spec.layers is not None:
        return np.asarray(spec.layers, np.float64)
    if spec.cv == 0:
        return np.full(n_layers, spec.mean)
    q = family(spec.base, spec.cv).ppf((np.arange(n_layers) + 0.5) / n_layers)
    q = np.maximum(q, np.finfo(np.float64).tiny)  # a normal or uniform family may reach 0
    scale = spec.mean if spec.match == "none" else spec.mean / matched(q, spec.match)
    return np.clip(scale * q, spec.dt_min, spec.dt_max)


def _draw_shapes(spec: DtConfig, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    if spec.dist == "layerwise":
        return [(1,) * len(s) for s in shapes]
    if spec.per == "channel":
        return [(1,) * (len(s) - 1) + s[-1:] if len(s) > 1 else s for s in shapes]
    return list(shapes)


def sample_dt(seed: int, spec: DtConfig, shapes: Sequence[tuple[int, ...]]) -> tuple[tuple[np.ndarray, ...], dict]:
    """Draw one dt per neuron for state layers of the given shapes (no batch axis).

    Returns ``(dt, stats)``: ``dt`` a tuple of float32 arrays with exactly ``shapes``, and the
    nominal and realised statistics (over neurons) as a plain dict. Whether a truncated family
    can hold the request depends on the draw: the command line's checks make each job's own
    (:mod:`hets_ep.preflight`).
    """
    draw_shapes = _draw_shapes(spec, shapes)
    sizes = [math.prod(s) for s in draw_shapes]
    # Each draw counts once per neuron it drives (a per-channel value drives H×W neurons).
    weights = np.concatenate([np.full(n, math.prod(s) / n) for n, s in zip(sizes, shapes)])
    name = spec.base if spec.dist == "layerwise" else spec.dist
    if spec.dist == "layerwise":
        values, c, a = _layer_values(spec, len(shapes)), spec.cv, spec.mean
    elif spec.dist == "scalar" or spec.cv == 0:
        values, c, a = np.full(sum(sizes), spec.mean), 0.0, spec.mean
    else:
        u = np.asarray(jax.random.uniform(seeding.key(seed, f"dt/{spec.dist}"), (sum(sizes),)), np.float64)
        c, a = _solve(u, name, weights, spec)
        values = _truncated(u, name, c, a, spec)
    layers = np.split(values, np.cumsum(sizes)[:-1])
    dt = tuple(np.broadcast_to(v.reshape(d), s).astype(np.float32) for v, d, s in zip(layers, draw_shapes, shapes))
    out = dt_stats(dt, spec)
    out.update(scale=a, shape_cv=c, at_bounds=float(np.average((values <= spec.dt_min) | (values >= spec.dt_max),
                                                               weights=weights)))
    return dt, out


def permute(key: jax.Array, dt: Sequence[jax.Array], per: str = "unit") -> tuple[jax.Array, ...]:
    """The same values reassigned at random within each layer: across all its neurons
    (``per: unit``) or across its channels (``per: channel``). Mean, cv and every layer's
    distribution are unchanged; which neuron is slow is not (the ``dt.redraw=batch`` control)."""
    out = []
    for i, layer in enumerate(dt):
        k = jax.random.fold_in(key, i)
        if per == "channel" and layer.ndim > 1:
            out.append(jax.random.permutation(k, layer, axis=-1, independent=False))
        else:
            out.append(jax.random.permutation(k, layer.ravel()).reshape(layer.shape))
    return tuple(out)


def dt_stats(dt: Sequence[np.ndarray], spec: DtConfig) -> dict:
    """Nominal request and realised statistics of a draw (over all neurons): the arithmetic,
    geometric and harmonic means of dt (``hmean``; the mean time constant is ``Δt/hmean``),
    the cv of dt and of ``τ ∝ 1/dt``, the quantiles and each layer's mean."""
    flat = np.concatenate([np.asarray(d, np.float64).ravel() for d in dt])
    mean = float(flat.mean())
    tau = 1.0 / flat
    return {
        "distribution": spec.dist,
        "match": spec.match,
        "nominal_mean": spec.mean,
        "nominal_cv": spec.cv,
        "mean": mean,
        "geomean": matched(flat, "geomean"),
        "hmean": matched(flat, "tau"),
        "cv": float(flat.std() / mean),
        "tau_cv": float(tau.std() / tau.mean()),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "q05": float(np.quantile(flat, 0.05)),
        "median": float(np.median(flat)),
        "q95": float(np.quantile(flat, 0.95)),
        "layer_means": [float(np.mean(d)) for d in dt],
        "n_neurons": int(flat.size),
    }
