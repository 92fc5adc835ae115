"""Gradient estimators: Equilibrium Propagation (three variants) and BPTT ground truth.

With the total energy ``F_β`` of :mod:`hets_ep.models.network`, a free phase of ``T1`` steps
from ``s = 0`` reaches ``s*``; nudged phases of ``T2`` steps start from ``s*``. Then

* ``one_sided``:   ``ĝ = (∂F_β/∂θ(s^β) − ∂F_0/∂θ(s*)) / β``
* ``random_sign``: the same with ``β`` replaced by ``±β``, the sign drawn per batch
* ``symmetric``:   ``ĝ = (∂F_β/∂θ(s^{+β}) − ∂F_{−β}/∂θ(s^{−β})) / 2β``  (Laborieux et al. 2021)
* ``bptt``:        ``g = ∂/∂θ mean_b ℓ(s_{T1})``, autodiff through the free-phase scan

all averaged over the batch. EP's estimate matches BPTT as β → 0 when the phases converge
(Ernoult et al. 2019); :func:`compare` measures how closely.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep.dynamics import Relaxation, relax
from hets_ep.models.network import Network, State

if TYPE_CHECKING:
    from hets_ep.config import EPConfig

EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric")
ESTIMATORS = (*EP_ESTIMATORS, "bptt")


class Estimate(NamedTuple):
    """A gradient estimate, the free phase it started from and, per sample ``(B,)``, the
    fixed-point residual of the nudged phase (the larger of the two for ``symmetric``; zeros
    for ``bptt``, which does not nudge)."""

    grads: dict
    free: Relaxation
    nudged_fp_residual: jax.Array


def free_phase(net: Network, params, drive: jax.Array, dt: State, phases: EPConfig,
               window: Optional[int] = None) -> Relaxation:
    """Relax from zero for ``T1`` steps with no nudging (also what evaluation runs). The
    oscillation count covers the last ``window`` steps (``phases.window`` unless given)."""
    s0 = tuple(jnp.zeros((drive.shape[0], *d.shape), drive.dtype) for d in dt)
    return relax(net, params, drive, s0, dt, phases.T1, window=phases.window if window is None else window,
                 unroll=phases.unroll)


def energy_gradient_difference(net: Network, params, x, y, s1: State, beta1, s2: State, beta2):
    """``(∂F_{β1}/∂θ(s1) − ∂F_{β2}/∂θ(s2)) / (β1 − β2)``, batch-averaged.

    Both energies share one drive, so the first layer's weight gradient is a single product
    ``xᵀ(s2_1 − s1_1)`` rather than two.
    """
    def difference(p):
        drive = net.drive(p, x)
        f1 = net.energy(p, drive, s1, beta1, y)
        f2 = net.energy(p, drive, s2, beta2, y)
        return (f1 - f2) / ((beta1 - (0.0 if beta2 is None else beta2)) * x.shape[0])

    return jax.grad(difference)(params)


def ep_estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
                key: Optional[jax.Array] = None) -> Estimate:
    """EP gradient estimate for one batch (``key`` is used by ``random_sign`` only). Training
    needs only the residuals of the last step: the oscillation count over a window (a third of
    the step's cost at batch 128) is left to evaluation."""
    drive = net.drive(params, x)
    free = free_phase(net, params, drive, dt, phases, window=1)
    s_free = free.state

    def nudged(beta):
        return relax(net, params, drive, s_free, dt, phases.T2, beta, y, window=1, unroll=phases.unroll)

    beta = jnp.asarray(phases.beta, x.dtype)
    if phases.estimator == "symmetric":
        plus, minus = nudged(beta), nudged(-beta)
        grads = energy_gradient_difference(net, params, x, y, plus.state, beta, minus.state, -beta)
        return Estimate(grads, free, jnp.maximum(plus.fp_residual, minus.fp_residual))
    if phases.estimator == "random_sign":
        beta = jnp.where(jax.random.bernoulli(key), beta, -beta)
    one = nudged(beta)
    grads = energy_gradient_difference(net, params, x, y, one.state, beta, s_free, None)
    return Estimate(grads, free, one.fp_residual)


def bptt_estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig) -> Estimate:
    """Exact gradient of the batch-mean loss at ``s_{T1}``, through the free-phase scan."""
    def loss(p):
        free = free_phase(net, p, net.drive(p, x), dt, phases, window=1)
        return jnp.mean(net.loss_per_sample(p, free.state, y)), free

    grads, free = jax.grad(loss, has_aux=True)(params)
    return Estimate(grads, jax.lax.stop_gradient(free), jnp.zeros_like(free.fp_residual))


def estimate(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
             key: Optional[jax.Array] = None) -> Estimate:
    """The configured estimator's gradient for one batch."""
    if phases.estimator == "bptt":
        return bptt_estimate(net, params, x, y, dt, phases)
    return ep_estimate(net, params, x, y, dt, phases, key)


def _named_leaves(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path if str(getattr(k, "key", k)) != "params"):
            np.asarray(leaf, np.float64) for path, leaf in flat}


def agreement(estimate_grads, reference_grads) -> dict[str, dict[str, float]]:
    """Per parameter tensor: cosine similarity and norm ratio ``‖ĝ‖/‖g‖`` against a reference."""
    est, ref = _named_leaves(estimate_grads), _named_leaves(reference_grads)
    out = {}
    for name, g in ref.items():
        e = est[name]
        ng, ne = np.linalg.norm(g), np.linalg.norm(e)
        out[name] = {
            "cosine": float(np.dot(e.ravel(), g.ravel()) / max(ng * ne, 1e-30)),
            "norm_ratio": float(ne / max(ng, 1e-30)),
        }
    return out


def make_comparator(net: Network, phases: EPConfig, estimators=EP_ESTIMATORS):
    """A function ``(params, x, y, dt, key) -> report`` comparing EP estimates with BPTT.

    The report is ``{"free_residual": r, "estimators": {name: {tensor: {cosine, norm_ratio}}}}``;
    the free phase's residual decides how far EP can agree with BPTT at all. The estimators are
    compiled once, when the comparator is first called.
    """
    reference = jax.jit(functools.partial(bptt_estimate, net, phases=phases))
    candidates = {name: jax.jit(functools.partial(ep_estimate, net, phases=dataclasses.replace(phases, estimator=name)))
                  for name in estimators}

    def compare(params, x, y, dt: State, key: jax.Array) -> dict:
        ref = reference(params, x, y, dt)
        return {
            "free_residual": float(jnp.mean(ref.free.residual)),
            "estimators": {name: agreement(fn(params, x, y, dt, key=key).grads, ref.grads)
                           for name, fn in candidates.items()},
        }

    return compare
