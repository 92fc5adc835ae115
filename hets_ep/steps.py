"""The per-batch steps: ``train_step(state, batch) -> state`` and ``eval_step(state, sums, batch) -> sums``.

One pytree, :class:`TrainState`, holds everything a training step reads and writes: weights,
optimizer state, the epoch's on-device :class:`Sums`, the per-neuron time steps, the
estimator's random key and the step count. Every leaf carries a leading *member* axis, one
entry per seed (``train.parallel_seeds``; 1 by default), and the steps are ``jit(vmap(…))``
of the single-seed step, so K seeds train in one program. The state is donated: XLA updates
its buffers in place. The same pytree is what :mod:`hets_ep.checkpointing` saves and restores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from hets_ep import ep

if TYPE_CHECKING:
    from hets_ep.config import EPConfig
    from hets_ep.models import Network
    from hets_ep.models.network import State


class Sums(NamedTuple):
    """Sums over the samples seen so far this epoch, per member (each leaf ``(members,)``).
    ``unconverged`` counts samples whose fixed-point residual exceeds the tolerance; the
    ``nudged_*`` sums stay zero in evaluation and with BPTT."""

    loss: jax.Array
    correct: jax.Array
    step_residual: jax.Array
    fp_residual: jax.Array
    unconverged: jax.Array
    nudged_fp_residual: jax.Array
    nudged_unconverged: jax.Array
    oscillation: jax.Array
    count: jax.Array
    max_state: jax.Array   # running max of |s|, not a sum
    finite: jax.Array      # every loss and weight finite so far


class TrainState(NamedTuple):
    """Everything a training step reads and writes, each leaf with a leading member axis."""

    params: Any
    opt_state: Any
    sums: Sums
    dt: State
    key: jax.Array     # raw key data of the steps' random stream (random-sign EP, dt redraws)
    step: jax.Array    # int32: training steps taken


class Batch(NamedTuple):
    """Inputs ``(B, H, W, C)``, integer labels ``(B,)`` and, for evaluation, a 0/1 mask
    ``(B,)`` of the samples that count (the last batch of a split is padded)."""

    x: jax.Array
    y: jax.Array
    mask: Optional[jax.Array] = None


def zero_sums(members: int) -> Sums:
    """Fresh sums (a buffer per leaf: the steps donate them)."""
    return Sums(*(jnp.zeros((members,), jnp.float32) for _ in Sums._fields[:-1]), jnp.ones((members,), bool))


def _accumulate(sums: Sums, net: Network, params, free: ep.Relaxation, nudged_fp: jax.Array, y, mask,
                residual_tol: float) -> Sums:
    """Add one batch's statistics (samples where ``mask`` is 1) to ``sums``: the free phase's
    loss, accuracy and diagnostics, and the nudged phase's fixed-point residual ``nudged_fp``."""
    logits = net.logits(params, free.state)
    loss = net.loss_per_sample(params, free.state, y)
    max_state = jnp.max(jnp.stack([jnp.max(jnp.abs(s)) for s in free.state]))
    return Sums(
        loss=sums.loss + jnp.sum(mask * loss),
        correct=sums.correct + jnp.sum(mask * (jnp.argmax(logits, -1) == y)),
        step_residual=sums.step_residual + jnp.sum(mask * free.residual),
        fp_residual=sums.fp_residual + jnp.sum(mask * free.fp_residual),
        unconverged=sums.unconverged + jnp.sum(mask * (free.fp_residual > residual_tol)),
        nudged_fp_residual=sums.nudged_fp_residual + jnp.sum(mask * nudged_fp),
        nudged_unconverged=sums.nudged_unconverged + jnp.sum(mask * (nudged_fp > residual_tol)),
        oscillation=sums.oscillation + jnp.sum(mask * free.oscillation),
        count=sums.count + jnp.sum(mask),
        max_state=jnp.maximum(sums.max_state, max_state),
        finite=sums.finite & jnp.all(jnp.isfinite(loss)),
    )


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_train_step(net: Network, phases: EPConfig, tx: optax.GradientTransformation, residual_tol: float,
                    redraw: Optional[Callable[[jax.Array, State], State]] = None):
    """``train_step(state, batch) -> state``: one estimator update per member, jitted over the
    member axis (``batch`` has it too: each seed sees its own data order). ``state`` is donated.

    ``redraw(key, dt) -> dt``, if given, reassigns the time steps for each batch (the
    ``dt.redraw=batch`` control); ``state.dt`` keeps the run's own draw.
    """

    def one(state: TrainState, batch: Batch) -> TrainState:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        dt = state.dt if redraw is None else redraw(jax.random.fold_in(key, 1), state.dt)
        est = ep.estimate(net, state.params, batch.x, batch.y, dt, phases, key)
        sums = _accumulate(state.sums, net, state.params, est.free, est.nudged_fp_residual, batch.y,
                           jnp.ones_like(batch.y, jnp.float32), residual_tol)
        updates, opt_state = tx.update(est.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sums = sums._replace(finite=sums.finite & _all_finite(params))
        return TrainState(params, opt_state, sums, state.dt, state.key, state.step + 1)

    return jax.jit(jax.vmap(one), donate_argnums=0)


def make_eval_step(net: Network, phases: EPConfig, residual_tol: float, shared: bool = True):
    """``eval_step(state, sums, batch) -> sums``: the free phase on one evaluation batch.
    With ``shared`` the batch is the same for every member (no member axis: the test set);
    otherwise each member has its own (a validation split drawn per seed). ``sums`` is donated."""

    def one(state: TrainState, sums: Sums, batch: Batch) -> Sums:
        free = ep.free_phase(net, state.params, net.drive(state.params, batch.x), state.dt, phases)
        return _accumulate(sums, net, state.params, free, jnp.zeros_like(free.fp_residual), batch.y, batch.mask,
                           residual_tol)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None if shared else 0)), donate_argnums=1)


def means(sums: Sums) -> list[dict[str, float]]:
    """Per member: the sums divided by the sample count (``max_state`` and ``finite`` as they are)."""
    host = jax.device_get(sums)
    out = []
    for k in range(len(host.count)):
        n = max(float(host.count[k]), 1.0)
        mean = {name: float(getattr(host, name)[k]) / n for name in Sums._fields[:-2] if name != "count"}
        out.append({**mean, "acc": mean.pop("correct"), "max_state": float(host.max_state[k]),
                    "finite": bool(host.finite[k])})
    return out


def stack(trees: list):
    """Stack equally shaped pytrees along a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree, k: int):
    """Member ``k`` of a stacked pytree."""
    return jax.tree.map(lambda a: a[k], tree)

