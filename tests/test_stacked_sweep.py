"""`hydra/launcher=stacked`: jobs that differ only in keys held per member (seed, dt, β, the
learning-rate scale) run as one program, each writing its own run folder and record as if it ran
alone; the others run alone, and the command says which were stacked and why the others were not."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, assert_metrics_agree, hets_ep, train_here
from hets_ep import stacked_sweep, record
from hets_ep.config import compose
from hets_ep.errors import HetsEpError

SMALL = (*TINY, "dataset.subset=320", "dataset.test_subset=300", "train.epochs=2", "dt.cv=0.3",
         "hydra.callbacks.sweep_end.report=false")


def test_jobs_group_by_everything_but_the_keys_held_per_member():
    configs = [compose([f"seed={s}", f"dt={d}", f"ep.T2={t}"]) for t in (10, 20) for d in ("scalar", "lognormal")
               for s in (0, 1)]
    assert stacked_sweep.groups(configs, 64) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert stacked_sweep.groups(configs, 3) == [[0, 1, 2], [3], [4, 5, 6], [7]]
    assert stacked_sweep.explain(configs[:4], [[0, 1, 2], [3]])[2] == \
        "  job 3: alone (the program of the jobs like it is full: hydra.launcher.max_members)"
    lines = stacked_sweep.explain(configs[:5], stacked_sweep.groups(configs[:5], 64))
    assert lines[1] == "  jobs 0, 1, 2, 3: one program (4 members; they differ only in dt.cv, dt.dist, seed)"
    assert lines[2] == "  job 4: alone (it differs from every other job in ep.T2)"
    knobs = [compose([f"ep.beta={b}", f"optimizer.lr_scale={r}"]) for b in (0.5, 0.2) for r in (1, 2)]
    assert stacked_sweep.groups(knobs, 64) == [[0, 1, 2, 3]]
    assert stacked_sweep.explain(knobs, [[0, 1, 2, 3]])[1].endswith("they differ only in ep.beta, optimizer.lr_scale)")
    # a redraw every batch is a step of another program
    redraw = [compose(["dt=lognormal", f"dt.redraw={r}"]) for r in ("batch", "none")]
    assert stacked_sweep.groups(redraw, 64) == [[0], [1]]
    parallel = compose(["train.parallel_seeds=2"])
    assert stacked_sweep.groups([parallel, compose([])], 64) == [[0], [1]]


@pytest.mark.slow  # two short runs (CI runs it)
def test_a_program_of_other_members_does_not_resume_from_the_checkpoints(tmp_path):
    """A sweep grouped otherwise on resume (another hydra.launcher.max_members) would restore a
    checkpoint of other members: refused in one line, the checkpoints left where they are."""
    small = ("dataset.subset=128", "dataset.test_subset=100", "train.batch_size=32", "train.epochs=1")
    train_here(tmp_path, *small, "train.parallel_seeds=2")
    steps_before = sorted(p.name for p in (tmp_path / record.CHECKPOINTS).iterdir())
    with pytest.raises(HetsEpError, match="hold 2 members and this run has 3: a stacked sweep resumes with"):
        train_here(tmp_path, *small, "train.parallel_seeds=3", "resume=true", "train.epochs=2")
    assert sorted(p.name for p in (tmp_path / record.CHECKPOINTS).iterdir()) == steps_before
    assert not (tmp_path / f"{record.CHECKPOINTS}.corrupt").exists()


@pytest.mark.slow  # a stacked sweep and the same jobs one after another (CI runs it)
def test_a_stacked_sweep_writes_what_separate_jobs_write(tmp_path):
    args = ("-m", *SMALL, "model.hidden=[64]", "seed=0,1", "dt=lognormal", "dt.mean=0.3,0.5", "ep.beta=0.5,0.2",
            "optimizer.lr_scale=1,2")
    fused = hets_ep("train", *args, "hydra/launcher=stacked", "hydra.launcher.max_members=8",
                    f"hydra.sweep.dir={tmp_path / 'fused'}", check=True)
    assert "stacked sweep: 16 jobs in 2 programs" in fused.stdout
    assert "jobs 8, 9, 10, 11, 12, 13, 14, 15: one program (8 members; they differ only in dt.mean, ep.beta, " \
           "optimizer.lr_scale)" in fused.stdout
    assert "job 13 (seed=1 dt.mean=0.5 ep.beta=0.5 optimizer.lr_scale=2): seed 1 completed" in fused.stdout + fused.stderr
    hets_ep("train", *args, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'basic'}", check=True)
    for job in range(16):
        a, b = (tmp_path / k / str(job) for k in ("fused", "basic"))
        assert (a / record.CONFIG).read_text() == (b / record.CONFIG).read_text()
        assert_metrics_agree(a, b, epochs=2)
        sa, sb = (json.loads((d / record.SUMMARY).read_text()) for d in (a, b))
        assert (sa["seed"], sa["dt"], sa["status"]) == (sb["seed"], sb["dt"], sb["status"])
