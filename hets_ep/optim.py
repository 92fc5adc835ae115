"""Optimizers from the ``optimizer`` config group: optax chains with per-layer rates and a schedule.

Each layer (a top-level entry of the parameter tree, input side first) has its own base rate
``lr_scale · lr_l``; the rate at step ``t`` is that times the schedule's multiplier ``m(t)``
(``m(0) = 1``). Weight decay adds ``λ θ`` to the gradient before the per-layer update.

The transformation :func:`build` returns runs at the rates ``lr_l · m(t)``: every update is
linear in its rate (SGD with momentum and Adam alike), so the training step multiplies it by
``lr_scale`` (:func:`hets_ep.steps.make_train_step`), a value per member that the members of a
stacked sweep may differ in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import optax

from hets_ep.errors import ConfigError

if TYPE_CHECKING:
    from hets_ep.config import ModelConfig, OptimizerConfig



SKIP_PREFIX = "skips_"


def layer_names(params) -> list[str]:
    """Top-level layer names of a parameter tree, input side first (``layers_0``, …, ``dense``);
    skip connections (``skips_layers_2``) are not layers of their own: they take the rate of the
    layer they feed."""
    def order(name: str):
        stem, _, index = name.rpartition("_")
        return (name == "dense", stem, int(index) if index.isdigit() else 0)

    return sorted((n for n in params["params"] if not n.startswith(SKIP_PREFIX)), key=order)


def layer_count(model: ModelConfig) -> int:
    """How many weight layers (the entries of ``optimizer.lr``) a model has: one per hidden or
    conv layer, plus the output (or read-out) layer."""
    return len(model.hidden if model.arch == "mlp" else model.channels) + 1


def unscaled_rates(cfg: OptimizerConfig, params) -> list[float]:
    """Each layer's ``lr_l`` (one rate given: the same for every layer)."""
    layers = layer_names(params)
    if len(cfg.lr) not in (1, len(layers)):
        raise ConfigError(f"optimizer.lr: lists {len(cfg.lr)} rates; the model has {len(layers)} layers "
                          f"({', '.join(layers)}): give 1 or {len(layers)}")
    return list(cfg.lr) * len(layers) if len(cfg.lr) == 1 else list(cfg.lr)


def layer_rates(cfg: OptimizerConfig, params) -> list[float]:
    """The base rate of each layer, ``lr_scale × lr_l``."""
    return [cfg.lr_scale * r for r in unscaled_rates(cfg, params)]


def schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """Multiplier of the base rates over training steps (1 at step 0)."""
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, max(1, epochs * steps_per_epoch))
    if cfg.schedule == "step":
        return optax.exponential_decay(1.0, cfg.step_every * steps_per_epoch, cfg.step_gamma, staircase=True)
    return optax.constant_schedule(1.0)


def build(cfg: OptimizerConfig, params, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    """The optax transformation for ``params``: weight decay, then each layer's optimizer at
    ``lr_l · m(t)`` (``lr_scale`` is the training step's)."""
    layers = layer_names(params)
    multiplier = schedule(cfg, steps_per_epoch, epochs)

    def per_layer(lr: float) -> optax.GradientTransformation:
        rate = lambda step: lr * multiplier(step)  # noqa: E731
        if cfg.name == "adam":
            return optax.adam(rate)
        return optax.sgd(rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov)

    labels = {"params": {name: jax.tree.map(lambda _: name.removeprefix(SKIP_PREFIX), tree)
                         for name, tree in params["params"].items()}}
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.multi_transform({n: per_layer(r) for n, r in zip(layers, unscaled_rates(cfg, params))},
                                             labels))
