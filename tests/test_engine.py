"""The EP engine: kernel, estimators against BPTT, fixed points, compile-once, vmap."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hets_ep import ep
from hets_ep.dynamics import relax, step
from hets_ep.models import build_network
from hets_ep.models.activations import steep_sigmoid
from hets_ep.timeconstants import DtSpec, sample_dt


def _setup(input_shape, arch="mlp", dt_spec=None, seed=0, **model):
    net = build_network(arch, 10, **model)
    params = net.init(jax.random.key(seed), input_shape)
    dt, _ = sample_dt(seed, dt_spec or DtSpec("scalar", 1.0), net.state_shapes(input_shape))
    return net, params, tuple(map(jnp.asarray, dt))


def _compare(net, params, x, y, dt, phases, estimators=ep.EP_ESTIMATORS):
    return ep.make_comparator(net, phases, estimators)(params, jnp.asarray(x), jnp.asarray(y), dt,
                                                       jax.random.key(1))


@pytest.mark.parametrize("hidden", [(256,), (128, 64)])
def test_symmetric_ep_matches_bptt_on_mnist(batch, hidden):
    x, y = batch
    net, params, dt = _setup(x.shape[1:], hidden=hidden, activation="steep_sigmoid", dt_spec=DtSpec("scalar", 0.5))
    report = _compare(net, params, x, y, dt, ep.Phases("symmetric", beta=0.05, T1=250, T2=120))
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
                             dt_spec=DtSpec("scalar", 0.2))
    report = _compare(net, params, x, y, dt, ep.Phases("symmetric", beta=0.01, T1=400, T2=200), ("symmetric",))
    for tensor, v in report["estimators"]["symmetric"].items():
        assert v["cosine"] >= 0.99, (tensor, v)


def test_convnet_ep_matches_bptt(batch):
    """Average pooling keeps Φ smooth; max pooling is not differentiable at ties (flat MNIST
    background gives many), where EP and BPTT legitimately disagree."""
    x, y = batch
    net, params, dt = _setup(x.shape[1:], arch="convnet", channels=(4, 8), pool="avg", activation="steep_sigmoid",
                             loss="ce", dt_spec=DtSpec("scalar", 0.5))
    report = _compare(net, params, x[:16], y[:16], dt, ep.Phases("symmetric", beta=0.05, T1=150, T2=80),
                      ("symmetric",))
    for tensor, v in report["estimators"]["symmetric"].items():
        assert v["cosine"] >= 0.99, (tensor, v)


def test_fixed_point_does_not_depend_on_dt(batch):
    x, _ = batch
    states = []
    for spec in (DtSpec("scalar", 0.5), DtSpec("lognormal", 0.5, cv=0.5), DtSpec("uniform", 0.3, cv=0.5)):
        net, params, dt = _setup(x.shape[1:], hidden=(128,), activation="steep_sigmoid", dt_spec=spec)
        phases = ep.Phases("symmetric", T1=600)
        free = ep.free_phase(net, params, net.drive(params, jnp.asarray(x)), dt, phases)
        assert float(jnp.max(free.residual)) < 1e-6
        states.append(free.state)
    for other in states[1:]:
        for a, b in zip(states[0], other):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_unit_scalar_dt_is_the_discrete_update(batch):
    """dt = 1: s_1 ← σ(W_1 x + b_1 + W_2ᵀ s_2), s_2 ← σ(W_2 s_1 + b_2), written by hand."""
    x, _ = batch
    x = jnp.asarray(x)
    net, params, dt = _setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    s = (jax.random.uniform(jax.random.key(2), (32, 64)), jax.random.uniform(jax.random.key(3), (32, 10)))
    p = params["params"]
    w1, b1, w2, b2 = p["layers_0"]["kernel"], p["layers_0"]["bias"], p["layers_1"]["kernel"], p["layers_1"]["bias"]
    hand = (steep_sigmoid(x.reshape(32, -1) @ w1 + b1 + s[1] @ w2.T), steep_sigmoid(s[0] @ w2 + b2))
    got = step(net, params, net.drive(params, x), s, dt)
    for a, b in zip(got, hand):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_nudge_pulls_output_towards_target(batch):
    x, y = batch
    x = jnp.asarray(x)
    net, params, dt = _setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    drive = net.drive(params, x)
    free = ep.free_phase(net, params, drive, dt, ep.Phases(T1=100))
    nudged = relax(net, params, drive, free.state, dt, 50, jnp.float32(1.0), jnp.asarray(y)).state
    loss = lambda s: float(jnp.mean(net.loss_per_sample(params, s, jnp.asarray(y))))  # noqa: E731
    assert loss(nudged) < loss(free.state)


def test_input_drive_is_computed_outside_the_scan(batch):
    """No matrix product inside the scan body touches the 784-dimensional input."""
    x, _ = batch
    net, params, dt = _setup(x.shape[1:], hidden=(64,))
    jaxpr = jax.make_jaxpr(lambda p, xx: ep.free_phase(net, p, net.drive(p, xx), dt, ep.Phases(T1=20)))(
        params, jnp.asarray(x))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 2  # the plain steps and the diagnostic tail
    outside = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert any(784 in v.aval.shape for e in outside for v in e.invars)

    def dots(j):
        for e in j.eqns:
            if e.primitive.name == "dot_general":
                yield e
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                yield from dots(sub)

    inside = [e for s in scans for e in dots(s.params["jaxpr"].jaxpr)]
    assert inside, "the scan body should hold the layer-to-layer products"
    assert not any(784 in v.aval.shape for e in inside for v in e.invars)


def test_train_step_compiles_once_per_shape(mnist):
    import optax

    from hets_ep.train import zero_accumulators, make_steps

    net, params, dt = _setup(mnist.input_shape, hidden=(32,))
    tx = optax.sgd(0.1)
    train_step, _ = make_steps(net, ep.Phases(T1=5, T2=2), tx, 1e-3)
    one = lambda tree: jax.tree.map(lambda a: a[None], tree)  # noqa: E731  (a member axis of 1)
    params, opt_state, acc, dt = one(params), one(tx.init(params)), zero_accumulators(1), one(dt)
    keys = jax.random.key(0)[None]
    for i in range(3):
        sl = slice(16 * i, 16 * (i + 1))
        params, opt_state, acc = train_step(params, opt_state, acc, dt, mnist.x_train[None, sl],
                                            mnist.y_train[None, sl], keys, i)
    assert train_step._cache_size() == 1


def test_diagnostics_flag_oscillation_and_convergence(batch):
    x, _ = batch
    x = jnp.asarray(x)
    residuals, oscillations = {}, {}
    for dt_value in (0.5, 1.95):
        net, params, dt = _setup(x.shape[1:], hidden=(64,), activation="hard_sigmoid",
                                 dt_spec=DtSpec("scalar", dt_value, dt_max=2.0))
        free = ep.free_phase(net, params, net.drive(params, x), dt, ep.Phases(T1=60, window=10))
        residuals[dt_value] = float(jnp.mean(free.residual))
        oscillations[dt_value] = float(jnp.mean(free.oscillation))
    assert residuals[0.5] < 1e-4 and oscillations[0.5] < 0.5
    # dt near 2 overshoots the target every step: period-2 flips in almost every neuron.
    assert residuals[1.95] > 1e-2 and oscillations[1.95] > 5


def test_relax_under_vmap_over_dt_draws(batch):
    x, _ = batch
    x = jnp.asarray(x)
    net, params, _ = _setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    shapes = net.state_shapes(x.shape[1:])
    draws = [tuple(map(jnp.asarray, sample_dt(seed, DtSpec("gamma", 0.5, cv=0.5), shapes)[0])) for seed in (0, 1)]
    stacked = jax.tree.map(lambda *d: jnp.stack(d), *draws)
    phases = ep.Phases(T1=30)
    drive = net.drive(params, x)
    batched = jax.vmap(lambda dt: ep.free_phase(net, params, drive, dt, phases).state)(stacked)
    for i, dt in enumerate(draws):
        single = ep.free_phase(net, params, drive, dt, phases).state
        for a, b in zip(single, batched):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), atol=1e-6)


def test_random_sign_uses_both_signs(batch):
    x, y = batch
    net, params, dt = _setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    phases = ep.Phases("random_sign", beta=0.3, T1=60, T2=30)
    plus = ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt, dataclasses.replace(phases, estimator="one_sided"))
    grads = [ep.ep_estimate(net, params, jnp.asarray(x), jnp.asarray(y), dt, phases, jax.random.key(k)).grads
             for k in range(8)]
    same = [all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(plus.grads))) for g in grads]
    assert any(same) and not all(same)


def test_bad_phases_are_rejected():
    from hets_ep.errors import ConfigError

    for bad in (dict(T1=0), dict(T2=0), dict(beta=0.0), dict(beta=float("nan")), dict(estimator="two_sided")):
        with pytest.raises(ConfigError):
            ep.Phases(**bad)
    ep.Phases("bptt", beta=0.0)  # BPTT does not nudge


def test_ep_memory_does_not_grow_with_phase_length_but_bptt_does():
    """Compiled-program memory (XLA's own accounting, not a timing): EP keeps no trajectory."""
    from hets_ep.bench import WORKLOADS, _ours

    spec = WORKLOADS["mlp 784-512-10 b128"]
    memory = {(est, t1): _ours(spec, phases=ep.Phases(est, beta=0.1, T1=t1, T2=10))[2]
              for est in ("one_sided", "bptt") for t1 in (30, 300)}
    assert memory[("one_sided", 30)] == memory[("one_sided", 300)]
    assert memory[("bptt", 300)] > 5 * memory[("bptt", 30)] > 5 * memory[("one_sided", 30)]
