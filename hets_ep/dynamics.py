"""The relaxation kernel: per-neuron time steps, one ``lax.scan``, diagnostics for free.

One step with time steps ``dt`` (a pytree shaped like one sample's state, broadcast over the
batch) moves every neuron along the network's dynamics (see :mod:`hets_ep.models.network`):

* leaky:  ``s ← s + dt ⊙ (σ(−∂F_β/∂s) − s)``  (``dt = 1`` is Laborieux's ``s ← σ(∂Φ_β/∂s)``)
* energy: ``s ← clip(s − dt ⊙ ∂F_β/∂s, lo, hi)``

:func:`relax` runs ``steps`` such steps. The input drive is passed in already computed, so the
scan body holds only the state-dependent work. The last ``window`` steps also record, per
sample, without an extra pass:

* the **fixed-point residual** ``‖T(s) − s‖ / ‖s‖`` at the state before the last step, where
  ``T`` is the step at ``dt = 1`` (leaky: ``T(s) = σ(−∂F_β/∂s)``; energy: the projected
  gradient step ``T(s) = clip(s − ∂F_β/∂s)``). It is zero exactly at a fixed point and does
  not depend on dt, so conditions with different dt compare on it;
* the **step residual** ``‖s_T − s_{T−1}‖ / ‖s_T‖``, which shrinks with dt itself;
* how often each neuron's increment ``Δs`` changed sign (an oscillation count).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from hets_ep.models.network import Network, State

DIAGNOSTIC_WINDOW = 10
# Increments below this are treated as zero when counting sign flips (float32 round-off).
_FLIP_EPS = 1e-6


class Relaxation(NamedTuple):
    """Result of :func:`relax`: the final state and per-sample diagnostics, each ``(B,)``."""

    state: State
    residual: jax.Array      # step residual ‖s_T − s_{T−1}‖ / ‖s_T‖
    fp_residual: jax.Array   # fixed-point residual ‖T(s) − s‖ / ‖s‖ (dt-free)
    oscillation: jax.Array


def step(net: Network, params, drive: jax.Array, s: State, dt: State,
         beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None) -> tuple[State, State]:
    """One Euler step with per-neuron time steps ``dt``: ``(new state, T(s) − s)``."""
    grad = jax.grad(net.energy, argnums=2)(params, drive, s, beta, y)
    if net.dynamics == "leaky":
        sigma = net.act.fn
        unit = tuple(sigma(-gi) - si for si, gi in zip(s, grad))
        return tuple(si + dti * ui for si, ui, dti in zip(s, unit, dt)), unit
    lo, hi = net.act.lo, net.act.hi
    new = tuple(jnp.clip(si - dti * gi, lo, hi) for si, gi, dti in zip(s, grad, dt))
    return new, tuple(jnp.clip(si - gi, lo, hi) - si for si, gi in zip(s, grad))


def _per_sample(fn, tree: State) -> jax.Array:
    return sum(jnp.sum(fn(a).reshape(a.shape[0], -1), axis=1) for a in tree)


def relax(net: Network, params, drive: jax.Array, s: State, dt: State, steps: int,
          beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None,
          window: int = DIAGNOSTIC_WINDOW, unroll: int = 1) -> Relaxation:
    """Run ``steps`` steps from state ``s``; ``beta=None`` is the free phase (no nudge).

    Args:
      net: the network (static).
      params: weights θ.
      drive: ``net.drive(params, x)``, shape of the first state layer.
      s: initial state, a tuple of ``(B, …)`` arrays.
      dt: per-neuron time steps, a tuple of arrays broadcastable to one sample's layers.
      steps: number of steps T (static, ≥ 1).
      beta: nudging strength (a traced scalar, so ±β share one compilation), or None.
      y: integer labels ``(B,)``, needed when ``beta`` is given.
      window: the diagnostics cover the last ``min(window, steps)`` steps.
      unroll: ``lax.scan`` unroll factor (a speed knob; results are unchanged).
    """
    def advance(state):
        return step(net, params, drive, state, dt, beta, y)

    tracked = min(window, steps)
    s, _ = jax.lax.scan(lambda c, _: (advance(c)[0], None), s, length=steps - tracked, unroll=unroll)

    def track(carry, _):
        state, prev_delta, _, flips = carry
        new, unit = advance(state)
        delta = tuple(n - o for n, o in zip(new, state))
        flipped = tuple(
            (d * p < 0) & (jnp.abs(d) > _FLIP_EPS) & (jnp.abs(p) > _FLIP_EPS) for d, p in zip(delta, prev_delta)
        )
        fp = jnp.sqrt(_per_sample(jnp.square, unit)) / jnp.maximum(jnp.sqrt(_per_sample(jnp.square, state)), 1e-12)
        return (new, delta, fp, flips + _per_sample(lambda f: f.astype(jnp.float32), flipped)), None

    batch = s[0].shape[0]
    zeros = tuple(jnp.zeros_like(a) for a in s)
    init = (s, zeros, jnp.zeros((batch,), s[0].dtype), jnp.zeros((batch,), jnp.float32))
    (s, delta, fp, flips), _ = jax.lax.scan(track, init, length=tracked)
    norm_delta = jnp.sqrt(_per_sample(jnp.square, delta))
    norm_state = jnp.sqrt(_per_sample(jnp.square, s))
    n_neurons = sum(a[0].size for a in s)
    return Relaxation(s, norm_delta / jnp.maximum(norm_state, 1e-12), fp, flips / n_neurons)
