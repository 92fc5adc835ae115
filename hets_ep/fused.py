"""The fused relaxation backend (``dynamics.backend=fused``): the steps of a phase as one kernel
launch per tile of the batch, instead of one launch of each small kernel per step.

Every sample relaxes independently of the others, so a phase needs no communication between
tiles: a Pallas kernel (``jax.experimental.pallas``), ``hets_ep_relax``, loads a tile of the
states and the input drive and the weights the loop reads (not the input layer's: the drive is
computed once, outside), and runs the phase's steps in a loop inside the kernel — the recurrent
weights stay in the chip's on-chip memory for the whole phase. The body of the loop is
:func:`hets_ep.dynamics.step` itself, so the fused and the scan backends compute the same update.

**Shapes.** Pallas's GPU lowering (Triton) takes only arrays whose sizes are powers of two, so
the kernel runs a copy of the network whose layers are padded to powers of two (the MNIST
output layer of 10 runs as 16): padded weights are zero, so padded neurons never reach a real
one, and a cross-entropy read-out's padded classes get a bias of ``−1e9`` (no softmax weight).
The batch is padded to whole tiles of at most ``TILE`` samples (a power of two), one program
each. Results are sliced back: the padding changes no real neuron's update.

**Lowering.** On a GPU the kernel is lowered by Triton, named explicitly (``compiler_params``);
on a CPU it runs in Pallas's interpret mode (slow: for tests). :func:`resolve` compiles it once on
a small phase of the run's own network before the run starts; if that fails, one line says why
and the scan kernel runs. Tested with JAX 0.10 (``pyproject.toml`` bounds the range: Pallas's API
is not yet stable), and lowered for CUDA from a CPU in the tests; it has not yet run on a GPU.

**Derivatives.** Reverse mode (BPTT, ``hets-ep gradcheck``, the gradient probe) goes through a
``custom_vjp`` whose backward pass is the scan kernel's own (:func:`reference`), as JAX's
Pallas operations pair a kernel with a reference.

What the kernel runs: the noise-free steps of real-valued states of an MLP (leaky or energy
dynamics, either integrator, either update order, per-neuron dt, skip connections, free and
nudged phases, fixed steps or the chunks between two checks of ``ep.tol``). What it does not —
noisy steps (the noise is drawn per step from a key) and complex states (holomorphic EP's nudged
phases) — runs on the scan kernel; :func:`resolve` says which runs and why, once per run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from hets_ep.config import Config
    from hets_ep.models import Network
    from hets_ep.models.network import State

# Samples per kernel instance at most: a tile of the batch (a smaller batch is one tile).
TILE = 128
# The bias of a padded read-out class: e^(−1e9) is 0 in float32, so the softmax ignores it.
_PADDED_CLASS_BIAS = -1e9
_PROBE_BATCH, _PROBE_STEPS = 8, 2

log = logging.getLogger(__name__)


def unsupported(cfg: Config) -> Optional[str]:
    """Why the fused kernel cannot run this run's phases at all (None: it can)."""
    if cfg.model.arch != "mlp":
        return f"model.arch={cfg.model.arch}: the fused kernel is written for MLPs"
    return None


def resolve(cfg: Config, platform: str, net: Network, input_shape: Sequence[int]) -> tuple[Config, str]:
    """The config with ``dynamics.backend`` made concrete, and one line saying which backend runs
    and why: ``auto`` takes the fused kernel on an accelerator where it applies, the scan kernel
    elsewhere (on a CPU the scan is at its bound, and Pallas runs only in interpret mode). A fused
    kernel that does not compile for this network on this platform (:func:`compile_error`) leaves
    the scan kernel running."""
    asked = cfg.dynamics.backend
    why_not = unsupported(cfg)
    if asked == "scan":
        chosen, why = "scan", "dynamics.backend=scan"
    elif why_not is not None:
        chosen, why = "scan", f"{why_not}; the scan kernel runs instead"
    elif asked == "auto" and platform == "cpu":
        chosen, why = "scan", "dynamics.backend=auto on a CPU (the fused kernel pays off on accelerators)"
    elif (error := compile_error(net, input_shape)) is not None:
        chosen, why = "scan", f"the fused kernel does not compile on {platform}: {error}; the scan kernel runs instead"
    else:
        chosen = "fused"
        why = f"dynamics.backend={asked} on {platform}" + (" (Pallas interpret mode)" if platform == "cpu" else "")
        partial = [what for what, hit in (("noisy steps", cfg.dynamics.noise > 0),
                                          ("complex nudged phases", cfg.ep.estimator == "holomorphic")) if hit]
        if partial:
            why += f"; {' and '.join(partial)} run on the scan kernel"
    return dataclasses.replace(cfg, dynamics=dataclasses.replace(cfg.dynamics, backend=chosen)), \
        f"relaxation backend: {chosen} ({why})"


def compile_error(net: Network, input_shape: Sequence[int]) -> Optional[str]:
    """Compile a free and a nudged stretch of ``_PROBE_STEPS`` fused steps of ``net`` on a batch of
    ``_PROBE_BATCH`` for the default device; the first line of the error if either fails, else None."""
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                          jax.eval_shape(lambda key: net.init(key, input_shape), jax.random.key(0)))
    shapes = net.state_shapes(input_shape)
    state = tuple(jnp.zeros((_PROBE_BATCH, *s)) for s in shapes)
    rate = tuple(jnp.ones(s) for s in shapes)
    drive = jnp.zeros((_PROBE_BATCH, *shapes[0]))
    y = jnp.zeros((_PROBE_BATCH,), jnp.int32)
    try:
        for beta in (None, jnp.asarray(0.1)):
            jax.jit(lambda p, d, s, r, b: steps(net, p, d, s, r, _PROBE_STEPS, "sync", b, None if b is None else y)
                    ).lower(params, drive, state, rate, beta).compile()
    except Exception as err:  # any lowering or compiler failure: the scan kernel runs instead
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    return None


def applies(state: State, noisy: bool) -> bool:
    """Whether a stretch of steps runs fused: noise-free, real states."""
    return not noisy and not jnp.iscomplexobj(state[0])


def reference(net: Network, params, drive: jax.Array, state: State, rate: State, n: int, order: str,
              beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None) -> State:
    """``n`` steps of :func:`hets_ep.dynamics.step`, as the scan kernel runs them: what the fused
    kernel computes, and the derivative it takes."""
    from hets_ep.dynamics import step

    return jax.lax.fori_loop(0, n, lambda _, s: step(net, params, drive, s, rate, order, beta, y)[0], state)


def steps(net: Network, params, drive: jax.Array, state: State, rate: State, n: int, order: str,
          beta: Optional[jax.Array] = None, y: Optional[jax.Array] = None, *,
          interpret: Optional[bool] = None) -> State:
    """``n`` noise-free steps of :func:`hets_ep.dynamics.step` from ``state`` (a tuple of ``(B, n_l)``
    arrays) as the Pallas kernel ``hets_ep_relax``: equal to :func:`reference` up to float
    round-off, and differentiable in reverse mode through it. ``interpret``: Pallas's interpret
    mode (True) or the compiled kernel (False); None decides per platform when the program is
    lowered (interpreted on a CPU, the only mode there)."""

    def launch(interpret_here: bool):
        return lambda *args: _launch(net, *args, n=n, order=order, interpret=interpret_here)

    @jax.custom_vjp
    def fused(params, drive, state, rate, beta, y):
        if interpret is not None:
            return launch(interpret)(params, drive, state, rate, beta, y)
        # Decided when the program is lowered, per platform: interpreted on a CPU, compiled elsewhere.
        return jax.lax.platform_dependent(params, drive, state, rate, beta, y, cpu=launch(True), default=launch(False))

    def forward(params, drive, state, rate, beta, y):
        return fused(params, drive, state, rate, beta, y), (params, drive, state, rate, beta, y)

    def backward(saved, cotangent):
        params, drive, state, rate, beta, y = saved
        _, pull = jax.vjp(lambda p, d, s, r, b: reference(net, p, d, s, r, n, order, b, y),
                          params, drive, state, rate, beta)
        return (*pull(cotangent), None)

    fused.defvjp(forward, backward)
    return fused(params, drive, state, rate, beta, y)


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class _Padded(NamedTuple):
    """The network the kernel runs (layers padded to powers of two) and its weights: those the
    loop reads, zero-padded."""

    net: Network
    params: dict


def _padded(net: Network, params) -> _Padded:
    module = net.module
    wide = module.clone(hidden=tuple(map(_power_of_two, module.hidden)), n_out=_power_of_two(module.n_out),
                        parent=None)
    padded_net = dataclasses.replace(net, module=wide)
    shapes = jax.eval_shape(wide.init, jax.random.key(0), jnp.zeros((1, 1)))["params"]
    readout = f"layers_{len(module.hidden)}" if module.readout else None
    weights = {}
    for name, layer in params["params"].items():
        if name == "layers_0":  # the input layer: only the drive reads it, computed outside
            continue
        weights[name] = {}
        for leaf, value in layer.items():
            fill = _PADDED_CLASS_BIAS if (name, leaf) == (readout, "bias") else 0.0
            weights[name][leaf] = _pad(value, shapes[name][leaf].shape, fill)
    return _Padded(padded_net, {"params": weights})


def _pad(a: jax.Array, shape: Sequence[int], fill: float = 0.0) -> jax.Array:
    return jnp.pad(a, [(0, t - s) for s, t in zip(a.shape, shape)], constant_values=fill)


class _Refs(NamedTuple):
    """The kernel's references by role: per-sample tiles, then the shared weights and rates,
    then the outputs."""

    drive: object
    states: tuple
    labels: Optional[object]
    shared: tuple
    out: tuple


def _launch(net: Network, params, drive: jax.Array, state: State, rate: State, beta: Optional[jax.Array],
            y: Optional[jax.Array], *, n: int, order: str, interpret: bool) -> State:
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    from hets_ep.dynamics import step

    batch = state[0].shape[0]
    tile = min(TILE, _power_of_two(batch))
    rows = -(-batch // tile) * tile
    kernel_net, weights = _padded(net, params)
    widths = [_power_of_two(a.shape[-1]) for a in state]
    tiles = ([_pad(drive, (rows, widths[0]))] + [_pad(a, (rows, w)) for a, w in zip(state, widths)]
             + ([_pad(y, (rows,))] if y is not None else []))
    shared_leaves, shared_tree = jax.tree.flatten(
        (weights, tuple(_pad(r, (w,), 1.0) for r, w in zip(rate, widths)),
         None if beta is None else jnp.reshape(beta, (1,))))
    n_state = len(state)

    def split(refs) -> _Refs:
        labels = refs[1 + n_state] if y is not None else None
        first_shared = 1 + n_state + (y is not None)
        return _Refs(refs[0], refs[1:1 + n_state], labels, refs[first_shared:first_shared + len(shared_leaves)],
                     refs[first_shared + len(shared_leaves):])

    def hets_ep_relax(*refs):
        r = split(refs)
        p, rates, b = jax.tree.unflatten(shared_tree, [ref[...] for ref in r.shared])
        labels = None if r.labels is None else r.labels[...]
        b = None if b is None else b[0]
        s0 = tuple(ref[...] for ref in r.states)
        final = jax.lax.fori_loop(0, n, lambda _, s: step(kernel_net, p, r.drive[...], s, rates, order, b, labels)[0],
                                  s0)
        for ref, value in zip(r.out, final):
            ref[...] = value

    def per_tile(a: jax.Array):
        return pl.BlockSpec((tile, *a.shape[1:]), lambda i, nd=a.ndim: (i, *([0] * (nd - 1))))

    def whole(a: jax.Array):
        return pl.BlockSpec(a.shape, lambda i, nd=a.ndim: (0,) * nd)

    out = pl.pallas_call(
        hets_ep_relax, name="hets_ep_relax", grid=(rows // tile,), interpret=interpret,
        in_specs=[*(per_tile(a) for a in tiles), *(whole(a) for a in shared_leaves)],
        out_specs=[per_tile(a) for a in tiles[1:1 + n_state]],
        out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in tiles[1:1 + n_state]],
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=4, num_stages=1),
    )(*tiles, *shared_leaves)
    return tuple(o[:batch, :a.shape[-1]] for o, a in zip(out, state))
