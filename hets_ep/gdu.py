"""The GDU check (Ernoult et al. 2019, "gradient descending updates"): EP's nudged phase, step
by step, against BPTT through the free phase, time step by time step.

With the free phase at its fixed point ``s*`` after ``T`` steps and the nudged phase (``+β``)
started there, EP's increments over the first ``K`` nudged steps are

* states:  ``ΔEP_s(t) = (s^β_{t+1} − s^β_t) / β``
* weights: ``ΔEP_θ(t) = −(∂F_β/∂θ(s^β_{t+1}) − ∂F_β/∂θ(s^β_t)) / β``

and BPTT's gradients of the loss ``L = ℓ(s_T)`` at the matching steps, counted back from the
end of the free phase, are ``∇_s(t) = ∂L/∂s_{T−t}`` and ``∇_θ(t) = ∂L/∂θ_{T−t}``, the gradient
through the step that produced ``s_{T−t}``. As β → 0 with a converged free phase,

    ``ΔEP_θ(t) = −∇_θ(t)``  and  ``ΔEP_s(t) = −P ⊙ ∇_s(t)``

where ``P = ∂s_{t+1}/∂h_t`` is each neuron's response to its local field: its rate ``r`` (dt,
or ``1 − e^{−dt}`` with the exact integrator), times ``σ′(h)`` for leaky dynamics, and 0 for a
neuron held at a bound by the clip of energy dynamics. So with per-neuron time steps the
state increments scale by each neuron's dt: the check compares ``ΔEP_s(t)`` with
``−P ⊙ ∇_s(t)`` (``P`` measured at ``s*`` with a Jacobian-vector product), and the weights
directly.

Per tensor it reports the relative RMSE over the ``K`` steps, ``‖ΔEP − ref‖ / ‖ref‖`` over all
steps and elements (and step by step), and the share of matching signs among the elements whose
reference is at least 1% of the tensor's root-mean-square (smaller ones have no sign worth
reading). The loss is summed over the batch on both sides. A loss read out through a layer
outside the state (``model.loss=ce``) has read-out weights that no step of the dynamics uses;
they are left out. A step whose reference is zero (a hidden layer at t = 0, which the nudge has
not reached yet) has no relative error: null.

**Energy dynamics and the clip.** The identity rests on differentiable dynamics. Energy dynamics
clip the state to the activation's interval, and a neuron held at a bound at ``s*`` is where they
are not: BPTT differentiates the clip as flat there (P = 0), while a nudge that pushes the neuron
inwards moves it off the bound at once. EP and BPTT then differ by construction — not by a
scaling of the check — and the difference spreads to the layers those neurons drive. The report
gives each state layer's share of neurons at a bound (``at_bound``) and says so when there are
any; with an activation whose fixed points stay inside its interval (``tanh``) the check agrees
as closely as with leaky dynamics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep import ep, plotting
from hets_ep.dynamics import rates, step

if TYPE_CHECKING:
    from hets_ep.config import DynamicsConfig, EPConfig
    from hets_ep.models import Network
    from hets_ep.models.network import State

SIGN_FLOOR = 0.01


def increments(net: Network, params, x: jax.Array, y: jax.Array, dt: State, phases: EPConfig,
               dynamics: DynamicsConfig, steps: int) -> dict:
    """EP's increments and BPTT's reference over the first ``steps`` nudged steps, as float64
    arrays with a leading time axis: ``{"states": {name: (ep, ref)}, "weights": {name: (ep, ref)},
    "free_fp_residual": r}``."""
    rate = rates(dt, dynamics.integrator)
    drive = net.drive(params, x)
    beta = jnp.asarray(phases.beta, x.dtype)

    def one(p, s, b=None):
        return step(net, p, net.drive(p, x), s, rate, dynamics.update_order, b, y)[0]

    free = ep.free_phase(net, params, drive, dt, phases, dynamics, window=1)
    head = ep.free_phase(net, params, drive, dt, dataclasses.replace(phases, T1=phases.T1 - steps), dynamics,
                         window=1).state

    def last_steps(eps):  # the free phase's last `steps` steps, each state nudged by eps[j]
        def body(s, e):
            new = tuple(a + b for a, b in zip(one(params, s), e))
            return new, s
        final, before = jax.lax.scan(body, head, eps)
        return jnp.sum(net.loss_per_sample(params, final, y)), before

    zeros = tuple(jnp.zeros((steps, *a.shape), a.dtype) for a in head)
    state_grads, before = jax.grad(last_steps, has_aux=True)(zeros)
    # ∇_s(t) = ∂L/∂s_{T−t}: the perturbation after step j is s_{T−K+j+1}, so t = K−1−j.
    grad_s = tuple(g[::-1] for g in state_grads)
    before = tuple(b[::-1] for b in before)  # s_{T−t−1}, t = 0 … K−1

    def weight_grad(s_prev, cotangent):
        _, vjp = jax.vjp(lambda p: one(p, s_prev), params)
        return vjp(cotangent)[0]

    grad_w = jax.vmap(weight_grad)(before, grad_s)

    def nudged_body(s, _):
        new = one(params, s, beta)
        return new, new

    _, trajectory = jax.lax.scan(nudged_body, free.state, None, length=steps)
    states = tuple(jnp.concatenate([a[None], t]) for a, t in zip(free.state, trajectory))
    ep_s = tuple((t[1:] - t[:-1]) / beta for t in states)
    pairs = jax.vmap(lambda s0, s1: ep.energy_gradient(net, params, x, y, ((1.0, s1, beta), (-1.0, s0, beta)),
                                                       -beta))
    ep_w = pairs(tuple(t[:-1] for t in states), tuple(t[1:] for t in states))
    response = jax.jvp(lambda h: step(net, params, drive, free.state, rate, dynamics.update_order, field_noise=h)[0],
                       (tuple(jnp.zeros_like(a) for a in free.state),),
                       (tuple(jnp.ones_like(a) for a in free.state),))[1]
    ref_s = tuple(-p[None] * g for p, g in zip(response, grad_s))
    batch = x.shape[0]
    ep_leaves, ref_leaves = ep.named_leaves(ep_w), ep.named_leaves(jax.tree.map(lambda g: -g / batch, grad_w))
    return {
        "states": {f"s{i + 1}": (np.asarray(e, np.float64), np.asarray(r, np.float64))
                   for i, (e, r) in enumerate(zip(ep_s, ref_s))},
        "weights": {name: (ep_leaves[name], ref) for name, ref in ref_leaves.items() if np.any(ref != 0)},
        "free_fp_residual": float(jnp.mean(free.fp_residual)),
        "at_bound": {f"s{i + 1}": float(jnp.mean((a <= net.act.lo) | (a >= net.act.hi))) if net.dynamics == "energy"
                     else 0.0 for i, a in enumerate(free.state)},
    }


def agreement(ep_inc: np.ndarray, ref: np.ndarray) -> dict:
    """Relative RMSE (over all steps, and step by step) and the share of matching signs."""
    t = ep_inc.shape[0]
    diff, ref2 = (ep_inc - ref).reshape(t, -1), ref.reshape(t, -1)
    ref_norms = np.linalg.norm(ref2, axis=1)
    per_step = [float(d / r) if r > 0 else None for d, r in zip(np.linalg.norm(diff, axis=1), ref_norms)]
    floor = SIGN_FLOOR * np.sqrt(np.mean(ref2**2))
    big = np.abs(ref2) >= floor
    signs = float(np.mean(np.sign(ep_inc.reshape(t, -1)[big]) == np.sign(ref2[big]))) if big.any() else None
    return {"relative_rmse": float(np.linalg.norm(diff) / max(np.linalg.norm(ref2), 1e-30)),
            "relative_rmse_per_step": per_step, "sign_agreement": signs, "compared_elements": int(big.sum())}


def check(net: Network, params, x, y, dt, phases: EPConfig, dynamics: DynamicsConfig, steps: int,
          plots: Path | None = None) -> dict:
    """The GDU report (JSON-ready) and, with ``plots``, one figure per tensor there."""
    if steps >= phases.T1:
        raise ValueError(f"the GDU check needs ep.T1 > ep.T2 (the free phase's last {steps} steps are compared)")
    found = increments(net, params, jnp.asarray(x), jnp.asarray(y), dt, phases, dynamics, steps)
    report = {"compares": "states: ΔEP_s(t) with −P ⊙ ∂L/∂s_{T−t}, P = ∂s_{t+1}/∂h_t (rate × σ′ for leaky "
                          "dynamics, 0 at a clip bound); weights: ΔEP_θ(t) with −∂L/∂θ_{T−t}; loss summed over "
                          "the batch",
              "beta": phases.beta, "steps": steps, "free_fp_residual": found["free_fp_residual"], "tensors": {}}
    for kind in ("states", "weights"):
        for name, (e, r) in found[kind].items():
            report["tensors"][name] = {"kind": kind, **agreement(e, r),
                                       **({"at_bound": found["at_bound"][name]} if kind == "states" else {})}
            if plots is not None:
                _plot(plots / f"{name.replace('/', '_')}.png", name, e, r)
    bound = max(found["at_bound"].values())
    if bound > 0:
        report["note"] = (f"up to {100 * bound:.0f}% of a layer's neurons sit at a clip bound of the energy dynamics "
                          "at the free fixed point: BPTT's gradient through the clip is zero there, while the nudge "
                          "moves them off the bound, so EP and BPTT differ by construction (an activation whose "
                          "fixed points stay inside its interval, such as model.activation=tanh, avoids it)")
    return report


def _plot(path: Path, name: str, ep_inc: np.ndarray, ref: np.ndarray, shown: int = 5) -> None:
    """A few elements with the largest reference: EP's increments (dashed) on BPTT's (solid)."""
    plt = plotting.pyplot()
    flat_e, flat_r = ep_inc.reshape(ep_inc.shape[0], -1), ref.reshape(ref.shape[0], -1)
    chosen = np.argsort(-np.abs(flat_r).max(axis=0))[:shown]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    t = np.arange(flat_r.shape[0])
    for i, j in enumerate(chosen):
        colour = f"C{i}"
        ax.plot(t, flat_r[:, j], color=colour, lw=1.5)
        ax.plot(t, flat_e[:, j], color=colour, ls="--", lw=1.5)
    ax.set(xlabel="step t of the nudged phase", ylabel="increment", title=f"{name}: ΔEP (dashed), −∇BPTT (solid)")
    plotting.save(fig, path)
