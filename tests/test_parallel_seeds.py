"""`train.parallel_seeds=K`: K seeds in one program equal K separate runs; sharding across devices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY, hets_ep, metrics_without_timing

ARGS = (*TINY, "dataset.subset=2000")


def _compare(a, b):
    rows_a, rows_b = metrics_without_timing(a), metrics_without_timing(b)
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        assert ra["epoch"] == rb["epoch"]
        for key in ("train_acc", "test_acc"):
            assert ra[key] == pytest.approx(rb[key], abs=2e-3), key  # a few predictions may flip
        for key in ("train_loss", "test_loss", "test_step_residual"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-3), key


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    root = tmp_path_factory.mktemp("separate")
    hets_ep("train", "-m", *ARGS, "seed=4,5,6", "dt=lognormal", f"hydra.sweep.dir={root}", check=True)
    return root


def test_parallel_seeds_equal_separate_runs(separate, tmp_path):
    hets_ep("train", *ARGS, "seed=4", "dt=lognormal", "train.parallel_seeds=3", f"hydra.run.dir={tmp_path}",
            check=True)
    for i, seed in enumerate((4, 5, 6)):
        member = tmp_path / f"seed_{seed}"
        summary = json.loads((member / "summary.json").read_text())
        assert summary["seed"] == seed and summary["status"] == "completed"
        assert "seed: %d" % seed in (member / ".hydra" / "config.yaml").read_text()
        with np.load(member / "dt.npz") as a, np.load(separate / str(i) / "dt.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
        _compare(member / "metrics.jsonl", separate / str(i) / "metrics.jsonl")


def test_sharded_over_two_cpu_devices(separate, tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for seeds, where in ((2, "members"), (1, "batch")):
        run_dir = tmp_path / where
        result = hets_ep("train", *ARGS, "seed=4", "dt=lognormal", f"train.parallel_seeds={seeds}",
                         f"hydra.run.dir={run_dir}", env=env, check=True)
        assert f"sharding the {where} axis across 2 devices" in result.stdout + result.stderr
        first = run_dir / "seed_4" if seeds > 1 else run_dir
        _compare(first / "metrics.jsonl", separate / "0" / "metrics.jsonl")
