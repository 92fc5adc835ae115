"""`hets-ep evaluate RUN_DIR`: a saved checkpoint evaluated again, here or on another dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MNIST_ROOT, train_here
from hets_ep import record
from hets_ep.errors import HetsEpError
from hets_ep.evaluate import evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train_here(run_dir, "train.epochs=1", "dataset.test_subset=2000")
    return run_dir


def test_evaluating_the_last_checkpoint_repeats_the_last_epochs_numbers(run):
    result, = evaluate(run, [])
    last = record.read_rows(run)[-1]
    assert result["epoch"] == 1 and result["examples"] == 2000
    assert result["acc"] == last.test_acc and result["loss"] == pytest.approx(last.test_loss, rel=1e-6)
    saved = json.loads((run / "evaluation-mnist.json").read_text())
    assert saved[0]["acc"] == result["acc"]


def test_evaluating_on_another_dataset_of_the_same_shape(run, tmp_path):
    from hets_ep.data import load_dataset

    mnist = load_dataset("mnist", root=str(MNIST_ROOT), subset=50, test_subset=300)
    flipped = mnist.x_test[:, :, ::-1, 0]  # mirrored digits: same shape and classes, another dataset
    path = tmp_path / "mirrored.npz"
    np.savez(path, x_train=(mnist.x_train[..., 0] * 255).astype(np.uint8), y_train=mnist.y_train,
             x_test=(flipped * 255).astype(np.uint8), y_test=mnist.y_test)
    result, = evaluate(run, ["dataset=npz", f"dataset.path={path}"])
    assert result["dataset"] == "npz" and result["examples"] == 300 and 0.0 <= result["acc"] <= 1.0
    assert (run / "evaluation-npz.json").is_file()


def test_evaluate_refuses_what_it_cannot_do(run, tmp_path):
    with pytest.raises(HetsEpError, match="train.epochs=3: evaluate changes only dataset, dt, dynamics"):
        evaluate(run, ["train.epochs=3"])
    with pytest.raises(HetsEpError, match="not a run directory"):
        evaluate(tmp_path, [])
    small = tmp_path / "small.npz"
    np.savez(small, x_train=np.zeros((10, 8, 8), np.uint8), y_train=np.arange(10) % 10,
             x_test=np.zeros((10, 8, 8), np.uint8), y_test=np.arange(10) % 10)
    with pytest.raises(HetsEpError, match=r"dataset npz has 10 classes of \(8, 8, 1\) images; the run was trained "
                                          r"on 10 classes of \(28, 28, 1\)"):
        evaluate(run, ["dataset=npz", f"dataset.path={small}"])


@pytest.mark.slow
def test_dynamics_compared_on_the_same_trained_weights(run):
    """Another dt draw, integrator or relaxation on the run's own weights: accuracy, residuals and
    steps per phase, and the spectral radius of the step; written beside the run, which is untouched."""
    before = (run / record.METRICS).read_text()
    own, = evaluate(run, [])
    slow, = evaluate(run, ["dt=lognormal", "dt.mean=0.3", "dt.cv=0.5", "ep.T1=400", "ep.tol=1e-4",
                           "dynamics.integrator=exact"])
    assert own["free_steps"] == 15 and own["nudged_steps"] == 5 and own["spectral_radius"] > 0
    assert slow["dt"]["distribution"] == "lognormal" and slow["dt"]["mean"] == pytest.approx(0.3, rel=1e-4)
    assert 15 < slow["free_steps"] <= 400 and slow["fp_residual"] < own["fp_residual"]
    # exact steps of 1 − e^{−dt} < dt move less per step than the run's Euler steps of 0.5
    assert slow["spectral_radius"] > own["spectral_radius"]
    assert (run / "evaluation-mnist-dt=lognormal-dt.mean=0.3-dt.cv=0.5-ep.T1=400-ep.tol=1e-4-"
                  "dynamics.integrator=exact.json").is_file()
    assert (run / record.METRICS).read_text() == before


def test_a_phase_at_its_cap_gets_the_budget_to_try_or_under_noise_the_noise_floor():
    """evaluate's note is the report's rule (hets_ep.stability.cap_advice): most samples above the
    tolerance after fixed steps → relax to a tolerance; a capped phase with ep.tol → raise the
    caps; under state noise → the noise floor; converged → no note."""
    from hets_ep.config import Config, DynamicsConfig, EPConfig
    from hets_ep.evaluate import cap_note

    stuck = {"free_steps": 30, "unconverged": 0.6, "nudged_steps": 5, "nudged_unconverged": 0.0, "capped": 1.0}
    assert cap_note(stuck, Config()).endswith("relax to a tolerance (ep.tol=0.01 ep.T1=1000 ep.T2=1000) to compare "
                                              "converged dynamics")
    assert "raise ep.T1/ep.T2 (say ep.T1=120 ep.T2=40)" in cap_note(stuck, Config(ep=EPConfig(tol=1e-3)))
    noisy = cap_note(stuck, Config(dynamics=DynamicsConfig(noise=0.05, noise_eval=True)))
    assert noisy.startswith("phases end above the residual tolerance") and "a floor set by the noise" in noisy
    assert cap_note({**stuck, "unconverged": 0.4}, Config()) is None  # a minority of samples: no advice
    assert cap_note({**stuck, "unconverged": 0.0, "capped": 0.0}, Config(ep=EPConfig(tol=1e-3))) is None
    rare = cap_note({**stuck, "unconverged": 0.0, "capped": 0.00012}, Config(ep=EPConfig(tol=1e-3)))
    assert "in 0.012% of batches" in rare  # a rare cap is named as rare, never as 0.0%