"""The benchmark's machinery (its figures belong in docs/benchmarks.md, never in a test)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hets_ep.bench import baselines, harness, sections
from hets_ep.bench.workloads import STUDY, WORKLOADS, prepare
from hets_ep.config import compose


def test_workloads_are_the_presets_they_name():
    large = STUDY["large-step preset b20"].config
    assert large == compose(["experiment=study2_large_step", "dt=lognormal"])
    assert (large.model.dynamics, large.ep.T1, large.ep.T2, large.ep.beta, large.train.batch_size) == \
        ("energy", 100, 25, 1.0, 20)
    assert STUDY["default network b32"].config == compose([])
    assert WORKLOADS["mlp 784-512-10 b1024"].batch == 1024


@pytest.mark.slow  # compiles the runner's step for several workloads (CI runs it)
def test_steps_per_batch_are_the_kernels_count():
    # Holomorphic EP with N = 4 simulates the phases k = 0, 1, 2 (k = 3 is k = 1's conjugate): a
    # count by hand of "T1 + 2 T2 for two-phase estimators" would have it wrong.
    workload = WORKLOADS["mlp 784-512-10 b128"]
    runner = harness.Runner(dataclasses.replace(workload, overrides=(*workload.overrides, "train.batch_size=8",
                                                                     "model.hidden=[32]")),
                            ep=dataclasses.replace(workload.config.ep, estimator="holomorphic", N=4),
                            model=dataclasses.replace(workload.config.model, hidden=[32], activation="steep_sigmoid"))
    assert runner.steps_per_batch == 30 + 3 * 10 and runner.compile_s > 0


def test_flops_per_sample_counts_the_products_of_both_phases():
    run, _ = prepare(dataclasses.replace(WORKLOADS["mlp 784-512-10 b128"], overrides=(
        *WORKLOADS["mlp 784-512-10 b128"].overrides, "train.batch_size=4")))
    # Drive and first-layer gradient (784×512 each), then 512×10 forward and back at each of
    # the 40 steps, plus the output layer's gradient at both states.
    assert harness.flops_per_sample(run.net, (28, 28, 1), 40) == \
        pytest.approx(2 * 2 * 784 * 512 + (2 * 40 + 2) * 2 * 512 * 10)


@pytest.mark.parametrize("workload", [WORKLOADS["mlp 784-512-10 b128"], STUDY["large-step preset b20"]],
                         ids=["leaky", "energy"])
def test_the_hand_written_step_is_the_runners_step(workload):
    # The per-step section compares the runner's kernel with this step: it must be the same update.
    import jax
    import jax.numpy as jnp

    from hets_ep.dynamics import step

    run, batch = prepare(dataclasses.replace(workload, overrides=(*workload.overrides, "train.batch_size=6")))
    net, params, dt = run.net, jax.tree.map(lambda a: a[0], run.state.params), tuple(d[0] for d in run.state.dt)
    drive = net.drive(params, batch.x[0])
    s = tuple(jax.random.uniform(jax.random.key(k), (6, *d.shape)) for k, d in enumerate(dt))
    for _ in range(3):
        expected = step(net, params, drive, s, dt, "sync")[0]
        got = baselines.hand_step(net, params, drive, s, dt)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        assert max(float(jnp.max(jnp.abs(e - a))) for e, a in zip(expected, s)) > 1e-3  # the state moved
        s = expected


@pytest.mark.slow
def test_study_throughput_is_measured_for_several_seeds_split_over_devices():
    result = sections.measure("large-step preset b20", members=2, batches=3)
    assert result["seed_samples_per_s"] > 0 and result["devices"] >= 1


@pytest.mark.slow
def test_the_quick_benchmark_runs_end_to_end(tmp_path):
    import json

    from conftest import hets_ep

    result = hets_ep("bench", "--quick", "--repeats", "1", "--out", str(tmp_path / "bench.json"), check=True)
    assert "× plain" in result.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())["kernel"]
    row = figures["workloads"]["mlp 784-512-10 b128"]
    assert row["steps_per_batch"] == 40 and row["flops_per_sample"] == pytest.approx(
        2 * 2 * 784 * 512 + (2 * 40 + 2) * 2 * 512 * 10)
    assert row["gflops"] == pytest.approx(row["flops_per_sample"] * row["samples_per_s"] / 1e9)
    assert set(figures["memory_vs_T1"]) == {"one_sided T1=30", "one_sided T1=300", "bptt T1=30", "bptt T1=300"}


@pytest.mark.slow
def test_the_per_step_section_times_every_variant():
    result = sections.per_step("large-step preset b20", rounds=2)
    assert len(result["step_s"]) == 7 and all(t > 0 for t in result["step_s"].values())
    assert result["steps_per_batch"] == 125
    assert result["train_step_s"] > result["steps_per_batch"] * min(result["step_s"].values())


@pytest.mark.slow
def test_the_gpu_section_runs_and_writes_its_figures(tmp_path):
    # scripts/gpu_bench.sh runs `hets-ep bench --gpu`; its code path is device-independent.
    import json

    from hets_ep.bench import main

    main(["--gpu", "--quick", "--repeats", "1", "--out", str(tmp_path / "gpu.json")])
    figures = json.loads((tmp_path / "gpu.json").read_text())["workloads"]
    scan, fused = figures["mlp 784-512-10 b128, scan"], figures["mlp 784-512-10 b128, fused"]
    for row in (scan, fused):  # one-sided EP, T1 30, T2 10: 40 relaxation steps a batch
        assert row["step_s"] == pytest.approx(row["batch_s"] / 40) and row["samples_per_s"] == pytest.approx(
            128 / row["batch_s"])
    assert figures["large-step preset b20 × 8 seeds"]["seed_samples_per_s"] > 0
