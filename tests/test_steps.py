"""The per-batch steps over one state pytree: compile once, donate, and reproduce recorded runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, train_here
from hets_ep import record, steps
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig, ModelConfig, StabilityConfig
from hets_ep.timeconstants import sample_dt


def _state(mnist, members=1, hidden=(32,), spike_window=50):
    net = ModelConfig(hidden=list(hidden)).build(10)
    dts = [sample_dt(s, DtConfig("lognormal", 0.5, cv=0.5), net.state_shapes(mnist.input_shape))[0]
           for s in range(members)]
    tx = optax.sgd(0.1)
    return net, tx, steps.init_state(net, tx, mnist.input_shape, range(members), dts, spike_window)


def test_train_step_compiles_once_donates_the_state_and_counts(mnist):
    net, tx, state = _state(mnist)
    train_step = steps.make_train_step(net, EPConfig(T1=5, T2=2), DynamicsConfig(), tx, StabilityConfig())
    for i in range(3):
        sl = slice(16 * i, 16 * (i + 1))
        old = state
        state = train_step(state, steps.Batch(mnist.x_train[None, sl], mnist.y_train[None, sl]),
                           steps.Hyper(jnp.array([0.5]), jnp.array([1.0])))
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params))  # updated in place
    assert train_step._cache_size() == 1
    assert int(state.step[0]) == 3 and float(state.sums.count[0]) == 48 and float(state.sums.batches[0]) == 3
    assert 0 <= float(state.sums.acc[0]) <= 48 and bool(state.sums.finite[0])
    # symmetric EP: a free phase of 5 steps and two nudged phases of 2, per batch
    assert float(state.sums.relaxation_steps[0]) == 3 * (5 + 2 * 2) and float(state.sums.free_steps_max[0]) == 5


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["scan", "fused"])
def test_members_with_their_own_beta_and_rate_scale_step_as_each_would_alone(mnist, backend):
    """What a stacked sweep relies on: in one vmapped program each member nudges with its own |β|
    and steps at its own learning-rate scale, as its own one-member program would (on the fused
    kernel too, in Pallas's interpret mode here). The three members start equal, so what tells
    them apart is their β or scale alone."""
    net = ModelConfig(hidden=[16]).build(10)
    dt = sample_dt(0, DtConfig("lognormal", 0.5, cv=0.3), net.state_shapes(mnist.input_shape))[0]
    tx = optax.sgd(0.1, momentum=0.9)
    state = steps.init_state(net, tx, mnist.input_shape, [0, 0, 0], [dt] * 3, 50)
    train_step = steps.make_train_step(net, EPConfig(T1=5, T2=3), DynamicsConfig(backend=backend), tx,
                                       StabilityConfig())
    hyper = steps.Hyper(jnp.array([0.5, 0.2, 0.5]), jnp.array([1.0, 1.0, 2.5]))
    alone = [jax.tree.map(lambda a: a[k:k + 1], state) for k in range(3)]
    for i in range(2):
        x, y = mnist.x_train[16 * i:16 * (i + 1)], mnist.y_train[16 * i:16 * (i + 1)]
        state = train_step(state, steps.Batch(jnp.stack([x] * 3), jnp.stack([y] * 3)), hyper)
        alone = [train_step(own, steps.Batch(x[None], y[None]), jax.tree.map(lambda a: a[k:k + 1], hyper))
                 for k, own in enumerate(alone)]
    weights = [np.asarray(steps.member(state.params, k)["params"]["layers_0"]["kernel"]) for k in range(3)]
    for k in range(3):
        for a, b in zip(jax.tree.leaves(steps.member(state.params, k)), jax.tree.leaves(alone[k].params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[0]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(weights[0], weights[1]) and not np.allclose(weights[0], weights[2])


def _spikes(losses, factor: float = 4.0, floor: float = 2.0, window: int = 50, min_loss: float = 0.0) -> list[int]:
    recent, found = jnp.full((window,), jnp.nan), []
    for step_number, loss in enumerate(losses):
        spike, recent = steps._spike(recent, jnp.float32(loss), jnp.int32(step_number), factor, floor, min_loss)
        if spike:
            found.append(step_number)
    return found


def test_a_smoothly_improving_run_has_no_spikes_and_an_injected_jump_is_found():
    """The loss falls a hundredfold with batch-to-batch noise that grows relative to it (as a
    training run's does): no spike, however small the loss. A jump to 20× the running level is
    one. The old rule (3 × the median) counted more spikes the lower the loss went."""
    rng = np.random.default_rng(0)
    t = np.arange(600)
    smooth = 0.5 * np.exp(-t / 130) * np.exp(rng.normal(0, 0.1 + 1.2 * t / 600))
    assert _spikes(smooth) == []
    jumped = smooth.copy()
    jumped[150] = 20 * np.median(smooth[100:150])
    jumped[400] = 3.0 * np.median(smooth[350:400]) * np.exp(8 * np.median(np.abs(np.log(smooth[350:400]) -
                                                                                 np.median(np.log(smooth[350:400])))))
    assert _spikes(jumped) == [150, 400]
    assert sum(loss > 3 * np.median(smooth[i - 50:i]) for i, loss in enumerate(smooth) if i >= 50) > 5  # old rule
    assert _spikes([1.0] * 60 + [1.5]) == [] and _spikes([1.0] * 60 + [2.5]) == [60]  # the floor: a doubling


def test_a_batch_whose_loss_is_tiny_is_no_spike_whatever_its_ratio():
    """Near-zero losses (as in Study 5's late epochs, below 0.005) fluctuate by large ratios: a
    jump from 0.001 to 0.008 is eight times the median but no spike under the absolute floor
    (stability.spike_min_loss, 0.01 by default); a jump to 0.05 still is."""
    from hets_ep.config import StabilityConfig

    floor = StabilityConfig().spike_min_loss
    flat = [0.001] * 60
    assert _spikes([*flat, 0.008]) == [60] and _spikes([*flat, 0.008], min_loss=floor) == []
    assert _spikes([*flat, 0.05], min_loss=floor) == [60]


def test_eval_step_masks_padding_and_shares_the_batch(mnist):
    net, tx, state = _state(mnist, members=2)
    eval_step = steps.make_eval_step(net, EPConfig(T1=5, T2=2), DynamicsConfig(), 1e-3)
    x, y = mnist.x_test[:8], mnist.y_test[:8]
    full = eval_step(state, steps.zero_sums(2), steps.Batch(x, y, jnp.ones(8)), 0)
    half = eval_step(state, steps.zero_sums(2), steps.Batch(x, y, (jnp.arange(8) < 4).astype(jnp.float32)), 0)
    first = eval_step(state, steps.zero_sums(2), steps.Batch(x[:4], y[:4], jnp.ones(4)), 0)
    assert np.asarray(full.count).tolist() == [8, 8] and np.asarray(half.count).tolist() == [4, 4]
    np.testing.assert_allclose(np.asarray(half.loss), np.asarray(first.loss), rtol=1e-6)
    assert float(full.loss[0]) != float(full.loss[1])  # members have their own weights and dt
    means = steps.means(full)
    assert len(means) == 2 and means[0].loss == pytest.approx(float(full.loss[0]) / 8)


@pytest.mark.parametrize("case", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_runs_reproduce_the_metrics_recorded_at_the_redesign(tmp_path, case):
    """Two short runs (scalar dt: the samplers changed since) recorded by the shell redesign,
    which reproduced hets-ep 0.1.0 bit for bit (tests/data/reference_metrics.json). Later changes
    keep the numbers to float rounding (training no longer tracks the oscillation window, so XLA
    fuses its steps differently: about 1e-7 relative); the oscillation count, a count of sign
    flips, moves by a few flips in 10^5."""
    reference = json.loads((ROOT / "tests" / "data" / "reference_metrics.json").read_text())["runs"][case]
    train_here(tmp_path, *reference["overrides"])
    rows = [{k: getattr(r, k) for k in reference["rows"][0]} for r in record.read_rows(tmp_path)]
    assert len(rows) == len(reference["rows"])
    for got, want in zip(rows, reference["rows"]):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3 if key == "test_oscillation" else 1e-5, abs=1e-7), key
