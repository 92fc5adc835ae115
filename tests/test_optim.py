"""Optimizers: per-layer rates, one rate for all, schedules, weight decay, Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hets_ep import optim
from hets_ep.config import OptimizerConfig
from hets_ep.errors import ConfigError
from hets_ep.config import ModelConfig


@pytest.fixture
def params():
    return ModelConfig(hidden=[8, 6]).build(10).init(jax.random.key(0), (4, 4, 1))


def _step(cfg: OptimizerConfig, params, grads, steps_per_epoch=10, epochs=5):
    tx = optim.build(cfg, params, steps_per_epoch, epochs)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_per_layer_learning_rates(params):
    assert optim.layer_names(params) == ["layers_0", "layers_1", "layers_2"]
    grads = jax.tree.map(jnp.ones_like, params)
    updates = _step(OptimizerConfig(lr=[0.1, 0.2, 0.3], momentum=0.0), params, grads)
    for name, lr in zip(optim.layer_names(params), (0.1, 0.2, 0.3)):
        for leaf in jax.tree.leaves(updates["params"][name]):
            np.testing.assert_allclose(leaf, -lr, rtol=1e-6)
    with pytest.raises(ConfigError, match="optimizer.lr: lists 2 rates; the model has 3 layers"):
        optim.build(OptimizerConfig(lr=[0.1, 0.2]), params, 10, 5)


def test_one_rate_for_every_layer(params):
    grads = jax.tree.map(jnp.ones_like, params)
    updates = _step(OptimizerConfig(lr=0.2, momentum=0.0), params, grads)
    assert all(np.allclose(leaf, -0.2) for leaf in jax.tree.leaves(updates))
    assert OptimizerConfig(lr=0.2).lr == OptimizerConfig(lr=[0.2]).lr == [0.2]


def test_weight_decay_adds_to_the_gradient(params):
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = _step(OptimizerConfig(lr=[1.0], momentum=0.0, weight_decay=0.5), params, zero)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(u, -0.5 * p, rtol=1e-6)


def test_schedules():
    cosine = optim.schedule(OptimizerConfig(schedule="cosine"), 10, 5)
    assert float(cosine(0)) == 1.0 and float(cosine(25)) == pytest.approx(0.5) and float(cosine(50)) == 0.0
    step = optim.schedule(OptimizerConfig(schedule="step", step_every=2, step_gamma=0.1), 10, 5)
    assert [float(step(s)) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_adam_builds_and_moves(params):
    grads = jax.tree.map(jnp.ones_like, params)
    updates = _step(OptimizerConfig(name="adam", lr=[1e-3]), params, grads)
    assert all(np.all(np.asarray(u) < 0) for u in jax.tree.leaves(updates))
    assert isinstance(optim.build(OptimizerConfig(name="adam"), params, 1, 1), optax.GradientTransformation)
