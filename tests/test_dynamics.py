"""The relaxation kernel: the discrete update, both integrators and schedules, noise, relaxation
to a tolerance, the spectral radius, fixed points, the hoisted drive, diagnostics, vmap."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY, setup
from hets_ep import ep, steps
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig, compose
from hets_ep.dynamics import rates, relax, spectral_radius, step
from hets_ep.models.activations import steep_sigmoid
from hets_ep.timeconstants import sample_dt

SYNC = DynamicsConfig()


def _decoupled(params):
    """The same weights with the hidden↔output coupling removed: every neuron's target T is a
    constant (σ of its drive or bias), so each unit relaxes on its own."""
    inner = params["params"]
    return {"params": {**inner, "layers_1": {**inner["layers_1"], "kernel": jnp.zeros_like(inner["layers_1"]["kernel"])}}}


@pytest.mark.parametrize("dynamics", [SYNC, DynamicsConfig(integrator="exact"), DynamicsConfig(update_order="async")],
                         ids=["euler", "exact", "async"])
def test_fixed_point_does_not_depend_on_dt_integrator_or_order(batch, dynamics):
    x, _ = batch
    states = []
    for spec in (DtConfig("scalar", 0.5), DtConfig("lognormal", 0.5, cv=0.5), DtConfig("uniform", 0.3, cv=0.5)):
        net, params, dt = setup(x.shape[1:], spec, hidden=(128,), activation="steep_sigmoid")
        free = ep.free_phase(net, params, net.drive(params, jnp.asarray(x)), dt, EPConfig(T1=600), dynamics)
        assert float(jnp.max(free.step_residual)) < 1e-6 and float(jnp.max(free.fp_residual)) < 1e-5
        states.append(free.state)
    reference, _, _ = setup(x.shape[1:], hidden=(128,), activation="steep_sigmoid")
    for other in states[1:]:
        for a, b in zip(states[0], other):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_unit_scalar_dt_is_the_discrete_update(batch):
    """dt = 1: s_1 ← σ(W_1 x + b_1 + W_2ᵀ s_2), s_2 ← σ(W_2 s_1 + b_2), written by hand."""
    x, _ = batch
    x = jnp.asarray(x)
    net, params, dt = setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    s = (jax.random.uniform(jax.random.key(2), (32, 64)), jax.random.uniform(jax.random.key(3), (32, 10)))
    p = params["params"]
    w1, b1, w2, b2 = p["layers_0"]["kernel"], p["layers_0"]["bias"], p["layers_1"]["kernel"], p["layers_1"]["bias"]
    hand = (steep_sigmoid(x.reshape(32, -1) @ w1 + b1 + s[1] @ w2.T), steep_sigmoid(s[0] @ w2 + b2))
    got, _ = step(net, params, net.drive(params, x), s, dt, "sync")
    for a, b in zip(got, hand):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # async: the hidden layer first, then the output from the fresh hidden layer
    got, _ = step(net, params, net.drive(params, x), s, dt, "async")
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(steep_sigmoid(hand[0] @ w2 + b2)), rtol=1e-5, atol=1e-6)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(dt_scale=st.floats(1e-3, 30.0), cv=st.floats(0.0, 1.5), weight_scale=st.floats(0.1, 5.0),
       seed=st.integers(0, 2**16))
def test_the_exact_integrator_never_overshoots(dt_scale, cv, weight_scale, seed):
    """For any dt > 0 each neuron moves by a share 1 − e^{−dt} ∈ (0, 1] of its way to T(s)
    (< 1 below dt ≈ 16, where float32 rounds it to 1), and a network of decoupled units
    converges monotonically, never crossing its target."""
    rng = np.random.default_rng(seed)
    dt = (jnp.asarray(dt_scale * rng.lognormal(0, cv, 24) if cv else np.full(24, dt_scale), jnp.float32),
          jnp.asarray(dt_scale * rng.lognormal(0, cv, 10) if cv else np.full(10, dt_scale), jnp.float32))
    share = rates(dt, "exact")
    for r, d in zip(share, dt):
        assert bool(jnp.all((r > 0) & (r <= 1))) and bool(jnp.all(jnp.where(d < 15, r < 1, True)))
    net, params, _ = setup((4, 4, 1), hidden=(24,), activation="steep_sigmoid", seed=seed % 7)
    params = jax.tree.map(lambda w: weight_scale * w, _decoupled(params))
    x = jnp.asarray(rng.random((5, 4, 4, 1)), jnp.float32)
    drive = net.drive(params, x)
    s = tuple(jnp.asarray(rng.normal(0, 2, (5, n)), jnp.float32) for n in (24, 10))
    target = tuple(s_i + u for s_i, u in zip(s, step(net, params, drive, s, share, "sync")[1]))
    gap = [np.asarray(t - a) for t, a in zip(target, s)]
    rounding = [1e-6 * (1 + np.abs(np.asarray(t))) for t in target]  # float32 round-off at the target
    for _ in range(12):
        s, _ = step(net, params, drive, s, share, "sync")
        new_gap = [np.asarray(t - a) for t, a in zip(target, s)]
        for g, h, eps in zip(gap, new_gap, rounding):
            assert np.all(np.abs(h) <= np.abs(g) + eps) and np.all((g * h >= 0) | (np.abs(h) <= eps))
        gap = new_gap


def test_exact_agrees_with_euler_to_first_order_and_euler_overshoots(batch):
    x, _ = batch
    net, params, _ = setup(x.shape[1:], hidden=(32,), activation="steep_sigmoid")
    drive = net.drive(params, jnp.asarray(x))
    s = tuple(jnp.full((32, n), 0.3) for n in (32, 10))
    for h in (1e-2, 1e-3):
        dt = tuple(jnp.full((n,), h) for n in (32, 10))
        euler, _ = step(net, params, drive, s, rates(dt, "euler"), "sync")
        exact, _ = step(net, params, drive, s, rates(dt, "exact"), "sync")
        moved = max(float(jnp.max(jnp.abs(e - a))) for e, a in zip(euler, s))
        apart = max(float(jnp.max(jnp.abs(e - a))) for e, a in zip(euler, exact))
        assert apart < 0.6 * h * moved  # the gap is second order: h²/2 of the move's scale
    params = _decoupled(params)
    big = tuple(jnp.full((n,), 1.6) for n in (32, 10))
    unit = step(net, params, drive, s, big, "sync")[1]
    crossed = step(net, params, drive, step(net, params, drive, s, big, "sync")[0], big, "sync")[1]
    assert all(bool(jnp.all(u * c <= 0)) for u, c in zip(unit, crossed))  # Euler at dt > 1 overshoots every unit


@pytest.mark.slow  # thousands of noisy steps (CI runs it)
@pytest.mark.parametrize("integrator", ["euler", "exact"])
def test_the_sde_noise_of_a_decoupled_unit_has_its_closed_form_variance(integrator):
    """ds = (T − s) dt + σ dW: the stationary variance is σ²/(2 − dt) for Euler–Maruyama and σ²/2
    for the exact Ornstein–Uhlenbeck step, per neuron, whatever its dt."""
    net, params, _ = setup((4, 4, 1), hidden=(40,), activation="steep_sigmoid")
    params = _decoupled(params)
    dt = tuple(jnp.asarray(d) for d in sample_dt(0, DtConfig("lognormal", 0.5, cv=0.5), [(40,), (10,)])[0])
    x = jnp.ones((4000, 4, 4, 1))
    dynamics = DynamicsConfig(integrator=integrator, noise=0.2, noise_mode="sde")
    s0 = tuple(jnp.zeros((4000, n)) for n in (40, 10))
    final = relax(net, params, net.drive(params, x), s0, dt, 200, dynamics, noise_key=jax.random.key(1)).state
    for s, d in zip(final, dt):
        expected = 0.04 / (2 - np.asarray(d)) if integrator == "euler" else np.full(d.shape, 0.02)
        ratio = np.var(np.asarray(s), axis=0) / expected
        assert abs(ratio.mean() - 1) < 0.02 and np.all(np.abs(ratio - 1) < 0.15), ratio


def test_zero_noise_and_no_key_are_the_same_program(batch):
    x, y = batch
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.5), hidden=(32,))
    drive = net.drive(params, jnp.asarray(x))
    s0 = tuple(jnp.zeros((32, *d.shape)) for d in dt)
    plain = relax(net, params, drive, s0, dt, 20, SYNC)
    keyed = relax(net, params, drive, s0, dt, 20, SYNC, noise_key=jax.random.key(3))
    noisy = relax(net, params, drive, s0, dt, 20, DynamicsConfig(noise=0.05), noise_key=jax.random.key(3))
    for a, b, c in zip(plain.state, keyed.state, noisy.state):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(a), np.asarray(c))


def test_relaxation_to_a_tolerance_stops_when_every_sample_has_converged(batch):
    x, _ = batch
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.5), hidden=(64,), activation="steep_sigmoid")
    drive = net.drive(params, jnp.asarray(x))
    s0 = tuple(jnp.zeros((32, *d.shape)) for d in dt)
    done = relax(net, params, drive, s0, dt, 500, SYNC, window=1, tol=1e-4, tol_every=5)
    taken = int(done.steps)
    assert 10 < taken < 500 and taken % 5 == 0 and float(jnp.max(done.fp_residual)) <= 1e-4
    fixed = relax(net, params, drive, s0, dt, taken, SYNC, window=1)
    assert float(jnp.max(fixed.fp_residual)) <= 1e-4
    for a, b in zip(done.state, fixed.state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    before = relax(net, params, drive, s0, dt, taken - 5, SYNC, window=1)
    assert float(jnp.max(before.fp_residual)) > 1e-4  # it stopped at the first check that passed
    capped = relax(net, params, drive, s0, dt, 42, SYNC, window=1, tol=1e-12, tol_every=5)
    assert int(capped.steps) == 42  # never more than the cap (2 plain steps, then 8 checked blocks)


@pytest.mark.slow  # power iterations on a trained network (CI runs it)
def test_the_spectral_radius_reads_the_step_of_decoupled_units(batch):
    """Decoupled units: the step's Jacobian is diagonal, 1 − r_i; a coupled net's radius equals
    the largest eigenvalue modulus of its dense Jacobian."""
    x, _ = batch
    net, params, _ = setup(x.shape[1:], hidden=(16,), activation="steep_sigmoid")
    drive = net.drive(params, jnp.asarray(x[:4]))
    s = tuple(jnp.full((4, n), 0.5) for n in (16, 10))
    for value, integrator, expected in ((1.5, "euler", 0.5), (1.9, "euler", 0.9), (0.5, "exact", np.exp(-0.5))):
        dt = tuple(jnp.full((n,), value) for n in (16, 10))
        radius = spectral_radius(net, _decoupled(params), drive, s, dt, DynamicsConfig(integrator=integrator),
                                 jax.random.key(0), 40)
        np.testing.assert_allclose(np.asarray(radius), expected, rtol=1e-4)
    dt = tuple(jnp.full((n,), 0.7) for n in (16, 10))
    one = tuple(a[:1] for a in s)
    flat = lambda v: jnp.concatenate(step(net, params, drive[:1], (v[:, :16], v[:, 16:]), dt, "sync")[0], 1)  # noqa: E731
    dense = jax.jacfwd(flat)(jnp.concatenate(one, 1))[0, :, 0, :]
    exact = np.max(np.abs(np.linalg.eigvals(np.asarray(dense, np.float64))))
    radius = spectral_radius(net, params, drive[:1], one, dt, SYNC, jax.random.key(0), 200)
    assert float(radius[0]) == pytest.approx(exact, rel=2e-3)


@pytest.mark.slow  # a training run first (CI runs it)
def test_async_updates_reach_the_same_fixed_points_on_trained_weights(tmp_path, batch):
    from hets_ep.train import Trainer

    trainer = Trainer(compose([*TINY, "train.epochs=1", "model.activation=steep_sigmoid"]), tmp_path)
    trainer.fit()
    trainer.checkpoints.close()
    params, dt = steps.member(trainer.state.params, 0), steps.member(trainer.state.dt, 0)
    x = jnp.asarray(batch[0])
    drive = trainer.net.drive(params, x)
    phases = EPConfig(T1=800)
    sync = ep.free_phase(trainer.net, params, drive, dt, phases, SYNC)
    fast = ep.free_phase(trainer.net, params, drive, dt, phases, DynamicsConfig(update_order="async"))
    assert float(jnp.max(fast.fp_residual)) <= 1e-5
    for a, b in zip(sync.state, fast.state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_nudge_pulls_output_towards_target(batch):
    x, y = batch
    x = jnp.asarray(x)
    net, params, dt = setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    drive = net.drive(params, x)
    free = ep.free_phase(net, params, drive, dt, EPConfig(T1=100), SYNC)
    nudged = relax(net, params, drive, free.state, dt, 50, SYNC, jnp.float32(1.0), jnp.asarray(y)).state
    loss = lambda s: float(jnp.mean(net.loss_per_sample(params, s, jnp.asarray(y))))  # noqa: E731
    assert loss(nudged) < loss(free.state)


def test_input_drive_is_computed_outside_the_scan(batch):
    """No matrix product inside the scan body touches the 784-dimensional input."""
    x, _ = batch
    net, params, dt = setup(x.shape[1:], hidden=(64,))
    jaxpr = jax.make_jaxpr(lambda p, xx: ep.free_phase(net, p, net.drive(p, xx), dt, EPConfig(T1=20), SYNC))(
        params, jnp.asarray(x))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 2  # the plain steps and the diagnostic tail
    assert not any(e.primitive.name == "while" for e in jaxpr.jaxpr.eqns)  # ep.tol unset: fixed steps
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


def test_diagnostics_flag_oscillation_and_convergence(batch):
    x, _ = batch
    x = jnp.asarray(x)
    residuals, oscillations = {}, {}
    for dt_value in (0.5, 1.95):
        net, params, dt = setup(x.shape[1:], DtConfig("scalar", dt_value, dt_max=2.0), hidden=(64,))
        free = ep.free_phase(net, params, net.drive(params, x), dt, EPConfig(T1=60, window=10), SYNC)
        residuals[dt_value] = float(jnp.mean(free.step_residual))
        oscillations[dt_value] = float(jnp.mean(free.oscillation))
    assert residuals[0.5] < 1e-4 and oscillations[0.5] < 0.5
    # dt near 2 overshoots the target every step: period-2 flips in almost every neuron.
    assert residuals[1.95] > 1e-2 and oscillations[1.95] > 5


def test_relax_under_vmap_over_dt_draws(batch):
    x, _ = batch
    x = jnp.asarray(x)
    net, params, _ = setup(x.shape[1:], hidden=(64,), activation="steep_sigmoid")
    shapes = net.state_shapes(x.shape[1:])
    draws = [tuple(map(jnp.asarray, sample_dt(seed, DtConfig("gamma", 0.5, cv=0.5), shapes)[0])) for seed in (0, 1)]
    stacked = jax.tree.map(lambda *d: jnp.stack(d), *draws)
    phases = dataclasses.replace(EPConfig(T1=30), tol=1e-3)
    drive = net.drive(params, x)
    batched = jax.vmap(lambda dt: ep.free_phase(net, params, drive, dt, phases, SYNC, tol=phases.tol))(stacked)
    for i, dt in enumerate(draws):
        single = ep.free_phase(net, params, drive, dt, phases, SYNC, tol=phases.tol)
        assert int(single.steps) == int(batched.steps[i])
        for a, b in zip(single.state, batched.state):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), atol=1e-6)


@pytest.mark.slow
def test_async_updates_reach_the_sync_fixed_point_with_skip_connections(batch):
    """With skips joining layers of the same parity (K = 2), the async order updates a layer and
    its skip source together. Its end states are fixed points of the synchronous map (the
    residual is measured with the synchronous step, whatever the order); with several fixed
    points the order may pick another one for a sample, as a step size may."""
    import jax.numpy as jnp

    from conftest import setup
    from hets_ep.config import DtConfig
    from hets_ep.dynamics import relax

    x = jnp.asarray(batch[0][:16])
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.5), hidden=(32, 32, 32, 32), skip=2,
                            activation="steep_sigmoid")
    drive = net.drive(params, x)
    zeros = tuple(jnp.zeros((x.shape[0], *d.shape)) for d in dt)
    sync = relax(net, params, drive, zeros, dt, 3000, DynamicsConfig(), window=1)
    fast = relax(net, params, drive, zeros, dt, 3000, DynamicsConfig(update_order="async"), window=1)
    assert max(float(sync.fp_residual.max()), float(fast.fp_residual.max())) < 1e-6
    again = relax(net, params, drive, fast.state, dt, 50, DynamicsConfig(), window=1)  # sync from there: it stays
    for a, b in zip(fast.state, again.state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    same = np.all([np.all(np.abs(np.asarray(a - b)) < 1e-4, axis=1) for a, b in zip(sync.state, fast.state)], axis=0)
    assert same.sum() >= 14, same
