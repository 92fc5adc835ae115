"""Stop signals: a run and a sweep stopped by SIGINT/SIGTERM to the main process alone (as
``kill``, ``timeout``, systemd and job schedulers send them), or to the whole group (Ctrl-C),
at several moments; each ends with 128 + n and the message saying how to continue, and the same
command with ``resume=true`` ends with the metrics of an uninterrupted run.

Every test holds the work at its moment until the signal has arrived (tests/hold.py), so the
work cannot finish first, however fast or slow the machine."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import TINY, assert_metrics_agree, hets_ep, held, metrics_without_timing, start, wait_for
from hets_ep import record

pytestmark = pytest.mark.slow  # whole runs and sweeps, stopped and continued (CI runs them)

SWEEP = (*TINY, "seed=0,1,2,3,4,5", "hydra.callbacks.sweep_end.report=false")
LAUNCHERS = {"parallel": (), "basic": ("hydra/launcher=basic",), "joblib": ("hydra/launcher=joblib",
                                                                          "hydra.launcher.n_jobs=2"),
             "fused": ("hydra/launcher=stacked", "hydra.launcher.max_members=3")}  # 2 programs of 3 jobs


def _statuses(sweep, jobs: int = 6) -> list:
    return [record.read_summary(sweep / str(i)).status if (sweep / str(i) / record.SUMMARY).exists() else None
            for i in range(jobs)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep without interruption (the default launcher equals the others: test_cli)."""
    sweep = tmp_path_factory.mktemp("reference") / "sweep"
    hets_ep("train", "-m", *SWEEP, "hydra/launcher=basic", f"hydra.sweep.dir={sweep}", check=True)
    return sweep


@pytest.mark.parametrize("launcher, moment, signum", [
    ("parallel", "start", signal.SIGTERM), ("parallel", "epoch", signal.SIGTERM), ("joblib", "epoch", signal.SIGINT),
    ("basic", "epoch", signal.SIGINT), ("basic", "between", signal.SIGTERM), ("fused", "epoch", signal.SIGTERM),
])
def test_a_signal_to_the_main_process_stops_the_sweep_and_resume_finishes_it(tmp_path, reference, launcher, moment,
                                                                             signum):
    sweep, marker = tmp_path / "sweep", tmp_path / "holding"
    args = ["train", "-m", *SWEEP, *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep}"]
    proc = start(*args, *held(moment, marker))
    wait_for(marker, proc)
    proc.send_signal(signum)  # the main process only
    if moment == "epoch":  # a second signal while the jobs shut down changes nothing
        time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"hets-ep: {signal.Signals(signum).name}: the sweep stopped, each "
                                               f"running job checkpointed; continue it with the same command and "
                                               f"hydra.sweep.dir={sweep} resume=true")
    statuses = _statuses(sweep)
    assert set(statuses) <= {"completed", "interrupted", None}, statuses
    if moment == "start":
        assert statuses == [None] * 6  # no job started
    elif launcher == "fused":  # held in the first program; the second never started
        assert statuses == ["interrupted"] * 3 + [None] * 3
        assert all(len(record.read_rows(sweep / str(job))) == 1 for job in range(3))
    elif moment == "epoch":
        assert statuses[0] == "interrupted" and None in statuses  # held mid-job; later jobs never started
        assert len(record.read_rows(sweep / "0")) == 1
    else:
        assert statuses == ["completed", *[None] * 5]  # stopped between jobs 0 and 1
    hets_ep(*args, "resume=true", check=True)
    assert _statuses(sweep) == ["completed"] * 6
    for job in range(6):
        if launcher == "fused":  # one program's members: equal to runs alone to round-off
            assert_metrics_agree(sweep / str(job), reference / str(job), epochs=len(record.read_rows(reference / "0")))
        else:
            assert metrics_without_timing(sweep / str(job)) == metrics_without_timing(reference / str(job)), job


def test_ctrl_c_reaches_every_process_and_resume_finishes_the_sweep(tmp_path, reference):
    """Ctrl-C signals the whole process group: the workers stop as the main process does."""
    sweep, marker = tmp_path / "sweep", tmp_path / "holding"
    args = ["train", "-m", *SWEEP, f"hydra.sweep.dir={sweep}"]
    proc = start(*args, *held("epoch", marker), start_new_session=True)
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].endswith(f"hydra.sweep.dir={sweep} resume=true")
    statuses = _statuses(sweep)
    assert statuses[0] == "interrupted" and None in statuses, statuses
    hets_ep(*args, "resume=true", check=True)
    for job in range(6):
        assert metrics_without_timing(sweep / str(job)) == \
            metrics_without_timing(reference / str(job)), job


def test_ctrl_c_then_resume_true_continues_that_run_or_names_the_candidates(tmp_path):
    """What the interrupt message and the README promise: `resume=true` with the same command
    continues the interrupted run in its own folder (no new one) and ends as an uninterrupted
    run; with another configuration it refuses, naming the run it could continue and how the
    command differs. Runs go where `hets-ep train` puts them by default (outputs/ under the
    working directory)."""
    args = [*TINY, "train.epochs=2"]
    straight = tmp_path / "straight"
    hets_ep("train", *args, f"hydra.run.dir={straight}", check=True)
    work, marker = tmp_path / "work", tmp_path / "holding"
    work.mkdir()
    proc = start("train", *args, *held("epoch", marker), cwd=work)
    wait_for(marker, proc)  # epoch 1 is written: the run waits in epoch 2 for the signal
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    run_dir, = [p.parent for p in (work / "outputs").rglob(record.SUMMARY)]
    assert proc.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (f"hets-ep: SIGINT: run checkpointed in {run_dir}; continue it with "
                                               f"resume={run_dir}")
    assert record.read_summary(run_dir).status == "interrupted" and len(record.read_rows(run_dir)) == 1
    other = hets_ep("train", *args, "dt=lognormal", "resume=true", cwd=work)
    assert other.returncode == 2 and "no interrupted, failed or unfinished run of this configuration" in other.stderr
    assert f"{run_dir.relative_to(work)} (differs in dt.cv, dt.dist)" in other.stderr
    resumed = hets_ep("train", *args, "resume=true", cwd=work, check=True)
    assert f"continuing the run in {run_dir}" in resumed.stdout + resumed.stderr
    assert [p.parent for p in (work / "outputs").rglob(record.SUMMARY)] == [run_dir]
    assert record.read_summary(run_dir).status == "completed"
    assert metrics_without_timing(run_dir) == metrics_without_timing(straight)
    done = hets_ep("train", *args, "resume=true", cwd=work)
    assert done.returncode == 2 and "no interrupted, failed or unfinished run" in done.stderr


def test_a_signal_before_a_run_starts_leaves_nothing_to_resume(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "holding"
    proc = start("train", *TINY, f"hydra.run.dir={run_dir}", *held("start", marker))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"hets-ep: SIGTERM before the run in {run_dir} started; nothing was written"
    assert not (run_dir / record.SUMMARY).exists() and not record.holds_run(run_dir)
