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

from conftest import ROOT, TINY, hets_ep, metrics_without_timing
from hets_ep.data import train_batches


def test_same_config_same_metrics_other_seed_other_run(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        hets_ep("train", *TINY, "train.epochs=1", "dt=lognormal", f"seed={seed}", f"hydra.run.dir={tmp_path / name}",
                check=True)
    a, b, c = (metrics_without_timing(tmp_path / n / "metrics.jsonl") for n in "abc")
    assert a == b and a != c
    dts = [np.load(tmp_path / n / "dt.npz")["layer0"] for n in "abc"]
    assert np.array_equal(dts[0], dts[1]) and not np.array_equal(dts[0], dts[2])
    assert not np.array_equal(train_batches(1000, 32, 0, 0)[0], train_batches(1000, 32, 1, 0)[0])


def _corrupt(step_dir):
    for path in (step_dir / "tree").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    args = (*TINY, "optimizer.schedule=constant")  # extending a run must not move the schedule's horizon
    hets_ep("train", *args, "train.epochs=3", f"hydra.run.dir={straight}", check=True)
    hets_ep("train", *args, "train.epochs=2", f"hydra.run.dir={run_dir}", check=True)
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    _corrupt(run_dir / "checkpoints" / str(steps[-1]))
    result = hets_ep("train", *args, "train.epochs=3", "resume=true", f"hydra.run.dir={run_dir}", check=True)
    assert f"checkpoint step {steps[-1]} is unreadable" in result.stdout + result.stderr
    assert (run_dir / "checkpoints.corrupt" / str(steps[-1])).is_dir()
    assert metrics_without_timing(run_dir / "metrics.jsonl") == metrics_without_timing(straight / "metrics.jsonl")


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    run_dir = tmp_path / "run"
    hets_ep("train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}", check=True)
    for step_dir in (run_dir / "checkpoints").iterdir():
        _corrupt(step_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    result = hets_ep("train", *TINY, "train.epochs=2", "resume=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "none of the checkpoints" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hets-ep: error: ")
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = hets_ep("train", *TINY, f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and f"cannot write run outputs under {blocker / 'run'}" in result.stderr


def test_nearly_full_disk_fails_before_training(monkeypatch, capsys, tmp_path):
    from hets_ep import cli

    monkeypatch.setattr(cli, "MIN_FREE_BYTES", 2**70)
    with pytest.raises(SystemExit) as exit_info:
        cli.check_output_dir([f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2 and "MiB free under" in capsys.readouterr().err


def test_a_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(str(os.getpid()))  # a live process holds it
    busy = hets_ep("train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}")
    assert busy.returncode == 2 and f"is in use by process {os.getpid()}" in busy.stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(str(dead.pid))
    hets_ep("train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}", check=True)
    assert not (run_dir / ".lock").exists()


def test_two_sweeps_into_one_directory_do_not_overwrite(tmp_path):
    sweep = tmp_path / "sweep"
    hets_ep("train", "-m", *TINY, "train.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}", check=True)
    before = {p: p.read_text() for p in sweep.rglob("metrics.jsonl")}
    again = hets_ep("train", "-m", *TINY, "train.epochs=1", "seed=5,6", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert {p: p.read_text() for p in sweep.rglob("metrics.jsonl")} == before


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Kill -9 at random moments of an epoch (training, evaluation, checkpoint write): each time
    the process has finished a new epoch, it is killed 0–1 s later; then resumed."""
    args = [*TINY, "dataset.subset=6000", "model.hidden=[512]", "ep.T1=60", "ep.T2=20", "train.epochs=24",
            "train.batch_size=16", "train.eval_batch_size=500"]
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    hets_ep("train", *args, f"hydra.run.dir={straight}", check=True)
    metrics = run_dir / "metrics.jsonl"
    epochs_done = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0  # noqa: E731
    rng, kills = random.Random(0), 0
    while True:
        start = epochs_done()
        proc = subprocess.Popen([sys.executable, "-m", "hets_ep.cli", "train", *args, "resume=true",
                                 f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kills >= 10:
            _, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-2000:]
            break
        while proc.poll() is None and epochs_done() <= start:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed {10 - kills} more times"
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and kills >= 10
    assert metrics_without_timing(metrics) == metrics_without_timing(straight / "metrics.jsonl")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()
