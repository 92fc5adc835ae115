"""Flax modules holding the weights θ and defining the primitive function Φ.

A network is a chain of layers acting on a state ``s = (s_1, …, s_L)`` driven by an input x
(``s_0 = x``). Every module exposes three methods, all batched on the leading axis:

* ``drive(x)``: the input drive ``W_1 x + b_1`` (for a ConvNet ``P(conv_1(x))``), the only part
  of Φ that touches x. It does not change during relaxation, so the kernel computes it once.
* ``phi(drive, s)``: ``Φ = Σ_b s_1·drive + Σ_{l≥2} s_l·(W_l s_{l-1} + b_l)``, summed over the
  batch (samples do not interact, so ``∂Φ/∂s`` of the sum is the per-sample gradient).
* ``logits(s)``: class scores; the output state ``s_L`` itself, or with ``readout=True`` a
  linear read-out ``W_out s_L`` that is not part of the state (Laborieux's ``cel --softmax``).

``__call__(x)`` runs the layers feed-forward; it initialises the weights and gives the state's
shapes. Weights start uniform in ``±1/√fan_in`` (PyTorch's default, as in the reference
implementations), biases at zero.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_uniform_fan_in = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dense(n: int) -> nn.Dense:
    return nn.Dense(n, kernel_init=_uniform_fan_in)


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def skip_pairs(n_states: int, skip: int) -> list[tuple[int, int]]:
    """``(from, to)`` state-layer indices (0-based) joined by a skip connection: every layer
    ``to ≥ skip`` receives the state ``skip`` layers below it (none for ``skip = 0``)."""
    return [(to - skip, to) for to in range(skip, n_states)] if skip else []


class MLP(nn.Module):
    """Fully connected layers ``hidden → … → n_out`` on flattened inputs; with ``skip = K`` each
    state layer ``l ≥ K`` is also joined to the state ``K`` layers below by its own weights
    ``W_skip`` (no bias), adding ``s_l · (W_skip s_{l−K})`` to Φ (a Hopfield-ResNet-like energy,
    Vinayak & Srinivasan 2025): the dynamics, every estimator and BPTT see it through Φ."""

    hidden: Sequence[int]
    n_out: int
    readout: bool
    skip: int = 0

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return tuple(self.hidden) if self.readout else (*self.hidden, self.n_out)

    def setup(self):
        self.layers = [_dense(n) for n in (*self.hidden, self.n_out)]
        # named after the layer they feed (`skips_layers_2`): the optimizer gives them its rate
        self.skips = {f"layers_{to}": nn.Dense(self.state_sizes[to], use_bias=False, kernel_init=_uniform_fan_in)
                      for _, to in skip_pairs(len(self.state_sizes), self.skip)}

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        h, states = _flat(x), []
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if f"layers_{i}" in self.skips:
                h = h + self.skips[f"layers_{i}"](states[i - self.skip])
            states.append(h)
        return tuple(states[:-1]) if self.readout else tuple(states)

    def drive(self, x: jax.Array) -> jax.Array:
        return self.layers[0](_flat(x))

    def phi(self, drive: jax.Array, s: Sequence[jax.Array]) -> jax.Array:
        phi = jnp.sum(s[0] * drive)
        for layer, below, above in zip(self.layers[1:], s[:-1], s[1:]):
            phi += jnp.sum(above * layer(below))
        for source, to in skip_pairs(len(s), self.skip):
            phi += jnp.sum(s[to] * self.skips[f"layers_{to}"](s[source]))
        return phi

    def logits(self, s: Sequence[jax.Array]) -> jax.Array:
        return self.layers[-1](s[-1]) if self.readout else s[-1]

    def flops(self, input_shape: Sequence[int]) -> list[float]:
        """Matrix-product FLOPs of applying each layer once (forward) to one sample (the skip
        connections last)."""
        sizes = [math.prod(input_shape), *self.hidden, self.n_out]
        states = self.state_sizes
        return [2.0 * a * b for a, b in zip(sizes[:-1], sizes[1:])] + \
            [2.0 * states[a] * states[b] for a, b in skip_pairs(len(states), self.skip)]


class ConvNet(nn.Module):
    """Laborieux-style ConvNet: ``P(conv(·))`` layers (P = 2×2 pooling), then a dense output.

    Φ sums ``s_l · P(conv_l(s_{l-1}))`` over the conv layers and ``s_out · W s_last`` for the
    dense output layer, so ``∂Φ/∂s`` carries both the feed-forward and the transposed
    (unpooling, transposed-convolution) feedback terms, obtained by autodiff.
    """

    channels: Sequence[int]
    n_out: int
    kernel: int
    padding: int
    pool: str
    readout: bool

    def setup(self):
        self.convs = [
            nn.Conv(c, (self.kernel, self.kernel), padding=self.padding, kernel_init=_uniform_fan_in)
            for c in self.channels
        ]
        self.dense = _dense(self.n_out)

    def _pool(self, h: jax.Array) -> jax.Array:
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        return pool(h, (2, 2), strides=(2, 2))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        h, states = x, []
        for conv in self.convs:
            h = self._pool(conv(h))
            states.append(h)
        if not self.readout:
            states.append(self.dense(_flat(h)))
        else:
            self.dense(_flat(h))  # creates the read-out's weights
        return tuple(states)

    def drive(self, x: jax.Array) -> jax.Array:
        return self._pool(self.convs[0](x))

    def phi(self, drive: jax.Array, s: Sequence[jax.Array]) -> jax.Array:
        n_conv = len(self.convs)
        phi = jnp.sum(s[0] * drive)
        for conv, below, above in zip(self.convs[1:], s[: n_conv - 1], s[1:n_conv]):
            phi += jnp.sum(above * self._pool(conv(below)))
        if not self.readout:
            phi += jnp.sum(s[-1] * self.dense(_flat(s[-2])))
        return phi

    def logits(self, s: Sequence[jax.Array]) -> jax.Array:
        return self.dense(_flat(s[-1])) if self.readout else s[-1]

    def flops(self, input_shape: Sequence[int]) -> list[float]:
        """Matrix-product FLOPs of applying each layer once (forward) to one sample: each
        convolution at its full (pre-pooling) resolution, then the dense output layer."""
        h, w, c_in = input_shape
        out = []
        for c_out in self.channels:
            h, w = h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1
            out.append(2.0 * h * w * c_out * self.kernel**2 * c_in)
            h, w, c_in = h // 2, w // 2, c_out
        out.append(2.0 * h * w * c_in * self.n_out)
        return out
