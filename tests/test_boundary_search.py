"""The adaptive boundary search (hydra/sweeper=boundary): rounds paired across conditions, the
budget kept, resumed from the jobs already finished, bad settings refused before any job, and —
on simulated outcomes with a known boundary — the fixed grid's interval reached with half its runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from hets_ep import boundary_search, cli
from hets_ep.boundary_search import JOBS_CSV, SEARCH_CSV, Search


def _outcomes(search: Search, boundaries: dict[str, float], slope: float = 30.0, seed: int = 0):
    """A fake launcher: a job trains with the logistic probability of its condition's curve."""
    rng, results, launched = np.random.default_rng(seed), {}, []

    def launch(batch, first):
        for number, overrides in enumerate(batch, start=first):
            values = dict(o.split("=", 1) for o in overrides)
            z = float(search.to_fit([float(values[search.axis])])[0])
            edge = float(search.to_fit([boundaries[values["dt"]]])[0])
            results[number] = bool(rng.random() < 1 / (1 + math.exp(slope * (z - edge))))
            launched.append((number, values))

    return launch, results, launched


SEARCH = Search(axis="dynamics.noise", low=0.0, high=0.08, budget=40, seeds_per_round=4)
CONDITIONS = [["dt=scalar"], ["dt=lognormal"]]


def test_rounds_give_each_seed_one_level_shared_by_the_conditions_within_the_budget(tmp_path):
    launch, results, launched = _outcomes(SEARCH, {"scalar": 0.02, "lognormal": 0.05})
    jobs = boundary_search.run(SEARCH, CONDITIONS, list(range(8)), tmp_path, launch, results.get)
    assert len(jobs) == 40 and [j.number for j in jobs] == list(range(40))
    assert sorted(n for n, _ in launched) == list(range(40))
    by_round_seed = {}
    for j in jobs:
        by_round_seed.setdefault((j.round, j.seed), set()).add(j.level)
    assert all(len(levels) == 1 for levels in by_round_seed.values())  # paired across conditions
    assert [sorted({s for r, s in by_round_seed if r == k}) for k in (1, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sorted(j.level for j in jobs if j.round == 1 and j.condition == 0) == [0.01, 0.03, 0.05, 0.07]
    estimates = pd.read_csv(tmp_path / SEARCH_CSV)
    last = estimates[estimates["round"] == 5].set_index("condition")
    assert 0.01 < last.loc["dt=scalar", "posterior_median"] < 0.03 < 0.04 < last.loc["dt=lognormal",
                                                                                      "posterior_median"] < 0.06
    assert (last["credible_low"] < last["posterior_median"]).all() and (last["jobs"] == 20).all()
    assert pd.read_csv(tmp_path / JOBS_CSV)["trained"].notna().all()


def test_a_stopped_search_resumes_from_its_finished_jobs_with_the_levels_it_planned(tmp_path):
    launch, results, launched = _outcomes(SEARCH, {"scalar": 0.02, "lognormal": 0.05})
    rounds = []
    boundary_search.run(SEARCH, CONDITIONS, list(range(8)), tmp_path, launch, results.get,
                        stopped=lambda: rounds.append(1) or len(rounds) == 2)
    assert len(launched) == 16
    planned = pd.read_csv(tmp_path / JOBS_CSV)
    launched.clear()
    jobs = boundary_search.run(SEARCH, CONDITIONS, list(range(8)), tmp_path, launch, results.get)
    assert sorted(n for n, _ in launched) == list(range(16, 40))  # only what had not run
    assert [j.level for j in jobs[:16]] == list(planned["level"])
    with pytest.raises(Exception, match="was planned for other conditions"):
        boundary_search.run(SEARCH, [["dt=gamma"]], list(range(8)), tmp_path, launch, results.get)


def test_a_job_that_does_not_finish_leaves_a_gap_not_a_wrong_outcome(tmp_path):
    launch, results, _ = _outcomes(SEARCH, {"scalar": 0.02, "lognormal": 0.05})

    def outcome(number):
        return None if number == 3 else results.get(number)

    jobs = boundary_search.run(SEARCH, CONDITIONS, list(range(8)), tmp_path, launch, outcome)
    assert jobs[3].trained is None and sum(j.trained is None for j in jobs) == 1


@pytest.mark.parametrize("settings, message", [
    (["hydra.sweeper.axis=model.activation"], "hydra.sweeper.axis: model.activation is not a number the schema holds"),
    (["hydra.sweeper.axis=dynamics.noise", "hydra.sweeper.low=0.08", "hydra.sweeper.high=0", "hydra.sweeper.budget=8"],
     "hydra.sweeper.low: must be below hydra.sweeper.high"),
    (["hydra.sweeper.axis=dynamics.noise", "hydra.sweeper.low=0", "hydra.sweeper.high=0.08",
      "hydra.sweeper.budget=3"], "hydra.sweeper.budget: 3 is less than one round (2 conditions × 2 seeds = 4 jobs)"),
    (["hydra.sweeper.axis=ep.beta", "hydra.sweeper.low=0", "hydra.sweeper.high=1", "hydra.sweeper.budget=8"],
     "ep.beta: must be a finite number in (0, inf], got 0.0 (at hydra.sweeper's low end, ep.beta=0)"),
    (["hydra.sweeper.axis=dynamics.noise", "hydra.sweeper.low=0", "hydra.sweeper.high=0.08", "hydra.sweeper.budget=8",
      "hydra.sweeper.scale=log"], "hydra.sweeper.low: a log scale needs low > 0"),
])
def test_bad_settings_are_refused_in_one_line_before_any_job(tmp_path, capsys, settings, message):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "-m", "hydra/sweeper=boundary", *settings, "seed=0,1", "dt=scalar,lognormal", *TINY,
                  f"hydra.sweep.dir={sweep}"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not sweep.exists()


@pytest.mark.slow  # 8 tiny training runs (CI runs it)
def test_the_search_runs_as_a_sweep_and_the_report_reads_its_folder(tmp_path):
    from conftest import hets_ep
    from hets_ep.report import analyse

    sweep = tmp_path / "sweep"
    hets_ep("train", "-m", "hydra/sweeper=boundary", "hydra.sweeper.axis=dynamics.noise", "hydra.sweeper.low=0",
            "hydra.sweeper.high=0.08", "hydra.sweeper.budget=8", "seed=0,1", "dt=scalar,lognormal", *TINY,
            "train.epochs=1", "hydra.callbacks.sweep_end.report=false", f"hydra.sweep.dir={sweep}", check=True)
    jobs = pd.read_csv(sweep / JOBS_CSV)
    assert len(jobs) == 8 and sorted(jobs["round"].unique()) == [1, 2] and jobs["trained"].notna().all()
    assert all((sweep / str(n) / "summary.json").is_file() for n in jobs["job"])
    analysis = analyse([sweep])
    assert sum(len(c.runs) for c in analysis.conditions) == 8
    assert sorted(analysis.searches["condition"]) == ["dt=lognormal", "dt=scalar"]  # the search's own estimates


@pytest.mark.slow  # 200 simulated studies, two designs each (about 4 minutes; CI runs it)
def test_on_simulated_studies_the_search_reaches_the_grids_interval_with_half_the_runs():
    """Study 4's σ axis (0 to 0.08, 12 seeds, its scalar curve's slope, seed effects), the boundary
    anywhere in the range: the search with half the grid's runs ends with a posterior interval no
    wider than the interval the report gives the grid (its bootstrap over seeds), and both cover the
    true boundary in at least 90% of the studies."""
    rng = np.random.default_rng(0)
    search = Search(axis="dynamics.noise", low=0.0, high=0.08, budget=30, seeds_per_round=6)
    frames = [boundary_search.simulate(search, [0, 0.01, 0.02, 0.04, 0.08], 12, float(rng.uniform(0.01, 0.06)), 20.0,
                                       0.015, 1, rng, resamples=100) for _ in range(200)]
    result = pd.concat(frames).set_index(["design", "interval"]).groupby(level=[0, 1])
    runs, width, covers = result["runs"].mean(), result["width"].median(), result["covers"].mean()
    assert runs["search", "credible"] * 2 == runs["grid", "bootstrap"] == 60
    assert width["search", "credible"] <= width["grid", "bootstrap"]
    assert covers["search", "credible"] >= 0.9 and covers["grid", "bootstrap"] >= 0.9
