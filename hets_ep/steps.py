"""The per-batch steps: ``train_step(state, batch, hyper) -> state``, ``eval_step(state, sums, batch) -> sums``.

One pytree, :class:`TrainState`, holds everything a training step reads and writes: weights,
optimizer state, the epoch's on-device :class:`Sums`, the per-neuron time steps, the random
keys of the estimator and of the state noise, the recent batch losses and the step count.
Every leaf carries a leading *member* axis, one entry per seed (``train.parallel_seeds``; 1 by
default), and the steps are ``jit(vmap(…))`` of the single-seed step, so K seeds train in one
program. The state is donated: XLA updates its buffers in place. The same pytree is what
:mod:`hets_ep.checkpointing` saves and restores; :func:`init_state` builds it. :class:`Hyper`
holds the per-member values a step reads but never writes (|β|, the learning-rate scale): arrays
at run time, so members may differ in them in one program (a stacked sweep's jobs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hets_ep import ep, seeding
from hets_ep.dynamics import spectral_radius

if TYPE_CHECKING:
    from hets_ep.config import DynamicsConfig, EPConfig, StabilityConfig
    from hets_ep.models import Network
    from hets_ep.models.network import State


class Sums(NamedTuple):
    """What an epoch accumulates, per member (each leaf ``(members,)``), named as the metric it
    becomes (:func:`means`). Over samples: ``loss``, ``acc``, the residuals, the unconverged
    counts (residual above ``stability.residual_tol``) and ``oscillation``; over batches: the
    steps each phase took, their maxima, ``capped`` (a phase stopped at its cap unconverged,
    with ``ep.tol``), ``loss_spikes``; in total: ``relaxation_steps``. The ``nudged_*`` sums stay
    zero in evaluation and with BPTT."""

    loss: jax.Array
    acc: jax.Array
    step_residual: jax.Array
    fp_residual: jax.Array
    unconverged: jax.Array
    nudged_fp_residual: jax.Array
    nudged_unconverged: jax.Array
    oscillation: jax.Array
    free_steps: jax.Array
    free_steps_max: jax.Array
    nudged_steps: jax.Array
    nudged_steps_max: jax.Array
    capped: jax.Array
    loss_spikes: jax.Array
    relaxation_steps: jax.Array
    count: jax.Array       # samples
    batches: jax.Array
    max_state: jax.Array   # running max of |s|
    finite: jax.Array      # every loss and weight finite so far


class TrainState(NamedTuple):
    """Everything a training step reads and writes, each leaf with a leading member axis."""

    params: Any
    opt_state: Any
    sums: Sums
    dt: State
    key: jax.Array           # raw key data of the estimator's stream (random-sign EP, dt redraws)
    noise_key: jax.Array     # raw key data of the state-noise stream
    recent_loss: jax.Array   # the last stability.spike_window batch losses (a ring; NaN: not yet)
    step: jax.Array          # int32: training steps taken


class Hyper(NamedTuple):
    """What a training step reads per member besides the state, each ``(members,)`` float32: |β|
    (``ep.beta``) and the factor on every update (``optimizer.lr_scale``, see :mod:`hets_ep.optim`)."""

    beta: jax.Array
    lr_scale: jax.Array


def hyper(configs: Sequence[Any]) -> Hyper:
    """The :class:`Hyper` of members with these configs (:class:`hets_ep.config.Config`, in member order)."""
    return Hyper(jnp.asarray([c.ep.beta for c in configs], jnp.float32),
                 jnp.asarray([c.optimizer.lr_scale for c in configs], jnp.float32))


class Batch(NamedTuple):
    """Inputs ``(B, H, W, C)``, integer labels ``(B,)`` and, for evaluation, a 0/1 mask
    ``(B,)`` of the samples that count (the last batch of a split is padded)."""

    x: jax.Array
    y: jax.Array
    mask: Optional[jax.Array] = None


def zero_sums(members: int) -> Sums:
    """Fresh sums (a buffer per leaf: the steps donate them)."""
    return Sums(*(jnp.zeros((members,), jnp.float32) for _ in Sums._fields[:-1]), jnp.ones((members,), bool))


def init_state(net: Network, tx: optax.GradientTransformation, input_shape: Sequence[int], seeds: Sequence[int],
               dts: Sequence[State], spike_window: int) -> TrainState:
    """The train state of seeds ``seeds`` (one member each): initial weights from each seed's
    ``init`` stream, its dt draw ``dts[k]``, keys from its ``estimator`` and ``noise`` streams."""
    params = stack([net.init(seeding.key(s, "init"), input_shape) for s in seeds])
    members = len(seeds)
    return TrainState(
        params=params,
        opt_state=jax.vmap(tx.init)(params),
        sums=zero_sums(members),
        dt=stack([tuple(map(jnp.asarray, dt)) for dt in dts]),
        key=jnp.stack([jax.random.key_data(seeding.key(s, "estimator")) for s in seeds]),
        noise_key=jnp.stack([jax.random.key_data(seeding.key(s, "noise")) for s in seeds]),
        recent_loss=jnp.full((members, spike_window), jnp.nan, jnp.float32),
        step=jnp.zeros((members,), jnp.int32),
    )


def _accumulate(sums: Sums, net: Network, params, est: ep.Estimate, y, mask, residual_tol: float) -> Sums:
    """Add one batch's statistics (samples where ``mask`` is 1) to ``sums``: the free phase's
    loss, accuracy and diagnostics, and the nudged phases' residuals and steps."""
    free = est.free
    logits = net.logits(params, free.state)
    loss = net.loss_per_sample(params, free.state, y)
    max_state = jnp.max(jnp.stack([jnp.max(jnp.abs(s)) for s in free.state]))
    return sums._replace(
        loss=sums.loss + jnp.sum(mask * loss),
        acc=sums.acc + jnp.sum(mask * (jnp.argmax(logits, -1) == y)),
        step_residual=sums.step_residual + jnp.sum(mask * free.step_residual),
        fp_residual=sums.fp_residual + jnp.sum(mask * free.fp_residual),
        unconverged=sums.unconverged + jnp.sum(mask * (free.fp_residual > residual_tol)),
        nudged_fp_residual=sums.nudged_fp_residual + jnp.sum(mask * est.nudged_fp_residual),
        nudged_unconverged=sums.nudged_unconverged + jnp.sum(mask * (est.nudged_fp_residual > residual_tol)),
        oscillation=sums.oscillation + jnp.sum(mask * free.oscillation),
        free_steps=sums.free_steps + free.steps,
        free_steps_max=jnp.maximum(sums.free_steps_max, free.steps),
        nudged_steps=sums.nudged_steps + est.nudged_steps,
        nudged_steps_max=jnp.maximum(sums.nudged_steps_max, est.nudged_steps),
        capped=sums.capped + est.capped,
        relaxation_steps=sums.relaxation_steps + est.relaxation_steps,
        count=sums.count + jnp.sum(mask),
        batches=sums.batches + 1,
        max_state=jnp.maximum(sums.max_state, max_state),
        finite=sums.finite & jnp.all(jnp.isfinite(loss)),
    )


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


# Losses are floored here before their logarithm (an MSE batch loss can be exactly 0).
_LOSS_FLOOR = 1e-12


def _spike(recent: jax.Array, loss: jax.Array, step: jax.Array, factor: float,
           floor: float, min_loss: float) -> tuple[jax.Array, jax.Array]:
    """``(is the batch loss a spike, the updated ring)``. On the log scale, a spike rises above
    the median of the previous ``len(recent)`` batch losses by more than ``factor`` robust
    standard deviations of them (1.4826 × their median absolute deviation) and by at least a
    factor ``floor``, once that many were seen, and the loss is at least ``min_loss``:
    batch-to-batch wiggles, which grow relative to the loss as it falls, are not spikes, and a
    batch whose loss is tiny is none whatever its ratio to the median."""
    window = recent.shape[0]
    logs = jnp.log(jnp.maximum(recent, _LOSS_FLOOR))
    centre = jnp.nanmedian(logs)
    spread = 1.4826 * jnp.nanmedian(jnp.abs(logs - centre))
    rise = jnp.log(jnp.maximum(loss, _LOSS_FLOOR)) - centre
    spike = (step >= window) & (rise > jnp.maximum(factor * spread, jnp.log(floor))) & (loss >= min_loss)
    return spike, recent.at[step % window].set(loss)


def make_train_step(net: Network, phases: EPConfig, dynamics: DynamicsConfig, tx: optax.GradientTransformation,
                    stability: StabilityConfig, redraw: Optional[Callable[[jax.Array, State], State]] = None):
    """``train_step(state, batch, hyper) -> state``: one estimator update per member, jitted over
    the member axis (``batch`` and ``hyper`` have it too: each seed sees its own data order, and
    nudges with its own β and steps at its own rate scale). ``state`` is donated.

    ``redraw(key, dt) -> dt``, if given, reassigns the time steps for each batch (the
    ``dt.redraw=batch`` control); ``state.dt`` keeps the run's own draw.
    """

    def one(state: TrainState, batch: Batch, hyper: Hyper) -> TrainState:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        noise_key = jax.random.fold_in(jax.random.wrap_key_data(state.noise_key), state.step)
        dt = state.dt if redraw is None else redraw(jax.random.fold_in(key, 1), state.dt)
        est = ep.estimate(net, state.params, batch.x, batch.y, dt, phases, dynamics, key,
                          noise_key if dynamics.noise > 0 else None, beta=hyper.beta)
        sums = _accumulate(state.sums, net, state.params, est, batch.y, jnp.ones_like(batch.y, jnp.float32),
                           stability.residual_tol)
        batch_loss = jnp.mean(net.loss_per_sample(state.params, est.free.state, batch.y))
        spike, recent = _spike(state.recent_loss, batch_loss, state.step, stability.spike_factor,
                               stability.spike_floor, stability.spike_min_loss)
        updates, opt_state = tx.update(est.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: hyper.lr_scale * u, updates))
        sums = sums._replace(finite=sums.finite & _all_finite(params), loss_spikes=sums.loss_spikes + spike)
        return TrainState(params, opt_state, sums, state.dt, state.key, state.noise_key, recent, state.step + 1)

    return jax.jit(jax.vmap(one), donate_argnums=0)


def make_eval_step(net: Network, phases: EPConfig, dynamics: DynamicsConfig, residual_tol: float,
                   shared: bool = True, nudged: bool = False):
    """``eval_step(state, sums, batch, index) -> sums``: the free phase on one evaluation batch
    (with ``nudged``, the estimator's nudged phases too, for their residuals and steps; their
    gradient is not computed). With ``shared`` the batch is the same for every member (no member
    axis: the test set); otherwise each member has its own (a validation split drawn per seed).
    ``index`` (an int) numbers the batch for the noise of ``dynamics.noise_eval``. ``sums`` is
    donated."""
    noisy = dynamics.noise > 0 and dynamics.noise_eval

    def one(state: TrainState, sums: Sums, batch: Batch, index) -> Sums:
        noise_key = None
        if noisy:
            noise_key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.noise_key), -1), index)
        if nudged and phases.estimator != "bptt":
            key = jax.random.fold_in(jax.random.wrap_key_data(state.key), index)
            est = ep.ep_estimate(net, state.params, batch.x, batch.y, state.dt, phases, dynamics, key, noise_key)
        else:
            drive = net.drive(state.params, batch.x)
            free = ep.free_phase(net, state.params, drive, state.dt, phases, dynamics, noise_key, tol=phases.tol)
            est = ep.Estimate(None, free, jnp.zeros_like(free.fp_residual), jnp.asarray(0.0),
                              jnp.asarray(False) if phases.tol is None else jnp.max(free.fp_residual) > phases.tol,
                              free.steps)
        return _accumulate(sums, net, state.params, est, batch.y, batch.mask, residual_tol)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None if shared else 0, None)), donate_argnums=1)


def make_spectral_probe(net: Network, phases: EPConfig, dynamics: DynamicsConfig, iters: int):
    """``probe(state, x) -> (members, B)``: the spectral radius of the relaxation step at each
    sample's free fixed point (:func:`hets_ep.dynamics.spectral_radius`), on the run's weights
    and dt, for a fixed probe batch ``x`` shared by the members."""

    def one(state: TrainState, x) -> jax.Array:
        drive = net.drive(state.params, x)
        free = ep.free_phase(net, state.params, drive, state.dt, phases, dynamics, window=1, tol=phases.tol)
        return spectral_radius(net, state.params, drive, free.state, state.dt, dynamics, jax.random.key(0), iters)

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def make_gradient_probe(net: Network, phases: EPConfig, dynamics: DynamicsConfig, x, y):
    """``probe(member_state) -> {gradcheck_min_cosine, gradcheck_mean_cosine}``: the estimator of
    ``phases`` against BPTT on the probe batch ``x, y``, on one member's current weights
    (``stability.gradcheck_every``)."""
    compare = ep.make_comparator(net, phases, dynamics, (phases.estimator,))

    def probe(state: TrainState) -> dict:
        report = compare(state.params, x, y, state.dt, jax.random.wrap_key_data(state.key))
        cosines = [v["cosine"] for v in report["estimators"][phases.estimator].values()]
        return {"gradcheck_min_cosine": min(cosines), "gradcheck_mean_cosine": float(np.mean(cosines))}

    return probe


def spectral_summary(radii: Optional[np.ndarray], k: int) -> Optional[tuple[float, float]]:
    """Member ``k``'s spectral radius over the probe batch (:func:`make_spectral_probe`): ``(mean, max)``."""
    return None if radii is None else (float(radii[k].mean()), float(radii[k].max()))


def evaluate(eval_step, state: TrainState, sums: Sums, batches: Iterable[Batch],
             between: Callable[[], None] = lambda: None) -> Sums:
    """Run ``eval_step`` over ``batches`` (numbered for the evaluation noise), calling
    ``between()`` after each (the trainer's stop check)."""
    for index, batch in enumerate(batches):
        sums = eval_step(state, sums, batch, index)
        between()
    return sums


class Means(NamedTuple):
    """One member's metrics of an epoch (or an evaluation), from its :class:`Sums`
    (:func:`means`): per-sample sums over the sample count, per-batch sums over the batch count,
    totals and maxima as they are."""

    loss: float
    acc: float
    step_residual: float
    fp_residual: float
    unconverged: float
    nudged_fp_residual: float
    nudged_unconverged: float
    oscillation: float
    free_steps: float
    nudged_steps: float
    capped: float
    loss_spikes: float
    relaxation_steps: float
    free_steps_max: float
    nudged_steps_max: float
    max_state: float
    finite: bool


PER_SAMPLE = ("loss", "acc", "step_residual", "fp_residual", "unconverged", "nudged_fp_residual",
              "nudged_unconverged", "oscillation")
PER_BATCH = ("free_steps", "nudged_steps", "capped")


def means(sums: Sums) -> list[Means]:
    """Per member, the metrics of ``sums`` (see :class:`Means`)."""
    host = jax.device_get(sums)
    out = []
    for k in range(len(host.count)):
        samples, batches = max(float(host.count[k]), 1.0), max(float(host.batches[k]), 1.0)
        values = {name: float(getattr(host, name)[k]) for name in Means._fields if name != "finite"}
        values.update({name: values[name] / samples for name in PER_SAMPLE})
        values.update({name: values[name] / batches for name in PER_BATCH})
        out.append(Means(**values, finite=bool(host.finite[k])))
    return out


def stack(trees: list):
    """Stack equally shaped pytrees along a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree, k: int):
    """Member ``k`` of a stacked pytree."""
    return jax.tree.map(lambda a: a[k], tree)


def host_batches(x: np.ndarray, y: np.ndarray, size: int, put) -> Iterable[Batch]:
    """Evaluation batches of a split shared by the members: the last one padded, masked."""
    from hets_ep.data import eval_batches

    for idx, valid in eval_batches(len(x), size):
        mask = (np.arange(len(idx)) < valid).astype(np.float32)
        yield Batch(*map(put, (x[idx], y[idx], mask)))


def member_batches(x: np.ndarray, y: np.ndarray, indices: Sequence[np.ndarray], size: int, put) -> Iterable[Batch]:
    """Evaluation batches of each member's own examples (``indices[k]``: a validation split drawn
    per seed), the member axis first; the last batch padded, masked."""
    from hets_ep.data import eval_batches

    for idx, valid in eval_batches(len(indices[0]), size):
        rows = np.stack([own[idx] for own in indices])
        mask = np.broadcast_to((np.arange(len(idx)) < valid).astype(np.float32), rows.shape)
        yield Batch(*map(put, (x[rows], y[rows], mask)))
