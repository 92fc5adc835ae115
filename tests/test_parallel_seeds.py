"""`train.parallel_seeds=K`: K seeds in one program give the runs K separate processes give
(the same training; evaluation sums may differ in the last digits), with the seeds spread over
the CPU's cores."""

from __future__ import annotations

import pytest

from conftest import TINY, hets_ep, metrics_without_timing
from hets_ep import record

pytestmark = pytest.mark.slow  # separate runs and parallel ones of the same seeds (CI runs them)


def _assert_same_run(a, b):
    rows_a, rows_b = metrics_without_timing(a), metrics_without_timing(b)
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b] == [1, 2]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys() and ra["lr"] == rb["lr"]
        for key in ra.keys() - {"lr"}:
            assert ra[key] == (rb[key] if rb[key] is None else pytest.approx(rb[key], rel=1e-4, abs=1e-6)), key

ARGS = (*TINY, "dataset.subset=2000", "dt=lognormal", "dt.cv=0.3")


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """``separate(seed)``: that seed's run as its own process, made when first asked for."""
    root = tmp_path_factory.mktemp("separate")

    def run(seed: int):
        path = root / str(seed)
        if not path.exists():
            hets_ep("train", *ARGS, f"seed={seed}", f"hydra.run.dir={path}", check=True)
        return path

    return run


@pytest.mark.parametrize("seeds", [3, 2])
def test_parallel_seeds_equal_separate_runs(separate, tmp_path, seeds):
    """Two seeds split the 2-core CPU into two devices, one seed each; three seeds share one."""
    result = hets_ep("train", *ARGS, "seed=4", f"train.parallel_seeds={seeds}", f"hydra.run.dir={tmp_path}",
                     check=True)
    assert ("sharding the members axis across 2 devices" in result.stdout + result.stderr) == (seeds == 2)
    for seed in (4, 5, 6)[:seeds]:
        member = tmp_path / f"seed_{seed}"
        summary = record.read_summary(member)
        assert summary.seed == seed and summary.status == "completed"
        assert f"outputs in {member}" in result.stdout + result.stderr
        assert "seed: %d" % seed in (member / record.CONFIG).read_text()
        assert (member / record.DT).read_bytes() == (separate(seed) / record.DT).read_bytes()
        _assert_same_run(member, separate(seed))


def test_one_seed_on_a_split_cpu_is_not_sharded(separate, tmp_path):
    """On CPU devices only the seeds are sharded (batch sharding needs XLA's CPU collectives)."""
    result = hets_ep("train", *ARGS, "seed=4", f"hydra.run.dir={tmp_path}", check=True,
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert "seeds do not divide evenly across them: running unsharded" in result.stdout + result.stderr
    _assert_same_run(tmp_path, separate(4))


MODERN = (*TINY, "dataset.subset=1000", "dt=lognormal", "dynamics.update_order=async", "dynamics.noise=0.02",
          "ep.tol=1e-3", "ep.T1=100", "ep.T2=30", "dynamics.integrator=exact")


def test_the_new_options_with_parallel_seeds_equal_separate_runs(tmp_path):
    """Relaxation to a tolerance stops each seed at its own step count inside one program; each
    seed draws its own noise."""
    for seed in (7, 8):
        hets_ep("train", *MODERN, f"seed={seed}", f"hydra.run.dir={tmp_path / str(seed)}", check=True)
    hets_ep("train", *MODERN, "seed=7", "train.parallel_seeds=2", f"hydra.run.dir={tmp_path / 'both'}", check=True)
    for seed in (7, 8):
        _assert_same_run(tmp_path / "both" / f"seed_{seed}", tmp_path / str(seed))
