"""The analysis behind a report: runs grouped into conditions, each compared seed by seed with its
baseline on the primary metric (Holm over the family) and the secondary endpoints, and the
optional analyses (:mod:`hets_ep.report.maps`, :mod:`hets_ep.report.boundary`); rendered by
:mod:`hets_ep.report.tables` and :mod:`hets_ep.report.figures`."""


from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from hets_ep.errors import HetsEpError
from hets_ep.record import RunRecord
from hets_ep.report import boundary, figures, inference, maps, tables
from hets_ep.report.runs import (BINARY, METRICS, RATIO, SECONDARY, Condition, Pairing, find_runs, fmt, group,
                                 matches, paired, pairings, selector)

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
    boundary: Optional[str] = None       # KEY: the stress axis of the stability boundaries
    boundary_scale: str = "auto"         # fit P(train) in log stress, linear stress, or (auto) log if all > 0
    train_fraction: float = 0.8          # a run trains if its late accuracy is this far from chance to perfect
                                         # (chance + f·(1 − chance)) and it never collapses
    train_fractions: tuple[float, ...] = ()  # several thresholds: the boundary at each, side by side (the
                                             # first is train_fraction, the one every other table uses)
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
        # frozen: the two fields are made consistent once, here
        if self.train_fractions:
            object.__setattr__(self, "train_fraction", self.train_fractions[0])
        else:
            object.__setattr__(self, "train_fractions", (self.train_fraction,))
        for fraction in self.train_fractions:
            if not 0 < fraction < 1:
                raise HetsEpError(f"--train-fraction: must lie in (0, 1), got {fraction}")
        if self.boundary_scale not in boundary.SCALES:
            raise HetsEpError(f"--boundary-scale: unknown {self.boundary_scale!r}; choose one of "
                              f"{', '.join(boundary.SCALES)}")


def _refuse(flag: str, key: str, known: Sequence[str], why: str) -> HetsEpError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return HetsEpError(f"{flag} {key}: {why}{f'; did you mean {close[0]}?' if close else ''}")


def check_options(options: ReportOptions, runs: Sequence[RunRecord], conditions: Sequence[Condition]) -> None:
    """Refuse, in one line, what an option asks of these runs that they cannot answer: a key no
    run has (with a near miss), a baseline no condition matches, a validation metric without a
    validation split, an equivalent step without two scalar steps. Options left at their
    defaults are not checked (a sweep's own report asks nothing in particular)."""
    defaults, known = ReportOptions(), sorted({k for r in runs for k in r.config})
    varying = sorted({k for c in conditions for k in c.values})
    flags = {"match": list(options.match), "equivalent": [options.equivalent] if options.equivalent else [],
             "robust": list(options.robust or ()), "grid": list(options.grid or ()),
             "boundary": [options.boundary] if options.boundary else []}
    if options.baseline not in (defaults.baseline, "best"):
        flags["baseline"] = list(selector(options.baseline))
    for flag, keys in flags.items():
        for key in keys:
            if key not in known:
                raise _refuse(f"--{flag}", key, known, "no run has this key")
            if flag in ("equivalent", "robust", "grid", "boundary") and key not in varying:
                values = sorted({fmt(r.config.get(key)) for r in runs})
                raise _refuse(f"--{flag}", key, varying, f"does not vary between these runs (all {', '.join(values)})")
    if "baseline" in flags and not any(matches(c, selector(options.baseline)) for c in conditions):
        raise HetsEpError(f"--baseline {options.baseline}: no condition matches; the conditions are "
                          f"{'; '.join(c.keys_text() for c in conditions[:4])}{' …' if len(conditions) > 4 else ''}")
    for flag in ("metric", "select"):
        if getattr(options, flag) == "val_late" and not any(r.config.get("dataset.val_size") for r in runs):
            raise HetsEpError(f"--{flag} val_late: no run holds out a validation split (dataset.val_size=0 in all); "
                              "train with dataset.val_size=N, or choose on another metric")
    if options.equivalent:
        steps = {fmt(c.values.get(options.equivalent)) for c in conditions if c.values.get("dt.dist",
                 c.runs[0].config.get("dt.dist")) == "scalar"}
        if len(steps) < 2:
            raise HetsEpError(f"--equivalent {options.equivalent}: needs scalar-dt conditions at two or more values "
                              f"of {options.equivalent}; these runs have {len(steps)} ({', '.join(sorted(steps))})")


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
    boundaries: Optional[pd.DataFrame] = None       # one row per curve along options.boundary
    boundary_tests: Optional[pd.DataFrame] = None   # one row per curve compared with its baseline curve
    boundary_curves: list[Condition] = dataclasses.field(default_factory=list)
    boundary_log: bool = False
    searches: Optional[pd.DataFrame] = None         # each adaptive search's last running estimate (boundary_search.csv)

    @property
    def metric(self) -> str:
        return self.options.metric

    @property
    def alpha(self) -> float:
        return self.options.alpha

    @property
    def family(self) -> str:
        return self.options.family or "every condition against its baseline"

    def finished(self, column: str) -> list:
        """A column's values over every finished run of the report."""
        return [v for c in self.conditions for v in c.finished[column].dropna()]


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
    """Per compared condition and secondary endpoint: the paired difference (for a ratio
    endpoint, of the logs: ``exp`` of it is the geometric-mean ratio), its CI, the t and
    Wilcoxon p, both conditions' means; Holm over all of them together."""
    rows = []
    for p in pairs:
        if p.baseline is None:
            continue
        for endpoint in SECONDARY:
            both = paired(p, endpoint)
            if not len(both):
                continue
            ratio = endpoint in RATIO
            stats = (inference.log_ratio(both["condition"], both["baseline"], options.seed) if ratio else
                     inference.compare((both["condition"] - both["baseline"]).to_numpy(), options.seed))
            rows.append({"condition": p.condition.label, "baseline": p.baseline.label, "endpoint": endpoint,
                         "scale": "log" if ratio else "linear", "mean": float(both["condition"].mean()),
                         "baseline_mean": float(both["baseline"].mean()), **dataclasses.asdict(stats)})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p_holm"] = inference.holm([p if inference.finite(p) else None for p in frame["p_t"]], options.alpha)
    return frame


def analyse(paths: Sequence[str | Path], options: ReportOptions = ReportOptions()) -> Analysis:
    runs = find_runs(paths)
    grouping = group(runs, options.train_fraction, options.strict)
    conditions = grouping.conditions
    check_options(options, runs, conditions)
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
        analysis.equivalent = maps.equivalent(conditions, [p for p in pairs if p.baseline], options.equivalent,
                                              options.metric, options.seed)
    if options.robust:
        analysis.robustness, analysis.robust_tests = maps.robustness(conditions, pairs, options.robust, options)
    if options.boundary:
        analysis.boundary_curves = boundary.curves(conditions, options.boundary)
        analysis.boundaries, analysis.boundary_tests, analysis.boundary_log = boundary.analyse(conditions, options)
    analysis.searches = boundary.searches(paths)
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


