"""`hets-ep train`: outputs, validation, multirun, divergence, interruption and exact resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, TINY, assert_close_trees, hets_ep, metrics_without_timing
from hets_ep.config import compose
from hets_ep.train import Run


def test_tiny_run_writes_everything_and_learns(tmp_path):
    run_dir = tmp_path / "run"
    hets_ep("train", *TINY, f"hydra.run.dir={run_dir}", check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert summary["best_test_acc"] > 0.6  # 1000 MNIST images, 2 epochs: well above chance (0.1)
    assert summary["dt"]["distribution"] == "scalar" and summary["versions"]["jax"] == jax.__version__
    for key in ("test_residual", "test_unconverged", "test_oscillation", "samples_per_s", "lr", "drawdown"):
        assert key in rows[-1]
    dt = np.load(run_dir / "dt.npz")
    assert [dt[k].shape for k in sorted(dt.files)] == [(64,), (10,)]
    assert (run_dir / "plots" / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    assert any((run_dir / "checkpoints").iterdir())
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize("override, message", [
    ("dt.mean=-1", "dt.mean: must be > 0"),
    ("dt=foo", "Could not find 'dt/foo'; choose one of gamma, layerwise, lognormal, normal, scalar, uniform"),
    ("foo=1", "Could not override 'foo'"),
    ("+dt.foo=1", "dt.foo: Key 'foo' not in 'DtSpec'"),
    ("ep.T1=0", "ep.T1 and ep.T2 must be in [1, 1000000]"),
    ("ep.beta=0", "ep.beta must be a finite number > 0"),
    ("train.batch_size=0", "train.batch_size must be in [1, 1000000]"),
    ("dt.mean=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("model.activation=relu", "choose one of hard_sigmoid, steep_sigmoid, tanh"),
])
def test_bad_config_fails_early_with_one_line(tmp_path, override, message):
    run_dir = tmp_path / "run"
    result = hets_ep("train", *TINY, override, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("hets-ep: error: ") and message in result.stderr, result.stderr
    assert not run_dir.exists()  # nothing was started


def test_bad_value_deep_in_a_sweep_fails_before_any_job(tmp_path):
    result = hets_ep("train", "-m", *TINY, "seed=0,1", "dt.mean=0.5,7", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "dt.mean: 7.0 must lie in" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_sweep_validation_checks_combinations(tmp_path, capsys):
    from hets_ep.cli import precheck

    precheck(["-m", *TINY, "seed=0,1,2", "dt=uniform,gamma", "dt.cv=0.25,0.5"])  # every combination is valid
    with pytest.raises(SystemExit) as exit_info:
        precheck(["-m", *TINY, "dt=uniform,gamma", "dt.cv=0.25,-1"])
    assert exit_info.value.code == 2 and "dt.cv: must be >= 0" in capsys.readouterr().err
    usage = hets_ep("train", "-m", *TINY, "dt=uniform,gamma", "--cfg", "job")
    assert usage.returncode == 2 and "Only one of --run, --multirun, --cfg" in usage.stderr  # Hydra's, one line
    bad = hets_ep("train", "-m", *TINY, "dt=scalar,lognormal", "dt.cv=0.5", f"hydra.sweep.dir={tmp_path / 's'}")
    assert bad.returncode == 2 and "dt.cv: scalar dt has cv 0" in bad.stderr
    assert not (tmp_path / "s").exists()


def test_multirun_with_joblib_and_a_diverging_job(tmp_path):
    """Job 1 flags |s| > 0.5 as an exploding state (hard-sigmoid states reach 1): it stops as
    diverged, and the sweep goes on."""
    sweep = tmp_path / "sweep"
    result = hets_ep("train", "-m", *TINY, "train.epochs=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "train.explode_threshold=1000,0.5", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "diverged"]
    assert summaries[1]["stability"]["diverged_epoch"] == 1


def test_nan_weights_stop_the_run_as_diverged(tmp_path):
    run = Run(compose([*TINY[1:], "train.progress=false"]), tmp_path)
    run.params["params"]["layers_1"]["kernel"] = run.params["params"]["layers_1"]["kernel"].at[0, 0, 0].set(np.nan)
    summary, = run.train()
    assert summary["status"] == "diverged" and summary["stability"]["diverged_epoch"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    result = hets_ep("train", "-m", *TINY, "train.epochs=1", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=5", "seed=3", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 3


def _wait_for(path, proc, timeout=300):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < timeout
        time.sleep(0.05)


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path):
    args = [*TINY, "dataset.subset=6000", "train.epochs=3", "train.batch_size=16"]
    straight = tmp_path / "straight"
    hets_ep("train", *args, f"hydra.run.dir={straight}", check=True)

    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "hets_ep.cli", "train", *args, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "metrics.jsonl", proc)  # epoch 1 is done: the signal lands in epoch 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"

    hets_ep("train", *args, f"hydra.run.dir={run_dir}", "resume=true", check=True)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert metrics_without_timing(run_dir / "metrics.jsonl") == metrics_without_timing(straight / "metrics.jsonl")


def test_rerun_into_a_used_directory_needs_resume(tmp_path):
    run_dir = tmp_path / "run"
    hets_ep("train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}", check=True)
    before = (run_dir / "metrics.jsonl").read_text()
    again = hets_ep("train", *TINY, "train.epochs=1", "dt=gamma", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2 and "already holds a run; pass resume=true" in again.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert "dist: scalar" in (run_dir / ".hydra" / "config.yaml").read_text()  # not overwritten


def test_resume_by_path_extends_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    hets_ep("train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}", check=True)
    result = hets_ep("train", "train.epochs=2", "train.progress=false", f"resume={run_dir}",
                     f"hydra.run.dir={tmp_path / 'second'}", check=True)
    assert result.returncode == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    conflict = hets_ep("train", "dt=gamma", f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'third'}")
    assert conflict.returncode == 2 and "changes dt" in conflict.stderr


def test_seed_pairs_weights_and_data_across_dt_conditions(tmp_path):
    base = ["dataset.subset=100", f"dataset.root={TINY[1].split('=', 1)[1]}", "model.hidden=[16]"]
    runs = [Run(compose([*base, *extra]), tmp_path / str(i))
            for i, extra in enumerate([[], ["dt=lognormal"], ["dt=gamma", "dt.cv=0.3"], ["seed=1"]])]
    for other in runs[1:3]:
        assert_close_trees(runs[0].params, other.params)
        assert not all(np.array_equal(a, b) for a, b in zip(runs[0].dt, other.dt))
    assert not np.allclose(runs[0].params["params"]["layers_0"]["kernel"],
                           runs[3].params["params"]["layers_0"]["kernel"])


def test_command_line_basics():
    alone = hets_ep()
    assert alone.returncode == 2 and "usage: hets-ep COMMAND" in alone.stderr
    unknown = hets_ep("fly")
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr
    cfg = hets_ep("train", "--cfg", "job", "dt=lognormal", "dt.cv=0.25", check=True)
    assert "dist: lognormal" in cfg.stdout and "cv: 0.25" in cfg.stdout
    assert "hets-ep train" in hets_ep("train", "--help", check=True).stdout


def test_gradcheck_command(tmp_path):
    result = hets_ep("gradcheck", f"dataset.root={TINY[1].split('=', 1)[1]}", "model.hidden=[64]",
                     "model.activation=steep_sigmoid", "ep.T1=200", "ep.T2=100", "ep.beta=0.05",
                     "gradcheck.batch_size=16", f"hydra.run.dir={tmp_path}", check=True)
    report = json.loads((tmp_path / "gradcheck.json").read_text())
    assert set(report["estimators"]) == {"one_sided", "random_sign", "symmetric"}
    assert min(v["cosine"] for v in report["estimators"]["symmetric"].values()) > 0.99
    assert "symmetric" in result.stdout


def test_gradient_cosine_probe_each_epoch(tmp_path):
    hets_ep("train", *TINY, "model.activation=steep_sigmoid", "stability.gradcheck_every=1", "ep.T1=60", "ep.T2=30",
            "ep.beta=0.05", f"hydra.run.dir={tmp_path}", check=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0.9 < r["gradcheck_min_cosine"] <= r["gradcheck_mean_cosine"] <= 1.0 + 1e-9 for r in rows), rows
