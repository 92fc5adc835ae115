"""dt samplers: requested statistics, clipping and mean matching, determinism, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hets_ep.errors import ConfigError
from hets_ep.config import DtConfig
from hets_ep.timeconstants import DISTRIBUTIONS, FAMILIES, sample_dt

SHAPES = [(512,), (256,), (10,)]


def _flat(dt):
    return np.concatenate([d.ravel() for d in dt]).astype(np.float64)


@pytest.mark.parametrize("dist", FAMILIES)
def test_realised_mean_and_cv_match_the_request(dist):
    # Wide bounds: clipping touches almost nothing, so mean and cv are the family's own.
    spec = DtConfig(dist, mean=0.3, cv=0.3, dt_min=1e-3, dt_max=3.0)
    dt, stats = sample_dt(0, spec, SHAPES)
    flat = _flat(dt)
    assert [d.shape for d in dt] == SHAPES
    assert stats["mean"] == pytest.approx(0.3, rel=0.01)
    assert flat.mean() == pytest.approx(0.3, rel=0.01)
    assert stats["cv"] == pytest.approx(0.3, rel=0.1)
    assert stats["min"] >= 1e-3 and stats["max"] <= 3.0


def test_scalar_is_constant():
    dt, stats = sample_dt(3, DtConfig("scalar", mean=0.7), SHAPES)
    assert np.all(_flat(dt) == np.float32(0.7))
    assert stats["cv"] == 0.0


def test_layerwise_is_constant_within_layers_and_varies_across():
    dt, _ = sample_dt(0, DtConfig("layerwise", mean=0.4, cv=0.5, dt_max=2.0), SHAPES)
    assert all(np.unique(d).size == 1 for d in dt)
    assert len({float(d.ravel()[0]) for d in dt}) == 3


def test_per_channel_conv_dt():
    shapes = [(12, 12, 8), (4, 4, 16), (10,)]
    dt, _ = sample_dt(0, DtConfig("gamma", mean=0.5, cv=0.5, per="channel"), shapes)
    assert [d.shape for d in dt] == shapes
    assert np.all(dt[0] == dt[0][:1, :1, :])  # one value per channel
    assert np.unique(dt[0]).size == 8
    unit, _ = sample_dt(0, DtConfig("gamma", mean=0.5, cv=0.5, per="unit"), shapes)
    assert np.unique(unit[0]).size > 8


def test_clipping_moves_the_mean_unless_matched():
    """Lognormal, nominal mean 0.8, cv 0.5, clipped at 1 → realised mean ≈ 0.714."""
    spec = dict(dist="lognormal", mean=0.8, cv=0.5, dt_max=1.0)
    _, raw = sample_dt(0, DtConfig(**spec, match_mean=False), [(20000,)])
    assert raw["mean"] == pytest.approx(0.714, abs=0.01)
    assert raw["clipped_high"] > 0.2
    _, matched = sample_dt(0, DtConfig(**spec), [(20000,)])
    assert matched["mean"] == pytest.approx(0.8, rel=0.01)
    assert matched["nominal_mean"] == 0.8 and matched["cv"] < 0.5  # clipping narrows the spread


def test_tau_sampling_makes_dt_reciprocal():
    _, stats = sample_dt(0, DtConfig("lognormal", mean=0.3, cv=0.4, sample="tau", dt_max=3.0), [(20000,)])
    # 1/lognormal is lognormal with the same cv.
    assert stats["cv"] == pytest.approx(0.4, rel=0.05)
    assert stats["mean"] == pytest.approx(0.3, rel=0.01)


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_same_seed_same_draw_other_seed_other_draw(dist):
    spec = DtConfig(dist, mean=0.5, cv=0.0 if dist == "scalar" else 0.5)
    a, _ = sample_dt(7, spec, SHAPES)
    b, _ = sample_dt(7, spec, SHAPES)
    c, _ = sample_dt(8, spec, SHAPES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if dist != "scalar":
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_distributions_draw_from_their_own_streams():
    a, _ = sample_dt(0, DtConfig("lognormal", mean=0.5, cv=0.5), SHAPES)
    b, _ = sample_dt(0, DtConfig("normal", mean=0.5, cv=0.5), SHAPES)
    # Different families at one seed are not a transform of the same numbers in the same order.
    assert abs(np.corrcoef(_flat(a), _flat(b))[0, 1]) < 0.2


@pytest.mark.parametrize("bad", [
    dict(mean=0.0), dict(mean=-0.5), dict(dist="lognormal", cv=-0.1), dict(dt_min=0.5, dt_max=0.4, mean=0.45),
    dict(dt_min=0.0), dict(mean=1.5), dict(dist="scalar", cv=0.2), dict(dist="cauchy"), dict(mean=float("nan")),
    dict(dist="lognormal", cv=0.5, sample="rate"), dict(dist="lognormal", cv=0.5, per="row"),
])
def test_bad_parameters_raise_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"^dt\.\w+: "):
        DtConfig(**bad)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(dist=st.sampled_from(FAMILIES), mean=st.floats(0.05, 0.95), cv=st.floats(0.0, 1.5),
       seed=st.integers(0, 2**31 - 1))
def test_matched_mean_holds_or_the_request_is_refused(dist, mean, cv, seed):
    spec = DtConfig(dist, mean=mean, cv=cv, dt_min=0.01, dt_max=1.0)
    try:
        dt, stats = sample_dt(seed, spec, [(300,), (10,)])
    except ConfigError as err:
        # Only when draws pinned at the bounds make the mean unreachable (e.g. negative normal draws).
        assert "cannot reach mean" in str(err)
        return
    flat = _flat(dt)
    assert flat.min() >= 0.01 - 1e-7 and flat.max() <= 1.0 + 1e-7
    assert math.isclose(flat.mean(), mean, rel_tol=0.01)
