"""`hydra/launcher=fused`: jobs that differ only in seed and dt run as one program, each writing
its own run folder and record as if it ran alone; the others run alone, and the command says
which were fused and why the others were not."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, hets_ep, metrics_without_timing
from hets_ep import fused_sweep, record
from hets_ep.config import compose

SMALL = (*TINY, "dataset.subset=320", "dataset.test_subset=300", "train.epochs=2", "dt.cv=0.3",
         "hydra.callbacks.sweep_end.report=false")


def test_jobs_group_by_everything_but_seed_and_dt():
    configs = [compose([f"seed={s}", f"dt={d}", f"ep.beta={b}"]) for b in (0.5, 0.2) for d in ("scalar", "lognormal")
               for s in (0, 1)]
    assert fused_sweep.groups(configs, 64) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert fused_sweep.groups(configs, 3) == [[0, 1, 2], [3], [4, 5, 6], [7]]
    lines = fused_sweep.explain(configs[:5], fused_sweep.groups(configs[:5], 64))
    assert lines[1] == "  jobs 0, 1, 2, 3: one program (4 members; they differ only in seed and dt)"
    assert lines[2] == "  job 4: alone (it differs from every other job in ep.beta)"
    parallel = compose(["train.parallel_seeds=2"])
    assert fused_sweep.groups([parallel, compose([])], 64) == [[0], [1]]


@pytest.mark.slow  # a fused sweep and the same jobs one after another (CI runs it)
def test_a_fused_sweep_writes_what_separate_jobs_write(tmp_path):
    args = ("-m", *SMALL, "model.hidden=[64]", "seed=0,1", "dt=lognormal", "dt.mean=0.3,0.5", "ep.beta=0.5,0.2")
    fused = hets_ep("train", *args, "hydra/launcher=fused", f"hydra.sweep.dir={tmp_path / 'fused'}", check=True)
    assert "fused sweep: 8 jobs in 2 programs" in fused.stdout
    assert "job 6 (seed=1 dt.mean=0.5 ep.beta=0.5): seed 1 completed" in fused.stdout + fused.stderr
    hets_ep("train", *args, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'basic'}", check=True)
    for job in range(8):
        a, b = (tmp_path / k / str(job) for k in ("fused", "basic"))
        assert (a / record.CONFIG).read_text() == (b / record.CONFIG).read_text()
        rows_a, rows_b = metrics_without_timing(a), metrics_without_timing(b)
        assert len(rows_a) == len(rows_b) == 2
        for ra, rb in zip(rows_a, rows_b):
            for key, value in rb.items():
                if not isinstance(value, float):
                    assert ra[key] == value, (job, key)
                    continue
                # the oscillation count thresholds tiny increments: float round-off of another
                # program (members batched and sharded) moves a few of its flips
                assert ra[key] == pytest.approx(value, rel=1e-2 if key == "test_oscillation" else 1e-5, abs=1e-7), \
                    (job, key)
        sa, sb = (json.loads((d / record.SUMMARY).read_text()) for d in (a, b))
        assert (sa["seed"], sa["dt"], sa["status"]) == (sb["seed"], sb["dt"], sb["status"])
