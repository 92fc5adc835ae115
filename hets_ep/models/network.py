"""A network = Flax module (Φ) + activation + loss + dynamics, as one static, hashable value.

The dynamics are written through one scalar function of the state, the *total energy*
``F_β(s) = F(s) + β Σ_b ℓ(s_b, y_b)`` summed over the batch:

* leaky (Laborieux et al. 2021): ``F = −Φ(x, s)``; the step is ``s ← s + dt ⊙ (σ(−∂F_β/∂s) − s)``.
  Its fixed points ``s = σ(∂Φ_β/∂s)`` are stationary points of ``F_β + Σ ∫σ⁻¹``, a term free of
  θ, so the EP gradient formula holds at them.
* energy (Scellier & Bengio 2017; Ernoult et al. 2019): the Hopfield energy
  ``F = E = ½‖s‖² − Φ(ρ(x), ρ(s))``; the step is ``s ← clip(s − dt ⊙ ∂F_β/∂s, lo, hi)``.

Either way, EP estimates ``∂L/∂θ ≈ (∂F_{β₁}/∂θ(s^{β₁}) − ∂F_{β₂}/∂θ(s^{β₂})) / (β₁ − β₂)``.
The loss ℓ is ``½‖s_L − onehot(y)‖²`` (``mse``, on the output state) or the cross-entropy of
a softmax read-out of the last hidden layer (``ce``). Both are holomorphic in the state, so
with a holomorphic activation the energy can be evaluated at complex states and a complex β
(holomorphic EP): the cross-entropy is then ``log Σ_c exp(z_c) − z_y`` with the shift of the
log-sum-exp taken from the real parts (the library version takes a max, which complex numbers
do not have).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hets_ep.models.activations import ACTIVATIONS, Activation
from hets_ep.models.modules import MLP, ConvNet

State = tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class Network:
    module: nn.Module
    activation: str
    loss: str
    dynamics: str

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.activation]

    def init(self, key: jax.Array, input_shape: Sequence[int]):
        """Weights θ for inputs of shape ``input_shape`` (no batch axis)."""
        return self.module.init(key, jnp.zeros((1, *input_shape), jnp.float32))

    def state_shapes(self, input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """Shapes of the state layers ``s_1 … s_L`` for one sample (traced only: JAX's backends
        stay unstarted, so the command line can check a run before it configures them)."""
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        out, _ = jax.eval_shape(lambda x: self.module.init_with_output(jax.random.key(0), x), x)
        return tuple(o.shape[1:] for o in out)

    def rate(self, s):
        """The value neurons send to each other: ``s`` (leaky) or ``ρ(s)`` (energy)."""
        return s if self.dynamics == "leaky" else jax.tree.map(self.act.fn, s)

    def drive(self, params, x: jax.Array) -> jax.Array:
        """Input drive, constant during relaxation: computed once per phase set."""
        return self.module.apply(params, self.rate(x), method="drive")

    def logits(self, params, s: State) -> jax.Array:
        """Class scores ``(B, classes)``: the output state (mse) or the read-out (ce)."""
        if self.loss == "mse":
            return s[-1]
        return self.module.apply(params, self.rate(s), method="logits")

    def loss_per_sample(self, params, s: State, y: jax.Array) -> jax.Array:
        """ℓ for each sample, shape ``(B,)``."""
        logits = self.logits(params, s)
        if self.loss == "mse":
            return 0.5 * jnp.sum((logits - jax.nn.one_hot(y, logits.shape[-1])) ** 2, axis=-1)
        if jnp.iscomplexobj(logits):
            return _complex_cross_entropy(logits, y)
        # optax's softmax_cross_entropy_with_integer_labels, with the label's logit picked by a
        # one-hot product instead of a gather (bit for bit the same value and gradient): the
        # gather's derivative, a scatter, has no Pallas Triton lowering (the fused kernel on a GPU).
        return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
                                                            * logits, axis=-1)

    def energy(self, params, drive: jax.Array, s: State, beta: Optional[jax.Array] = None,
               y: Optional[jax.Array] = None) -> jax.Array:
        """Total energy ``F_β`` summed over the batch; ``beta=None`` is the free phase."""
        phi = self.module.apply(params, drive, self.rate(s), method="phi")
        # −1 · Φ, not −Φ: the derivative of a negation negates the literal seed 1.0, which
        # Pallas's Triton lowering (the fused kernel on a GPU) cannot do; a product it can.
        f = -1.0 * phi
        if self.dynamics == "energy":
            f += 0.5 * sum(jnp.sum(layer**2) for layer in s)
        if beta is not None:
            f += beta * jnp.sum(self.loss_per_sample(params, s, y))
        return f


def _complex_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``log Σ_c exp(z_c) − z_y`` for complex logits, holomorphic in ``z``."""
    shift = jax.lax.stop_gradient(jnp.max(jnp.real(logits), axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=-1)) + shift[..., 0]
    return lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]


def build_network(arch: str, n_out: int, *, hidden: Sequence[int], channels: Sequence[int], kernel: int,
                  padding: int, pool: str, activation: str, loss: str, dynamics: str, skip: int = 0) -> Network:
    """Build a :class:`Network` from plain values (the ``model`` config group, which holds the
    defaults: :meth:`hets_ep.config.ModelConfig.build`)."""
    readout = loss == "ce"
    if arch == "mlp":
        module = MLP(hidden=tuple(hidden), n_out=n_out, readout=readout, skip=skip)
    elif arch == "convnet":
        module = ConvNet(channels=tuple(channels), n_out=n_out, kernel=kernel, padding=padding, pool=pool,
                         readout=readout)
    else:
        raise ValueError(f"unknown architecture {arch!r}: expected 'mlp' or 'convnet'")
    return Network(module, activation=activation, loss=loss, dynamics=dynamics)
