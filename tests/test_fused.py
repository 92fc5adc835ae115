"""The fused relaxation backend (hets_ep/fused.py) against the scan kernel, on a CPU in Pallas's
interpret mode: the same states, EP gradients and BPTT gradients, in every dynamics it runs; what
it does not run falls back to the scan kernel, and the run says which backend ran; a kernel that
does not compile falls back with one line; and the training step lowers for a GPU (Triton), from
this CPU, without running there."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import setup
from hets_ep import ep, fused
from hets_ep.build import build_run
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig, compose
from hets_ep.dynamics import relax
from hets_ep.gradcheck import gradcheck


def _relax(net, params, drive, state, dt, n, dynamics):
    return jax.jit(lambda p, d, s, r: relax(net, p, d, s, r, n, dynamics, window=3))(params, drive, state, dt)


def _estimate(net, params, x, y, dt, phases, dynamics):
    return jax.jit(lambda p, a, b, r: ep.ep_estimate(net, p, a, b, r, phases, dynamics))(params, x, y, dt)


def _rel(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v)) / max(float(jnp.max(jnp.abs(u))), 1e-30)) for u, v in zip(a, b))


@pytest.mark.parametrize("model, integrator, order", [
    pytest.param(dict(hidden=(16, 16), skip=2, activation="steep_sigmoid", dynamics="energy"), "exact", "async",
                 marks=pytest.mark.slow),
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
            # The oscillation count flips with round-off where an increment is near its threshold:
            # a share of sign flips, compared to one flip in 10^4 neuron-steps.
            if not isinstance(value, float):
                assert kernel[key] == value, key
            else:
                tolerance = dict(abs=1e-4) if key == "test_oscillation" else dict(rel=1e-5, abs=1e-7)
                assert kernel[key] == pytest.approx(value, **tolerance), key


def test_bptt_differentiates_through_the_fused_kernel(batch):
    """Reverse mode through the kernel runs the scan's derivative (a custom VJP): BPTT's gradient
    on the fused backend equals the scan's, on a batch of 200 that fills two padded tiles."""
    x, y = jnp.asarray(batch[0][:200]), jnp.asarray(batch[1][:200])
    net, params, dt = setup(x.shape[1:], DtConfig("lognormal", 0.5, cv=0.3), hidden=(12,))
    phases = EPConfig("bptt", T1=20)
    scan, kernel = (jax.jit(lambda p, d=d: ep.bptt_estimate(net, p, x, y, dt, phases, d).grads)(params)
                    for d in (DynamicsConfig(), DynamicsConfig(backend="fused")))
    assert _rel(jax.tree.leaves(scan), jax.tree.leaves(kernel)) <= 1e-5


@pytest.mark.slow  # hets-ep gradcheck twice (CI runs it)
def test_gradcheck_on_the_fused_backend_agrees_with_the_scan(tmp_path):
    common = ["model.hidden=[16]", "model.activation=steep_sigmoid", "ep.T1=150", "ep.T2=80", "ep.beta=0.05",
              "gradcheck.batch_size=16", "gradcheck.estimators=[symmetric]"]
    scan, kernel = (gradcheck(compose([*common, f"dynamics.backend={k}"]), tmp_path / k)["estimators"]["symmetric"]
                    for k in ("scan", "fused"))
    for tensor, values in scan.items():
        assert kernel[tensor]["cosine"] == pytest.approx(values["cosine"], abs=1e-5)
        assert values["cosine"] > 0.99


def test_the_kernel_reads_only_the_loops_weights_at_power_of_two_widths():
    """The input layer's weights stay out (the drive is computed outside); every array the kernel
    loads is a power of two in size (Triton's rule), a read-out's padded classes biased away."""
    net = compose(["model.loss=ce", "model.hidden=[100,50]"]).model.build(10)
    params = net.init(jax.random.key(0), (28, 28, 1))
    kernel_net, weights = fused._padded(net, params)
    assert "layers_0" not in weights["params"] and kernel_net.module.hidden == (128, 64)
    for leaf in jax.tree.leaves(weights):
        assert leaf.size & (leaf.size - 1) == 0, leaf.shape
    readout = weights["params"]["layers_2"]
    np.testing.assert_array_equal(readout["bias"][10:], -1e9)
    np.testing.assert_array_equal(readout["kernel"][:50, :10], params["params"]["layers_2"]["kernel"])


@pytest.mark.parametrize("overrides", [
    [],  # the default network: 784-512-10, its 10 outputs padded to 16
    pytest.param(["model.loss=ce", "model.activation=steep_sigmoid", "model.hidden=[500]",
                  "dynamics.update_order=async", "dynamics.integrator=exact"], marks=pytest.mark.slow),
    pytest.param(["model=mlp3_skip", "model.dynamics=energy", "ep=one_sided", "ep.tol=1e-3"],
                 marks=pytest.mark.slow)], ids=["default", "ce-async-exact", "skip-energy-tol"])
def test_the_training_step_lowers_for_a_gpu(overrides):
    """The jitted, vmapped training step on the fused backend, lowered for CUDA from this CPU:
    every phase becomes a Triton kernel named hets_ep_relax (the compile itself needs a GPU)."""
    from hets_ep import steps

    run = build_run(compose(["dataset.subset=64", "dynamics.backend=fused", "dt=lognormal", *overrides]))
    assert run.cfg.dynamics.backend == "fused"
    step = steps.make_train_step(run.net, run.cfg.ep, run.cfg.dynamics, run.tx, run.cfg.stability)
    batch = steps.Batch(jnp.zeros((1, 32, 28, 28, 1)), jnp.zeros((1, 32), jnp.int32))
    text = step.trace(run.state, batch, run.hyper).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and 'name = "hets_ep_relax"' in text


def test_a_kernel_that_does_not_compile_leaves_the_scan_running_with_one_line(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("lowering refused\nthe details")

    monkeypatch.setattr(fused, "_launch", fail)
    cfg = compose(["dynamics.backend=fused"])
    chosen, line = fused.resolve(cfg, "cpu", cfg.model.build(10), (28, 28, 1))
    assert chosen.dynamics.backend == "scan"
    assert line == ("relaxation backend: scan (the fused kernel does not compile on cpu: lowering refused; the scan "
                    "kernel runs instead)")


def test_the_backend_is_resolved_once_and_named(monkeypatch):
    monkeypatch.setattr(fused, "compile_error", lambda net, shape: None)  # as on a GPU where it compiles
    cfg = compose(["dynamics.backend=auto"])
    net, shape = cfg.model.build(10), (28, 28, 1)
    assert fused.resolve(cfg, "cpu", net, shape)[0].dynamics.backend == "scan"
    chosen, line = fused.resolve(cfg, "gpu", net, shape)
    assert chosen.dynamics.backend == "fused" and line == "relaxation backend: fused (dynamics.backend=auto on gpu)"
    conv = compose(["model=convnet", "dynamics.backend=fused"])
    chosen, line = fused.resolve(conv, "gpu", conv.model.build(10), shape)
    assert chosen.dynamics.backend == "scan" and "written for MLPs" in line
    noisy = fused.resolve(compose(["dynamics.backend=fused", "dynamics.noise=0.02"]), "gpu", net, shape)[1]
    assert noisy.endswith("noisy steps run on the scan kernel)")
    bptt = fused.resolve(compose(["dynamics.backend=fused", "ep=bptt"]), "gpu", net, shape)[1]
    assert bptt == "relaxation backend: fused (dynamics.backend=fused on gpu)"  # differentiable: no fallback
