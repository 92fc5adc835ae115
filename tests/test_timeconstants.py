"""dt samplers: truncated draws with matched mean and cv, determinism, streams, redraws, bad requests."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from hets_ep.config import DtConfig
from hets_ep.errors import ConfigError
from hets_ep.choices import DISTRIBUTIONS, FAMILIES
from hets_ep.timeconstants import permute, sample_dt

SHAPES = [(512,), (256,), (10,)]


def _flat(dt):
    return np.concatenate([d.ravel() for d in dt]).astype(np.float64)


@pytest.mark.parametrize("dist", FAMILIES)
@pytest.mark.parametrize("mean, cv, dt_max", [(0.5, 0.5, 1.0), (0.8, 0.5, 2.0), (0.2, 0.25, 1.0)])
def test_realised_mean_and_cv_equal_the_request_inside_the_bounds(dist, mean, cv, dt_max):
    spec = DtConfig(dist, mean=mean, cv=cv, dt_max=dt_max)
    dt, stats = sample_dt(0, spec, SHAPES)
    flat = _flat(dt)
    assert [d.shape for d in dt] == SHAPES
    assert flat.mean() == pytest.approx(mean, rel=1e-4) and flat.std() / flat.mean() == pytest.approx(cv, rel=1e-3)
    assert stats["mean"] == pytest.approx(mean, rel=1e-4) and stats["cv"] == pytest.approx(cv, rel=1e-3)
    # Truncated, not clipped: nothing piles up at a bound.
    assert flat.min() > spec.dt_min and flat.max() < dt_max and stats["at_bounds"] == 0.0
    assert np.unique(flat).size == flat.size


def test_without_matching_truncation_moves_the_mean_and_narrows_the_spread():
    spec = dict(dist="lognormal", mean=0.8, cv=0.5, dt_max=1.0)
    _, raw = sample_dt(0, DtConfig(**spec, match="none", match_cv=False), [(20000,)])
    sigma = math.sqrt(math.log(1.25))  # 0.8·Z, Z lognormal with mean 1 and cv 0.5, given 0.01 ≤ 0.8·Z ≤ 1
    truncated_mean = stats.lognorm(s=sigma, scale=0.8 * math.exp(-sigma**2 / 2)).expect(lb=0.01, ub=1.0,
                                                                                        conditional=True)
    assert raw["mean"] == pytest.approx(truncated_mean, abs=0.003) and truncated_mean < 0.7
    assert raw["cv"] < 0.35 and raw["max"] < 1.0
    _, mean_only = sample_dt(0, DtConfig(**spec, match_cv=False), [(20000,)])
    assert mean_only["mean"] == pytest.approx(0.8, rel=1e-4) and mean_only["cv"] < 0.3
    with pytest.raises(ConfigError, match=r"reaches cv 0\.2\d+ at most"):  # a mean near the bound leaves no room
        sample_dt(0, DtConfig(**spec), [(20000,)])
    _, both = sample_dt(0, DtConfig(**{**spec, "dt_max": 2.0}), [(20000,)])
    assert both["mean"] == pytest.approx(0.8, rel=1e-4) and both["cv"] == pytest.approx(0.5, rel=1e-3)


def test_a_cv_the_bounds_cannot_hold_is_refused_naming_the_largest():
    with pytest.raises(ConfigError, match=r"^dt\.cv: lognormal truncated to \[0\.01, 1\.0\] at mean 0\.5 reaches "
                                          r"cv 0\.\d+ at most"):
        sample_dt(0, DtConfig("lognormal", mean=0.5, cv=0.9), SHAPES)


def test_scalar_is_constant():
    dt, stats = sample_dt(3, DtConfig("scalar", mean=0.7), SHAPES)
    assert np.all(_flat(dt) == np.float32(0.7)) and stats["cv"] == 0.0


def test_layerwise_is_one_fixed_value_per_layer_the_same_for_every_seed():
    """The quantile rule: layer l of L gets the (l + ½)/L quantile of the family, scaled so the
    layers' mean (each layer once) is the request; no seed moves it (study 2's draw let the
    output layer's dt wander from 0.68 to 1.99)."""
    spec = DtConfig("layerwise", mean=0.4, cv=0.5, dt_max=2.0)
    draws = [sample_dt(seed, spec, SHAPES)[0] for seed in range(5)]
    for dt in draws:
        assert all(np.unique(d).size == 1 for d in dt)
        assert [float(d[0]) for d in dt] == [float(d[0]) for d in draws[0]]
    values = np.array([float(d[0]) for d in draws[0]])
    sigma = math.sqrt(math.log1p(0.5**2))
    quantiles = stats.lognorm(s=sigma, scale=math.exp(-sigma**2 / 2)).ppf([1 / 6, 3 / 6, 5 / 6])
    np.testing.assert_allclose(values, 0.4 * quantiles / quantiles.mean(), rtol=1e-6)
    assert values.mean() == pytest.approx(0.4, rel=1e-6) and np.all(np.diff(values) > 0)
    chosen, _ = sample_dt(3, DtConfig("layerwise", mean=0.4, layers=[0.3, 0.9, 0.5]), SHAPES)
    assert [float(d[0]) for d in chosen] == pytest.approx([0.3, 0.9, 0.5])


@pytest.mark.parametrize("match", ["geomean", "tau"])
@pytest.mark.parametrize("dist", ["lognormal", "gamma"])
def test_the_matched_statistic_is_the_one_held_equal(match, dist):
    """dt.match=geomean holds the geometric mean of dt at dt.mean, tau the harmonic mean (the
    mean time constant); all three means and the cv of dt and τ are recorded either way."""
    dt, stats = sample_dt(0, DtConfig(dist, mean=0.5, cv=0.5, dt_max=2.0, match=match), SHAPES)
    flat = _flat(dt)
    geomean, hmean = float(np.exp(np.mean(np.log(flat)))), float(1 / np.mean(1 / flat))
    assert (geomean if match == "geomean" else hmean) == pytest.approx(0.5, rel=1e-4)
    assert flat.std() / flat.mean() == pytest.approx(0.5, rel=1e-3)
    assert flat.mean() > geomean > hmean  # so the matched mean step of the others is larger
    assert stats["geomean"] == pytest.approx(geomean) and stats["hmean"] == pytest.approx(hmean)
    assert stats["tau_cv"] == pytest.approx(float(np.std(1 / flat) / np.mean(1 / flat)))
    scalar, scalar_stats = sample_dt(0, DtConfig("scalar", mean=0.5, match=match), SHAPES)
    assert scalar_stats["mean"] == scalar_stats["geomean"] == pytest.approx(scalar_stats["hmean"])


def test_per_channel_conv_dt_counts_each_value_once_per_neuron():
    shapes = [(12, 12, 8), (4, 4, 16), (10,)]
    dt, stats = sample_dt(0, DtConfig("gamma", mean=0.5, cv=0.5, per="channel"), shapes)
    assert [d.shape for d in dt] == shapes
    assert np.all(dt[0] == dt[0][:1, :1, :]) and np.unique(dt[0]).size == 8  # one value per channel
    assert stats["mean"] == pytest.approx(0.5, rel=1e-4) and stats["cv"] == pytest.approx(0.5, rel=1e-3)
    unit, _ = sample_dt(0, DtConfig("gamma", mean=0.5, cv=0.5, per="unit"), shapes)
    assert np.unique(unit[0]).size == unit[0].size


def test_tau_sampling_makes_dt_reciprocal_and_still_matches():
    dt, stats = sample_dt(0, DtConfig("gamma", mean=0.3, cv=0.4, sample="tau", dt_max=3.0), [(20000,)])
    assert stats["mean"] == pytest.approx(0.3, rel=1e-4) and stats["cv"] == pytest.approx(0.4, rel=1e-3)
    direct, _ = sample_dt(0, DtConfig("gamma", mean=0.3, cv=0.4, dt_max=3.0), [(20000,)])
    # 1/gamma is right-skewed more than gamma: the same mean and cv, another shape.
    skew = lambda a: float(np.mean(((a - a.mean()) / a.std()) ** 3))  # noqa: E731
    assert skew(_flat(dt)) > skew(_flat(direct)) + 0.3


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_same_seed_same_draw_other_seed_other_draw(dist):
    spec = DtConfig(dist, mean=0.5, cv=0.0 if dist == "scalar" else 0.3)
    a, _ = sample_dt(7, spec, SHAPES)
    b, _ = sample_dt(7, spec, SHAPES)
    c, _ = sample_dt(8, spec, SHAPES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if dist not in ("scalar", "layerwise"):  # layerwise is the same at every seed
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_conditions_at_one_seed_share_their_uniforms():
    """Every cv at one seed transforms the same uniforms: the neurons' order is the same."""
    a, _ = sample_dt(0, DtConfig("lognormal", mean=0.5, cv=0.25), SHAPES)
    b, _ = sample_dt(0, DtConfig("lognormal", mean=0.3, cv=0.5), SHAPES)
    assert np.array_equal(np.argsort(_flat(a)), np.argsort(_flat(b)))
    other, _ = sample_dt(0, DtConfig("gamma", mean=0.5, cv=0.25), SHAPES)
    assert abs(np.corrcoef(_flat(a), _flat(other))[0, 1]) < 0.2  # each distribution has its own stream


def test_redraw_permutes_within_layers():
    dt, _ = sample_dt(0, DtConfig("lognormal", mean=0.5, cv=0.5), SHAPES)
    dt = tuple(map(np.asarray, dt))
    one = permute(jax.random.key(0), dt)
    two = permute(jax.random.key(1), dt)
    for d, p, q in zip(dt, one, two):
        assert np.array_equal(np.sort(d), np.sort(np.asarray(p)))  # the same values in each layer
        assert not np.array_equal(np.asarray(p), np.asarray(q))
    conv = (np.broadcast_to(np.arange(8, dtype=np.float32), (4, 4, 8)),)
    moved = np.asarray(permute(jax.random.key(0), conv, per="channel")[0])
    assert np.all(moved == moved[:1, :1, :]) and sorted(moved[0, 0]) == list(range(8))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(dist=st.sampled_from(FAMILIES), mean=st.floats(0.05, 0.95), cv=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_matched_mean_and_cv_hold_or_the_request_is_refused(dist, mean, cv, seed):
    spec = DtConfig(dist, mean=mean, cv=cv, dt_min=0.01, dt_max=1.0)
    try:
        dt, _ = sample_dt(seed, spec, [(300,), (10,)])
    except ConfigError as err:
        assert (str(err).startswith("dt.cv: ") and "at most" in str(err)) or \
            (str(err).startswith("dt.mean: ") and "cannot reach mean" in str(err))
        return
    flat = _flat(dt)
    assert flat.min() >= 0.01 and flat.max() <= 1.0
    assert math.isclose(flat.mean(), mean, rel_tol=1e-3)
    assert math.isclose(flat.std() / flat.mean(), cv, rel_tol=1e-2)
