"""Paired inference: what a report claims, with scipy and statsmodels doing the statistics.

For one comparison, the per-seed differences ``d_i = metric(condition, seed i) −
metric(baseline, seed i)`` give the mean difference, a bootstrap 95% interval
(``scipy.stats.bootstrap``, BCa, resampling seeds, seeded so reports reproduce), the paired
t-test (``scipy.stats.ttest_1samp`` on ``d``: the p-value that is corrected), the Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``) and Cohen's ``d_z = mean(d)/sd(d)``. Binary
outcomes (collapsed, trained) are compared with the exact McNemar test on the paired seeds
(``statsmodels``). The p-values of a report's family are Holm-adjusted together
(``statsmodels.stats.multitest.multipletests``), and each comparison gets a verdict at α.

Ratio endpoints (relaxation steps, time), whose per-seed ratios vary by multiples, are tested
on the log scale: the paired differences of ``log`` values, their mean turned back into a
geometric-mean ratio with its interval (:func:`log_ratio`).

Stability boundaries: the probability that a run trains, as a logistic function of a stress
(``statsmodels`` GLM, binomial family, logit link; where the runs are separated, Firth's
penalised likelihood from ``firthmodels``) in the stress or its logarithm; the boundary is the
stress at P = 0.5 (:func:`fit_boundary`).

Beside the means: the spread of a metric across seeds in two conditions is compared with the
Brown–Forsythe test (``scipy.stats.levene`` centred at the median; it treats the two groups as
independent, which for seeds paired across conditions is, if anything, conservative when the
pairs are positively correlated), and equivalence within a margin ``±m`` with the paired TOST
(``statsmodels.stats.weightstats.ttost_paired``: p < α means the mean difference lies inside
the margin).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

RESAMPLES = 9999


@dataclasses.dataclass
class Comparison:
    """One condition against its baseline on one metric (differences in the metric's units)."""

    pairs: int
    mean_diff: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    t: Optional[float]
    p_t: Optional[float]
    p_wilcoxon: Optional[float]
    dz: Optional[float]


def bootstrap_mean_ci(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES,
                      level: float = 0.95) -> tuple[Optional[float], Optional[float]]:
    """BCa bootstrap interval of the mean (``None`` for fewer than 3 values); a constant sample
    has the degenerate interval ``(value, value)``."""
    x = np.asarray(values, np.float64)
    if x.size < 3:
        return None, None
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples, method="BCa",
                          random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(low), float(high)


def compare(diffs: Sequence[float], seed: int = 0, resamples: int = RESAMPLES) -> Comparison:
    """Statistics of paired differences (see the module docstring)."""
    d = np.asarray(diffs, np.float64)
    n = d.size
    if n == 0:
        return Comparison(0, None, None, None, None, None, None, None)
    mean = float(d.mean())
    if n < 2:
        return Comparison(n, mean, None, None, None, None, None, None)
    sd = float(d.std(ddof=1))
    low, high = bootstrap_mean_ci(d, seed, resamples)
    if sd == 0:  # every seed moved by the same amount: no variance to test against
        p = 1.0 if mean == 0 else 0.0
        return Comparison(n, mean, low, high, None, p, p, None)
    t = stats.ttest_1samp(d, 0.0)
    p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return Comparison(n, mean, low, high, float(t.statistic), float(t.pvalue), p_w, mean / sd)


def mcnemar_exact(condition: Sequence[bool], baseline: Sequence[bool]) -> Optional[float]:
    """Exact McNemar p-value for paired binary outcomes (None without pairs)."""
    a, b = np.asarray(condition, bool), np.asarray(baseline, bool)
    if a.size == 0:
        return None
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def holm(p_values: Sequence[Optional[float]], alpha: float = 0.05) -> list[Optional[float]]:
    """Holm-adjusted p-values of a family (``None`` entries stay ``None`` and do not count)."""
    present = [p for p in p_values if p is not None]
    if not present:
        return [None] * len(p_values)
    adjusted = iter(multipletests(present, alpha=alpha, method="holm")[1])
    return [None if p is None else float(next(adjusted)) for p in p_values]


def verdict(mean_diff: Optional[float], p: Optional[float], p_holm: Optional[float], direction: int,
            alpha: float = 0.05) -> str:
    """``better``/``worse`` if the Holm-adjusted p is below α (``direction`` −1: lower is
    better), a ``trend`` if only the raw p is, else ``no evidence``."""
    if not (finite(mean_diff) and finite(p)):
        return "too few pairs"
    good = mean_diff * direction > 0
    if finite(p_holm) and p_holm < alpha:
        return "better" if good else "worse"
    if p < alpha:
        return f"trend ({'better' if good else 'worse'}, not after Holm)"
    return "no evidence"


def equivalent_step(curve_x: Sequence[float], curve_y: Sequence[float], target: float,
                    near: float) -> Optional[float]:
    """The ``x`` where the piecewise-linear curve through ``(curve_x, curve_y)`` reaches
    ``target``; of several crossings the one nearest ``near``; None if it never does."""
    x, y = np.asarray(curve_x, float), np.asarray(curve_y, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    crossings = []
    for i in range(len(x)):
        if y[i] == target:
            crossings.append(float(x[i]))
    for i in range(len(x) - 1):
        lo, hi = y[i] - target, y[i + 1] - target
        if lo * hi < 0:
            crossings.append(float(x[i] + (x[i + 1] - x[i]) * (target - y[i]) / (y[i + 1] - y[i])))
    if not crossings:
        return None
    return min(crossings, key=lambda c: abs(c - near))


def equivalent_step_ci(scalar: dict[float, np.ndarray], condition: np.ndarray, near: float, seed: int = 0,
                       resamples: int = 2000) -> tuple[Optional[float], Optional[float], Optional[float], float]:
    """``(step, low, high, found)``: the equivalent scalar step of a condition's mean metric,
    and a percentile bootstrap interval from resampling the seeds of every condition
    independently; ``found`` is the share of resamples in which the curve reaches the target."""
    xs = sorted(scalar)
    step = equivalent_step(xs, [float(np.mean(scalar[x])) for x in xs], float(np.mean(condition)), near)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        ys = [float(np.mean(rng.choice(scalar[x], scalar[x].size))) for x in xs]
        target = float(np.mean(rng.choice(condition, condition.size)))
        draws.append(equivalent_step(xs, ys, target, near))
    found = [d for d in draws if d is not None]
    if len(found) < 0.5 * resamples:
        return step, None, None, len(found) / resamples
    low, high = np.percentile(found, [2.5, 97.5])
    return step, float(low), float(high), len(found) / resamples


def brown_forsythe(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """p of the Brown–Forsythe test of equal variances (None below 3 values a side, or when
    both sides are constant)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.size < 3 or y.size < 3 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return None
    return float(stats.levene(x, y, center="median").pvalue)


def tost_paired(condition: Sequence[float], baseline: Sequence[float], margin: float) -> Optional[float]:
    """p of the paired two one-sided tests that the mean difference lies in ``(−margin, margin)``."""
    x, y = np.asarray(condition, np.float64), np.asarray(baseline, np.float64)
    if x.size < 3 or np.all(x - y == (x - y)[0]):
        return None
    return float(ttost_paired(x, y, -margin, margin)[0])


def describe(values: pd.Series) -> dict:
    """Mean, SD, bootstrap CI and n of a condition's per-seed values."""
    x = values.dropna().to_numpy(float)
    low, high = bootstrap_mean_ci(x) if x.size >= 3 else (None, None)
    return {"n": int(x.size), "mean": float(x.mean()) if x.size else None,
            "sd": float(x.std(ddof=1)) if x.size > 1 else None, "ci_low": low, "ci_high": high}


def finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def log_ratio(condition: Sequence[float], baseline: Sequence[float], seed: int = 0) -> Comparison:
    """Paired statistics of ``log(condition / baseline)`` for a positive endpoint: ``exp`` of
    the mean (and of the interval's ends) is the geometric-mean ratio; pairs with a value ≤ 0
    are left out."""
    x, y = np.asarray(condition, np.float64), np.asarray(baseline, np.float64)
    keep = (x > 0) & (y > 0)
    return compare(np.log(x[keep]) - np.log(y[keep]), seed)


# Under complete separation (every run below a stress fails, every run above trains) the
# likelihood grows without bound as the slope does: such a fit uses Firth's penalised likelihood
# (Firth 1993; firthmodels), which stays finite and puts the boundary between the two groups.
ESTIMATORS = ("maximum likelihood", "Firth")


@dataclasses.dataclass
class Boundary:
    """A logistic fit ``P(train) = 1 / (1 + exp(−(b0 + b1 x)))`` with ``x`` the stress (or its
    log): the boundary (the stress at P = 0.5; None where the fit has no crossing: every run
    trains, or none does), the coefficients on the stress scale, whether the runs were
    separated, and the estimator that fitted them (maximum likelihood, or Firth's where
    separated)."""

    boundary: Optional[float]
    intercept: Optional[float]
    slope: Optional[float]
    separated: bool
    runs: int
    estimator: Optional[str] = None


def separated(x: np.ndarray, trained: np.ndarray) -> bool:
    """Whether some threshold splits the failing from the training runs (complete or
    quasi-complete separation: the maximum-likelihood slope is infinite)."""
    fail, ok = x[~trained], x[trained]
    return bool(fail.size and ok.size and (fail.max() <= ok.min() or ok.max() <= fail.min()))


def fit_boundary(stress: Sequence[float], trained: Sequence[bool], log: bool = False) -> Boundary:
    """The logistic fit of ``trained`` against ``stress`` (its logarithm with ``log``) and the
    stress at P = 0.5 (see :class:`Boundary`): statsmodels' maximum likelihood, or where the runs
    are separated Firth's penalised likelihood (firthmodels)."""
    s, t = np.asarray(stress, np.float64), np.asarray(trained, bool)
    x = np.log(s) if log else s
    if t.all() or not t.any() or np.ptp(x) == 0:
        return Boundary(None, None, None, False, int(t.size))
    centre, scale = float(x.mean()), float(x.std())
    z = (x - centre) / scale
    split = separated(x, t)
    if split:
        from firthmodels import FirthLogisticRegression

        fitted = FirthLogisticRegression(max_iter=100).fit(z[:, None], t.astype(int))
        a, b = float(fitted.intercept_), float(fitted.coef_[0])
    else:
        a, b = (float(v) for v in sm.GLM(t.astype(np.float64), sm.add_constant(z),
                                         family=sm.families.Binomial()).fit().params)
    slope, intercept = b / scale, a - b * centre / scale
    crossing = -intercept / slope if slope != 0 else None
    if crossing is not None and log:
        crossing = float(np.exp(crossing))
    return Boundary(crossing, intercept, slope, split, int(t.size), ESTIMATORS[split])


def boundary_interval(data: pd.DataFrame, log: bool, seed: int = 0, resamples: int = 1000,
                      level: float = 0.95) -> tuple[Optional[float], Optional[float], float]:
    """A percentile bootstrap interval of the boundary from ``data`` (columns ``seed``,
    ``stress``, ``trained``), resampling seeds (each with all its runs) with replacement, widened
    to the gap separated runs leave open (:func:`separation_gap`); returns ``(low, high, found)``,
    ``found`` the share of resamples with a boundary."""
    draws = _boundary_draws({"only": data}, log, seed, resamples)["only"]
    low, high, found = _percentile(draws, level, resamples)
    gap = separation_gap(data["stress"].to_numpy(float), data["trained"].to_numpy(bool))
    if gap is not None and low is not None:  # the data place the boundary anywhere in the gap
        low, high = min(low, gap[0]), max(high, gap[1])
    return low, high, found


def separation_gap(stress: np.ndarray, trained: np.ndarray) -> Optional[tuple[float, float]]:
    """Where separated runs put the boundary: between the last level of one outcome and the first
    of the other (None if they are not separated). Every fit, Firth's included, puts its
    boundary somewhere in it by convention, and resamples of the same levels put it at the same
    point: the interval must span the gap the data leave open."""
    if not separated(stress, trained):
        return None
    fail, ok = stress[~trained], stress[trained]
    return (float(fail.max()), float(ok.min())) if fail.max() <= ok.min() else (float(ok.max()), float(fail.min()))


def boundary_difference(condition: pd.DataFrame, baseline: pd.DataFrame, log: bool, seed: int = 0,
                        resamples: int = 1000, level: float = 0.95) -> dict:
    """The paired difference of two conditions' boundaries (condition − baseline; on the log
    scale with ``log``: the log of their ratio), resampling the seeds they share jointly: the
    estimate, a percentile interval, the bootstrap p-value with ties split evenly,
    ``2 min(P(Δ < 0) + P(Δ = 0)/2, P(Δ > 0) + P(Δ = 0)/2)`` (a resample whose two boundaries
    coincide counts half on each side), and the share of resamples in which both exist."""
    shared = sorted(set(condition["seed"]) & set(baseline["seed"]))
    a, b = condition[condition["seed"].isin(shared)], baseline[baseline["seed"].isin(shared)]
    fa, fb = (fit_boundary(d["stress"], d["trained"], log).boundary for d in (a, b))
    scale = np.log if log else (lambda v: v)
    estimate = float(scale(fa) - scale(fb)) if fa is not None and fb is not None else None
    draws = _boundary_draws({"a": a, "b": b}, log, seed, resamples, shared)
    diffs = [float(scale(x) - scale(y)) for x, y in zip(draws["a"], draws["b"]) if x is not None and y is not None]
    low, high, found = _percentile(diffs, level, resamples)
    p = None
    if len(diffs) >= 0.5 * resamples:
        d = np.asarray(diffs)
        ties = np.mean(d == 0) / 2
        p = float(min(1.0, 2 * min(np.mean(d < 0) + ties, np.mean(d > 0) + ties)))
    return {"seeds": len(shared), "difference": estimate, "ci_low": low, "ci_high": high, "p": p, "found": found}


def _boundary_draws(frames: dict[str, pd.DataFrame], log: bool, seed: int, resamples: int,
                    seeds: Optional[Sequence[int]] = None) -> dict[str, list[Optional[float]]]:
    rng = np.random.default_rng(seed)
    pool = np.asarray(seeds if seeds is not None else sorted(next(iter(frames.values()))["seed"].unique()))
    by_seed = {name: {s: (d["stress"].to_numpy(float), d["trained"].to_numpy(bool)) for s, d in frame.groupby("seed")}
               for name, frame in frames.items()}
    out: dict[str, list[Optional[float]]] = {name: [] for name in frames}
    for _ in range(resamples):
        chosen = rng.choice(pool, pool.size)
        for name in frames:
            parts = [by_seed[name][s] for s in chosen if s in by_seed[name]]
            if not parts:
                out[name].append(None)
                continue
            stress, trained = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            out[name].append(fit_boundary(stress, trained, log).boundary)
    return out


def _percentile(draws: Sequence[Optional[float]], level: float,
                resamples: int) -> tuple[Optional[float], Optional[float], float]:
    found = [d for d in draws if d is not None and np.isfinite(d)]
    if len(found) < 0.5 * resamples:
        return None, None, len(found) / resamples
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(found, [tail, 100 - tail])
    return float(low), float(high), len(found) / resamples
