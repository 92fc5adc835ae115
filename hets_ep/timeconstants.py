"""Per-neuron time steps ``dt_i = Δt/τ_i``, drawn once per run.

Every distribution is parameterised by its **mean** and **coefficient of variation** (cv), so
conditions compare at a matched mean step. A draw ``z`` with mean 1 and the requested cv comes
from the family, then ``dt = clip(a·z, dt_min, dt_max)``:

==========  =============================================================================
scalar      ``z = 1`` (every neuron steps by ``mean``; cv must be 0)
uniform     ``z = 1 + √3·cv·(2u − 1)``,  ``u ~ U(0, 1)``
normal      ``z = 1 + cv·n``,  ``n ~ N(0, 1)`` (the clip bounds the tails)
lognormal   ``z = exp(σn − σ²/2)``, ``σ² = ln(1 + cv²)``
gamma       ``z ~ Gamma(k = 1/cv², θ = cv²)``
layerwise   one ``z`` per layer from the ``base`` family (heterogeneity across layers only)
==========  =============================================================================

``sample: tau`` draws the *time constant* ``τ`` from the family instead and sets ``z = 1/τ``
(then dt's cv equals the request only for lognormal, whose reciprocal is lognormal too).

Clipping moves the mean (lognormal, mean 0.8, cv 0.5, clipped at 1 has mean 0.714), and a
smaller mean step alone changes stability. With ``match_mean`` (the default) the scale ``a``
is found by bisection so the realised mean over neurons equals the request; otherwise
``a = mean``. Either way the realised statistics after clipping are reported next to the
nominal ones. Conv layers get one dt per unit (channel × position) or, with ``per: channel``,
one per channel. The draw uses its own stream ``dt/<distribution>`` of the run's seed: the
same seed draws the same dt, and changing the distribution never moves the weights or data
order. Different cv at the same seed reuse the same underlying normal/uniform numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np

from hets_ep import seeding
from hets_ep.errors import ConfigError

if TYPE_CHECKING:
    from hets_ep.config import DtConfig

FAMILIES = ("uniform", "normal", "lognormal", "gamma")
DISTRIBUTIONS = ("scalar", *FAMILIES, "layerwise")
SAMPLE_MODES = ("dt", "tau")
DT_PER = ("unit", "channel")


def _unit_draws(key: jax.Array, family: str, cv: float, shape: tuple[int, ...]) -> np.ndarray:
    """Draws with mean 1 and coefficient of variation ``cv`` (float64)."""
    if cv == 0:
        return np.ones(shape)
    if family == "uniform":
        u = np.asarray(jax.random.uniform(key, shape), np.float64)
        return 1.0 + math.sqrt(3.0) * cv * (2.0 * u - 1.0)
    n = np.asarray(jax.random.normal(key, shape), np.float64)
    if family == "gamma":
        if cv < 1e-2:  # Gamma(k)/k → N(1, 1/k) as k = 1/cv² grows; the sampler breaks down there
            return 1.0 + cv * n
        k = 1.0 / cv**2
        return np.asarray(jax.random.gamma(key, k, shape), np.float64) / k
    if family == "normal":
        return 1.0 + cv * n
    sigma = math.sqrt(math.log1p(cv**2))
    return np.exp(sigma * n - 0.5 * sigma**2)


def _clipped_mean(scale: float, z: np.ndarray, lo: float, hi: float) -> float:
    return float(np.mean(np.clip(scale * z, lo, hi)))


def _match_scale(z: np.ndarray, spec: DtConfig) -> float:
    """The ``a`` with ``mean(clip(a·z)) = spec.mean`` (monotone in a: bisection)."""
    lo, hi = 0.0, spec.dt_max / max(float(z.min()), 1e-12)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _clipped_mean(mid, z, spec.dt_min, spec.dt_max) < spec.mean:
            lo = mid
        else:
            hi = mid
    reached = _clipped_mean(hi, z, spec.dt_min, spec.dt_max)
    if abs(reached - spec.mean) > 0.01 * spec.mean:
        raise ConfigError(
            f"dt.mean: {spec.dist} with cv {spec.cv} clipped to [{spec.dt_min}, {spec.dt_max}] cannot reach mean "
            f"{spec.mean} (closest {reached:.4g}); lower dt.cv, widen dt.dt_min/dt.dt_max, or set dt.match_mean=false")
    return hi


def _draw_shapes(spec: DtConfig, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    if spec.dist == "layerwise":
        return [(1,) * len(s) for s in shapes]
    if spec.per == "channel":
        return [(1,) * (len(s) - 1) + s[-1:] if len(s) > 1 else s for s in shapes]
    return list(shapes)


def sample_dt(seed: int, spec: DtConfig, shapes: Sequence[tuple[int, ...]]) -> tuple[tuple[np.ndarray, ...], dict]:
    """Draw one dt per neuron for state layers of the given shapes (no batch axis).

    Returns ``(dt, stats)``: ``dt`` a tuple of float32 arrays with exactly ``shapes``, and the
    nominal and realised statistics (over neurons, after clipping) as a plain dict.
    """
    draw_shapes = _draw_shapes(spec, shapes)
    sizes = [int(np.prod(s)) for s in draw_shapes]
    family = spec.base if spec.dist == "layerwise" else spec.dist
    if spec.dist == "scalar":
        z = np.ones(sum(sizes))
    else:
        z = _unit_draws(seeding.key(seed, f"dt/{spec.dist}"), family, spec.cv, (sum(sizes),))
        if spec.sample == "tau":
            z = 1.0 / np.maximum(z, 1e-12)
    layers = np.split(z, np.cumsum(sizes)[:-1])
    # Statistics are over neurons, so a per-channel or per-layer value counts once per neuron it drives.
    z_neurons = np.concatenate([np.broadcast_to(l.reshape(d), s).ravel()
                                for l, d, s in zip(layers, draw_shapes, shapes)])
    scale = _match_scale(z_neurons, spec) if spec.match_mean else spec.mean
    dt = tuple(
        np.broadcast_to(np.clip(scale * l.reshape(d), spec.dt_min, spec.dt_max), s).astype(np.float32)
        for l, d, s in zip(layers, draw_shapes, shapes)
    )
    raw = scale * z_neurons
    stats = dt_stats(dt, spec)
    stats.update(scale=float(scale), clipped_low=float(np.mean(raw < spec.dt_min)),
                 clipped_high=float(np.mean(raw > spec.dt_max)))
    return dt, stats


def dt_stats(dt: Sequence[np.ndarray], spec: DtConfig) -> dict:
    """Nominal request and realised statistics of a draw (over all neurons)."""
    flat = np.concatenate([np.asarray(d, np.float64).ravel() for d in dt])
    mean = float(flat.mean())
    return {
        "distribution": spec.dist,
        "nominal_mean": spec.mean,
        "nominal_cv": spec.cv,
        "mean": mean,
        "cv": float(flat.std() / mean),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "q05": float(np.quantile(flat, 0.05)),
        "median": float(np.median(flat)),
        "q95": float(np.quantile(flat, 0.95)),
        "layer_means": [float(np.mean(d)) for d in dt],
        "n_neurons": int(flat.size),
    }
