"""The run lifecycle (in process): outputs, divergence, pairing by seed, the gradient probe,
interruption and exact resume."""

from __future__ import annotations

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from conftest import MNIST_ROOT, TINY, assert_close_trees, train_here
from hets_ep import record
from hets_ep.config import compose
from hets_ep.runtime import RunInterrupted
from hets_ep.train import Trainer, train


def _without_timing(run_dir):
    return [{k: v for k, v in dataclasses.asdict(r).items() if k not in ("epoch_time_s", "samples_per_s")}
            for r in record.read_rows(run_dir)]


def test_tiny_run_writes_every_record_and_learns(tmp_path):
    summary, = train_here(tmp_path)
    run = record.RunRecord(tmp_path, {}, record.read_summary(tmp_path), record.read_rows(tmp_path))
    assert [r.epoch for r in run.rows] == [1, 2]
    assert run.summary == summary and summary.status == "completed" and summary.epochs_completed == 2
    assert summary.version == record.RECORD_VERSION
    assert summary.best_test_acc > 0.6  # 1000 MNIST images, 2 epochs: well above chance (0.1)
    assert summary.dt["distribution"] == "scalar" and summary.versions["jax"] == jax.__version__
    with np.load(tmp_path / record.DT) as dt:
        assert [dt[k].shape for k in sorted(dt.files)] == [(64,), (10,)]
    assert (tmp_path / record.LEARNING_CURVE).stat().st_size > 1000
    assert any((tmp_path / record.CHECKPOINTS).iterdir())
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / record.LOCK).exists()


def test_nan_weights_stop_the_run_as_diverged(tmp_path):
    trainer = Trainer(compose(TINY), tmp_path)
    kernel = trainer.state.params["params"]["layers_1"]["kernel"]
    trainer.state = trainer.state._replace(params={"params": {**trainer.state.params["params"], "layers_1": {
        **trainer.state.params["params"]["layers_1"], "kernel": kernel.at[0, 0, 0].set(np.nan)}}})
    summary, = trainer.fit()
    assert summary.status == "diverged" and summary.stability["diverged_epoch"] == 1
    assert record.read_summary(tmp_path).status == "diverged"


def test_seed_pairs_weights_and_data_across_dt_conditions(tmp_path):
    base = ["dataset.subset=100", f"dataset.root={MNIST_ROOT}", "model.hidden=[16]"]
    runs = [Trainer(compose([*base, *extra]), tmp_path / str(i))
            for i, extra in enumerate([[], ["dt=lognormal", "dt.cv=0.3"], ["dt=gamma", "dt.cv=0.3"], ["seed=1"]])]
    for other in runs[1:3]:
        assert_close_trees(runs[0].state.params, other.state.params)
        assert not all(np.array_equal(a, b) for a, b in zip(runs[0].state.dt, other.state.dt))
    assert not np.allclose(runs[0].state.params["params"]["layers_0"]["kernel"],
                           runs[3].state.params["params"]["layers_0"]["kernel"])


def test_gradient_cosine_probe_each_epoch(tmp_path):
    train_here(tmp_path, "model.activation=steep_sigmoid", "stability.gradcheck_every=1", "ep.T1=60", "ep.T2=30",
               "ep.beta=0.05")
    rows = record.read_rows(tmp_path)
    assert all(0.9 < r.gradcheck_min_cosine <= r.gradcheck_mean_cosine <= 1.0 + 1e-9 for r in rows), rows


def test_sigterm_mid_epoch_checkpoints_and_resume_is_exact(tmp_path):
    args = ("dataset.subset=3000", "train.epochs=3", "train.batch_size=16")
    train_here(tmp_path / "straight", *args)
    run_dir = tmp_path / "interrupted"
    trainer = Trainer(compose([*TINY, *args]), run_dir)
    original = trainer._train_batch

    def train_batch(orders):  # SIGTERM to ourselves half-way through epoch 2
        original(orders)
        if trainer.epoch == 1 and trainer.batch == 90:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer._train_batch = train_batch
    with pytest.raises(RunInterrupted) as interrupted:
        trainer.fit()
    trainer.checkpoints.close()
    assert interrupted.value.exit_code == 128 + signal.SIGTERM
    assert record.read_summary(run_dir).status == "interrupted" and len(record.read_rows(run_dir)) == 1
    train(compose([*TINY, *args, "resume=true"]), run_dir)
    assert record.read_summary(run_dir).status == "completed"
    assert _without_timing(run_dir) == _without_timing(tmp_path / "straight")


def test_a_run_directory_with_checkpoints_needs_resume(tmp_path):
    train_here(tmp_path, "train.epochs=1")
    with pytest.raises(Exception, match="already holds checkpoints; pass resume=true"):
        train_here(tmp_path, "train.epochs=1")
