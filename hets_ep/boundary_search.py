"""The adaptive stability-boundary search (``hydra/sweeper=boundary``): place runs where the edge is.

A fixed grid spends most of its runs where every run trains or none does. The search runs in
**rounds**; each round gives every seed of the round one level of the stress ``axis``, the same
level in every condition (so boundary shifts stay paired by seed), and after each round it
refits, per condition, where P(train) crosses ``level``:

* **Round 1** spreads the round's seeds evenly over ``[low, high]`` (on the fit's scale: the
  stress or its logarithm), one level each.
* **Later rounds**: per condition, a Bayesian posterior over the logistic psychometric curve
  ``P(train | x) = σ(logit(level) − k (x − θ))`` on a grid of boundaries ``θ`` (uniform over the
  range: a boundary beyond it shows as an estimate at its end) and slopes ``k`` of either sign
  (log-uniform, 2 to 200 per range), pooled over the conditions with equal weight; the next round's ``m`` levels are the
  points where ``m`` curves drawn from it (stratified: at the ``(j + ½)/m`` quantiles) pass
  P(train) = 0.15 and 0.85 in turn. The posterior is QUEST's (Watson & Pelli 1983) with the slope
  unknown, as in the Ψ method (Kontsevich & Tyler 1999); placing runs off the curve's centre,
  where they inform the slope as well as the boundary, is the Ψ method's behaviour, here as a
  deterministic rule for a batch of runs (no expected-entropy search over every level).
* **The interval** is the posterior's 95% credible interval: Bayesian, it does not depend on the
  rule that placed the runs. The report's bootstrap over seeds assumes levels fixed in advance;
  on the runs of a search it is too narrow (``docs/benchmarks.md`` gives its coverage).

The budget counts jobs: a round is ``conditions × seeds_per_round`` jobs, and the last round takes
as many seeds as the budget has room for. What a run's outcome is: trained (late accuracy at least
``chance + train_fraction × (1 − chance)``, no collapse), else not (a diverged or stopped run did
not train): the report's rule (:func:`hets_ep.report.runs.trained`). The search writes
``boundary_jobs.csv`` (every job: round, seed, condition, level, outcome; what a resumed search
continues from) and ``boundary_search.csv`` (per round and condition: its levels and the running
estimate: the posterior median and 95% credible interval, and the report's fit on the runs so far).

:func:`simulate` compares the search with a fixed grid on simulated outcomes (a psychometric curve
with seed effects, no training): ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from hets_ep.errors import ConfigError

SCALES = ("linear", "log")
_THETA_POINTS = 161
_SLOPES = np.geomspace(2.0, 200.0, 25)
# A later round runs each curve drawn from the posterior where it passes P(train) = SWEET or
# 1 − SWEET: off the centre, where a run informs the slope as well as the boundary.
SWEET = 0.15
JOBS_CSV, SEARCH_CSV = "boundary_jobs.csv", "boundary_search.csv"


@dataclasses.dataclass(frozen=True)
class Search:
    """The search's settings (``hydra.sweeper.*``)."""

    axis: Optional[str] = None            # the stress key, a number of the schema (dynamics.noise, ep.beta, …)
    low: Optional[float] = None           # the range searched
    high: Optional[float] = None
    budget: Optional[int] = None          # jobs in all, every condition together
    level: float = 0.5                    # the P(train) whose stress is the boundary
    scale: str = "linear"                 # fit and spread levels in the stress (linear) or its logarithm (log)
    seeds_per_round: Optional[int] = None  # seeds a round gives a level to (default: every seed)
    train_fraction: float = 0.8           # trained: late ≥ chance + F (1 − chance), no collapse
    integer: bool = False                 # the axis takes whole numbers (ep.T1): levels are rounded

    def check(self, conditions: int, seeds: int) -> None:
        """Refuse, in one line naming the key, settings that cannot run (before any job starts)."""
        def need(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"hydra.sweeper.{key}: {message}")

        need(self.axis is not None, "axis", "name the stress key to search along, e.g. hydra.sweeper.axis=dynamics.noise")
        for key in ("low", "high", "budget"):
            need(getattr(self, key) is not None, key, f"must be set (hydra.sweeper.{key}=…)")
        need(isinstance(self.low, (int, float)) and isinstance(self.high, (int, float))
             and math.isfinite(self.low) and math.isfinite(self.high), "low", "low and high must be numbers")
        need(self.low < self.high, "low", f"must be below hydra.sweeper.high, got low {self.low} ≥ high {self.high}")
        need(self.scale in SCALES, "scale", f"unknown {self.scale!r}; choose one of {', '.join(SCALES)}")
        need(self.scale != "log" or self.low > 0, "low", f"a log scale needs low > 0, got {self.low}")
        need(0 < self.level < 1, "level", f"must lie in (0, 1), got {self.level}")
        need(0 < self.train_fraction < 1, "train_fraction", f"must lie in (0, 1), got {self.train_fraction}")
        need(self.seeds_per_round is None or 1 <= self.seeds_per_round <= seeds, "seeds_per_round",
             f"must lie in [1, {seeds}] (the seeds swept), got {self.seeds_per_round}")
        size = conditions * (self.seeds_per_round or seeds)
        need(isinstance(self.budget, int) and self.budget >= size, "budget",
             f"{self.budget} is less than one round ({conditions} conditions × {self.seeds_per_round or seeds} seeds "
             f"= {size} jobs)")

    def to_fit(self, stress) -> np.ndarray:
        """Stress on the fit's scale, mapped so that ``[low, high]`` is ``[0, 1]``."""
        x = np.log(np.asarray(stress, np.float64)) if self.scale == "log" else np.asarray(stress, np.float64)
        lo, hi = (math.log(self.low), math.log(self.high)) if self.scale == "log" else (self.low, self.high)
        return (x - lo) / (hi - lo)

    def from_fit(self, z) -> np.ndarray:
        z = np.asarray(z, np.float64)
        if self.scale == "log":
            x = np.exp(math.log(self.low) + z * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + z * (self.high - self.low)
        return np.round(x) if self.integer else x


def schedule(search: Search, conditions: int, seeds: Sequence[int]) -> list[list[int]]:
    """The seeds of each round, until the budget is spent: ``seeds_per_round`` at a time, taken
    in turn (every seed each round by default); the last round as many as the budget allows."""
    per_round = search.seeds_per_round or len(seeds)
    left, rounds, at = search.budget, [], 0
    while left >= conditions:
        take = min(per_round, left // conditions)
        rounds.append([seeds[(at + j) % len(seeds)] for j in range(take)])
        at, left = at + take, left - take * conditions
    return rounds


def first_levels(search: Search, count: int) -> list[float]:
    """Round 1: ``count`` levels evenly over ``[low, high]`` on the fit's scale (cell centres)."""
    return [float(v) for v in search.from_fit((np.arange(count) + 0.5) / count)]


def _joint(search: Search, stress: Sequence[float], trained: Sequence[bool]) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """``(θ grid, slope grid, joint posterior over them)`` on the fit's scale: uniform priors over
    the grids, the logistic likelihood of the runs (see the module docstring)."""
    theta = np.linspace(0.0, 1.0, _THETA_POINTS)
    slopes = np.concatenate([_SLOPES, -_SLOPES])
    z, t = search.to_fit(stress), np.asarray(trained, bool)
    offset = math.log(search.level / (1 - search.level))
    # logits[i, j, n]: θ_i, k_j, run n
    logits = offset - slopes[None, :, None] * (z[None, None, :] - theta[:, None, None])
    loglik = np.where(t, -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)).sum(axis=-1)
    joint = np.exp(loglik - loglik.max())
    return theta, slopes, joint / joint.sum()


def posterior(search: Search, stress: Sequence[float], trained: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """``(θ grid on the fit's scale, the boundary's marginal posterior over it)``: the slope, of
    either sign, marginalised out."""
    theta, _, joint = _joint(search, stress, trained)
    return theta, joint.sum(axis=1)


def _quantiles(theta: np.ndarray, weights: np.ndarray, q: Sequence[float]) -> np.ndarray:
    cdf = np.cumsum(weights)
    return np.interp(q, cdf / cdf[-1], theta)


def next_levels(search: Search, outcomes: Sequence[tuple[Sequence[float], Sequence[bool]]], count: int) -> list[float]:
    """A later round's ``count`` levels from each condition's ``(stress, trained)`` so far: curves
    ``(θ_j, k_j)`` at the ``(j + ½)/count`` quantiles of the joint posterior pooled over the
    conditions, each run at its curve's ``P = SWEET`` or ``1 − SWEET`` point in turn, clipped to
    the range."""
    pooled = None
    for stress, trained in outcomes:
        theta, slopes, joint = _joint(search, stress, trained)
        pooled = joint if pooled is None else pooled + joint
    cdf = np.cumsum(pooled.ravel())
    cells = np.searchsorted(cdf / cdf[-1], (np.arange(count) + 0.5) / count)
    offset = math.log(search.level / (1 - search.level))
    levels = []
    for j, (i, k) in enumerate(zip(*np.unravel_index(cells, pooled.shape))):
        p = SWEET if j % 2 == 0 else 1 - SWEET
        z = theta[i] + (offset - math.log(p / (1 - p))) / slopes[k]   # where σ(offset − k (z − θ)) = p
        levels.append(float(search.from_fit(np.clip(z, 0.0, 1.0))))
    return levels


def estimate(search: Search, stress: Sequence[float], trained: Sequence[bool]) -> dict:
    """The running estimate of one condition: the posterior median of the boundary and its 95%
    credible interval, and the report's fit on the same runs (None where it has no crossing)."""
    from hets_ep.report import inference

    theta, weights = posterior(search, stress, trained)
    median, low, high = search.from_fit(_quantiles(theta, weights, (0.5, 0.025, 0.975)))
    fit = inference.fit_boundary(stress, trained, log=search.scale == "log") if len(stress) else None
    return {"posterior_median": float(median), "credible_low": float(low), "credible_high": float(high),
            "fit_boundary": None if fit is None else fit.boundary,
            "fit_estimator": None if fit is None else fit.estimator}


@dataclasses.dataclass
class Job:
    number: int
    round: int
    seed: int
    condition: int
    level: float
    trained: Optional[bool] = None


def run(search: Search, conditions: Sequence[Sequence[str]], seeds: Sequence[int], directory: Path,
        launch: Callable[[list[list[str]], int], None], outcome: Callable[[int], Optional[bool]],
        stopped: Callable[[], bool] = lambda: False) -> list[Job]:
    """The search: plan each round, ``launch(job_overrides, first_job_number)`` the jobs not yet
    finished, read each job's ``outcome(number)`` (trained, not, or None if it did not finish),
    plan the next round from the outcomes; ``stopped()`` ends it between rounds (a signal). The
    rounds already planned in ``directory`` (a search continued with ``resume=true``) keep their
    levels; its finished jobs are not run again."""
    from hets_ep import atomic

    plan = schedule(search, len(conditions), list(seeds))
    names = condition_names(conditions)
    jobs = _planned(directory, search, names, plan)
    estimates = []
    for number, round_seeds in enumerate(plan, start=1):
        mine = [j for j in jobs if j.round == number]
        if not mine:
            levels = first_levels(search, len(round_seeds)) if number == 1 else next_levels(
                search, [_so_far(jobs, c) for c in range(len(conditions))], len(round_seeds))
            start = len(jobs)
            mine = [Job(start + i * len(conditions) + c, number, seed, c, level)
                    for i, (seed, level) in enumerate(zip(round_seeds, levels)) for c in range(len(conditions))]
            jobs += mine
            _write_jobs(directory, search, names, jobs)
        todo = [j for j in mine if (j.trained if j.trained is not None else outcome(j.number)) is None]
        for first, block in _contiguous(todo):
            launch([[*conditions[j.condition], f"seed={j.seed}", f"{search.axis}={_value(search, j.level)}"]
                    for j in block], first)
        for j in mine:
            j.trained = outcome(j.number)
        _write_jobs(directory, search, names, jobs)
        for c, name in enumerate(names):
            stress, trained = _so_far(jobs, c)
            estimates.append({"round": number, "condition": name, "jobs": len(stress),
                              "levels": " ".join(f"{j.level:.6g}" for j in mine if j.condition == c),
                              "trained": int(np.sum(trained)), **estimate(search, stress, trained)})
        atomic.write_text(directory / SEARCH_CSV, pd.DataFrame(estimates).to_csv(index=False))
        if stopped():
            break
    return jobs


def _value(search: Search, level: float) -> str:
    return str(int(level)) if search.integer else repr(float(level))


def split(arguments: Sequence[str]) -> tuple[list[list[str]], list[int]]:
    """A command line's conditions (every combination of its swept values but the seed's, each
    with the overrides every job shares) and its seeds (``seed=…``; the schema's 0 if none)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    seeds, common, swept = [0], [], []
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        if key == "seed":
            seeds = [int(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() \
                else [int(override.value())]
        elif override.is_sweep_override():
            swept.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            common.append(f"{key}={override.get_value_element_as_str()}")
    return [[*common, *combo] for combo in itertools.product(*swept)], seeds


def outcome(run_dir: Path, train_fraction: float) -> Optional[bool]:
    """A job's outcome from its run record: trained or not (the report's rule), None if it has not
    finished (or has no record yet)."""
    from hets_ep import record
    from hets_ep.errors import HetsEpError
    from hets_ep.report.runs import trained

    if not (run_dir / record.SUMMARY).is_file():
        return None
    try:
        summary = record.read_summary(run_dir)
    except HetsEpError:
        return None
    return trained(summary.status, summary.late_test_acc, summary.stability.get("collapse_count"),
                   1.0 / (summary.classes or 10), train_fraction)


def condition_names(conditions: Sequence[Sequence[str]]) -> list[str]:
    """Each condition by the overrides it does not share with every other (``dt=lognormal``)."""
    shared = set.intersection(*(set(c) for c in conditions)) if len(conditions) > 1 else set(conditions[0])
    return [" ".join(o for o in c if o not in shared) or "all" for c in conditions]


def _so_far(jobs: Sequence[Job], condition: int) -> tuple[list[float], list[bool]]:
    done = [j for j in jobs if j.condition == condition and j.trained is not None]
    return [j.level for j in done], [bool(j.trained) for j in done]


def _contiguous(jobs: Sequence[Job]):
    """Runs of consecutive job numbers (a launcher numbers a batch's jobs from its first)."""
    block: list[Job] = []
    for j in sorted(jobs, key=lambda j: j.number):
        if block and j.number != block[-1].number + 1:
            yield block[0].number, block
            block = []
        block.append(j)
    if block:
        yield block[0].number, block


def _write_jobs(directory: Path, search: Search, names: Sequence[str], jobs: Sequence[Job]) -> None:
    from hets_ep import atomic

    frame = pd.DataFrame([{"job": j.number, "round": j.round, "seed": j.seed, "condition": names[j.condition],
                           "axis": search.axis, "level": j.level, "trained": j.trained} for j in jobs])
    atomic.write_text(directory / JOBS_CSV, frame.to_csv(index=False))


def _planned(directory: Path, search: Search, names: Sequence[str], plan: Sequence[Sequence[int]]) -> list[Job]:
    """The jobs a search in ``directory`` already planned (none for a new search); refused if
    they were planned for other conditions, seeds or another axis."""
    path = directory / JOBS_CSV
    if not path.exists():
        return []
    frame = pd.read_csv(path)
    where = f"{path} was planned for"
    if len(frame) and set(frame["axis"]) != {search.axis}:
        raise ConfigError(f"hydra.sweeper.axis: {where} {', '.join(sorted(set(frame['axis'])))}, not {search.axis}")
    unknown = sorted(set(frame["condition"]) - set(names))
    if unknown:
        raise ConfigError(f"{where} other conditions ({unknown[0]}); continue it with the same sweep, or choose "
                          "another hydra.sweep.dir")
    jobs = []
    for row in frame.itertuples():
        expected = plan[row.round - 1] if row.round <= len(plan) else []
        if row.seed not in expected:
            raise ConfigError(f"{where} other seeds or another budget (round {row.round}, seed {row.seed}); continue "
                              "it with the same sweep, or choose another hydra.sweep.dir")
        trained = None if pd.isna(row.trained) else bool(row.trained)
        jobs.append(Job(int(row.job), int(row.round), int(row.seed), names.index(row.condition), float(row.level),
                        trained))
    return jobs


# -- simulated studies -------------------------------------------------------------------------------

def simulate(search: Search, grid: Sequence[float], seeds: int, boundary: float, slope: float, seed_sd: float,
             studies: int, rng: np.random.Generator, resamples: int = 200) -> pd.DataFrame:
    """Simulated studies of one condition without training: a run of seed ``s`` at stress ``x``
    trains with probability ``σ(logit(level) − slope (z(x) − z(boundary) − u_s))``, ``u_s ~ N(0,
    seed_sd²)`` a seed effect (on the fit's scale, where ``[low, high]`` is ``[0, 1]``). Per study
    the fixed grid (every seed at every level of ``grid``) and the search (``search.budget`` runs),
    each with two 95% intervals: the posterior's credible interval (:func:`estimate`: Bayesian, so
    the same whatever rule placed the runs) and the report's percentile bootstrap over seeds
    (:func:`hets_ep.report.inference.boundary_interval`, which assumes levels fixed in advance).
    One row per study, design and interval: runs, the report's boundary, the interval, its width,
    and whether it covers the true boundary."""
    from hets_ep.report import inference

    log = search.scale == "log"
    offset, z_true = math.log(search.level / (1 - search.level)), float(search.to_fit([boundary])[0])
    rows = []
    for study in range(studies):
        effects = rng.normal(0.0, seed_sd, seeds)

        def trains(seed: int, level: float) -> bool:
            z = float(search.to_fit([level])[0])
            return bool(rng.random() < 1 / (1 + math.exp(-(offset - slope * (z - z_true - effects[seed])))))

        outcomes: dict[int, bool] = {}

        def launch(batch: list[list[str]], first: int) -> None:
            for number, overrides in enumerate(batch, start=first):
                values = dict(o.split("=", 1) for o in overrides)
                outcomes[number] = trains(int(values["seed"]), float(values[search.axis]))

        with tempfile.TemporaryDirectory() as scratch:  # the search's CSVs
            jobs = run(search, [[]], list(range(seeds)), Path(scratch), launch, outcomes.get)
        designs = {"grid": pd.DataFrame([(s, x, trains(s, x)) for s in range(seeds) for x in grid],
                                        columns=["seed", "stress", "trained"]),
                   "search": pd.DataFrame([(j.seed, j.level, j.trained) for j in jobs],
                                          columns=["seed", "stress", "trained"])}
        for design, data in designs.items():
            fit = inference.fit_boundary(data["stress"], data["trained"], log)
            posterior_view = estimate(search, data["stress"], data["trained"])
            intervals = {"credible": (posterior_view["credible_low"], posterior_view["credible_high"]),
                         "bootstrap": inference.boundary_interval(data, log, seed=study, resamples=resamples)[:2]}
            for interval, (low, high) in intervals.items():
                found = low is not None and high is not None
                rows.append({"study": study, "design": design, "interval": interval, "runs": len(data),
                             "boundary": fit.boundary, "ci_low": low, "ci_high": high,
                             "width": (high - low) if found else np.inf,
                             "covers": bool(found and low <= boundary <= high)})
    return pd.DataFrame(rows)
