"""The benchmark's machinery (its figures belong in docs/benchmarks.md, never in a test)."""

from __future__ import annotations

import pytest

from hets_ep import bench
from hets_ep.config import EPConfig


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
