"""The fused relaxation backend (hets_ep/fused.py) against the scan kernel, on a CPU in Pallas's
interpret mode: the same states and EP gradients, in every dynamics it runs; what it does not
run falls back to the scan kernel, and the run says which backend ran."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import setup
from hets_ep import ep, fused
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig, compose
from hets_ep.dynamics import relax


def _relax(net, params, drive, state, dt, n, dynamics):
    return jax.jit(lambda p, d, s, r: relax(net, p, d, s, r, n, dynamics, window=3))(params, drive, state, dt)


def _estimate(net, params, x, y, dt, phases, dynamics):
    return jax.jit(lambda p, a, b, r: ep.ep_estimate(net, p, a, b, r, phases, dynamics))(params, x, y, dt)


def _rel(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v)) / max(float(jnp.max(jnp.abs(u))), 1e-30)) for u, v in zip(a, b))


@pytest.mark.parametrize("model, integrator, order", [
    (dict(hidden=(16, 16), skip=2, activation="steep_sigmoid", dynamics="energy"), "exact", "async"),
    pytest.param(dict(hidden=(16,)), "euler", "sync", marks=pytest.mark.slow),
    pytest.param(dict(hidden=(16,)), "exact", "async", marks=pytest.mark.slow),
    pytest.param(dict(hidden=(16, 16), skip=2, activation="steep_sigmoid", dynamics="energy"), "euler", "sync",
                 marks=pytest.mark.slow)], ids=["energy-skip-exact-async", "leaky-euler-sync", "leaky-exact-async",
                                                "energy-skip-euler-sync"])
def test_fused_phases_equal_the_scan_kernel(batch, model, integrator, order):
    x, y = jnp.asarray(batch[0][:8]), jnp.asarray(batch[1][:8])
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.3), **model)
    scan = DynamicsConfig(integrator=integrator, update_order=order)
    kernel = dataclasses.replace(scan, backend="fused")
    drive = net.drive(params, x)
    zeros = tuple(jnp.zeros((8, *a.shape)) for a in dt)
    a, b = (_relax(net, params, drive, zeros, dt, 20, d) for d in (scan, kernel))
    assert _rel(a.state, b.state) <= 1e-6 and float(jnp.max(jnp.abs(a.fp_residual - b.fp_residual))) <= 1e-6
    phases = EPConfig("symmetric", beta=0.1, T1=20, T2=8)
    g_scan, g_fused = (_estimate(net, params, x, y, dt, phases, d).grads for d in (scan, kernel))
    assert _rel(jax.tree.leaves(g_scan), jax.tree.leaves(g_fused)) <= 1e-5


def test_relaxing_to_a_tolerance_and_holomorphic_phases_agree_too(batch):
    """ep.tol: the chunks between two checks run fused. Holomorphic EP: the free phase fused, the
    complex nudged phases on the scan kernel (one estimate, both backends)."""
    x, y = jnp.asarray(batch[0][:8]), jnp.asarray(batch[1][:8])
    net, params, dt = setup(x.shape[1:], DtConfig("scalar", 0.5), hidden=(16,), activation="steep_sigmoid")
    for phases in (EPConfig("one_sided", beta=0.1, T1=200, T2=100, tol=1e-4),
                   EPConfig("holomorphic", beta=0.2, N=4, T1=40, T2=20)):
        a, b = (_estimate(net, params, x, y, dt, phases, DynamicsConfig(backend=k)) for k in ("scan", "fused"))
        assert int(a.free.steps) == int(b.free.steps)
        assert _rel(jax.tree.leaves(a.grads), jax.tree.leaves(b.grads)) <= 1e-5


@pytest.mark.slow  # two short training runs, one in Pallas's interpret mode (CI runs it)
def test_a_training_run_on_the_fused_kernel_matches_the_scan_and_says_which_ran(tmp_path, caplog):
    """The jitted, vmapped, donated training step with two seeds in one program: the fused
    kernel's run records the scan run's metrics."""
    import logging

    from conftest import metrics_without_timing, train_here

    caplog.set_level(logging.INFO)
    args = ("train.epochs=1", "dataset.subset=256", "train.parallel_seeds=2", "model.hidden=[16]")
    train_here(tmp_path / "scan", *args)
    train_here(tmp_path / "fused", *args, "dynamics.backend=fused")
    assert "relaxation backend: fused (dynamics.backend=fused on cpu (Pallas interpret mode))" in caplog.text
    for seed in ("seed_0", "seed_1"):
        scan, kernel = (metrics_without_timing(tmp_path / k / seed)[0] for k in ("scan", "fused"))
        for key, value in scan.items():
            assert kernel[key] == (value if not isinstance(value, float) else pytest.approx(value, rel=1e-5,
                                                                                            abs=1e-7)), key


def test_the_backend_is_resolved_once_and_named():
    cfg = compose(["dynamics.backend=auto"])
    assert fused.resolve(cfg, "cpu")[0].dynamics.backend == "scan"
    chosen, line = fused.resolve(cfg, "gpu")
    assert chosen.dynamics.backend == "fused" and line == "relaxation backend: fused (dynamics.backend=auto on gpu)"
    conv, line = fused.resolve(compose(["model=convnet", "dynamics.backend=fused"]), "gpu")
    assert conv.dynamics.backend == "scan" and "written for MLPs" in line
    noisy = fused.resolve(compose(["dynamics.backend=fused", "dynamics.noise=0.02"]), "gpu")[1]
    assert noisy.endswith("noisy steps run on the scan kernel)")
