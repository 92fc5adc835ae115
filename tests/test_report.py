"""`hets-ep report` on directories written by real tiny runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import TINY, hets_ep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    hets_ep("train", "-m", *TINY, "seed=0,1", "dt=scalar,lognormal", f"hydra.sweep.dir={root / 'main'}", check=True)
    hets_ep("train", *TINY, "seed=2", "dt=lognormal", "dt.cv=0.3", "train.explode_threshold=0.5",
            f"hydra.run.dir={root / 'extra' / 'diverged'}", check=True)
    return root


def _summaries(root, dist):
    out = []
    for path in root.rglob("summary.json"):
        config = (path.parent / ".hydra" / "config.yaml").read_text()
        if f"dist: {dist}" in config:
            out.append(json.loads(path.read_text()))
    return out


def test_report_groups_counts_and_means(sweep, tmp_path):
    out = tmp_path / "report"
    result = hets_ep("report", str(sweep), "--out", str(out), check=True)
    assert "| dist=lognormal cv=0.5" in result.stdout
    rows = {r["condition"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == {"dist=scalar cv=0", "dist=lognormal cv=0.5"}
    scalar, lognormal = rows["dist=scalar cv=0"], rows["dist=lognormal cv=0.5"]
    assert (scalar["n"], scalar["completed"], scalar["diverged"]) == ("2", "2", "0")
    assert (lognormal["n"], lognormal["completed"], lognormal["diverged"]) == ("3", "2", "1")
    finals = [s["final_test_acc"] for s in _summaries(sweep, "scalar")]
    assert float(scalar["final_acc_mean"]) == pytest.approx(np.mean(finals))
    assert float(scalar["final_acc_std"]) == pytest.approx(np.std(finals, ddof=1))
    # Paired by seed: seeds 0 and 1 exist in both conditions; the diverged seed 2 has no partner.
    assert lognormal["paired_baseline"] == "dist=scalar cv=0" and lognormal["paired_pairs"] == "2"
    by_seed = {s["seed"]: s["final_test_acc"] for s in _summaries(sweep, "scalar")}
    diffs = [s["final_test_acc"] - by_seed[s["seed"]] for s in _summaries(sweep, "lognormal") if s["seed"] in by_seed]
    assert float(lognormal["paired_final_diff_mean"]) == pytest.approx(np.mean(diffs))
    for name in ("report.md", "learning_curves.png", "final_accuracy.png", "collapse_rate.png", "dt_histograms.png",
                 "residual.png", "paired_differences.png"):
        assert (out / name).stat().st_size > 0, name


def test_report_on_an_empty_or_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = hets_ep("report", str(tmp_path))
    assert result.returncode == 2 and "no runs found under" in result.stderr
    missing = hets_ep("report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_report_grid(sweep, tmp_path):
    out = tmp_path / "report"
    result = hets_ep("report", str(sweep / "main"), "--out", str(out), "--grid", "dt.dist,dt.cv", check=True)
    assert "| dt.dist \\ dt.cv | 0 | 0.5 |" in result.stdout
    assert "| scalar | baseline |  |" in result.stdout and "(" in result.stdout.split("| lognormal |")[1]
    assert (out / "grid.png").stat().st_size > 0
    by_group = hets_ep("report", str(sweep / "main"), "--out", str(out), "--grid", "dt.cv,train.epochs", check=True)
    assert "**dt.dist=lognormal**" in by_group.stdout  # other differing keys split the map
