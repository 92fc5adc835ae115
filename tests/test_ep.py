"""Gradient estimators: EP against BPTT on MNIST, the one-sided bias, negative and random-sign
nudging, holomorphic EP, asynchronous relaxation, the GDU check, memory."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import setup
from hets_ep.choices import EP_ESTIMATORS
from hets_ep import ep, gdu
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig

SYNC = DynamicsConfig()


def _compare(net, params, x, y, dt, phases, estimators=EP_ESTIMATORS, dynamics=SYNC):
    return ep.make_comparator(net, phases, dynamics, estimators)(params, jnp.asarray(x), jnp.asarray(y), dt,
                                                                 jax.random.key(1))


def _min_cosine(report, name):
    return min(v["cosine"] for v in report["estimators"][name].values())


@pytest.mark.parametrize("hidden", [(256,), pytest.param((128, 64), marks=pytest.mark.slow)])
def test_symmetric_ep_matches_bptt_on_mnist(batch, hidden):
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.5), hidden=hidden, activation="steep_sigmoid")
    report = _compare(net, params, x, y, dt, EPConfig("symmetric", beta=0.05, T1=250, T2=120),
                      ("one_sided", "negative", "symmetric"))
    assert report["free_step_residual"] < 1e-5 and report["free_fp_residual"] < 1e-5
    symmetric = report["estimators"]["symmetric"]
    for tensor, v in symmetric.items():
        assert v["cosine"] >= 0.99, (tensor, v)
        assert 0.9 < v["norm_ratio"] < 1.1, (tensor, v)
    # One-sided EP carries an O(β) bias that the symmetric estimate cancels; −β has the same
    # bias with the other sign, so the two one-sided estimates straddle the symmetric one.
    mean_error = lambda r: np.mean([abs(1 - v["norm_ratio"]) + (1 - v["cosine"]) for v in r.values()])  # noqa: E731
    for name in ("one_sided", "negative"):
        assert mean_error(report["estimators"][name]) > mean_error(symmetric)
    plus, minus = (report["estimators"][n]["layers_1/kernel"]["norm_ratio"] for n in ("one_sided", "negative"))
    assert (plus - symmetric["layers_1/kernel"]["norm_ratio"]) * (minus - symmetric["layers_1/kernel"]["norm_ratio"]) < 0


def test_energy_dynamics_ep_matches_bptt(batch):
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.2), hidden=(128,), activation="steep_sigmoid",
                            dynamics="energy")
    report = _compare(net, params, x, y, dt, EPConfig("symmetric", beta=0.01, T1=400, T2=200), ("symmetric",))
    for tensor, v in report["estimators"]["symmetric"].items():
        assert v["cosine"] >= 0.99, (tensor, v)


def test_holomorphic_ep_with_two_points_is_the_symmetric_estimator(batch):
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.5), hidden=(64,),
                            activation="steep_sigmoid")
    phases = EPConfig("symmetric", beta=0.3, N=2, T1=60, T2=30)
    symmetric = ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt, phases, SYNC)
    holo = ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt,
                          dataclasses.replace(phases, estimator="holomorphic"), SYNC)
    for a, b in zip(jax.tree.leaves(symmetric.grads), jax.tree.leaves(holo.grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert int(holo.relaxation_steps) == 60 + 2 * 30


@pytest.mark.parametrize("dt_spec", [pytest.param(DtConfig("scalar", 1.0), marks=pytest.mark.slow),
                                     DtConfig("lognormal", 0.5, cv=0.5)], ids=["scalar", "per-neuron"])
def test_holomorphic_ep_is_exact_at_finite_beta(batch, dt_spec):
    """With converged phases and |β| = 0.2, N = 4 agrees with BPTT to cosine ≥ 0.999 for every
    weight tensor, where the symmetric estimator (N = 2) at the same |β| agrees less: the
    holomorphic estimate's error is O(|β|^N), the symmetric one's O(β²)."""
    x, y = batch
    net, params, dt = setup(x.shape[1:], dt_spec, hidden=(256,), activation="steep_sigmoid")
    steps = 300 if dt_spec.dist == "scalar" else 500
    report = _compare(net, params, x, y, dt, EPConfig("holomorphic", beta=0.2, N=4, T1=steps, T2=steps),
                      ("symmetric", "holomorphic"))
    holo, symmetric = _min_cosine(report, "holomorphic"), _min_cosine(report, "symmetric")
    print(f"\n{dt_spec.dist} dt, |β| 0.2: min cosine with BPTT, holomorphic N=4 {holo:.6f}, symmetric {symmetric:.6f}")
    assert report["free_fp_residual"] < 1e-5
    assert holo >= 0.999 and holo > symmetric


@pytest.mark.slow  # complex phases under noise (CI runs it)
def test_holomorphic_ep_under_noise_and_async_updates_runs(batch):
    """Noise (real, on the complex field) and the async order compose with complex phases."""
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.5), hidden=(32,),
                            activation="steep_sigmoid")
    est = ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt, EPConfig("holomorphic", beta=0.2, N=6,
                                                                                   T1=40, T2=20),
                         DynamicsConfig(update_order="async", noise=0.02), noise_key=jax.random.key(0))
    assert all(bool(jnp.all(jnp.isfinite(g))) and g.dtype == jnp.float32 for g in jax.tree.leaves(est.grads))
    assert int(est.relaxation_steps) == 40 + 4 * 20  # N = 6: k = 0 … 3 simulated


def test_bptt_through_the_async_schedule_still_matches_ep(batch):
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.5), hidden=(64,),
                            activation="steep_sigmoid")
    report = _compare(net, params, x, y, dt, EPConfig("symmetric", beta=0.05, T1=200, T2=120), ("symmetric",),
                      DynamicsConfig(update_order="async"))
    assert _min_cosine(report, "symmetric") >= 0.99


@pytest.mark.slow
def test_convnet_ep_matches_bptt(batch):
    """Average pooling keeps Φ smooth; max pooling is not differentiable at ties (flat MNIST
    background gives many), where EP and BPTT legitimately disagree."""
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.5), arch="convnet", channels=(4, 8), pool="avg",
                            activation="steep_sigmoid", loss="ce")
    report = _compare(net, params, x[:16], y[:16], dt, EPConfig("symmetric", beta=0.05, T1=150, T2=80),
                      ("symmetric", "holomorphic"))
    for name in ("symmetric", "holomorphic"):
        for tensor, v in report["estimators"][name].items():
            assert v["cosine"] >= 0.99, (name, tensor, v)


def test_random_sign_uses_both_signs_and_negative_nudges_down(batch):
    x, y = batch
    net, params, dt = setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    phases = EPConfig("random_sign", beta=0.3, T1=60, T2=30)
    args = (net, params, jnp.asarray(x), jnp.asarray(y), dt)
    plus = ep.ep_estimate(*args, dataclasses.replace(phases, estimator="one_sided"), SYNC)
    minus = ep.ep_estimate(*args, dataclasses.replace(phases, estimator="negative"), SYNC)
    grads = [ep.ep_estimate(*args, phases, SYNC, jax.random.key(k)).grads for k in range(8)]
    same = lambda g, h: all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(h)))  # noqa: E731
    assert any(same(g, plus.grads) for g in grads) and any(same(g, minus.grads) for g in grads)
    assert not same(plus.grads, minus.grads)


@pytest.mark.slow  # 600-step phases, two dt draws; the clip test keeps GDU in the default suite (CI runs it)
@pytest.mark.parametrize("dt_spec", [DtConfig("scalar", 0.2), DtConfig("lognormal", 0.2, cv=0.5)],
                         ids=["scalar", "per-neuron"])
def test_gdu_holds_step_by_step_with_a_converged_free_phase_and_fails_without(batch, dt_spec):
    """Energy dynamics at small β: EP's per-step increments of states (scaled by each neuron's
    response P) and of weights equal BPTT's gradients at the matching steps; a free phase cut
    short breaks it."""
    x, y = batch
    net, params, dt = setup(x.shape[1:], dt_spec, hidden=(64,), activation="steep_sigmoid", dynamics="energy")
    phases = EPConfig(beta=0.001, T1=600, T2=12)
    converged = gdu.check(net, params, x, y, dt, phases, SYNC, 12)
    assert converged["free_fp_residual"] < 1e-5
    for name, v in converged["tensors"].items():
        assert v["relative_rmse"] <= 0.05 and v["sign_agreement"] >= 0.95, (name, v)
    cut = gdu.check(net, params, x, y, dt, dataclasses.replace(phases, T1=20), SYNC, 12)
    assert max(v["relative_rmse"] for v in cut["tensors"].values()) > 1.0
    assert min(v["sign_agreement"] for v in cut["tensors"].values()) < 0.9


@pytest.mark.slow  # a 120-step free phase and BPTT through it at every nudged step (CI runs it)
def test_gdu_with_energy_dynamics_differs_exactly_where_the_clip_holds_a_neuron(batch):
    """Energy dynamics clip the state: at a bound BPTT's derivative is zero while the nudge lifts
    the neuron off it. The check names the share at a bound; the output neurons inside their
    interval agree with BPTT as closely as leaky dynamics do."""
    x, y = batch[0][:8], batch[1][:8]
    phases = EPConfig(beta=0.01, T1=120, T2=8)
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.2), hidden=(16,), activation="steep_sigmoid",
                            dynamics="energy")
    found = gdu.increments(net, params, x, y, dt, phases, SYNC, 8)
    assert found["at_bound"]["s2"] > 0.1
    assert gdu.agreement(*found["states"]["s1"])["relative_rmse_per_step"][0] is None  # no reference yet
    free = ep.free_phase(net, params, net.drive(params, x), dt, phases, SYNC).state[-1]
    inside = np.asarray((free > net.act.lo) & (free < net.act.hi))
    ep_inc, ref = found["states"]["s2"]
    assert np.linalg.norm((ep_inc - ref)[:, inside]) < 0.02 * np.linalg.norm(ref[:, inside])
    assert np.linalg.norm((ep_inc - ref)[:, ~inside]) > 0.1 * np.linalg.norm(ref[:, inside])


@pytest.mark.slow
def test_gdu_with_energy_dynamics_agrees_everywhere_without_a_state_at_a_bound_and_says_so_with(batch):
    x, y = batch[0][:8], batch[1][:8]
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.2), hidden=(16,), activation="tanh", dynamics="energy")
    agree = gdu.check(net, params, x, y, dt, EPConfig(beta=0.01, T1=300, T2=8), SYNC, 8)
    assert max(v["relative_rmse"] for v in agree["tensors"].values()) < 0.02 and "note" not in agree
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.2), hidden=(16,), activation="steep_sigmoid",
                            dynamics="energy")
    clipped = gdu.check(net, params, x, y, dt, EPConfig(beta=0.01, T1=300, T2=8), SYNC, 8)
    assert clipped["tensors"]["s2"]["at_bound"] > 0.1 and "clip bound" in clipped["note"]


@pytest.mark.slow
def test_ep_memory_does_not_grow_with_phase_length_but_bptt_does():
    """Compiled-program memory (XLA's own accounting, not a timing): EP keeps no trajectory."""
    from hets_ep.bench.harness import Runner
    from hets_ep.bench.workloads import WORKLOADS

    workload = WORKLOADS["mlp 784-512-10 b128"]
    memory = {(est, t1): Runner(workload, ep=EPConfig(est, beta=0.1, T1=t1, T2=10)).memory_bytes
              for est in ("one_sided", "bptt") for t1 in (30, 300)}
    assert memory[("one_sided", 30)] == memory[("one_sided", 300)]
    assert memory[("bptt", 300)] > 5 * memory[("bptt", 30)] > 5 * memory[("one_sided", 30)]


@pytest.mark.slow  # three gradient comparisons against BPTT (CI runs it)
def test_gradcheck_warns_when_beta_is_outside_the_estimators_accurate_region(batch):
    """Refining the nudge (two more points on the circle) moves holomorphic EP's estimate at
    |β| 0.5, where the nudged fixed point is no longer analytic on the whole circle, and hardly
    at |β| 0.1: the check says which."""
    from hets_ep.config import compose
    from hets_ep.gradcheck import REFINED, _why_not_exact, refinement

    x, y = batch
    net, params, dt = setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    moved = {}
    for beta in (0.5, 0.1):
        cfg = compose(["model.activation=steep_sigmoid", "ep.T1=200", "ep.T2=100", f"ep.beta={beta}",
                       "gradcheck.estimators=[holomorphic]"])
        moved[beta] = refinement(net, params, x[:16], y[:16], dt, cfg, jax.random.key(0))["holomorphic"]
        report = {"free_fp_residual": 0.0, "nudged_fp_residual": {"holomorphic": 0.0},
                  "refinement": {"holomorphic": moved[beta]}}
        warned = any("outside the region where holomorphic EP is accurate" in w for w in _why_not_exact(cfg, report))
        assert warned == (moved[beta] > REFINED)
    assert moved[0.5] > REFINED > moved[0.1], moved


@pytest.mark.slow  # 3,000-step phases on a 4-hidden-layer network (CI runs it)
def test_skip_connections_join_phi_and_ep_still_matches_bptt_on_a_deep_network(batch):
    """A 4-hidden-layer MLP with skips (model.skip=2): the skip terms move the free fixed point
    (a test that fails if they were ignored), and symmetric EP matches BPTT on every tensor,
    the skip weights included (converged phases, smooth activation, small β). The skips bring
    slow modes: at 600 steps the residual is already ~1e-5 but EP and BPTT still differ (cosine
    0.74); 3,000 steps per phase settle them."""
    from hets_ep.dynamics import relax

    x, y = jnp.asarray(batch[0][:16]), jnp.asarray(batch[1][:16])
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.5), hidden=(32, 32, 32, 32), skip=2,
                            activation="steep_sigmoid")
    assert {"skips_layers_2", "skips_layers_3", "skips_layers_4"} <= set(params["params"])
    phases = EPConfig("symmetric", beta=0.01, T1=3000, T2=3000)
    drive = net.drive(params, x)
    zeros = tuple(jnp.zeros((x.shape[0], *d.shape)) for d in dt)
    with_skips = relax(net, params, drive, zeros, dt, phases.T1, SYNC, window=1)
    cut = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "skips" in jax.tree_util.keystr(path) else a, params)
    without = relax(net, cut, drive, zeros, dt, phases.T1, SYNC, window=1)
    assert max(float(with_skips.fp_residual.max()), float(without.fp_residual.max())) < 1e-6
    assert float(jnp.max(jnp.abs(with_skips.state[-1] - without.state[-1]))) > 1e-2
    report = _compare(net, params, x, y, dt, phases, ("symmetric",))
    cosines = {name: v["cosine"] for name, v in report["estimators"]["symmetric"].items()}
    assert {"skips_layers_2/kernel", "skips_layers_4/kernel"} <= set(cosines)
    assert min(cosines.values()) >= 0.99, cosines
