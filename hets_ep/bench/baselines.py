"""What the runner is measured against: re-implementations of its update, each written for
speed comparison only (tests hold them to the runner's numbers where they claim equality).

* :func:`naive`: one jitted step per Python iteration, the drive recomputed inside (as the
  PyTorch reference code does).
* :func:`plain`: an 80-line ``jit`` + ``lax.scan`` of the same update with scalar dt,
  hand-written fields and no diagnostics.
* :func:`hand_step`: the runner's free-phase step with the energy's gradient written out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep import ep, steps
from hets_ep.bench.workloads import Workload, prepare
from hets_ep.dynamics import step as dynamics_step
from hets_ep.models import Network


def naive(workload: Workload):
    """The naive baseline of a workload's one-sided EP step (``() -> None``, one batch)."""
    run, batch = prepare(workload)
    net, phases, tx = run.net, run.cfg.ep, run.tx
    params, dt, x, y = (steps.member(t, 0) for t in (run.state.params, run.state.dt, batch.x, batch.y))

    @jax.jit
    def one_step(params, s, beta):
        return dynamics_step(net, params, net.drive(params, x), s, dt, "sync", beta, y)[0]

    gradient = jax.jit(lambda p, s1, s0, beta: ep.energy_gradient(net, p, x, y, ((1.0, s1, beta), (-1.0, s0, None)),
                                                                   beta))
    update = jax.jit(lambda g, o, p: tx.update(g, o, p))
    opt_state = tx.init(params)
    beta = jnp.float32(phases.beta)
    zero = jnp.float32(0.0)

    def go():
        s = tuple(jnp.zeros((workload.batch, *d.shape)) for d in dt)
        for _ in range(phases.T1):
            s = one_step(params, s, zero)
        free = s
        for _ in range(phases.T2):
            s = one_step(params, s, beta)
        updates, _ = update(gradient(params, s, free, beta), opt_state, params)
        jax.block_until_ready(updates)

    go()
    return go


def plain(workload: Workload, dt: float = 0.5):
    """The plain baseline for an MLP with one hidden layer: the runner's leaky hard-sigmoid
    update (every layer moves from the same old state) and one-sided EP step, written directly
    as ``jit`` + ``lax.scan`` with a scalar dt and no diagnostics, accumulators or per-neuron
    steps."""
    cfg = workload.config
    phases, batch, hidden = cfg.ep, workload.batch, cfg.model.hidden[0]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, int(np.prod(workload.input_shape))), dtype=np.float32))
    target = jax.nn.one_hot(jnp.asarray(rng.integers(0, 10, batch)), 10)
    w1 = jnp.asarray(rng.uniform(-1, 1, (x.shape[1], hidden)).astype(np.float32)) / np.sqrt(x.shape[1])
    w2 = jnp.asarray(rng.uniform(-1, 1, (hidden, 10)).astype(np.float32)) / np.sqrt(hidden)
    params = (w1, jnp.zeros(hidden), w2, jnp.zeros(10))

    @jax.jit
    def train_step(params):
        w1, b1, w2, b2 = params
        drive = x @ w1 + b1

        def relax(s, beta, n):
            def body(s, _):
                h, o = s
                return (h + dt * (jnp.clip(drive + o @ w2.T, 0, 1) - h),
                        o + dt * (jnp.clip(h @ w2 + b2 + beta * (target - o), 0, 1) - o)), None
            return jax.lax.scan(body, s, length=n)[0]

        free = relax((jnp.zeros((batch, hidden)), jnp.zeros((batch, 10))), 0.0, phases.T1)
        nudged = relax(free, phases.beta, phases.T2)
        scale = 0.01 / (phases.beta * batch)
        dh, do = nudged[0] - free[0], nudged[1] - free[1]
        return (w1 + scale * x.T @ dh, b1 + scale * dh.sum(0),
                w2 + scale * (nudged[0].T @ nudged[1] - free[0].T @ free[1]), b2 + scale * do.sum(0))

    def go():
        nonlocal params
        params = train_step(params)
        jax.block_until_ready(params)

    go()
    return go


def hand_step(net: Network, params, drive: jax.Array, s, dt):
    """The runner's free-phase step (:func:`hets_ep.dynamics.step`) for an MLP with one hidden
    layer, with the gradient of the energy written out by hand: ``h`` ``(B, H)`` and ``o``
    ``(B, 10)`` move from the same old state.

    * leaky:  ``h ← h + dt_h ⊙ (σ(d + o W₂ᵀ) − h)``, ``o ← o + dt_o ⊙ (σ(h W₂ + b₂) − o)``
    * energy: ``h ← clip(h − dt_h ⊙ (h − ρ'(h) ⊙ (d + ρ(o) W₂ᵀ)))``, likewise ``o`` with
      ``ρ(h) W₂ + b₂``; ``ρ`` the steep sigmoid, ``ρ' = 4ρ(1 − ρ)``.
    """
    (h, o), (dt_h, dt_o) = s, dt
    w2, b2 = params["params"]["layers_1"]["kernel"], params["params"]["layers_1"]["bias"]
    if net.dynamics == "leaky":
        sigma = net.act.fn
        return h + dt_h * (sigma(drive + o @ w2.T) - h), o + dt_o * (sigma(h @ w2 + b2) - o)
    if net.activation != "steep_sigmoid":
        raise ValueError(f"no hand-written energy step for {net.activation}")
    rho_h, rho_o = net.act.fn(h), net.act.fn(o)
    slope_h, slope_o = 4 * rho_h * (1 - rho_h), 4 * rho_o * (1 - rho_o)
    lo, hi = net.act.lo, net.act.hi
    return (jnp.clip(h - dt_h * (h - slope_h * (drive + rho_o @ w2.T)), lo, hi),
            jnp.clip(o - dt_o * (o - slope_o * (rho_h @ w2 + b2)), lo, hi))
