"""Optimizers (per-layer rates, schedules, weight decay), augmentation, and the built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from hets_ep.config import OptimizerConfig, layer_names
from hets_ep.data import augment
from hets_ep.errors import ConfigError
from hets_ep.models import build_network


@pytest.fixture
def params():
    return build_network("mlp", 10, hidden=(8, 6)).init(jax.random.key(0), (4, 4, 1))


def _step(cfg: OptimizerConfig, params, grads, steps_per_epoch=10, epochs=5):
    tx = cfg.build(params, steps_per_epoch, epochs)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_per_layer_learning_rates(params):
    assert layer_names(params) == ["layers_0", "layers_1", "layers_2"]
    grads = jax.tree.map(jnp.ones_like, params)
    updates = _step(OptimizerConfig(lr=[0.1, 0.2, 0.3], momentum=0.0), params, grads)
    for name, lr in zip(layer_names(params), (0.1, 0.2, 0.3)):
        for leaf in jax.tree.leaves(updates["params"][name]):
            np.testing.assert_allclose(leaf, -lr, rtol=1e-6)
    with pytest.raises(ConfigError, match="lists 2 rates; the model has 3 layers"):
        OptimizerConfig(lr=[0.1, 0.2]).build(params, 10, 5)


def test_weight_decay_adds_to_the_gradient(params):
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = _step(OptimizerConfig(lr=[1.0], momentum=0.0, weight_decay=0.5), params, zero)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(u, -0.5 * p, rtol=1e-6)


def test_schedules():
    cosine = OptimizerConfig(schedule="cosine").schedule_fn(10, 5)
    assert float(cosine(0)) == 1.0 and float(cosine(25)) == pytest.approx(0.5) and float(cosine(50)) == 0.0
    step = OptimizerConfig(schedule="step", step_every=2, step_gamma=0.1).schedule_fn(10, 5)
    assert [float(step(s)) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_adam_builds_and_moves(params):
    grads = jax.tree.map(jnp.ones_like, params)
    updates = _step(OptimizerConfig(name="adam", lr=[1e-3]), params, grads)
    assert all(np.all(np.asarray(u) < 0) for u in jax.tree.leaves(updates))
    assert isinstance(OptimizerConfig(name="adam").build(params, 1, 1), optax.GradientTransformation)


def test_augment_crops_and_flips_deterministically():
    x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    a = augment(x, np.random.default_rng(0), pad=2)
    b = augment(x, np.random.default_rng(0), pad=2)
    assert a.shape == x.shape and np.array_equal(a, b)
    assert not np.array_equal(a, x)
    # Every output row is a (possibly flipped, shifted) crop of the zero-padded input.
    assert set(np.unique(a)) <= set(np.unique(x)) | {0.0}


def test_wheel_ships_configs_and_mnist(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hets_ep-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("hets_ep/conf/train.yaml", "hets_ep/conf/dt/lognormal.yaml", "hets_ep/conf/ep/symmetric.yaml",
                     "hets_ep/conf/experiment/ernoult2019.yaml", "hets_ep/conf/hydra/launcher/slurm.yaml",
                     "hets_ep/data/mnist/train-images-idx3-ubyte.gz"):
        assert required in names, required
