"""Gradient estimators: EP against BPTT on MNIST, the one-sided bias, random signs, memory."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hets_ep import ep
from hets_ep.models import build_network
from hets_ep.config import DtConfig, EPConfig
from hets_ep.timeconstants import sample_dt


def _setup(input_shape, arch="mlp", dt_spec=None, seed=0, **model):
    net = build_network(arch, 10, **model)
    params = net.init(jax.random.key(seed), input_shape)
    dt, _ = sample_dt(seed, dt_spec or DtConfig("scalar", 1.0), net.state_shapes(input_shape))
    return net, params, tuple(map(jnp.asarray, dt))


def _compare(net, params, x, y, dt, phases, estimators=ep.EP_ESTIMATORS):
    return ep.make_comparator(net, phases, estimators)(params, jnp.asarray(x), jnp.asarray(y), dt,
                                                       jax.random.key(1))


@pytest.mark.parametrize("hidden", [(256,), (128, 64)])
def test_symmetric_ep_matches_bptt_on_mnist(batch, hidden):
    x, y = batch
    net, params, dt = _setup(x.shape[1:], hidden=hidden, activation="steep_sigmoid", dt_spec=DtConfig("scalar", 0.5))
    report = _compare(net, params, x, y, dt, EPConfig("symmetric", beta=0.05, T1=250, T2=120))
    assert report["free_residual"] < 1e-5
    symmetric = report["estimators"]["symmetric"]
    for tensor, v in symmetric.items():
        assert v["cosine"] >= 0.99, (tensor, v)
        assert 0.9 < v["norm_ratio"] < 1.1, (tensor, v)
    one_sided = report["estimators"]["one_sided"]
    # One-sided EP carries an O(β) bias that the symmetric estimate cancels.
    mean_error = lambda r: np.mean([abs(1 - v["norm_ratio"]) + (1 - v["cosine"]) for v in r.values()])  # noqa: E731
    assert mean_error(one_sided) > mean_error(symmetric)


def test_energy_dynamics_ep_matches_bptt(batch):
    x, y = batch
    net, params, dt = _setup(x.shape[1:], hidden=(128,), activation="steep_sigmoid", dynamics="energy",
                             dt_spec=DtConfig("scalar", 0.2))
    report = _compare(net, params, x, y, dt, EPConfig("symmetric", beta=0.01, T1=400, T2=200), ("symmetric",))
    for tensor, v in report["estimators"]["symmetric"].items():
        assert v["cosine"] >= 0.99, (tensor, v)


@pytest.mark.slow
def test_convnet_ep_matches_bptt(batch):
    """Average pooling keeps Φ smooth; max pooling is not differentiable at ties (flat MNIST
    background gives many), where EP and BPTT legitimately disagree."""
    x, y = batch
    net, params, dt = _setup(x.shape[1:], arch="convnet", channels=(4, 8), pool="avg", activation="steep_sigmoid",
                             loss="ce", dt_spec=DtConfig("scalar", 0.5))
    report = _compare(net, params, x[:16], y[:16], dt, EPConfig("symmetric", beta=0.05, T1=150, T2=80),
                      ("symmetric",))
    for tensor, v in report["estimators"]["symmetric"].items():
        assert v["cosine"] >= 0.99, (tensor, v)


def test_random_sign_uses_both_signs(batch):
    x, y = batch
    net, params, dt = _setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    phases = EPConfig("random_sign", beta=0.3, T1=60, T2=30)
    plus = ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt,
                          dataclasses.replace(phases, estimator="one_sided"))
    grads = [ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt, phases, jax.random.key(k)).grads
             for k in range(8)]
    same = [all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(plus.grads))) for g in grads]
    assert any(same) and not all(same)


@pytest.mark.slow
def test_ep_memory_does_not_grow_with_phase_length_but_bptt_does():
    """Compiled-program memory (XLA's own accounting, not a timing): EP keeps no trajectory."""
    from hets_ep.bench import WORKLOADS, _ours

    spec = WORKLOADS["mlp 784-512-10 b128"]
    memory = {(est, t1): _ours(spec, phases=EPConfig(est, beta=0.1, T1=t1, T2=10))[2]
              for est in ("one_sided", "bptt") for t1 in (30, 300)}
    assert memory[("one_sided", 30)] == memory[("one_sided", 300)]
    assert memory[("bptt", 300)] > 5 * memory[("bptt", 30)] > 5 * memory[("one_sided", 30)]
