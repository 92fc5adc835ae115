"""The report's statistics, checked against scipy called directly and hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hets_ep.report import inference

A = np.array([81.2, 77.5, 90.1, 68.4, 85.0, 79.9, 88.3, 72.6])
B = np.array([78.0, 79.1, 84.2, 60.3, 83.9, 71.0, 86.5, 70.2])


def test_paired_statistics_equal_scipys_on_the_same_numbers():
    c = inference.compare(A - B)
    t = stats.ttest_rel(A, B)  # another scipy path than the one-sample test the report calls
    assert c.pairs == 8 and c.mean_diff == pytest.approx(np.mean(A - B))
    assert c.t == pytest.approx(t.statistic) and c.p_t == pytest.approx(t.pvalue)
    assert c.p_wilcoxon == pytest.approx(stats.wilcoxon(A, B).pvalue)
    assert c.dz == pytest.approx(np.mean(A - B) / np.std(A - B, ddof=1))
    assert c.ci_low < c.mean_diff < c.ci_high


def test_bootstrap_interval_is_reproducible_and_shrinks_with_more_seeds():
    low, high = inference.bootstrap_mean_ci(A - B, seed=3)
    assert (low, high) == inference.bootstrap_mean_ci(A - B, seed=3)
    rng = np.random.default_rng(0)
    many = rng.normal(2.0, 5.0, 200)
    few_low, few_high = inference.bootstrap_mean_ci(many[:10])
    many_low, many_high = inference.bootstrap_mean_ci(many)
    assert many_high - many_low < few_high - few_low
    assert many_low < many.mean() < many_high
    # A 95% interval over 200 draws of N(2, 5²): about ±2·5/√200 = ±0.7.
    assert many_high - many_low == pytest.approx(2 * 1.96 * 5 / math.sqrt(200), rel=0.25)


def test_degenerate_and_tiny_samples():
    constant = inference.compare([1.5, 1.5, 1.5, 1.5])
    assert (constant.mean_diff, constant.ci_low, constant.ci_high, constant.p_t) == (1.5, 1.5, 1.5, 0.0)
    assert inference.compare([0.0, 0.0, 0.0]).p_t == 1.0
    single = inference.compare([2.0])
    assert single.mean_diff == 2.0 and single.p_t is None and single.ci_low is None
    assert inference.compare([]).pairs == 0


def test_exact_mcnemar_on_known_tables():
    # 6 discordant pairs, all in one direction: p = 2 · 0.5⁶.
    condition = [True] * 6 + [True, False, False]
    baseline = [False] * 6 + [True, False, False]
    assert inference.mcnemar_exact(condition, baseline) == pytest.approx(2 * 0.5**6)
    assert inference.mcnemar_exact([True, False], [False, True]) == pytest.approx(1.0)
    assert inference.mcnemar_exact([], []) is None


def test_holm_adjusts_a_family_and_skips_missing_values():
    # Sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04).
    assert inference.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert inference.holm([None, 0.02, 0.5]) == [None, pytest.approx(0.04), pytest.approx(0.5)]
    assert inference.holm([None]) == [None]


@pytest.mark.parametrize("mean, p, p_holm, direction, expected", [
    (+3.0, 0.001, 0.004, +1, "better"), (-3.0, 0.001, 0.004, +1, "worse"), (-3.0, 0.001, 0.004, -1, "better"),
    (+3.0, 0.02, 0.08, +1, "trend (better, not after Holm)"), (+3.0, 0.3, 0.9, +1, "no evidence"),
    (None, None, None, +1, "too few pairs")])
def test_verdicts(mean, p, p_holm, direction, expected):
    assert inference.verdict(mean, p, p_holm, direction) == expected


def test_equivalent_step_on_curves_with_known_answers():
    x = [0.5, 0.6, 0.7, 0.8]
    assert inference.equivalent_step(x, [90, 85, 80, 75], 82.5, near=0.8) == pytest.approx(0.65)
    assert inference.equivalent_step(x, [90, 85, 80, 75], 95.0, near=0.8) is None  # above the curve
    # Two crossings of a hump: the one nearer the condition's own step.
    assert inference.equivalent_step(x, [80, 90, 90, 80], 85, near=0.8) == pytest.approx(0.75)
    assert inference.equivalent_step(x, [80, 90, 90, 80], 85, near=0.5) == pytest.approx(0.55)


def test_equivalent_step_interval_brackets_the_step():
    rng = np.random.default_rng(0)
    curve = {x: rng.normal(100 - 50 * x, 1.0, 12) for x in (0.5, 0.6, 0.7, 0.8)}
    condition = rng.normal(100 - 50 * 0.62, 1.0, 12)
    step, low, high, found = inference.equivalent_step_ci(curve, condition, near=0.8, resamples=500)
    assert low < step < high and step == pytest.approx(0.62, abs=0.03) and found > 0.95
