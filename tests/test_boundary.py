"""Stability boundaries: P(train) against a stress axis, the boundary with its interval, and the
paired shift between conditions — recovered from runs with a known boundary, equal to
statsmodels' fit on the same numbers, Firth's where the runs are separated, at several "trained"
thresholds side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from hets_ep.report import ReportOptions, analyse, build_report
from hets_ep.report import inference
from test_report import _fake_run

LEVELS = (0.005, 0.01, 0.02, 0.04, 0.08)


def _trains(rng, stress: float, boundary: float, slope: float = 4.0) -> bool:
    """A run at ``stress`` trains with the logistic probability of a curve with this boundary."""
    return rng.random() < 1 / (1 + np.exp(slope * (np.log(stress) - np.log(boundary))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Scalar dt fails above noise σ ≈ 0.02, lognormal above σ ≈ 0.04; 20 seeds at 5 levels."""
    root = tmp_path_factory.mktemp("boundary")
    rng = np.random.default_rng(1)
    for seed in range(20):
        for sigma in LEVELS:
            for dist, edge in (("scalar", 0.02), ("lognormal", 0.04)):
                accs = [0.9, 0.95, 0.96] if _trains(rng, sigma, edge) else [0.1, 0.1, 0.11]
                extra = {"dt.dist": "lognormal", "dt.cv": 0.5} if dist == "lognormal" else {}
                _fake_run(root / f"{dist}{seed}_{sigma}", seed, accs, **{"dynamics.noise": sigma}, **extra)
    return root


@pytest.mark.slow  # 200 runs' records and 4,000 bootstrap fits (CI runs it)
def test_known_boundaries_are_recovered_and_their_shift_found(runs, tmp_path):
    out = tmp_path / "report"
    text = build_report([runs], out, ReportOptions(boundary="dynamics.noise"))
    table = pd.read_csv(out / "boundaries.csv").set_index("condition")
    scalar = table.loc[[c for c in table.index if c.startswith("scalar")][0]]
    lognormal = table.loc[[c for c in table.index if c.startswith("lognormal")][0]]
    assert scalar["scale"] == "log" and len(table) == 2
    assert 0.014 < scalar["boundary"] < 0.028 and scalar["ci_low"] < 0.02 < scalar["ci_high"]
    assert 0.028 < lognormal["boundary"] < 0.056 and lognormal["ci_low"] < 0.04 < lognormal["ci_high"]
    shift = pd.read_csv(out / "boundary_tests.csv").iloc[0]
    assert shift["seeds"] == 20 and shift["difference"] == pytest.approx(np.log(lognormal["boundary"] /
                                                                                 scalar["boundary"]))
    assert shift["ci_low"] > 0 and shift["p_holm"] < 0.05 and shift["verdict"] == "boundary at higher stress"
    assert "### Stability boundaries along dynamics.noise" in text and "boundary at higher stress" in text
    assert (out / "boundary.png").stat().st_size > 10_000


def test_the_fit_is_statsmodels_logistic_regression_on_the_same_numbers():
    rng = np.random.default_rng(0)
    stress = np.repeat(LEVELS, 30)
    trained = np.array([_trains(rng, s, 0.03, slope=2.0) for s in stress])
    assert not inference.separated(np.log(stress), trained)
    fit = inference.fit_boundary(stress, trained, log=True)
    reference = sm.GLM(trained.astype(float), sm.add_constant(np.log(stress)), family=sm.families.Binomial()).fit()
    b0, b1 = reference.params
    assert (fit.intercept, fit.slope) == pytest.approx((b0, b1), rel=1e-6)
    assert fit.boundary == pytest.approx(np.exp(-b0 / b1), rel=1e-6)
    linear = inference.fit_boundary(stress, trained, log=False)
    reference = sm.GLM(trained.astype(float), sm.add_constant(stress), family=sm.families.Binomial()).fit()
    assert linear.boundary == pytest.approx(-reference.params[0] / reference.params[1], rel=1e-6)


def test_separated_runs_are_fitted_by_firths_penalised_likelihood():
    """Separated runs: the fit is Firth's (named so), solves Firth's modified score equations
    X'(y − p + h(½ − p)) = 0 (h the hat values of the weighted design), and puts the boundary
    between the last training and the first failing level."""
    stress = np.repeat(LEVELS, 10)
    trained = stress < 0.03
    fit = inference.fit_boundary(stress, trained, log=True)
    assert fit.separated and fit.estimator == "Firth" and 0.02 < fit.boundary < 0.04
    x = sm.add_constant(np.log(stress))
    p = 1 / (1 + np.exp(-(fit.intercept + fit.slope * np.log(stress))))
    weighted = x * np.sqrt(p * (1 - p))[:, None]
    hat = np.einsum("ij,jk,ik->i", weighted, np.linalg.inv(weighted.T @ weighted), weighted)
    score = x.T @ (trained - p + hat * (0.5 - p))
    assert np.abs(score).max() < 1e-3
    overlap = np.where(np.isin(stress, (0.02, 0.04)), np.arange(50) % 2 == 0, trained)  # both levels half trained
    unseparated = inference.fit_boundary(stress, overlap, log=True)
    assert not unseparated.separated and unseparated.estimator == "maximum likelihood"
    every = inference.fit_boundary(stress, np.ones_like(trained), log=True)
    assert every.boundary is None and every.slope is None


def test_the_interval_of_separated_runs_spans_the_gap_they_leave_open():
    """Every seed trains at 0.02 and fails at 0.04: any boundary in between fits; every resample
    repeats the same split, so the bootstrap alone would give a zero-width interval at Firth's
    midpoint. The interval is the gap."""
    frame = pd.DataFrame({"seed": np.repeat(range(12), 2), "stress": np.tile([0.02, 0.04], 12),
                          "trained": np.tile([True, False], 12)})
    assert inference.boundary_interval(frame, log=False, resamples=100)[:2] == (0.02, 0.04)
    assert inference.separation_gap(frame["stress"].to_numpy(), frame["trained"].to_numpy()) == (0.02, 0.04)


def test_the_bootstrap_p_splits_ties_evenly(monkeypatch):
    """Of 100 resampled shifts, 10 below 0, 5 exactly 0 and 85 above: p = 2 (0.10 + 0.05/2) = 0.25
    (counting the ties on both sides would give 0.30)."""
    draws = [-1.0] * 10 + [0.0] * 5 + [1.0] * 85
    monkeypatch.setattr(inference, "_boundary_draws", lambda frames, log, seed, resamples, seeds=None:
                        {"a": [1.0 + d for d in draws], "b": [1.0] * len(draws)})
    frame = pd.DataFrame({"seed": np.repeat(range(5), 2), "stress": np.tile([1.0, 2.0], 5),
                          "trained": np.tile([True, False], 5)})
    assert inference.boundary_difference(frame, frame, log=False, resamples=100)["p"] == pytest.approx(0.25)


@pytest.mark.slow
def test_along_the_step_itself_every_run_counts_and_the_curve_is_not_split(tmp_path):
    """Along dt.mean, HTS conditions differ in their realised means level by level: the curve is
    still one (labelled without them), and a run that diverged before its first epoch counts as
    not trained instead of dropping out."""
    for seed in range(3):
        for mean in (0.5, 1.0, 1.5):
            for dist in ("scalar", "lognormal"):
                extra = {"dt.dist": dist, "dt.cv": 0.5} if dist == "lognormal" else {}
                extra["dt.dt_max"] = 4.0
                path = tmp_path / f"{dist}{seed}_{mean}"
                if mean == 1.5 or (dist == "lognormal" and mean == 1.0):
                    _fake_run(path, seed, [], status="diverged", **{"dt.mean": mean}, **extra)
                else:
                    _fake_run(path, seed, [0.9, 0.95, 0.96], **{"dt.mean": mean}, **extra)
    analysis = analyse([tmp_path], ReportOptions(boundary="dt.mean"))
    table = analysis.boundaries.set_index("condition")
    assert sorted(table.index) == ["lognormal cv=0.50 (μ-matched)", "scalar"]
    assert (table["runs"] == 9).all()
    assert table.loc["scalar", "trained_by_level"] == "0.5:100%/3 1:100%/3 1.5:0%/3"
    assert table.loc["lognormal cv=0.50 (μ-matched)", "trained_by_level"] == "0.5:100%/3 1:0%/3 1.5:0%/3"


def test_the_boundary_is_reported_at_every_threshold_side_by_side(tmp_path):
    """Runs that learn partially (late 40%) at the middle level: they train at F = 0.2 (28%), not
    at F = 0.5 (55%), so the boundary moves with the threshold, and both show in one table."""
    for seed in range(6):
        for sigma, late in ((0.01, 0.9), (0.02, 0.4), (0.04, 0.1)):
            _fake_run(tmp_path / f"{seed}_{sigma}", seed, [late] * 3, **{"dynamics.noise": sigma})
    out = tmp_path / "report"
    text = build_report([tmp_path], out, ReportOptions(boundary="dynamics.noise", train_fractions=(0.2, 0.5)))
    table = pd.read_csv(out / "boundaries.csv").set_index("train_fraction")
    assert 0.02 < table.loc[0.2, "boundary"] < 0.04 and 0.01 < table.loc[0.5, "boundary"] < 0.02
    assert (table["estimator"] == "Firth").all()
    assert "boundary at F = 0.2 [95% CI] (estimator)" in text and "boundary at F = 0.5 [95% CI] (estimator)" in text


def test_a_grid_holding_zero_cannot_use_the_logarithm(tmp_path):
    from hets_ep.errors import HetsEpError

    for seed in range(3):
        for sigma in (0.0, 0.04):
            _fake_run(tmp_path / f"{seed}_{sigma}", seed, [0.9, 0.9, 0.9 if sigma == 0 else 0.1],
                      **{"dynamics.noise": sigma})
    with pytest.raises(HetsEpError, match="the stress grid holds 0, which has no logarithm"):
        analyse([tmp_path], ReportOptions(boundary="dynamics.noise", boundary_scale="log"))
    assert not analyse([tmp_path], ReportOptions(boundary="dynamics.noise")).boundary_log  # auto: linear
