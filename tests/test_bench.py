"""The benchmark's machinery (its figures belong in docs/benchmarks.md, never in a test)."""

from __future__ import annotations

import numpy as np
import pytest

from hets_ep import bench
from hets_ep.config import EPConfig


@pytest.mark.slow
def test_study_throughput_is_measured_for_several_seeds_split_over_devices():
    result = bench.measure("large-step preset b20", members=2, batches=3)
    assert result["seed_samples_per_s"] > 0 and result["devices"] >= 1


def test_flops_per_sample_counts_the_products_of_both_phases():
    net = bench._network(bench.WORKLOADS["mlp 784-512-10 b128"])
    # Drive and first-layer gradient (784×512 each), then 512×10 forward and back at each of
    # the 40 steps, plus the output layer's gradient at both states.
    assert bench.flops_per_sample(net, (28, 28, 1), EPConfig("one_sided", T1=30, T2=10)) == \
        pytest.approx(2 * 2 * 784 * 512 + (2 * 40 + 2) * 2 * 512 * 10)


@pytest.mark.slow
def test_the_quick_benchmark_runs_end_to_end(tmp_path):
    from conftest import hets_ep

    result = hets_ep("bench", "--quick", "--repeats", "1", "--out", str(tmp_path / "bench.json"), check=True)
    assert "× plain" in result.stdout and (tmp_path / "bench.json").stat().st_size > 500


@pytest.mark.parametrize("spec", [bench.WORKLOADS["mlp 784-512-10 b128"], bench.STUDY["large-step preset b20"]],
                         ids=["leaky", "energy"])
def test_the_hand_written_step_is_the_runners_step(spec):
    # The per-step section compares the runner's kernel with this step: it must be the same update.
    import jax
    import jax.numpy as jnp
    import optax

    from hets_ep.dynamics import step

    net, state, batch = bench._state({**spec, "batch": 6}, 1, optax.sgd(0.1))
    params, dt = jax.tree.map(lambda a: a[0], state.params), tuple(d[0] for d in state.dt)
    drive = net.drive(params, batch.x[0])
    s = tuple(jax.random.uniform(jax.random.key(k), (6, *d.shape)) for k, d in enumerate(dt))
    for _ in range(3):
        expected = step(net, params, drive, s, dt, "sync")[0]
        got = bench.hand_step(net, params, drive, s, dt)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        assert max(float(jnp.max(jnp.abs(e - a))) for e, a in zip(expected, s)) > 1e-3  # the state moved
        s = expected


@pytest.mark.slow
def test_the_per_step_section_times_every_variant():
    result = bench.per_step("large-step preset b20", rounds=2)
    assert len(result["step_s"]) == 7 and all(t > 0 for t in result["step_s"].values())
    assert result["train_step_s"] > result["steps_per_batch"] * min(result["step_s"].values())


@pytest.mark.slow
def test_the_gpu_section_runs_and_writes_its_figures(tmp_path):
    # scripts/gpu_bench.sh runs `hets-ep bench --gpu`; its code path is device-independent.
    import json

    bench.main(["--gpu", "--quick", "--repeats", "1", "--out", str(tmp_path / "gpu.json")])
    figures = json.loads((tmp_path / "gpu.json").read_text())["workloads"]
    assert figures["mlp 784-512-10 b128"]["samples_per_s"] > 0
    assert figures["large-step preset b20 × 8 seeds"]["seed_samples_per_s"] > 0
