"""The run lifecycle (in process): outputs, divergence, pairing by seed, the gradient probe,
interruption and exact resume."""

from __future__ import annotations

import logging
import os
import signal

import jax
import numpy as np
import pytest

from conftest import MNIST_ROOT, TINY, assert_close_trees, metrics_without_timing, train_here
from hets_ep import record
from hets_ep.config import compose
from hets_ep.signals import RunInterrupted, StopSignals
from hets_ep.train import Trainer, train



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


@pytest.mark.slow
def test_a_run_at_chance_stops_early_with_its_reason_and_counts_as_not_trained(tmp_path):
    """train.stop_on_collapse: a run that cannot learn (a rate of 1e-9) is at chance after epoch 1
    and 2 and stops there, status stopped, the reason in its record; a run that learns goes on.
    The report counts the stopped run as finished and not trained."""
    from hets_ep.report import ReportOptions, analyse

    stuck, = train_here(tmp_path / "stuck", "train.epochs=5", "train.stop_on_collapse=true", "optimizer.lr=[1e-9]")
    assert stuck.status == "stopped" and stuck.epochs_completed == 2
    assert stuck.stop_reason.startswith("accuracy below chance + 0.05 (15.0%) for 2 epochs in a row")
    assert stuck.stop_reason.endswith("after epoch 2") and record.read_summary(tmp_path / "stuck") == stuck
    learns, = train_here(tmp_path / "learns", "train.epochs=3", "train.stop_on_collapse=true")
    assert learns.status == "completed" and learns.epochs_completed == 3
    conditions = analyse([tmp_path], ReportOptions(train_fraction=0.5)).conditions  # trained: late ≥ 55%
    outcome = {str(r["status"]): r["trained"] for c in conditions for _, r in c.finished.iterrows()}
    assert outcome == {"stopped": False, "completed": True}


def test_seed_pairs_weights_and_data_across_dt_conditions(tmp_path):
    base = ["dataset.subset=100", f"dataset.root={MNIST_ROOT}", "model.hidden=[16]"]
    runs = [Trainer(compose([*base, *extra]), tmp_path / str(i))
            for i, extra in enumerate([[], ["dt=lognormal", "dt.cv=0.3"], ["dt=gamma", "dt.cv=0.3"], ["seed=1"]])]
    for other in runs[1:3]:
        assert_close_trees(runs[0].state.params, other.state.params)
        assert not all(np.array_equal(a, b) for a, b in zip(runs[0].state.dt, other.state.dt))
    assert not np.allclose(runs[0].state.params["params"]["layers_0"]["kernel"],
                           runs[3].state.params["params"]["layers_0"]["kernel"])


@pytest.mark.slow  # BPTT on a probe batch each epoch (CI runs it)
def test_gradient_cosine_probe_each_epoch(tmp_path):
    train_here(tmp_path, "model.activation=steep_sigmoid", "stability.gradcheck_every=1", "ep.T1=60", "ep.T2=30",
               "ep.beta=0.05")
    rows = record.read_rows(tmp_path)
    assert all(0.9 < r.gradcheck_min_cosine <= r.gradcheck_mean_cosine <= 1.0 + 1e-9 for r in rows), rows


MODERN = ("ep=holomorphic", "model.activation=steep_sigmoid", "dynamics.noise=0.02", "dynamics.update_order=async",
          "dynamics.integrator=exact", "dt=lognormal", "ep.tol=1e-3", "ep.T1=60", "ep.T2=20")


@pytest.mark.slow
@pytest.mark.parametrize("options", [(), MODERN], ids=["default", "modern"])
def test_sigterm_mid_epoch_checkpoints_and_resume_is_exact(tmp_path, options):
    """Also with every new option at once: the noise stream, the recent losses of the spike
    count and the relaxation's step counts are part of the checkpointed state."""
    args = ("dataset.subset=3000", "train.epochs=3", "train.batch_size=16", *options)
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
    assert metrics_without_timing(run_dir) == metrics_without_timing(tmp_path / "straight")


def test_a_run_directory_with_checkpoints_needs_resume(tmp_path):
    train_here(tmp_path, "train.epochs=1")
    with pytest.raises(Exception, match="already holds checkpoints; pass resume=true"):
        train_here(tmp_path, "train.epochs=1")


@pytest.mark.slow
def test_sigterm_during_evaluation_checkpoints_and_resume_is_exact(tmp_path, caplog):
    """A signal while the test set is evaluated stops within a batch of evaluation; resuming
    evaluates that epoch again and ends exactly as a run never interrupted."""
    caplog.set_level(logging.INFO)
    args = ("dataset.subset=640", "dataset.test_subset=5000", "train.epochs=2", "train.eval_batch_size=500")
    train_here(tmp_path / "straight", *args)
    run_dir = tmp_path / "interrupted"
    trainer = Trainer(compose([*TINY, *args]), run_dir)
    original, calls = trainer.eval_step, []

    def eval_step(*a):
        calls.append(trainer.epoch)
        if len(calls) == 13:  # epoch 1's evaluation has 10 batches: the 3rd of epoch 2's
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a)

    trainer.eval_step = eval_step
    with pytest.raises(RunInterrupted):
        trainer.fit()
    trainer.checkpoints.close()
    assert len(calls) == 13 and len(record.read_rows(run_dir)) == 1
    assert "checkpointed in epoch 2 after batch 20 of 20" in caplog.text
    train(compose([*TINY, *args, "resume=true"]), run_dir)
    assert "resumed in epoch 2 after batch 20 of 20" in caplog.text  # the same position, in the same words
    assert metrics_without_timing(run_dir) == metrics_without_timing(tmp_path / "straight")


def test_a_signal_before_the_first_batch_still_leaves_a_resumable_run(tmp_path):
    from hets_ep import signals

    with signals.stop.installed():
        signals.stop.received = signal.SIGINT
        with pytest.raises(RunInterrupted) as stopped:
            train_here(tmp_path, "train.epochs=1")
    assert stopped.value.exit_code == 130
    summary = record.read_summary(tmp_path)
    assert summary.status == "interrupted" and summary.epochs_completed == 0
    summary, = train_here(tmp_path, "train.epochs=1", "resume=true")
    assert summary.status == "completed" and summary.epochs_completed == 1


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, caplog):
    summary, = train_here(tmp_path, "train.epochs=1", "resume=true")
    assert summary.status == "completed" and f"resume: no checkpoint in {tmp_path / record.CHECKPOINTS}; starting " \
                                               "from scratch" in caplog.text


@pytest.mark.slow
def test_validation_split_drives_best_epoch_and_collapses(tmp_path):
    summary, = train_here(tmp_path, "dataset.val_size=200", "train.epochs=3")
    rows = record.read_rows(tmp_path)
    assert all(r.val_acc is not None and 0.1 < r.val_acc <= 1 for r in rows)
    assert summary.monitor == "val" and summary.best_acc == max(r.val_acc for r in rows)
    assert summary.test_acc_at_best == rows[summary.best_epoch - 1].test_acc
    assert [r.best_acc for r in rows] == [max(r.val_acc for r in rows[:i + 1]) for i in range(3)]
    plain, = train_here(tmp_path / "test", "train.epochs=3", "stability.monitor=test", "dataset.val_size=200")
    assert plain.monitor == "test" and plain.best_acc == plain.best_test_acc


def test_the_validation_split_is_the_seeds_and_the_same_in_every_condition(tmp_path):
    a = Trainer(compose([*TINY, "dataset.val_size=100"]), tmp_path / "a")
    b = Trainer(compose([*TINY, "dataset.val_size=100", "dt=lognormal", "dt.cv=0.3"]), tmp_path / "b")
    c = Trainer(compose([*TINY, "dataset.val_size=100", "seed=1"]), tmp_path / "c")
    assert np.array_equal(a.members[0].val_index, b.members[0].val_index)
    assert not np.array_equal(a.members[0].val_index, c.members[0].val_index)
    assert a.steps_per_epoch == 900 // 32


def test_stop_signals_become_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals().installed() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
