"""Stability statistics on hand-made accuracy curves with known answers."""

from __future__ import annotations

import pytest

from hets_ep.config import StabilityConfig
from hets_ep.stability import collapses, curve_statistics, drawdowns, epoch_monitors

DEFAULTS = StabilityConfig()


def test_monotone_curve_has_no_collapse():
    stats = curve_statistics([0.5, 0.8, 0.9, 0.95], 10, DEFAULTS)
    assert stats["collapse_count"] == 0 and stats["max_drawdown"] == 0.0
    assert stats["epochs_to_target"] == 3 and not stats["never_learned"]


def test_two_collapses_one_recovered():
    accs = [0.90, 0.93, 0.80, 0.82, 0.92, 0.94, 0.85, 0.86]
    events = collapses(accs, drop=0.05)
    assert [e["epoch"] for e in events] == [3, 7]
    assert events[0]["recovery_epochs"] == 2  # back within 5 points of 0.93 at epoch 5
    assert events[0]["depth"] == pytest.approx(0.13)
    assert events[1]["recovery_epochs"] is None
    stats = curve_statistics(accs, 10, StabilityConfig(collapse_drop=0.05, jitter_window=3))
    assert stats["collapse_count"] == 2 and stats["unrecovered_collapses"] == 1
    assert stats["mean_recovery_epochs"] == 2.0
    assert stats["max_drawdown"] == pytest.approx(0.13)


def test_small_dips_are_not_collapses():
    assert collapses([0.9, 0.87, 0.9, 0.86], drop=0.05) == []
    assert drawdowns([0.9, 0.87, 0.9, 0.86]).tolist() == pytest.approx([0, 0.03, 0, 0.04])


def test_never_learned_is_not_a_collapse():
    stats = curve_statistics([0.10, 0.11, 0.098, 0.102], 10, DEFAULTS)
    assert stats["never_learned"] and stats["collapse_count"] == 0
    assert stats["epochs_to_target"] is None


def test_jitter_is_the_std_of_the_last_epochs():
    stats = curve_statistics([0.1, 0.5, 0.9, 0.92, 0.9, 0.92], 10, StabilityConfig(jitter_window=4))
    assert stats["jitter"] == pytest.approx(0.01)


def test_epoch_monitors():
    m = epoch_monitors([0.8, 0.9, 0.7], drop=0.05)
    assert m == {"best_acc": 0.9, "drawdown": pytest.approx(0.2), "collapses_so_far": 1}


def test_empty_curve():
    stats = curve_statistics([], 10, DEFAULTS)
    assert stats["epochs"] == 0 and stats["never_learned"]
