"""Rendering an analysis: CSV files (per seed, per condition, per comparison) and markdown."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd

from hets_ep import atomic, stability
from hets_ep.record import Status
from hets_ep.report import boundary, inference
from hets_ep.report.runs import BINARY, POINTS

if TYPE_CHECKING:
    from hets_ep.report import Analysis

STATUSES = [str(s) for s in (Status.COMPLETED, Status.DIVERGED, Status.STOPPED, Status.INTERRUPTED, Status.FAILED,
                              Status.RUNNING)]


def units(metric: str) -> str:
    return "points" if metric in POINTS else "share of runs" if metric in BINARY else {
        "loss_spikes": "batches", "relaxation_steps": "steps", "wall_s": "s", "spectral_radius": ""}.get(metric, "")


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
            "test_unconverged": _mean(done["test_unconverged"]),
            "nudged_unconverged": _mean(done["nudged_unconverged"]),
            "test_fp_residual": _mean(done["test_fp_residual"]), "capped": _mean(done["capped"]),
            "free_steps": _mean(done["free_steps"]), "nudged_steps": _mean(done["nudged_steps"]),
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
    if analysis.boundaries is not None:
        frames["boundaries.csv"] = analysis.boundaries
        frames["boundary_tests.csv"] = analysis.boundary_tests
    for name, frame in frames.items():
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        atomic.write_text(out / name, buffer.getvalue())


def md_num(value, digits: int = 2, percent: bool = False) -> str:
    if not inference.finite(value):
        return "–"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def md_p(value) -> str:
    if not inference.finite(value):
        return "–"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def md_interval(mean, low, high, digits: int = 2, signed: bool = True, n: Optional[int] = None) -> str:
    if not inference.finite(mean):
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    if not (inference.finite(low) and inference.finite(high)):
        return f(mean) + (" (no CI: < 3 seeds)" if n is not None and n < 3 else "")
    return f"{f(mean)} [{f(low)}, {f(high)}]"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
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
            f"Δt / mean τ) and the realised cv. **Late window:** {late_window_text(analysis)}. **Trained:** "
            f"{trained_text(analysis)}.")


def late_window_text(analysis: Analysis) -> str:
    """The epochs `late` averaged over, as the runs had them."""
    used = sorted({int(v) for v in analysis.finished("late_epochs")})
    windows = sorted({int(r.config["stability.late_window"]) for c in analysis.conditions for r in c.runs})
    if not used:
        return "no finished runs"
    text = f"`late` averages the last {'/'.join(map(str, windows))} epochs (stability.late_window)"
    short = [u for u in used if u < max(windows)]
    return text + (f"; runs with fewer epochs average all of theirs ({', '.join(map(str, short))})" if short else "")


def trained_text(analysis: Analysis) -> str:
    """The rule by which a run counts as trained, with the levels it sets for these datasets."""
    f = analysis.options.train_fraction
    classes = sorted({r.summary.classes or 10 for c in analysis.conditions for r in c.runs})
    levels = ", ".join(f"{100 * (1 / k + f * (1 - 1 / k)):.1f}% with {k} classes" for k in classes)
    return (f"a run trains when its late test accuracy reaches chance + {f:g} × (1 − chance) ({levels}; "
            "--train-fraction) and it never collapses")


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
    lines += md_table(
        ["condition", "runs (ok/div/stop/int/fail)", f"{m} mean [95% CI]", "collapsed", "trained", "max drawdown",
         "unconverged free / nudged", "relaxation steps", "realised dt mean / geomean / hmean / cv"],
        [[r["condition"], f"{r['runs']} ({r['completed']}/{r['diverged']}/{r['stopped']}/{r['interrupted']}/"
                          f"{r['failed']})",
          md_interval(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], signed=False,
                    n=r["completed"] + r["diverged"] + r["stopped"]),
          md_num(r["collapse_rate"], 0, True) + "%", md_num(r["trained_rate"], 0, True) + "%",
          md_num(r["max_drawdown_mean"], 1, True),
          f"{md_num(r['test_unconverged'], 3)} / {md_num(r['nudged_unconverged'], 3)}",
          md_num(r["relaxation_steps_mean"], 0),
          " / ".join(md_num(r[f"dt_{k}"], 3) for k in ("mean", "geomean", "hmean")) + f" / {md_num(r['dt_cv'], 2)}"]
         for _, r in cond.iterrows()])
    caps = cap_notes(analysis, cond)
    if caps:
        lines += ["", "Relaxation caps:", "", *caps]
    if len(cond) and any(len(c) > 60 for c in cond["condition"]):
        lines += ["", "Condition keys:", "", *[f"- {r['condition']}: `{r['keys']}`" for _, r in cond.iterrows()]]
    comps = analysis.comparisons
    if len(comps) and "mean_diff" in comps:
        lines += ["", f"### Paired comparisons ({m}, condition − baseline)", ""]
        tost = "p_tost" in comps
        lines += md_table(
            ["condition", "baseline", "pairs", f"Δ {m} [95% CI]", "p (t)", "p (Wilcoxon)", "d_z", "p (Holm)",
             "verdict", "SD cond / base (p Brown–Forsythe)", "collapsed (cond / base, p)",
             *([f"p (TOST ±{analysis.options.equivalence:g}; Holm)"] if tost else [])],
            [[r["condition"], str(r["baseline"]), str(int(r["pairs"])),
              md_interval(r.get("mean_diff"), r.get("ci_low"), r.get("ci_high"), n=int(r["pairs"])), md_p(r.get("p_t")),
              md_p(r.get("p_wilcoxon")), md_num(r.get("dz")), md_p(r.get("p_holm")), str(r.get("verdict")),
              f"{md_num(r.get('sd'))} / {md_num(r.get('baseline_sd'))} ({md_p(r.get('p_brown_forsythe'))})",
              f"{md_num(r.get('collapse_rate'), 0, True)}% / {md_num(r.get('baseline_collapse_rate'), 0, True)}%, "
              f"{md_p(r.get('p_collapse'))}",
              *([f"{md_p(r.get('p_tost'))}; {md_p(r.get('p_tost_holm'))}"] if tost else [])]
             for _, r in comps.iterrows() if r["pairs"]])
    notes = [f"- {r['condition']}: {r['note']}" for _, r in comps.iterrows() if r.get("note")] if len(comps) else []
    if notes:
        lines += ["", "Not compared:", "", *notes]
    if len(analysis.secondary):
        lines += ["", "### Secondary endpoints (condition − baseline; Holm over this table, separately from the "
                      "primary family)", ""]
        lines += ["Ratio endpoints (relaxation steps, wall time) are tested on the log scale: Δ is their "
                  "geometric-mean ratio condition / baseline with its interval.", ""]
        lines += md_table(["condition", "endpoint", "condition / baseline mean", "Δ [95% CI]", "p (t)", "p (Holm)"],
                        [[r["condition"], f"{r['endpoint']} ({units(r['endpoint']) or 'ratio'})",
                          f"{_scaled(r['mean'], r['endpoint'])} / {_scaled(r['baseline_mean'], r['endpoint'])}",
                          _ratio(r) if r.get("scale") == "log" else
                          md_interval(r["mean_diff"], r["ci_low"], r["ci_high"], n=int(r["pairs"])), md_p(r["p_t"]),
                          md_p(r["p_holm"])] for _, r in analysis.secondary.iterrows()])
    if analysis.equivalent is not None and len(analysis.equivalent):
        lines += ["", "### Equivalent scalar step", "",
                  f"The scalar {analysis.equivalent['key'].iloc[0]} whose mean {m} each condition matches (linear "
                  "interpolation on the scalar curve; 95% percentile bootstrap interval over seeds).", ""]
        lines += md_table(["condition", f"own {analysis.equivalent['key'].iloc[0]}", f"{m} mean",
                         "equivalent scalar step [95% CI]", "scalar curve", "position"],
                        [[r["condition"], f"{r['own']:g}", md_num(r["metric_mean"]),
                          md_interval(r["equivalent"], r["ci_low"], r["ci_high"], 3, signed=False), r["curve"],
                          r["position"]] for _, r in analysis.equivalent.iterrows()])
    if analysis.robustness is not None:
        lines += ["", robustness_markdown(analysis)]
    if analysis.boundaries is not None:
        lines += ["", *boundary.markdown(analysis.boundaries, analysis.boundary_tests, analysis.options.boundary,
                                        analysis.boundary_log, analysis.alpha)]
    if analysis.searches is not None:
        lines += ["", *boundary.search_markdown(analysis.searches)]
    return "\n".join(lines) + "\n"


def _ratio(row) -> str:
    """A log-scale comparison as a geometric-mean ratio with its interval."""
    if not inference.finite(row["mean_diff"]):
        return "–"
    text = f"{math.exp(row['mean_diff']):.2f}×"
    if inference.finite(row["ci_low"]) and inference.finite(row["ci_high"]):
        text += f" [{math.exp(row['ci_low']):.2f}, {math.exp(row['ci_high']):.2f}]"
    return text


def cap_notes(analysis: Analysis, cond: pd.DataFrame) -> list[str]:
    """Conditions whose relaxation stopped short (:func:`hets_ep.stability.cap_advice`)."""
    notes = []
    for c, (_, r) in zip(analysis.conditions, cond.iterrows()):
        config = c.runs[0].config
        advice = stability.cap_advice(
            capped=r["capped"] if inference.finite(r["capped"]) else 0.0, free_unconverged=r["test_unconverged"],
            nudged_unconverged=r["nudged_unconverged"], t1=config.get("ep.T1"), t2=config.get("ep.T2"),
            tol=config.get("ep.tol"), noise=config.get("dynamics.noise") or 0.0,
            residual_tol=config.get("stability.residual_tol"), free_steps=r["free_steps"],
            nudged_steps=r["nudged_steps"])
        if advice:
            notes.append(f"- {r['condition']}: {advice}")
    return notes


def _scaled(value, endpoint: str) -> str:
    return md_num(value, 1 if endpoint in POINTS or endpoint == "relaxation_steps" else 3)


def robustness_markdown(analysis: Analysis) -> str:
    rob, tests = analysis.robustness, analysis.robust_tests
    lines = [f"### Robustness map over {', '.join(analysis.options.robust)}", "",
             f"A run *trains* as the header says ({trained_text(analysis)}); a cell trains if at least half of its "
             "runs do.", ""]
    summary = rob.groupby("dt").agg(cells=("cell", "count"), cells_train=("cell_trains", "sum"),
                                    runs=("runs", "sum"), trained_runs=("trained_runs", "sum")).reset_index()
    lines += md_table(["dt condition", "cells that train", "runs that train"],
                    [[r["dt"], f"{int(r['cells_train'])} of {int(r['cells'])}",
                      f"{int(r['trained_runs'])} of {int(r['runs'])} "
                      f"({100 * r['trained_runs'] / max(r['runs'], 1):.0f}%)"]
                     for _, r in summary.iterrows()])
    if len(tests):
        lines += ["", "Trained or not, paired by (cell, seed) against the baseline: exact McNemar, Holm over "
                      "these conditions.", ""]
        lines += md_table(["dt condition", "pairs", "trained (cond / base)", "p (McNemar)", "p (Holm)", "verdict"],
                        [[r["dt"], str(r["pairs"]), f"{md_num(r['trained_rate'], 0, True)}% / "
                          f"{md_num(r['baseline_trained_rate'], 0, True)}%", md_p(r["p_mcnemar"]), md_p(r["p_holm"]),
                          r["verdict"]] for _, r in tests.iterrows()])
    return "\n".join(lines)


def compact(analysis: Analysis) -> str:
    """The sweep's end: one line per condition (finished seeds, the metric with its interval,
    outcomes by status)."""
    m = analysis.metric
    lines = [f"{'condition':<44} {'seeds':>5} {m + ' % [95% CI]':>24} {'collapsed':>9} {'diverged':>8} "
             f"{'stopped':>7} {'interrupted':>11} {'failed':>6}"]
    for cond in analysis.conditions:
        t = cond.table
        d = inference.describe(cond.metric(m))
        shown = md_interval(d["mean"], d["ci_low"], d["ci_high"], signed=False) if d["n"] else "–"
        label = cond.label if len(cond.label) <= 44 else cond.label[:41] + "..."
        lines.append(f"{label:<44} {d['n']:>5} {shown:>24} {int(cond.finished['collapse'].fillna(False).sum()):>9} "
                     f"{int((t['status'] == Status.DIVERGED).sum()):>8} "
                     f"{int((t['status'] == Status.STOPPED).sum()):>7} "
                     f"{int((t['status'] == Status.INTERRUPTED).sum()):>11} "
                     f"{int((t['status'] == Status.FAILED).sum()):>6}")
    if analysis.set_aside:
        aside = ", ".join(str(a) for a, _ in analysis.set_aside)
        lines.append(f"set aside {len(analysis.set_aside)} repeated run(s) of a seed: {aside}")
    return "\n".join(lines)


def write_markdown(out: Path, analysis: Analysis, text: str, figure_names: Sequence[str]) -> None:
    body = ["# hets-ep report", "", text, "Per-seed values: [seeds.csv](seeds.csv); per condition: "
            "[conditions.csv](conditions.csv); comparisons: [comparisons.csv](comparisons.csv); secondary "
            "endpoints: [secondary.csv](secondary.csv).", ""]
    body += [f"![{name}]({name})\n" for name in figure_names]
    atomic.write_text(out / "report.md", "\n".join(body))
