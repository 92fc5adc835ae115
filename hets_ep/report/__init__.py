"""``hets-ep report PATH...``: per-seed data, paired tests with corrections, tables and figures.

Runs are found recursively and grouped into conditions (:mod:`hets_ep.report.runs`), one run
per (condition, seed); every condition is compared seed by seed with a baseline of the same
context, on a primary metric chosen up front (``late`` by default: mean test accuracy over the
last ``stability.late_window`` epochs); the statistics (:mod:`hets_ep.report.inference`) are
Holm-corrected over the report's family of comparisons. Beside the primary metric, every
comparison reports the secondary endpoints (max drawdown, jitter, loss spikes, relaxation
steps, spectral radius: paired differences, CIs, Holm over that secondary family) and the
spread of the primary metric across seeds (Brown–Forsythe). Optional analyses: equivalence
within a margin (``--equivalence M``, paired TOST), the equivalent scalar step
(``--equivalent dt.mean``) and the robustness map (``--robust KEY1,KEY2``).

Writes into ``--out`` (default ``FIRST_PATH/report``): ``report.md``, ``seeds.csv`` (one row
per run), ``conditions.csv``, ``comparisons.csv``, ``secondary.csv``, ``equivalent.csv``,
``robustness.csv`` and figures (:mod:`hets_ep.report.figures`); prints the main tables.
:class:`ReportOptions` holds every option and its default, for the command line and Python alike.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from hets_ep.errors import HetsEpError
from hets_ep.report import figures, inference, tables
from hets_ep.report.runs import (BINARY, METRICS, SECONDARY, Condition, Pairing, find_runs, fmt, group, pairings,
                                 paired)

__all__ = ["Analysis", "ReportOptions", "analyse", "build_report", "main", "sweep_summary"]


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What a report computes; the command line's flags are these fields."""

    metric: str = "late"                 # the primary metric of every comparison
    baseline: str = "dt.dist=scalar"     # KEY=VALUE[,…], or best: the scalar condition with the best mean metric
    select: Optional[str] = None         # the metric that picks `best` (default: the primary one; val_late
                                         # chooses on the validation split, never looking at the test set)
    match: tuple[str, ...] = ()          # keys a condition shares with its baseline (e.g. dt.mean)
    equivalent: Optional[str] = None     # KEY: the scalar step (e.g. dt.mean) each condition's metric matches
    equivalence: Optional[float] = None  # margin m: paired TOST that the difference lies in (−m, m)
    robust: Optional[tuple[str, str]] = None  # KEY1,KEY2: the robustness map over two hyperparameters
    grid: Optional[tuple[str, str]] = None    # ROW,COL: map the paired differences over two keys
    train_threshold: float = 0.9         # a run trains if its late accuracy reaches this and it never collapses
    alpha: float = 0.05                  # level after Holm's correction
    family: Optional[str] = None         # a name for the family of comparisons the report corrects over
    seed: int = 0                        # the bootstrap's random seed
    strict: bool = False                 # refuse a (condition, seed) that appears twice instead of keeping one

    def __post_init__(self):
        for name in ("metric", "select"):
            value = getattr(self, name)
            if value is not None and value not in METRICS:
                raise HetsEpError(f"--{name}: unknown {value!r}; choose one of {', '.join(METRICS)}")
        for name in ("robust", "grid"):
            keys = getattr(self, name)
            if keys is not None and len(keys) != 2:
                raise HetsEpError(f"--{name} takes two keys KEY1,KEY2, got {','.join(keys)}")
        if self.equivalence is not None and not self.equivalence > 0:
            raise HetsEpError(f"--equivalence: the margin must be positive, got {self.equivalence}")


@dataclasses.dataclass
class Analysis:
    """Everything a report shows, before rendering."""

    paths: list[str]
    options: ReportOptions
    conditions: list[Condition]
    pairings: list[Pairing]
    comparisons: pd.DataFrame          # one row per compared condition
    secondary: pd.DataFrame            # one row per (compared condition, secondary endpoint)
    set_aside: list[tuple[Path, Path]]
    equivalent: Optional[pd.DataFrame] = None
    robustness: Optional[pd.DataFrame] = None
    robust_tests: Optional[pd.DataFrame] = None

    @property
    def metric(self) -> str:
        return self.options.metric

    @property
    def alpha(self) -> float:
        return self.options.alpha

    @property
    def family(self) -> str:
        return self.options.family or "every condition against its baseline"


def _comparison_row(p: Pairing, options: ReportOptions) -> dict:
    metric = options.metric
    row = {"condition": p.condition.label, "keys": p.condition.keys_text(), "metric": metric, "note": p.note}
    if p.baseline is None:
        return {**row, "baseline": None, "pairs": 0}
    both = paired(p, metric)
    stats = inference.compare((both["condition"] - both["baseline"]).to_numpy(), options.seed)
    if metric in BINARY:  # a paired binary outcome: the exact McNemar test instead of t
        stats.p_t = inference.mcnemar_exact(both["condition"] > 0.5, both["baseline"] > 0.5)
        stats.t = stats.p_wilcoxon = None
    row.update(baseline=p.baseline.label, baseline_keys=p.baseline.keys_text(), **dataclasses.asdict(stats))
    row.update(sd=float(both["condition"].std(ddof=1)) if len(both) > 1 else None,
               baseline_sd=float(both["baseline"].std(ddof=1)) if len(both) > 1 else None,
               p_brown_forsythe=inference.brown_forsythe(both["condition"], both["baseline"]))
    if options.equivalence is not None:
        row["p_tost"] = inference.tost_paired(both["condition"], both["baseline"], options.equivalence)
    for outcome in BINARY:
        pair = paired(p, outcome)
        row[f"{outcome}_rate"] = float(pair["condition"].mean()) if len(pair) else None
        row[f"baseline_{outcome}_rate"] = float(pair["baseline"].mean()) if len(pair) else None
        row[f"p_{outcome}"] = inference.mcnemar_exact(pair["condition"] > 0.5, pair["baseline"] > 0.5)
    row["seeds"] = ",".join(str(s) for s in both.index)
    return row


def _secondary_rows(pairs: Sequence[Pairing], options: ReportOptions) -> pd.DataFrame:
    """Per compared condition and secondary endpoint: the paired difference, its CI, the t and
    Wilcoxon p, both conditions' means; Holm over all of them together."""
    rows = []
    for p in pairs:
        if p.baseline is None:
            continue
        for endpoint in SECONDARY:
            both = paired(p, endpoint)
            if not len(both):
                continue
            stats = inference.compare((both["condition"] - both["baseline"]).to_numpy(), options.seed)
            rows.append({"condition": p.condition.label, "baseline": p.baseline.label, "endpoint": endpoint,
                         "mean": float(both["condition"].mean()), "baseline_mean": float(both["baseline"].mean()),
                         **dataclasses.asdict(stats)})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p_holm"] = inference.holm([p if inference.finite(p) else None for p in frame["p_t"]], options.alpha)
    return frame


def _equivalent(conditions: Sequence[Condition], pairs: Sequence[Pairing], key: str, metric: str,
                seed: int) -> pd.DataFrame:
    """The equivalent scalar step (in ``key``) of each compared condition."""
    rows = []
    for p in pairs:
        cond = p.condition
        curve = {float(c.values[key]): c.metric(metric).to_numpy() for c in conditions
                 if c.values.get("dt.dist") == "scalar" and c.context == cond.context and key in c.values}
        if len(curve) < 2 or key not in cond.values:
            continue
        own = cond.metric(metric).to_numpy()
        step, low, high, found = inference.equivalent_step_ci(curve, own, float(cond.values[key]), seed)
        xs = sorted(curve)
        means = [float(np.mean(curve[x])) for x in xs]
        rows.append({"condition": cond.label, "key": key, "own": float(cond.values[key]),
                     "metric_mean": float(np.mean(own)), "equivalent": step, "ci_low": low, "ci_high": high,
                     "resamples_found": found, "curve": " ".join(f"{x:g}:{m:.2f}" for x, m in zip(xs, means)),
                     "position": "on the curve" if step is not None else
                     ("above the best scalar step" if np.mean(own) > max(means) else "below every scalar step")})
    return pd.DataFrame(rows)


def _robustness(conditions: Sequence[Condition], pairs: Sequence[Pairing], keys: tuple[str, str],
                options: ReportOptions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (dt condition, cell): runs that train; per HTS condition: McNemar on *trained* over
    every paired (cell, seed) against the baseline's, Holm over the conditions."""
    for key in keys:
        if not any(key in c.values for c in conditions):
            raise HetsEpError(f"--robust: {key} does not vary between these runs")
    cells = []
    for cond in conditions:
        dt_key = " ".join(f"{k}={fmt(v)}" for k, v in cond.treatment.items() if k not in keys)
        cell = " ".join(f"{k}={fmt(v)}" for k, v in cond.values.items() if not k.startswith("dt.") or k in keys)
        trained = cond.finished["trained"].dropna().astype(bool)
        cells.append({"dt": dt_key or "all", "dist": cond.values.get("dt.dist", ""), "cell": cell,
                      **{k: cond.values.get(k) for k in keys},
                      **{k: fmt(v) for k, v in cond.context.items() if k not in keys},
                      "runs": int(trained.size), "trained_runs": int(trained.sum()),
                      "cell_trains": bool(trained.size and trained.mean() >= 0.5),
                      "late_mean": float(cond.metric("late").mean()) if len(cond.metric("late")) else None})
    table = pd.DataFrame(cells)
    tests = []
    by_baseline: dict[str, list[Pairing]] = {}
    for p in pairs:
        if p.baseline is not None:
            dt_key = " ".join(f"{k}={fmt(v)}" for k, v in p.condition.treatment.items() if k not in keys)
            by_baseline.setdefault(dt_key, []).append(p)
    for dt_key, members in by_baseline.items():
        a, b = [], []
        for p in members:
            both = paired(p, "trained")
            a += list(both["condition"] > 0.5)
            b += list(both["baseline"] > 0.5)
        tests.append({"dt": dt_key, "pairs": len(a), "trained_rate": float(np.mean(a)) if a else None,
                      "baseline_trained_rate": float(np.mean(b)) if b else None,
                      "cells": len(members), "p_mcnemar": inference.mcnemar_exact(a, b)})
    tests_frame = pd.DataFrame(tests)
    if len(tests_frame):
        tests_frame["p_holm"] = inference.holm(list(tests_frame["p_mcnemar"]), options.alpha)
        tests_frame["verdict"] = [
            ("more runs train" if r.trained_rate > r.baseline_trained_rate else "fewer runs train")
            if r.p_holm is not None and r.p_holm < options.alpha else "no evidence" for r in tests_frame.itertuples()]
    return table, tests_frame


def analyse(paths: Sequence[str | Path], options: ReportOptions = ReportOptions()) -> Analysis:
    grouping = group(find_runs(paths), options.train_threshold, options.strict)
    conditions = grouping.conditions
    pairs = pairings(conditions, options.baseline, options.match, options.select or options.metric)
    comparisons = pd.DataFrame([_comparison_row(p, options) for p in pairs])
    if len(comparisons) and "p_t" in comparisons:
        comparisons["p_holm"] = inference.holm([p if inference.finite(p) else None for p in comparisons["p_t"]],
                                               options.alpha)
        comparisons["verdict"] = [inference.verdict(r.mean_diff, r.p_t, r.p_holm, METRICS[options.metric],
                                                    options.alpha) if r.pairs else "not compared"
                                  for r in comparisons.itertuples()]
        if options.equivalence is not None:
            comparisons["p_tost_holm"] = inference.holm(
                [p if inference.finite(p) else None for p in comparisons["p_tost"]], options.alpha)
    analysis = Analysis([str(p) for p in paths], options, conditions, pairs, comparisons,
                        _secondary_rows(pairs, options), grouping.set_aside)
    if options.equivalent:
        analysis.equivalent = _equivalent(conditions, [p for p in pairs if p.baseline], options.equivalent,
                                          options.metric, options.seed)
    if options.robust:
        analysis.robustness, analysis.robust_tests = _robustness(conditions, pairs, options.robust, options)
    return analysis


def build_report(paths: Sequence[str | Path], out: Path, options: ReportOptions = ReportOptions()) -> str:
    """Analyse the runs under ``paths`` and write the report into ``out``; returns its tables."""
    analysis = analyse(paths, options)
    out.mkdir(parents=True, exist_ok=True)
    tables.write_csvs(out, analysis)
    names = figures.render(out, analysis)
    text = tables.markdown(analysis)
    tables.write_markdown(out, analysis, text, names)
    return text


def sweep_summary(sweep: Path) -> None:
    """A sweep's end: one line per condition on stdout, the full report in ``sweep/report``."""
    analysis = analyse([sweep])
    print(tables.compact(analysis), flush=True)
    out = sweep / "report"
    tables.write_csvs(out, analysis)
    tables.write_markdown(out, analysis, tables.markdown(analysis), figures.render(out, analysis))
    print(f"report written to {out / 'report.md'}", flush=True)


def _pair(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(k for k in text.split(",") if k) if text else None


def main(argv: Sequence[str]) -> None:
    defaults = ReportOptions()
    parser = argparse.ArgumentParser(prog="hets-ep report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output directory (default: FIRST_PATH/report)")
    parser.add_argument("--metric", default=defaults.metric, choices=list(METRICS),
                        help=f"the primary metric of every comparison (default {defaults.metric})")
    parser.add_argument("--baseline", default=defaults.baseline,
                        help=f"KEY=VALUE[,…]: the baseline conditions (default {defaults.baseline}); best: the scalar "
                             "condition with the best mean metric")
    parser.add_argument("--select", choices=list(METRICS),
                        help="the metric that picks the best baseline (default: --metric; val_late picks on the "
                             "validation split, so the test set decides only the comparison)")
    parser.add_argument("--match", default="", help="KEY[,…] a condition shares with its baseline, e.g. dt.mean")
    parser.add_argument("--equivalent", help="KEY: the scalar step (e.g. dt.mean) each condition's metric matches")
    parser.add_argument("--equivalence", type=float, metavar="M",
                        help="also test equivalence within ±M (in the metric's units) by paired TOST")
    parser.add_argument("--robust", help="KEY1,KEY2: the robustness map over two hyperparameters")
    parser.add_argument("--grid", help="ROW,COL: map the paired differences over two keys")
    parser.add_argument("--train-threshold", type=float, default=defaults.train_threshold,
                        help=f"a run trains if its late accuracy reaches this and it never collapses "
                             f"(default {defaults.train_threshold})")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help=f"level after Holm's correction (default {defaults.alpha})")
    parser.add_argument("--family", help="a name for the family of comparisons this report corrects over")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"the bootstrap's random seed (default {defaults.seed})")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a (condition, seed) that appears more than once (default: keep the finished run "
                             "written last, and name the others)")
    args = parser.parse_args(argv)
    options = ReportOptions(metric=args.metric, baseline=args.baseline, select=args.select,
                            match=_pair(args.match) or (),
                            equivalent=args.equivalent, equivalence=args.equivalence, robust=_pair(args.robust),
                            grid=_pair(args.grid), train_threshold=args.train_threshold, alpha=args.alpha,
                            family=args.family, seed=args.seed, strict=args.strict)
    out = args.out or Path(args.paths[0]) / "report"
    text = build_report(args.paths, out, options)
    print(text)
    print(f"report written to {out / 'report.md'}")
