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

from hets_ep import choices
from hets_ep.choices import HOLOMORPHIC_ACTIVATIONS


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


_FUNCTIONS = {"hard_sigmoid": (hard_sigmoid, 0.0, 1.0), "steep_sigmoid": (steep_sigmoid, 0.0, 1.0),
              "tanh": (jnp.tanh, -1.0, 1.0)}
ACTIVATIONS: dict[str, Activation] = {name: Activation(*_FUNCTIONS[name], holomorphic=name in HOLOMORPHIC_ACTIVATIONS)
                                      for name in choices.ACTIVATIONS}
