"""The relaxation kernel: per-neuron time steps, one ``lax.scan``, diagnostics for free.

With the local field ``h = −∂F_β/∂s`` of the network's total energy (see
:mod:`hets_ep.models.network`) and ``T(s)`` the step at ``dt = 1`` — leaky: ``T(s) = σ(h)``;
energy: the projected gradient step ``T(s) = clip(s + h)`` — one step moves each neuron ``i``
by the share ``r_i`` of its way to ``T(s)``:

* leaky:  ``s ← s + r ⊙ (σ(h) − s)``  (``r = 1`` is Laborieux's ``s ← σ(∂Φ_β/∂s)``)
* energy: ``s ← clip(s + r ⊙ h, lo, hi)``

The **integrator** sets ``r`` from the neuron's time step ``dt_i = Δt/τ_i``: ``euler`` takes
``r = dt`` (overshoots for ``dt > 1``, oscillates without settling for ``dt ≥ 2``); ``exact``
takes ``r = 1 − e^{−dt}``, the exact solution of ``τ ds/dt = T − s`` over ``Δt`` with ``T``
held over the step (exponential Euler), in ``(0, 1]`` for every ``dt > 0``: it never
overshoots. Both have the same fixed points and agree to first order in dt.

The **update order**: ``sync`` moves every layer from the old state;
``async`` moves the even-indexed state layers (``s_1, s_3, …``: index 0, 2, … of the state
tuple) first, then the odd-indexed ones from their neighbours' fresh values (block
Gauss–Seidel). Same fixed points.

**Noise** (``dynamics.noise`` = σ, off when 0): ``step`` adds ``σ ξ`` to every neuron's local
field at every step (the pre-activation, for leaky dynamics); ``sde`` adds the state noise of
a continuous-time neuron, ``σ √dt ξ`` (Euler–Maruyama) or ``σ √((1 − e^{−2dt})/2) ξ`` (the
exact Ornstein–Uhlenbeck transition), so slow and fast neurons see the same physical noise.
``ξ ~ N(0, 1)`` comes from the key given to :func:`relax`, step by step.

:func:`relax` runs ``steps`` steps (or, with ``tol``, until every sample has converged, at most
``steps``). The input drive is computed once, outside the loop. The last ``window`` steps also
record, per sample, without an extra pass:

* the **fixed-point residual** ``‖T(s) − s‖ / ‖s‖`` at the state before the last step (noise-free,
  with ``T`` the synchronous step, whatever the update order). It is zero exactly at a fixed point
  and does not depend on dt, so conditions with different dt compare on it;
* the **step residual** ``‖s_T − s_{T−1}‖ / ‖s_T‖``, which shrinks with dt itself;
* how often each neuron's increment ``Δs`` changed sign (an oscillation count).

States may be complex (holomorphic EP's nudged phases): then norms are moduli, the field is the
holomorphic derivative, and sign flips are counted on the real part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from hets_ep.choices import DIAGNOSTIC_WINDOW
from hets_ep import fused
from hets_ep.models.network import Network, State

if TYPE_CHECKING:
    from hets_ep.config import DynamicsConfig

# Increments below this are treated as zero when counting sign flips (float32 round-off).
_FLIP_EPS = 1e-6


class Relaxation(NamedTuple):
    """Result of :func:`relax`: the final state, per-sample diagnostics ``(B,)`` and the
    number of steps taken (a scalar)."""

    state: State
    step_residual: jax.Array   # ‖s_T − s_{T−1}‖ / ‖s_T‖
    fp_residual: jax.Array     # ‖T(s) − s‖ / ‖s‖ (dt-free)
    oscillation: jax.Array     # sign flips of Δs per neuron over the window
    steps: jax.Array           # int32: steps taken


def rates(dt: State, integrator: str) -> State:
    """``r_i``, the share of its way to ``T(s)`` a neuron moves per step: ``dt_i`` (euler) or
    ``1 − e^{−dt_i}`` (exact)."""
    return dt if integrator == "euler" else tuple(-jnp.expm1(-d) for d in dt)


def noise_scales(dt: State, dynamics: DynamicsConfig) -> State:
    """Per-neuron standard deviation of the noise added at each step (see the module docstring)."""
    sigma = dynamics.noise
    if dynamics.noise_mode == "step":
        return tuple(jnp.full_like(d, sigma) for d in dt)
    if dynamics.integrator == "euler":
        return tuple(sigma * jnp.sqrt(d) for d in dt)
    return tuple(sigma * jnp.sqrt(-jnp.expm1(-2.0 * d) / 2.0) for d in dt)


def field(net: Network, params, drive: jax.Array, s: State, layers: Sequence[int],
          beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None) -> State:
    """The local field ``h = −∂F_β/∂s`` of the given state layers (the others held fixed).

    Autodiff of the energy with respect to those layers only, so a half step of the async
    order computes each layer-to-layer product once. For complex states the derivative is
    the holomorphic one.
    """
    def energy(part):
        full = list(s)
        for i, value in zip(layers, part):
            full[i] = value
        return net.energy(params, drive, tuple(full), beta, y)

    holomorphic = jnp.iscomplexobj(s[0])
    grads = jax.grad(energy, holomorphic=holomorphic)(tuple(s[i] for i in layers))
    return tuple(-g for g in grads)


def _target(net: Network, s: jax.Array, h: jax.Array) -> jax.Array:
    """``T(s)`` of one layer from its field: ``σ(h)`` (leaky) or ``clip(s + h)`` (energy)."""
    if net.dynamics == "leaky":
        return net.act.fn(h)
    return jnp.clip(s + h, net.act.lo, net.act.hi)


def _move(net: Network, s: jax.Array, h: jax.Array, rate: jax.Array) -> jax.Array:
    if net.dynamics == "leaky":
        return s + rate * (net.act.fn(h) - s)
    return jnp.clip(s + rate * h, net.act.lo, net.act.hi)


def step(net: Network, params, drive: jax.Array, s: State, rate: State, order: str,
         beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None,
         field_noise: Optional[State] = None, state_noise: Optional[State] = None) -> tuple[State, State]:
    """One step with per-neuron rates ``rate`` (:func:`rates`): ``(new state, T(s) − s)``, the
    second noise-free and synchronous at the old state (what the residuals measure).

    ``field_noise`` is added to the local field before the update, ``state_noise`` to the
    updated state (before clipping, for energy dynamics).
    """
    every = tuple(range(len(s)))
    groups = (every,) if order == "sync" else (every[0::2], every[1::2])
    new, unit = list(s), [None] * len(s)
    for i, group in enumerate(groups):
        h = field(net, params, drive, tuple(new), group, beta, y)
        if i > 0:  # the synchronous residual needs these layers' field at the old state
            unit_h = field(net, params, drive, s, group, beta, y)
        else:
            unit_h = h
        for layer, h_l, h_old in zip(group, h, unit_h):
            unit[layer] = _target(net, s[layer], h_old) - s[layer]
            if field_noise is not None:
                h_l = h_l + field_noise[layer]
            moved = _move(net, s[layer], h_l, rate[layer])
            if state_noise is not None:
                moved = moved + state_noise[layer]
                if net.dynamics == "energy":
                    moved = jnp.clip(moved, net.act.lo, net.act.hi)
            new[layer] = moved
    return tuple(new), tuple(unit)


def _abs2(a: jax.Array) -> jax.Array:
    return jnp.real(a * jnp.conj(a)) if jnp.iscomplexobj(a) else jnp.square(a)


def _per_sample(fn, tree: State) -> jax.Array:
    return sum(jnp.sum(fn(a).reshape(a.shape[0], -1), axis=1) for a in tree)


def _norms(tree: State) -> jax.Array:
    return jnp.sqrt(_per_sample(_abs2, tree))


def relax(net: Network, params, drive: jax.Array, s: State, dt: State, steps: int, dynamics: DynamicsConfig,
          beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None, noise_key: Optional[jax.Array] = None,
          *, window: int = DIAGNOSTIC_WINDOW, tol: Optional[float] = None, tol_every: int = 1,
          unroll: int = 1) -> Relaxation:
    """Run ``steps`` steps from state ``s``; ``beta=None`` is the free phase (no nudge).

    Args:
      net: the network (static).
      params: weights θ.
      drive: ``net.drive(params, x)``, shape of the first state layer.
      s: initial state, a tuple of ``(B, …)`` arrays (real, or complex for a complex ``beta``).
      dt: per-neuron time steps, a tuple of arrays broadcastable to one sample's layers.
      steps: number of steps T (static, ≥ 1); with ``tol``, the most steps taken.
      dynamics: integrator, update order, noise and backend (static; :class:`hets_ep.config.DynamicsConfig`;
        with ``backend="fused"`` the noise-free stretches of real states run as one Pallas kernel
        per batch tile, :mod:`hets_ep.fused`).
      beta: nudging strength (traced, so ±β share one compilation), or None.
      y: integer labels ``(B,)``, needed when ``beta`` is given.
      noise_key: the key of this phase's noise; None (or ``dynamics.noise == 0``): no noise.
      window: the diagnostics cover the last ``min(window, steps)`` steps (with ``tol``: of
        the last block of ``tol_every`` steps).
      tol: relax until every sample's fixed-point residual is at most ``tol``, checked every
        ``tol_every`` steps (a ``lax.while_loop``); None: exactly ``steps`` steps (a ``lax.scan``).
      unroll: ``lax.scan`` unroll factor (a speed knob; results are unchanged).
    """
    rate = rates(dt, dynamics.integrator)
    noisy = noise_key is not None and dynamics.noise > 0
    scales = noise_scales(dt, dynamics) if noisy else None

    def advance(state: State, t: jax.Array) -> tuple[State, State]:
        if not noisy:
            return step(net, params, drive, state, rate, dynamics.update_order, beta, y)
        keys = jax.random.split(jax.random.fold_in(noise_key, t), len(state))
        noise = tuple(sc * jax.random.normal(k, a.shape, sc.dtype) for k, a, sc in zip(keys, state, scales))
        if dynamics.noise_mode == "step":
            return step(net, params, drive, state, rate, dynamics.update_order, beta, y, field_noise=noise)
        return step(net, params, drive, state, rate, dynamics.update_order, beta, y, state_noise=noise)

    def plain(state: State, n: int, t0) -> State:
        if n and dynamics.backend == "fused" and fused.applies(state, noisy):
            return fused.steps(net, params, drive, state, rate, n, dynamics.update_order, beta, y)

        def body(carry, _):
            state, t = carry
            return (advance(state, t)[0], t + 1), None

        return jax.lax.scan(body, (state, t0), length=n, unroll=unroll)[0][0]

    def block(state: State, n: int, t0) -> Relaxation:
        """``n`` steps from step number ``t0``, the last ``min(window, n)`` tracked."""
        tracked = min(window, n)
        state = plain(state, n - tracked, t0)

        def track(carry, _):
            state, prev_delta, _, flips, t = carry
            new, unit = advance(state, t)
            delta = tuple(a - b for a, b in zip(new, state))
            flipped = tuple((jnp.real(d) * jnp.real(p) < 0) & (jnp.abs(d) > _FLIP_EPS) & (jnp.abs(p) > _FLIP_EPS)
                            for d, p in zip(delta, prev_delta))
            fp = _norms(unit) / jnp.maximum(_norms(state), 1e-12)
            return (new, delta, fp, flips + _per_sample(lambda f: f.astype(jnp.float32), flipped), t + 1), None

        batch = state[0].shape[0]
        real = jnp.real(state[0]).dtype
        init = (state, tuple(jnp.zeros_like(a) for a in state), jnp.zeros((batch,), real),
                jnp.zeros((batch,), jnp.float32), t0 + n - tracked)
        (state, delta, fp, flips, _), _ = jax.lax.scan(track, init, length=tracked)
        n_neurons = sum(a[0].size for a in state)
        return Relaxation(state, _norms(delta) / jnp.maximum(_norms(state), 1e-12), fp, flips / n_neurons,
                          jnp.asarray(n, jnp.int32))

    start = jnp.asarray(0, jnp.int32)
    chunks = steps // tol_every if tol is not None else 0
    if chunks == 0:
        return block(s, steps, start)
    first = steps - chunks * tol_every
    s = plain(s, first, start) if first else s
    batch, real = s[0].shape[0], jnp.real(s[0]).dtype
    unstarted = Relaxation(s, jnp.zeros((batch,), real), jnp.full((batch,), jnp.inf, real),
                           jnp.zeros((batch,), jnp.float32), jnp.asarray(first, jnp.int32))

    def unconverged(r: Relaxation) -> jax.Array:
        return (r.steps < steps) & (jnp.max(r.fp_residual) > tol)

    def next_block(r: Relaxation) -> Relaxation:
        done = block(r.state, tol_every, r.steps)
        return done._replace(steps=r.steps + tol_every)

    return jax.lax.while_loop(unconverged, next_block, unstarted)


def spectral_radius(net: Network, params, drive: jax.Array, s: State, dt: State, dynamics: DynamicsConfig,
                    key: jax.Array, iters: int) -> jax.Array:
    """Per sample ``(B,)``: the spectral radius of the Jacobian of one noise-free free-phase step
    ``s ↦ s'`` at ``s`` (a fixed point, for the reading to mean what it says).

    Power iteration with Jacobian-vector products (``jax.jvp``), one vector per sample (samples
    do not interact, so the Jacobian is block diagonal); the radius is the geometric mean of the
    growth factors over the second half of the ``iters`` iterations, which also reads a pair of
    eigenvalues ``±ρ``. Above 1 the step oscillates or diverges near the fixed point.
    """
    rate = rates(dt, dynamics.integrator)

    def one_step(state: State) -> State:
        return step(net, params, drive, state, rate, dynamics.update_order)[0]

    keys = jax.random.split(key, len(s))
    v = tuple(jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, s))

    def normalise(tree: State) -> tuple[State, jax.Array]:
        norm = jnp.maximum(_norms(tree), 1e-30)
        return tuple(a / norm.reshape((-1,) + (1,) * (a.ndim - 1)) for a in tree), norm

    def body(v, _):
        _, jv = jax.jvp(one_step, (s,), (v,))
        v, growth = normalise(jv)
        return v, jnp.log(growth)

    v, _ = normalise(v)
    _, logs = jax.lax.scan(body, v, length=iters)
    return jnp.exp(jnp.mean(logs[iters // 2:], axis=0))
