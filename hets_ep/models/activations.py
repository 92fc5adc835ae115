"""Neuron activations σ and the state interval each one keeps.

``σ`` maps the local field ``∂Φ/∂s`` to a rate. Each activation also names the interval
``[lo, hi]`` of its range, used to clip the state under energy-gradient dynamics, and whether
it is holomorphic (complex-differentiable: what holomorphic EP's complex nudged phases need;
the hard sigmoid's clip is not).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Activation(NamedTuple):
    fn: Callable[[jax.Array], jax.Array]
    lo: float
    hi: float
    holomorphic: bool


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``clip(x, 0, 1)`` (Laborieux et al. 2021, ``my_hard_sig``)."""
    return jnp.clip(x, 0.0, 1.0)


def steep_sigmoid(x: jax.Array) -> jax.Array:
    """``σ(4x − 2) = 1 / (1 + exp(−4 (x − 0.5)))``: slope 1 at x = 0.5 (Ernoult et al. 2019; the
    activation of Laborieux & Zenke's holomorphic EP)."""
    return jax.nn.sigmoid(4.0 * (x - 0.5))


ACTIVATIONS: dict[str, Activation] = {
    "hard_sigmoid": Activation(hard_sigmoid, 0.0, 1.0, holomorphic=False),
    "steep_sigmoid": Activation(steep_sigmoid, 0.0, 1.0, holomorphic=True),
    "tanh": Activation(jnp.tanh, -1.0, 1.0, holomorphic=True),
}
