"""Gradient estimators: Equilibrium Propagation (five variants) and BPTT ground truth.

With the total energy ``F_β`` of :mod:`hets_ep.models.network`, a free phase of ``T1`` steps
from ``s = 0`` reaches ``s*``; each nudged phase of ``T2`` steps starts from ``s*`` with its own
``β_k``. With ``g(β) = ∂F_β/∂θ(s^β)``, every EP estimator is a weighted sum

    ``ĝ = Re Σ_k w_k (g(β_k) − g(0)) / β_k``

* ``one_sided`` (positive nudging): ``β_1 = β``
* ``negative``: ``β_1 = −β`` (better than ``+β`` in Scellier et al. 2023's comparison)
* ``random_sign``: ``β_1 = ±β``, the sign drawn per batch
* ``symmetric`` (centred): ``β_{1,2} = ±β``, ``w = ½`` each, so ``g(0)`` cancels:
  ``ĝ = (g(β) − g(−β)) / 2β``, bias O(β²) (Laborieux et al. 2021)
* ``holomorphic``: ``β_k = |β| e^{2πik/N}``, ``k = 0 … N−1``, ``w = 1/N``: the trapezoidal rule
  for Cauchy's integral ``g′(0) = (1/2πi) ∮ g(β)/β² dβ``, exact up to O(|β|^N) (Laborieux &
  Zenke 2022). The phases with complex β run with complex states; since ``g(β̄) = conj g(β)``
  only ``k = 0 … ⌊N/2⌋`` are simulated, the others counted through their conjugates. N = 2 is
  the symmetric estimator. The energy must be holomorphic (a holomorphic activation, leaky
  dynamics, no max-pooling): :class:`hets_ep.config.Config` refuses the others.
* ``bptt``: ``g = ∂/∂θ mean_b ℓ(s_{T1})``, autodiff through a fixed-length free phase

all averaged over the batch. EP's estimate matches BPTT as β → 0 when the phases converge
(Ernoult et al. 2019); :func:`compare` measures how closely, and :mod:`hets_ep.gdu` checks the
same step by step.
"""

from __future__ import annotations

import cmath
import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep.choices import EP_ESTIMATORS
from hets_ep.dynamics import Relaxation, relax
from hets_ep.models.network import Network, State

if TYPE_CHECKING:
    from hets_ep.config import DynamicsConfig, EPConfig



class Estimate(NamedTuple):
    """A gradient estimate, the free phase it started from, and its nudged phases' diagnostics:
    per sample ``(B,)`` the largest fixed-point residual over the nudged phases (zeros for
    ``bptt``, which does not nudge); the mean number of steps a nudged phase took; whether a
    phase stopped at its step cap unconverged (with ``ep.tol``); the steps of every phase
    together (the batch's relaxation cost)."""

    grads: dict
    free: Relaxation
    nudged_fp_residual: jax.Array
    nudged_steps: jax.Array
    capped: jax.Array
    relaxation_steps: jax.Array


def nudges(phases: EPConfig) -> tuple[tuple[complex, float], ...]:
    """``(β_k / |β|, w_k)`` of the simulated nudged phases (``random_sign``: the ``+β`` one)."""
    name = phases.estimator
    if name == "negative":
        return ((-1.0, 1.0),)
    if name == "symmetric":
        return ((1.0, 0.5), (-1.0, 0.5))
    if name == "holomorphic":
        n = phases.N
        points = []
        for k in range(n // 2 + 1):
            direction = 1.0 if k == 0 else -1.0 if 2 * k == n else cmath.exp(2j * cmath.pi * k / n)
            points.append((direction, (1.0 if k == 0 or 2 * k == n else 2.0) / n))
        return tuple(points)
    return ((1.0, 1.0),)


def free_phase(net: Network, params, drive: jax.Array, dt: State, phases: EPConfig, dynamics: DynamicsConfig,
               noise_key: Optional[jax.Array] = None, window: Optional[int] = None,
               tol: Optional[float] = None) -> Relaxation:
    """Relax from zero for ``T1`` steps (or to ``tol``) with no nudging (also what evaluation
    runs). The oscillation count covers the last ``window`` steps (``phases.window`` unless given)."""
    s0 = tuple(jnp.zeros((drive.shape[0], *d.shape), drive.dtype) for d in dt)
    return relax(net, params, drive, s0, dt, phases.T1, dynamics, noise_key=noise_key,
                 window=phases.window if window is None else window, tol=tol, tol_every=phases.tol_every,
                 unroll=phases.unroll)


def energy_gradient(net: Network, params, x, y, terms, denominator) -> dict:
    """``∂/∂θ Re(Σ_k c_k F_{β_k}(θ; s_k)) / (denominator · B)`` for ``terms = ((c_k, s_k, β_k), …)``
    (``β_k = None``: the free energy).

    Every term shares one drive, so the first layer's weight gradient is a single product
    ``xᵀ(Σ_k c_k s_{k,1})`` rather than one per term.
    """
    def total(p):
        drive = net.drive(p, x)
        f = sum(c * net.energy(p, drive, s, b, y) for c, s, b in terms)
        return jnp.real(f) / (denominator * x.shape[0])

    return jax.grad(total)(params)


def ep_estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
                dynamics: DynamicsConfig, key: Optional[jax.Array] = None, noise_key: Optional[jax.Array] = None,
                beta: Optional[jax.Array] = None) -> Estimate:
    """EP gradient estimate for one batch (``key`` is used by ``random_sign`` only; ``noise_key``
    draws the state noise, phase by phase; ``beta``: |β| as a traced scalar, by default
    ``phases.beta``). Training needs only the residuals of the last step: the oscillation count
    over a window (a third of the step's cost at batch 128) is left to evaluation."""
    drive = net.drive(params, x)
    phase_key = (lambda k: None) if noise_key is None else functools.partial(jax.random.fold_in, noise_key)
    free = free_phase(net, params, drive, dt, phases, dynamics, phase_key(0), window=1, tol=phases.tol)
    beta = jnp.asarray(phases.beta if beta is None else beta, x.dtype)
    if phases.estimator == "random_sign":
        beta = jnp.where(jax.random.bernoulli(key), beta, -beta)

    def nudged(k: int, direction: complex) -> Relaxation:
        b, s = beta * direction, free.state
        if isinstance(direction, complex):
            b, s = b.astype(jnp.complex64), tuple(a.astype(jnp.complex64) for a in s)
        return relax(net, params, drive, s, dt, phases.T2, dynamics, b, y, phase_key(k + 1), window=1,
                     tol=phases.tol, tol_every=phases.tol_every, unroll=phases.unroll)

    points = nudges(phases)
    runs = [nudged(k, d) for k, (d, _) in enumerate(points)]
    if phases.estimator in ("symmetric", "holomorphic"):  # Σ_k w_k / β_k = 0: g(0) cancels
        terms = tuple((w / d, r.state, beta * d) for (d, w), r in zip(points, runs))
        denominator = beta
    else:
        b = beta * points[0][0]
        terms, denominator = ((1.0, runs[0].state, b), (-1.0, free.state, None)), b
    grads = energy_gradient(net, params, x, y, terms, denominator)
    nudged_fp = functools.reduce(jnp.maximum, [r.fp_residual for r in runs])
    steps = [r.steps for r in runs]
    capped = jnp.asarray(False) if phases.tol is None else functools.reduce(
        jnp.logical_or, [jnp.max(r.fp_residual) > phases.tol for r in (free, *runs)])
    return Estimate(grads, free, nudged_fp, sum(steps) / len(steps), capped, free.steps + sum(steps))


def bptt_estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
                  dynamics: DynamicsConfig, noise_key: Optional[jax.Array] = None) -> Estimate:
    """Exact gradient of the batch-mean loss at ``s_{T1}``, through a free phase of exactly
    ``T1`` steps (a ``lax.scan``: ``ep.tol`` does not apply)."""
    key = None if noise_key is None else jax.random.fold_in(noise_key, 0)

    def loss(p):
        free = free_phase(net, p, net.drive(p, x), dt, phases, dynamics, key, window=1)
        return jnp.mean(net.loss_per_sample(p, free.state, y)), free

    grads, free = jax.grad(loss, has_aux=True)(params)
    free = jax.lax.stop_gradient(free)
    zero = jnp.zeros_like(free.fp_residual)
    return Estimate(grads, free, zero, jnp.asarray(0.0), jnp.asarray(False), free.steps)


def estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
             dynamics: DynamicsConfig, key: Optional[jax.Array] = None, noise_key: Optional[jax.Array] = None,
             beta: Optional[jax.Array] = None) -> Estimate:
    """The configured estimator's gradient for one batch (``beta``: see :func:`ep_estimate`)."""
    if phases.estimator == "bptt":
        return bptt_estimate(net, params, x, y, dt, phases, dynamics, noise_key)
    return ep_estimate(net, params, x, y, dt, phases, dynamics, key, noise_key, beta)


def named_leaves(tree) -> dict[str, np.ndarray]:
    """The leaves of a parameter tree by path (``layers_0/kernel``), as float64 arrays."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path if str(getattr(k, "key", k)) != "params"):
            np.asarray(leaf, np.float64) for path, leaf in flat}


def agreement(estimate_grads, reference_grads) -> dict[str, dict[str, float]]:
    """Per parameter tensor: cosine similarity and norm ratio ``‖ĝ‖/‖g‖`` against a reference."""
    est, ref = named_leaves(estimate_grads), named_leaves(reference_grads)
    out = {}
    for name, g in ref.items():
        e = est[name]
        ng, ne = np.linalg.norm(g), np.linalg.norm(e)
        out[name] = {
            "cosine": float(np.dot(e.ravel(), g.ravel()) / max(ng * ne, 1e-30)),
            "norm_ratio": float(ne / max(ng, 1e-30)),
        }
    return out


def make_comparator(net: Network, phases: EPConfig, dynamics: DynamicsConfig, estimators=EP_ESTIMATORS):
    """A function ``(params, x, y, dt, key) -> report`` comparing EP estimates with BPTT.

    The report is ``{"free_step_residual": r, "free_fp_residual": f, "nudged_fp_residual":
    {name: n}, "estimators": {name: {tensor: {cosine, norm_ratio}}}}``: the residuals of BPTT's
    free phase and of each estimator's nudged phases (means over the batch) — how far they have
    converged decides how far EP can agree with BPTT at all. The estimators are compiled once,
    when the comparator is first called; state noise (if any) is drawn from ``key`` for both.
    """
    reference = jax.jit(functools.partial(bptt_estimate, net, phases=phases, dynamics=dynamics))
    candidates = {name: jax.jit(functools.partial(ep_estimate, net, phases=dataclasses.replace(phases, estimator=name),
                                                  dynamics=dynamics))
                  for name in estimators}

    def compare(params, x, y, dt: State, key: jax.Array) -> dict:
        noise_key = jax.random.fold_in(key, 1) if dynamics.noise > 0 else None
        ref = reference(params, x, y, dt, noise_key=noise_key)
        found = {name: fn(params, x, y, dt, key=key, noise_key=noise_key) for name, fn in candidates.items()}
        return {
            "free_step_residual": float(jnp.mean(ref.free.step_residual)),
            "free_fp_residual": float(jnp.mean(ref.free.fp_residual)),
            "nudged_fp_residual": {name: float(jnp.mean(e.nudged_fp_residual)) for name, e in found.items()},
            "estimators": {name: agreement(e.grads, ref.grads) for name, e in found.items()},
        }

    return compare
