"""The default `hets-ep train` reaches the accuracy the README promises (slow: about a minute)."""

from __future__ import annotations

import json

import pytest

from conftest import MNIST_ROOT, hets_ep


@pytest.mark.slow
def test_default_run_reaches_97_5_percent(tmp_path):
    hets_ep("train", "train.progress=false", f"dataset.root={MNIST_ROOT}", f"hydra.run.dir={tmp_path}", check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 10
    assert summary["final_test_acc"] >= 0.975, summary["final_test_acc"]
