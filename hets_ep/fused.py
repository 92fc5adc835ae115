"""The fused relaxation backend (``dynamics.backend=fused``): the steps of a phase as one kernel
launch per tile of the batch, instead of one launch of each small kernel per step.

Every sample relaxes independently of the others, so a phase needs no communication between
tiles: a Pallas kernel (``jax.experimental.pallas``) loads a tile of the states and the input
drive, and every weight, and runs the phase's steps in a loop inside the kernel — the recurrent
weights stay in the chip's on-chip memory for the whole phase. The body of the loop is
:func:`hets_ep.dynamics.step` itself, so the fused and the scan backends compute the same update;
on a CPU the kernel runs in Pallas's interpret mode (slow: for tests, which compare the two).

What the kernel runs: the noise-free steps of real-valued states of an MLP (leaky or energy
dynamics, either integrator, either update order, per-neuron dt, skip connections, free and
nudged phases, fixed steps or the chunks between two checks of ``ep.tol``). What it does not —
noisy steps (the noise is drawn per step from a key) and complex states (holomorphic EP's nudged
phases) — runs on the scan kernel; :func:`resolve` says which runs and why, once per run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from hets_ep.config import Config
    from hets_ep.models import Network
    from hets_ep.models.network import State

BACKENDS = ("scan", "fused", "auto")
# Samples per kernel instance: a tile of the batch (smaller batches are one tile).
TILE = 128

log = logging.getLogger(__name__)


def unsupported(cfg: Config) -> Optional[str]:
    """Why the fused kernel cannot run this run's phases at all (None: it can)."""
    if cfg.model.arch != "mlp":
        return f"model.arch={cfg.model.arch}: the fused kernel is written for MLPs"
    return None


def resolve(cfg: Config, platform: str) -> tuple[Config, str]:
    """The config with ``dynamics.backend`` made concrete, and one line saying which backend runs
    and why: ``auto`` takes the fused kernel on an accelerator where it applies, the scan kernel
    elsewhere (on a CPU the scan is at its bound, and Pallas runs only in interpret mode)."""
    asked = cfg.dynamics.backend
    why_not = unsupported(cfg)
    if asked == "scan":
        chosen, why = "scan", "dynamics.backend=scan"
    elif why_not is not None:
        chosen, why = "scan", f"{why_not}; the scan kernel runs instead"
    elif asked == "auto" and platform == "cpu":
        chosen, why = "scan", "dynamics.backend=auto on a CPU (the fused kernel pays off on accelerators)"
    else:
        chosen = "fused"
        why = f"dynamics.backend={asked} on {platform}" + (" (Pallas interpret mode)" if platform == "cpu" else "")
        partial = [what for what, hit in (("noisy steps", cfg.dynamics.noise > 0),
                                          ("complex nudged phases", cfg.ep.estimator == "holomorphic")) if hit]
        if partial:
            why += f"; {' and '.join(partial)} run on the scan kernel"
    return dataclasses.replace(cfg, dynamics=dataclasses.replace(cfg.dynamics, backend=chosen)), \
        f"relaxation backend: {chosen} ({why})"


def applies(state: State, noisy: bool) -> bool:
    """Whether a stretch of steps runs fused: noise-free, real states."""
    return not noisy and not jnp.iscomplexobj(state[0])


def steps(net: Network, params, drive: jax.Array, state: State, rate: State, n: int, order: str,
          beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None) -> State:
    """``n`` noise-free steps of :func:`hets_ep.dynamics.step` from ``state`` (a tuple of
    ``(B, …)`` arrays), as one Pallas kernel per tile of ``TILE`` samples; the result equals
    ``n`` steps of the scan kernel."""
    from jax.experimental import pallas as pl

    from hets_ep.dynamics import step

    batch = state[0].shape[0]
    tile = batch if batch <= TILE or batch % TILE else TILE
    per_sample = [drive, *state] + ([y] if y is not None else [])
    shared_leaves, shared_tree = jax.tree.flatten((params, rate, None if beta is None else jnp.reshape(beta, (1,))))
    n_state = len(state)

    def tiled(a: jax.Array):
        return pl.BlockSpec((tile, *a.shape[1:]), lambda i, nd=a.ndim: (i, *([0] * (nd - 1))))

    def whole(a: jax.Array):
        return pl.BlockSpec(a.shape, lambda i, nd=a.ndim: (0,) * nd)

    def kernel(*refs):
        inputs = [r[...] for r in refs[:len(per_sample) + len(shared_leaves)]]
        outputs = refs[len(per_sample) + len(shared_leaves):]
        d, s = inputs[0], tuple(inputs[1:1 + n_state])
        labels = inputs[1 + n_state] if y is not None else None
        p, r, b = jax.tree.unflatten(shared_tree, inputs[len(per_sample):])
        b = None if b is None else b[0]
        final = jax.lax.fori_loop(0, n, lambda _, s: step(net, p, d, s, r, order, b, labels)[0], s)
        for ref, value in zip(outputs, final):
            ref[...] = value

    arrays = [*per_sample, *shared_leaves]
    return tuple(pl.pallas_call(
        kernel, grid=(batch // tile,), interpret=jax.default_backend() == "cpu",
        in_specs=[*(tiled(a) for a in per_sample), *(whole(a) for a in shared_leaves)],
        out_specs=[tiled(a) for a in state],
        out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in state],
    )(*arrays))
