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

from conftest import TINY, hets_ep, held, metrics_without_timing, start, wait_for
from hets_ep import record

pytestmark = pytest.mark.slow  # whole runs and sweeps, stopped and continued (CI runs them)

SWEEP = (*TINY, "seed=0,1,2,3,4,5", "hydra.callbacks.sweep_end.report=false")
LAUNCHERS = {"parallel": (), "basic": ("hydra/launcher=basic",), "joblib": ("hydra/launcher=joblib",
                                                                          "hydra.launcher.n_jobs=2")}


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
    ("basic", "epoch", signal.SIGINT), ("basic", "between", signal.SIGTERM),
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
    elif moment == "epoch":
        assert statuses[0] == "interrupted" and None in statuses  # held mid-job; later jobs never started
        assert len(record.read_rows(sweep / "0")) == 1
    else:
        assert statuses == ["completed", *[None] * 5]  # stopped between jobs 0 and 1
    hets_ep(*args, "resume=true", check=True)
    assert _statuses(sweep) == ["completed"] * 6
    for job in range(6):
        assert metrics_without_timing(sweep / str(job) / record.METRICS) == \
            metrics_without_timing(reference / str(job) / record.METRICS), job


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
        assert metrics_without_timing(sweep / str(job) / record.METRICS) == \
            metrics_without_timing(reference / str(job) / record.METRICS), job


def test_sigterm_to_a_run_checkpoints_mid_run_and_resume_is_exact(tmp_path):
    args = [*TINY, "train.epochs=2"]
    straight = tmp_path / "straight"
    hets_ep("train", *args, f"hydra.run.dir={straight}", check=True)
    run_dir, marker = tmp_path / "interrupted", tmp_path / "holding"
    proc = start("train", *args, f"hydra.run.dir={run_dir}", *held("epoch", marker))
    wait_for(marker, proc)  # epoch 1 is written: the run waits in epoch 2 for the signal
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (f"hets-ep: SIGTERM: run checkpointed in {run_dir}; continue it with "
                                               f"resume={run_dir}")
    assert record.read_summary(run_dir).status == "interrupted" and len(record.read_rows(run_dir)) == 1
    hets_ep("train", *args, f"hydra.run.dir={run_dir}", "resume=true", check=True)
    assert record.read_summary(run_dir).status == "completed"
    assert metrics_without_timing(run_dir / record.METRICS) == metrics_without_timing(straight / record.METRICS)


def test_a_signal_before_a_run_starts_leaves_nothing_to_resume(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "holding"
    proc = start("train", *TINY, f"hydra.run.dir={run_dir}", *held("start", marker))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"hets-ep: SIGTERM before the run in {run_dir} started; nothing was written"
    assert not (run_dir / record.SUMMARY).exists() and not record.holds_run(run_dir)
