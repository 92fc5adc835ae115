"""Rendering an analysis: CSV files (per seed, per condition, per comparison) and markdown."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd

from hets_ep import atomic
from hets_ep.record import Status
from hets_ep.report import inference
from hets_ep.report.runs import BINARY, POINTS

if TYPE_CHECKING:
    from hets_ep.report import Analysis

STATUSES = [str(s) for s in (Status.COMPLETED, Status.DIVERGED, Status.INTERRUPTED, Status.FAILED, Status.RUNNING)]


def units(metric: str) -> str:
    return "points" if metric in POINTS else "share of runs" if metric in BINARY else {
        "loss_spikes": "batches", "relaxation_steps": "steps", "spectral_radius": ""}.get(metric, "")


def seeds_frame(analysis: Analysis) -> pd.DataFrame:
    """One row per run: its condition, keys, seed and every per-run metric."""
    frames = []
    for cond in analysis.conditions:
        frame = cond.table.copy()
        frame.insert(0, "condition", cond.label)
        for i, (key, value) in enumerate(cond.values.items()):
            frame.insert(1 + i, key, str(value) if isinstance(value, (tuple, list)) else value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def conditions_frame(analysis: Analysis) -> pd.DataFrame:
    rows = []
    for cond in analysis.conditions:
        t, done = cond.table, cond.finished
        summary = inference.describe(cond.metric(analysis.metric))
        rows.append({
            "condition": cond.label, "keys": cond.keys_text(), "runs": len(t),
            **{s: int((t["status"] == s).sum()) for s in STATUSES},
            f"{analysis.metric}_mean": summary["mean"], f"{analysis.metric}_sd": summary["sd"],
            f"{analysis.metric}_ci_low": summary["ci_low"], f"{analysis.metric}_ci_high": summary["ci_high"],
            "collapse_rate": _mean(done["collapse"]), "trained_rate": _mean(done["trained"]),
            "never_learned": int(done["never_learned"].fillna(False).astype(bool).sum()),
            **{f"{m}_mean": _mean(done[m]) for m in ("max_drawdown", "jitter", "loss_spikes", "relaxation_steps",
                                                      "spectral_radius")},
            "test_unconverged": _mean(done["test_unconverged"]), "nudged_unconverged": _mean(done["nudged_unconverged"]),
            "test_fp_residual": _mean(done["test_fp_residual"]),
            **{f"dt_{k}": _mean(t[f"dt_{k}"]) for k in ("mean", "geomean", "hmean", "cv", "tau_cv")},
            "wall_s": _mean(t["wall_s"]),
        })
    return pd.DataFrame(rows)


def _mean(column: pd.Series) -> Optional[float]:
    values = column.dropna().astype(float)
    return float(values.mean()) if len(values) else None


def write_csvs(out: Path, analysis: Analysis) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frames = {"seeds.csv": seeds_frame(analysis), "conditions.csv": conditions_frame(analysis),
              "comparisons.csv": analysis.comparisons, "secondary.csv": analysis.secondary}
    if analysis.equivalent is not None:
        frames["equivalent.csv"] = analysis.equivalent
    if analysis.robustness is not None:
        frames["robustness.csv"] = analysis.robustness
        frames["robustness_tests.csv"] = analysis.robust_tests
    for name, frame in frames.items():
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        atomic.write_text(out / name, buffer.getvalue())


def _num(value, digits: int = 2, percent: bool = False) -> str:
    if not inference.finite(value):
        return "–"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def _p(value) -> str:
    if not inference.finite(value):
        return "–"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _interval(mean, low, high, digits: int = 2, signed: bool = True, n: Optional[int] = None) -> str:
    if not inference.finite(mean):
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    if not (inference.finite(low) and inference.finite(high)):
        return f(mean) + (" (no CI: < 3 seeds)" if n is not None and n < 3 else "")
    return f"{f(mean)} [{f(low)}, {f(high)}]"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _seeds_phrase(pairs: Sequence[int]) -> str:
    if not pairs:
        return "no paired comparisons"
    low, high = min(pairs), max(pairs)
    return f"{low} paired seeds per comparison" if low == high else f"{low}–{high} paired seeds per comparison"


def header(analysis: Analysis) -> str:
    o = analysis.options
    n_runs = sum(len(c.runs) for c in analysis.conditions)
    pairs = [int(p) for p in analysis.comparisons.get("pairs", []) if p]
    base = ("the scalar-dt condition with the best mean " + (o.select or o.metric)) if o.baseline == "best" \
        else o.baseline
    test = "the exact McNemar test" if o.metric in BINARY else "the paired t-test"
    return (f"**Metric:** `{o.metric}` ({_metric_text(o.metric)}), in {units(o.metric)}. "
            f"**Family:** {analysis.family}: {len(pairs)} comparisons, each condition against its baseline "
            f"({base}, same context) seed by seed; {_seeds_phrase(pairs)}. **Decision:** {test}'s p after Holm's "
            f"correction over the family at α = {o.alpha:g} decides a verdict; the 95% BCa bootstrap interval "
            f"over seeds is descriptive (with few seeds it can exclude 0 where the test does not reject), Wilcoxon "
            f"is reported beside. **Runs:** {n_runs} in {len(analysis.conditions)} conditions from "
            f"{', '.join(analysis.paths)}; only finished runs (completed or diverged) are scored. Conditions are "
            f"labelled with the realised value of the dt statistic their draws matched (μ: mean, geomean, hmean = "
            f"Δt / mean τ) and the realised cv.")


def _metric_text(metric: str) -> str:
    return {"late": "mean test accuracy over the last stability.late_window epochs",
            "final": "test accuracy of the last epoch", "best": "best test accuracy",
            "auc": "mean test accuracy over all epochs",
            "max_drawdown": "largest fall of the monitored accuracy below its running best",
            "val_late": "mean validation accuracy over the last stability.late_window epochs",
            "jitter": "standard deviation of the monitored accuracy over the last stability.jitter_window epochs",
            "collapse": "whether the monitored accuracy ever fell more than stability.collapse_drop below its best"
            }[metric]


def markdown(analysis: Analysis) -> str:
    lines = [header(analysis), ""]
    if analysis.set_aside:
        lines += [f"Set aside (a seed that appears more than once in a condition keeps its finished run written "
                  f"last): {', '.join(f'{a} (kept {k})' for a, k in analysis.set_aside)}.", ""]
    lines += ["### Conditions", ""]
    cond = conditions_frame(analysis)
    m = analysis.metric
    lines += _table(
        ["condition", "runs (ok/div/int/fail)", f"{m} mean [95% CI]", "collapsed", "trained", "max drawdown",
         "unconverged free / nudged", "relaxation steps", "realised dt mean / geomean / hmean / cv"],
        [[r["condition"], f"{r['runs']} ({r['completed']}/{r['diverged']}/{r['interrupted']}/{r['failed']})",
          _interval(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], signed=False,
                    n=r["completed"] + r["diverged"]),
          _num(r["collapse_rate"], 0, True) + "%", _num(r["trained_rate"], 0, True) + "%",
          _num(r["max_drawdown_mean"], 1, True), f"{_num(r['test_unconverged'], 3)} / {_num(r['nudged_unconverged'], 3)}",
          _num(r["relaxation_steps_mean"], 0),
          " / ".join(_num(r[f"dt_{k}"], 3) for k in ("mean", "geomean", "hmean")) + f" / {_num(r['dt_cv'], 2)}"]
         for _, r in cond.iterrows()])
    if len(cond) and any(len(c) > 60 for c in cond["condition"]):
        lines += ["", "Condition keys:", "", *[f"- {r['condition']}: `{r['keys']}`" for _, r in cond.iterrows()]]
    comps = analysis.comparisons
    if len(comps) and "mean_diff" in comps:
        lines += ["", f"### Paired comparisons ({m}, condition − baseline)", ""]
        tost = "p_tost" in comps
        lines += _table(
            ["condition", "baseline", "pairs", f"Δ {m} [95% CI]", "p (t)", "p (Wilcoxon)", "d_z", "p (Holm)",
             "verdict", "SD cond / base (p Brown–Forsythe)", "collapsed (cond / base, p)",
             *([f"p (TOST ±{analysis.options.equivalence:g}; Holm)"] if tost else [])],
            [[r["condition"], str(r["baseline"]), str(int(r["pairs"])),
              _interval(r.get("mean_diff"), r.get("ci_low"), r.get("ci_high"), n=int(r["pairs"])), _p(r.get("p_t")),
              _p(r.get("p_wilcoxon")), _num(r.get("dz")), _p(r.get("p_holm")), str(r.get("verdict")),
              f"{_num(r.get('sd'))} / {_num(r.get('baseline_sd'))} ({_p(r.get('p_brown_forsythe'))})",
              f"{_num(r.get('collapse_rate'), 0, True)}% / {_num(r.get('baseline_collapse_rate'), 0, True)}%, "
              f"{_p(r.get('p_collapse'))}", *([f"{_p(r.get('p_tost'))}; {_p(r.get('p_tost_holm'))}"] if tost else [])]
             for _, r in comps.iterrows() if r["pairs"]])
    notes = [f"- {r['condition']}: {r['note']}" for _, r in comps.iterrows() if r.get("note")] if len(comps) else []
    if notes:
        lines += ["", "Not compared:", "", *notes]
    if len(analysis.secondary):
        lines += ["", "### Secondary endpoints (condition − baseline; Holm over this table, separately from the "
                      "primary family)", ""]
        lines += _table(["condition", "endpoint", "condition / baseline mean", "Δ [95% CI]", "p (t)", "p (Holm)"],
                        [[r["condition"], f"{r['endpoint']} ({units(r['endpoint']) or 'ratio'})",
                          f"{_scaled(r['mean'], r['endpoint'])} / {_scaled(r['baseline_mean'], r['endpoint'])}",
                          _interval(r["mean_diff"], r["ci_low"], r["ci_high"], n=int(r["pairs"])), _p(r["p_t"]),
                          _p(r["p_holm"])] for _, r in analysis.secondary.iterrows()])
    if analysis.equivalent is not None and len(analysis.equivalent):
        lines += ["", "### Equivalent scalar step", "",
                  f"The scalar {analysis.equivalent['key'].iloc[0]} whose mean {m} each condition matches (linear "
                  "interpolation on the scalar curve; 95% percentile bootstrap interval over seeds).", ""]
        lines += _table(["condition", f"own {analysis.equivalent['key'].iloc[0]}", f"{m} mean",
                         "equivalent scalar step [95% CI]", "scalar curve", "position"],
                        [[r["condition"], f"{r['own']:g}", _num(r["metric_mean"]),
                          _interval(r["equivalent"], r["ci_low"], r["ci_high"], 3, signed=False), r["curve"],
                          r["position"]] for _, r in analysis.equivalent.iterrows()])
    if analysis.robustness is not None:
        lines += ["", robustness_markdown(analysis)]
    return "\n".join(lines) + "\n"


def _scaled(value, endpoint: str) -> str:
    return _num(value, 1 if endpoint in POINTS or endpoint == "relaxation_steps" else 3)


def robustness_markdown(analysis: Analysis) -> str:
    rob, tests = analysis.robustness, analysis.robust_tests
    lines = [f"### Robustness map over {', '.join(analysis.options.robust)}", "",
             f"A run *trains* if its late accuracy reaches {analysis.options.train_threshold:g} and it never "
             "collapses; a cell trains if at least half of its runs do.", ""]
    summary = rob.groupby("dt").agg(cells=("cell", "count"), cells_train=("cell_trains", "sum"),
                                    runs=("runs", "sum"), trained_runs=("trained_runs", "sum")).reset_index()
    lines += _table(["dt condition", "cells that train", "runs that train"],
                    [[r["dt"], f"{int(r['cells_train'])} of {int(r['cells'])}",
                      f"{int(r['trained_runs'])} of {int(r['runs'])} ({100 * r['trained_runs'] / max(r['runs'], 1):.0f}%)"]
                     for _, r in summary.iterrows()])
    if len(tests):
        lines += ["", "Trained or not, paired by (cell, seed) against the baseline: exact McNemar, Holm over "
                      "these conditions.", ""]
        lines += _table(["dt condition", "pairs", "trained (cond / base)", "p (McNemar)", "p (Holm)", "verdict"],
                        [[r["dt"], str(r["pairs"]), f"{_num(r['trained_rate'], 0, True)}% / "
                          f"{_num(r['baseline_trained_rate'], 0, True)}%", _p(r["p_mcnemar"]), _p(r["p_holm"]),
                          r["verdict"]] for _, r in tests.iterrows()])
    return "\n".join(lines)


def compact(analysis: Analysis) -> str:
    """The sweep's end: one line per condition (finished seeds, the metric with its interval,
    outcomes by status)."""
    m = analysis.metric
    lines = [f"{'condition':<44} {'seeds':>5} {m + ' % [95% CI]':>24} {'collapsed':>9} {'diverged':>8} "
             f"{'interrupted':>11} {'failed':>6}"]
    for cond in analysis.conditions:
        t = cond.table
        d = inference.describe(cond.metric(m))
        shown = _interval(d["mean"], d["ci_low"], d["ci_high"], signed=False) if d["n"] else "–"
        label = cond.label if len(cond.label) <= 44 else cond.label[:41] + "..."
        lines.append(f"{label:<44} {d['n']:>5} {shown:>24} {int(cond.finished['collapse'].fillna(False).sum()):>9} "
                     f"{int((t['status'] == Status.DIVERGED).sum()):>8} {int((t['status'] == Status.INTERRUPTED).sum()):>11} "
                     f"{int((t['status'] == Status.FAILED).sum()):>6}")
    if analysis.set_aside:
        lines.append(f"set aside {len(analysis.set_aside)} repeated run(s) of a seed: {', '.join(str(a) for a, _ in analysis.set_aside)}")
    return "\n".join(lines)


def write_markdown(out: Path, analysis: Analysis, text: str, figure_names: Sequence[str]) -> None:
    body = ["# hets-ep report", "", text, "Per-seed values: [seeds.csv](seeds.csv); per condition: "
            "[conditions.csv](conditions.csv); comparisons: [comparisons.csv](comparisons.csv); secondary "
            "endpoints: [secondary.csv](secondary.csv).", ""]
    body += [f"![{name}]({name})\n" for name in figure_names]
    atomic.write_text(out / "report.md", "\n".join(body))
