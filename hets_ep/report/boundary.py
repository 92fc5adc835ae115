"""Stability boundaries (``hets-ep report SWEEP_DIR --boundary KEY``): where training starts to fail
along a stress axis, per condition, and how far a condition moves that edge.

The stress is one varying key — noise σ (``dynamics.noise``), ``ep.beta``, a learning-rate scale
(``optimizer.lr_scale``), ``dt.mean``, ``ep.T1``, or depth (``model.hidden``: a list, whose
length is the stress). Runs are grouped into *curves*: the conditions the report would form
with the stress left out, each with its runs at every stress level and seed (labelled without
the stress: along ``dt.mean`` a curve is the distribution and its cv, not a realised mean).
Per curve and per "trained" threshold (``--train-fraction F[,F…]``, side by side, so a
conclusion that flips with the threshold shows in one table): the share of runs that train at
each level (a run that diverged or was stopped at chance did not), the logistic fit of P(train)
in the stress (or its logarithm: ``--boundary-scale``; maximum likelihood, or Firth's penalised
likelihood where the runs are separated, the estimator named), the **boundary** (the stress at
P = 0.5) with a percentile bootstrap interval over seeds (each seed resampled with all its runs).
Each curve is compared with its baseline curve (the report's ``--baseline`` and ``--match``
rules): the paired difference of boundaries (on the log scale, the log of their ratio),
resampling the shared seeds jointly, its interval and bootstrap p (ties split evenly), Holm over
the curves compared at each threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from hets_ep.errors import HetsEpError
from hets_ep.report import inference
from hets_ep.report.runs import Condition, label, pairings, trained, varying_keys

if TYPE_CHECKING:
    from hets_ep.report.analysis import ReportOptions

SCALES = ("auto", "log", "linear")


def stress_value(value) -> float:
    """A stress as a number: the value itself, or the length of a list (depth of ``model.hidden``)."""
    if isinstance(value, (list, tuple)):
        return float(len(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HetsEpError(f"--boundary: {value!r} is not a number; the stress axis must be numeric (or a list, "
                          "whose length is the stress)")
    return float(value)


def use_log(stresses: Sequence[float], scale: str) -> bool:
    """Whether the fit is in log stress: asked for, or (``auto``) when every stress is positive."""
    positive = min(stresses) > 0
    if scale == "log" and not positive:
        raise HetsEpError(f"--boundary-scale log: the stress grid holds {min(stresses):g}, which has no logarithm; "
                          "use --boundary-scale linear")
    return scale == "log" or (scale == "auto" and positive)


def curves(conditions: Sequence[Condition], key: str) -> list[Condition]:
    """The conditions with the stress ``key`` left out, each holding its runs at every level
    (its table with a ``stress`` column), labelled without the stress."""
    runs = [r for c in conditions for r in c.runs]
    varying = varying_keys(runs, leave_out=(key,))
    by_values: dict[tuple, list[Condition]] = {}
    for cond in conditions:
        if key not in cond.values:
            raise HetsEpError(f"--boundary {key}: does not vary between these runs")
        by_values.setdefault(tuple(repr(cond.values.get(k)) for k in varying), []).append(cond)
    out = []
    for members in by_values.values():
        tables = [c.table.assign(stress=stress_value(c.values[key])) for c in members]
        curve = Condition({k: members[0].values.get(k) for k in varying}, [r for c in members for r in c.runs],
                          pd.concat(tables, ignore_index=True))
        curve.label = label(curve, varying, realised=not key.startswith("dt."))
        out.append(curve)
    return out


def _data(curve: Condition, fraction: float) -> pd.DataFrame:
    """The curve's runs whose outcome is known: seed, stress, trained at this threshold."""
    t = curve.table
    outcome = [trained(*row, fraction) for row in zip(t["status"], t["late"], t["collapse_count"], t["chance"])]
    data = pd.DataFrame({"seed": t["seed"].to_numpy(), "stress": t["stress"].astype(float).to_numpy(),
                         "trained": outcome})
    data = data.dropna(subset=["trained"])
    return data.assign(trained=data["trained"].astype(bool))


def analyse(conditions: Sequence[Condition], options: ReportOptions) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """``(per-curve table, per-comparison table, fitted in log stress)``, one block of rows per
    "trained" threshold (column ``train_fraction``)."""
    key = options.boundary
    lines = curves(conditions, key)
    stresses = sorted({s for c in lines for s in c.table["stress"]})
    log = use_log(stresses, options.boundary_scale)
    rows, tests = [], []
    pairs = [p for p in pairings(lines, "dt.dist=scalar" if options.baseline == "best" else options.baseline,
                                 options.match, options.metric) if p.baseline is not None]
    for fraction in options.train_fractions:
        for curve in lines:
            data = _data(curve, fraction)
            fit = inference.fit_boundary(data["stress"], data["trained"], log)
            low, high, found = inference.boundary_interval(data, log, options.seed)
            levels = data.groupby("stress")["trained"].agg(["mean", "size"])
            rows.append({"train_fraction": fraction, "condition": curve.label, "keys": curve.keys_text(), "key": key,
                         "runs": len(data), "seeds": data["seed"].nunique(), "boundary": fit.boundary,
                         "ci_low": low, "ci_high": high, "resamples_found": found, "slope": fit.slope,
                         "intercept": fit.intercept, "separated": fit.separated, "estimator": fit.estimator,
                         "scale": "log" if log else "linear", "position": _position(fit, data),
                         "trained_by_level": " ".join(f"{s:g}:{100 * m:.0f}%/{int(n)}"
                                                      for s, (m, n) in levels.iterrows())})
        block = []
        for pair in pairs:
            diff = inference.boundary_difference(_data(pair.condition, fraction), _data(pair.baseline, fraction), log,
                                                 options.seed)
            block.append({"train_fraction": fraction, "condition": pair.condition.label,
                          "baseline": pair.baseline.label, "scale": "log ratio" if log else "difference", **diff})
        if block:
            holm = inference.holm([b["p"] if inference.finite(b["p"]) else None for b in block], options.alpha)
            for b, p_holm in zip(block, holm):
                b["p_holm"] = p_holm
                b["verdict"] = _verdict(b, options.alpha)
        tests += block
    return pd.DataFrame(rows), pd.DataFrame(tests), log


def _position(fit: inference.Boundary, data: pd.DataFrame) -> str:
    if fit.boundary is not None:
        return "on the grid" if data["stress"].min() <= fit.boundary <= data["stress"].max() else "off the grid"
    return "every run trains" if data["trained"].all() else "no run trains"


def _verdict(row: dict, alpha: float) -> str:
    if not inference.finite(row["p"]):
        return "no boundary to compare"
    if inference.finite(row["p_holm"]) and row["p_holm"] < alpha:
        return "boundary at higher stress" if row["difference"] > 0 else "boundary at lower stress"
    return "trend (not after Holm)" if row["p"] < alpha else "no evidence"


def markdown(table: pd.DataFrame, tests: pd.DataFrame, key: str, log: bool, alpha: float) -> list[str]:
    """The report's section on the boundaries: every threshold side by side."""
    from hets_ep.report.tables import md_interval, md_p, md_table

    fractions = sorted(table["train_fraction"].unique())
    primary = table["train_fraction"].iloc[0]
    lines = [f"### Stability boundaries along {key}", "",
             f"P(train) against {key} per condition, a logistic fit in {'log ' if log else ''}{key} (maximum "
             "likelihood, statsmodels GLM; where the runs are separated, Firth's penalised likelihood, firthmodels: "
             "the estimator column names which); the boundary is the "
             f"{key} at P = 0.5, with a 95% percentile bootstrap interval over seeds (each resampled with all its "
             "runs). A run trains when its late accuracy reaches chance + F × (1 − chance) and it never collapses; "
             "a run that diverged or was stopped at chance does not. Each threshold F is a column: a conclusion that "
             f"changes with F shows here. Shares by level are at F = {primary:g}.", ""]
    rows = []
    for condition, block in table.groupby("condition", sort=False):
        by_f = block.set_index("train_fraction")
        first = by_f.loc[primary]
        cells = [f"{md_interval(by_f.loc[f, 'boundary'], by_f.loc[f, 'ci_low'], by_f.loc[f, 'ci_high'], 4, signed=False)}"
                 f" ({_estimator_text(by_f.loc[f])})" for f in fractions]
        rows.append([condition, f"{first['runs']} ({first['seeds']})", first["trained_by_level"], *cells])
    lines += md_table(["condition", "runs (seeds)", f"trained by level at F = {primary:g} (share/runs)",
                       *(f"boundary at F = {f:g} [95% CI] (estimator)" for f in fractions)], rows)
    if len(tests):
        what = "log of the ratio of boundaries" if log else "difference of boundaries"
        lines += ["", f"Boundary shift, condition against baseline, at each threshold ({what}; shared seeds "
                      "resampled jointly; bootstrap p = 2 min(P(Δ < 0), P(Δ > 0)) with resamples of Δ = 0 counted "
                      f"half on each side; Holm over the comparisons of one threshold at α = {alpha:g}):", ""]
        lines += md_table(["condition", "baseline", "F", "seeds", "shift [95% CI]", *(["ratio"] if log else []),
                           "p (bootstrap)", "p (Holm)", "verdict"],
                          [[r["condition"], r["baseline"], f"{r['train_fraction']:g}", str(r["seeds"]),
                            md_interval(r["difference"], r["ci_low"], r["ci_high"], 3),
                            *([f"{np.exp(r['difference']):.2f}×" if inference.finite(r["difference"]) else "–"]
                              if log else []), md_p(r["p"]), md_p(r["p_holm"]), r["verdict"]]
                           for _, r in tests.iterrows()])
    return lines


def _estimator_text(row) -> str:
    if not inference.finite(row["boundary"]):
        return row["position"]
    return "Firth" if row["separated"] else "ML"


def searches(paths: Sequence) -> Optional[pd.DataFrame]:
    """The last running estimate of every adaptive search among ``paths`` (a folder holding
    ``boundary_search.csv``, :mod:`hets_ep.boundary_search`), or None if there is none."""
    from pathlib import Path

    from hets_ep.boundary_search import JOBS_CSV, SEARCH_CSV

    found = []
    for path in map(Path, paths):
        for csv in ([path / SEARCH_CSV] if (path / SEARCH_CSV).is_file() else sorted(path.rglob(SEARCH_CSV))):
            frame = pd.read_csv(csv)
            jobs = pd.read_csv(csv.parent / JOBS_CSV)
            last = frame[frame["round"] == frame["round"].max()]
            found.append(last.assign(search=str(csv.parent), axis=jobs["axis"].iloc[0]))
    return pd.concat(found, ignore_index=True) if found else None


def search_markdown(searches: pd.DataFrame) -> list[str]:
    """The searches' own estimates: the intervals to read for runs placed adaptively."""
    from hets_ep.report.tables import md_interval, md_table

    lines = ["### Adaptive boundary searches", "",
             "Runs placed by `hydra/sweeper=boundary`: the interval to read is the search's posterior 95% credible "
             "interval below (Bayesian: it holds whatever rule placed the runs). A bootstrap over seeds above assumes "
             "levels fixed in advance and is too narrow on a search's runs (docs/benchmarks.md).", ""]
    lines += md_table(["search", "condition", "axis", "rounds", "runs (trained)", "boundary, posterior median "
                                                                               "[95% credible]", "the fit's boundary"],
                      [[r["search"], r["condition"], r["axis"], str(r["round"]), f"{r['jobs']} ({r['trained']})",
                        md_interval(r["posterior_median"], r["credible_low"], r["credible_high"], 4, signed=False),
                        "–" if pd.isna(r["fit_boundary"]) else f"{r['fit_boundary']:.4f} ({r['fit_estimator']})"]
                       for _, r in searches.iterrows()])
    return lines


def figure(out, table: pd.DataFrame, lines: Sequence[Condition], key: str, log: bool) -> str:
    """P(train) against the stress, per curve: the share at each level and the fitted curve."""
    from hets_ep import plotting
    from hets_ep.report.figures import colour

    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = iter(["-", "--", ":", "-."] * 8)
    fraction = table["train_fraction"].iloc[0]
    for curve, (_, row) in zip(lines, table[table["train_fraction"] == fraction].iterrows()):
        data = _data(curve, fraction)
        shares = data.groupby("stress")["trained"].mean()
        style = next(styles)
        ax.plot(shares.index, shares.to_numpy(), "o", color=colour(curve), ms=5)
        grid = np.geomspace(shares.index.min(), shares.index.max(), 200) if log else \
            np.linspace(shares.index.min(), shares.index.max(), 200)
        if inference.finite(row["slope"]):
            x = np.log(grid) if log else grid
            edge = f"{row['boundary']:.3g}" if inference.finite(row["boundary"]) else "–"
            ax.plot(grid, 1 / (1 + np.exp(-(row["intercept"] + row["slope"] * x))), style, color=colour(curve),
                    label=f"{curve.label}: boundary {edge}")
        if inference.finite(row["ci_low"]):
            ax.plot([row["ci_low"], row["ci_high"]], [0.5, 0.5], color=colour(curve), lw=3, alpha=0.5)
    if log:
        ax.set_xscale("log")
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(key)
    ax.set_ylabel("share of runs that train")
    ax.set_title(f"P(train) at F = {fraction:g}: share per level (dots), logistic fit (lines), 95% CI (bar at 0.5)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    plotting.save(fig, out / "boundary.png")
    return "boundary.png"
