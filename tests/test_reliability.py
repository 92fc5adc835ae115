"""Hardening: determinism, crash recovery, corrupt checkpoints, unwritable outputs, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY, hets_ep, metrics_without_timing, train_here
from hets_ep import cli, preflight, record
from hets_ep.errors import ConfigError
from hets_ep.data import train_batches
from hets_ep.errors import HetsEpError
from hets_ep.lock import run_lock



@pytest.mark.slow
def test_same_config_same_metrics_other_seed_other_run(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_here(tmp_path / name, "train.epochs=1", "dt=lognormal", "dt.cv=0.3", f"seed={seed}")
    a, b, c = (metrics_without_timing(tmp_path / n) for n in "abc")
    assert a == b and a != c
    dts = [np.load(tmp_path / n / record.DT)["layer0"] for n in "abc"]
    assert np.array_equal(dts[0], dts[1]) and not np.array_equal(dts[0], dts[2])
    assert not np.array_equal(train_batches(1000, 32, 0, 0)[0], train_batches(1000, 32, 1, 0)[0])


def _corrupt(step_dir):
    for path in (step_dir / "tree").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")


@pytest.mark.slow  # three short runs (CI runs it); the default suite keeps the all-corrupt case below
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    args = ("optimizer.schedule=constant",)  # extending a run must not move the schedule's horizon
    train_here(straight, *args, "train.epochs=3")
    train_here(run_dir, *args, "train.epochs=2")
    steps = sorted(int(p.name) for p in (run_dir / record.CHECKPOINTS).iterdir() if p.name.isdigit())
    _corrupt(run_dir / record.CHECKPOINTS / str(steps[-1]))
    train_here(run_dir, *args, "train.epochs=3", "resume=true")
    assert f"checkpoint step {steps[-1]} is unreadable" in caplog.text
    assert (run_dir / "checkpoints.corrupt" / str(steps[-1])).is_dir()
    assert metrics_without_timing(run_dir) == metrics_without_timing(straight)


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    train_here(tmp_path, "train.epochs=1")
    for step_dir in (tmp_path / record.CHECKPOINTS).iterdir():
        _corrupt(step_dir)
    before = (tmp_path / record.METRICS).read_text()
    with pytest.raises(HetsEpError, match="none of the checkpoints"):
        train_here(tmp_path, "train.epochs=2", "resume=true")
    assert (tmp_path / record.METRICS).read_text() == before


def _fails(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert f"cannot write run outputs under {blocker / 'run'}" in _fails(
        capsys, "train", *TINY, f"hydra.run.dir={blocker / 'run'}")


def test_nearly_full_disk_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(preflight, "MIN_FREE_BYTES", 2**70)
    with pytest.raises(ConfigError, match="MiB free under"):
        preflight.check_output_dir(tmp_path / "run", continuing=False, sweep=False)


def test_a_sweep_into_a_used_sweep_directory_is_refused(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    train_here(sweep / "0", "train.epochs=1")
    before = (sweep / "0" / record.METRICS).read_text()
    assert "already holds a run" in _fails(capsys, "train", "-m", *TINY, "seed=5,6", f"hydra.sweep.dir={sweep}")
    assert (sweep / "0" / record.METRICS).read_text() == before


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Kill -9 at random moments of an epoch (training, evaluation, checkpoint write): each time
    the process has finished a new epoch, it is killed at a random point of the next one (a
    uniform share of the last epoch's duration, so the moment is inside the epoch on any machine);
    then resumed."""
    args = [*TINY, "dataset.subset=6000", "model.hidden=[512]", "ep.T1=60", "ep.T2=20", "train.epochs=24",
            "train.batch_size=16", "train.eval_batch_size=500"]
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    hets_ep("train", *args, f"hydra.run.dir={straight}", check=True)
    metrics = run_dir / "metrics.jsonl"
    epochs_done = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0  # noqa: E731
    rng, kills = random.Random(0), 0
    while True:
        start = epochs_done()
        proc = subprocess.Popen([sys.executable, "-m", "hets_ep", "train", *args, "resume=true",
                                 f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kills >= 10:
            _, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-2000:]
            break
        while proc.poll() is None and epochs_done() <= start:
            time.sleep(0.02)
        epoch_s = json.loads(metrics.read_text().splitlines()[-1])["epoch_time_s"]
        assert proc.poll() is None, f"the run ended before it could be killed {10 - kills} more times"
        time.sleep(rng.uniform(0.0, 0.9 * epoch_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and kills >= 10
    assert metrics_without_timing(run_dir) == metrics_without_timing(straight)
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()


def test_a_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    (tmp_path / record.LOCK).write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(HetsEpError, match=f"is in use by process {os.getpid()}"):
        with run_lock(tmp_path):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / record.LOCK).write_text(str(dead.pid))
    with run_lock(tmp_path):
        assert (tmp_path / record.LOCK).read_text() == str(os.getpid())
    assert not (tmp_path / record.LOCK).exists()
