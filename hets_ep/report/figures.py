"""Report figures: small multiples a reader can read, one colour per dt distribution.

* ``learning_curves.png``: one panel per value of the keys other than the distribution, test
  accuracy per epoch with a 95% band over seeds (t interval), a fixed colour per distribution.
* ``paired_differences.png``: every comparison's per-seed differences (dots), mean and 95%
  bootstrap interval; a star marks significance after Holm.
* ``grid.png`` (``--grid ROW,COL``) and ``robustness.png`` (``--robust``): heatmaps on one colour
  scale shared by all panels, centred at zero, with the interval or significance in each cell.
* ``dt_histograms.png``: one panel per distribution, scalar steps as vertical lines.
* ``equivalent_step.png``, ``convergence.png``: the scalar curve with each condition placed
  on it; the unconverged shares of the free (test) and nudged (training) phases.
* ``boundary.png`` (``--boundary KEY``): P(train) against the stress per condition, with the
  fitted logistic curves and the boundaries' intervals.
* ``compute.png``: the primary metric against the relaxation steps a run spent (every phase of
  every training batch), per seed and per condition (accuracy against compute).

Matplotlib's warnings (a layout it cannot fit exactly, say) are kept out of the console.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy import stats

from hets_ep import plotting, record
from hets_ep.record import FINISHED
from hets_ep.report import inference
from hets_ep.report.runs import POINTS, fmt

if TYPE_CHECKING:
    from hets_ep.report import Analysis
    from hets_ep.report.runs import Condition

COLOURS = {"scalar": "black", "uniform": "tab:orange", "normal": "tab:green", "lognormal": "tab:blue",
           "gamma": "tab:red", "layerwise": "tab:purple"}
SHAPE_KEYS = ("dt.dist", "dt.cv", "dt.match", "dt.match_cv", "dt.base", "dt.sample", "dt.per", "dt.redraw", "dt.layers")


def _dist(cond: Condition) -> str:
    return str(cond.values.get("dt.dist", cond.runs[0].config.get("dt.dist", "scalar")))


def colour(cond: Condition) -> str:
    return COLOURS.get(_dist(cond), "tab:gray")


def _facet(cond: Condition) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in cond.values.items() if k not in SHAPE_KEYS)


def _panels(n: int, width: float = 3.2, height: float = 2.6, max_cols: int = 6):
    plt = plotting.pyplot()
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 2.5, height * rows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a title, a grid and the legend outside the plot on the right."""
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(alpha=0.3)


def learning_curves(out: Path, analysis: Analysis) -> str:
    facets: dict[str, list[Condition]] = {}
    for cond in analysis.conditions:
        facets.setdefault(_facet(cond), []).append(cond)
    fig, axes = _panels(len(facets))
    handles = {}
    for ax, (name, conds) in zip(axes, facets.items()):
        styles = iter(["-", "--", ":", "-."] * 4)
        for cond in conds:
            curves = [r.curve("test_acc") for r in cond.runs if r.rows and r.status in FINISHED]
            if not curves:
                continue
            length = max(map(len, curves))
            padded = 100 * np.array([c + [np.nan] * (length - len(c)) for c in curves], dtype=float)
            n = np.sum(~np.isnan(padded), 0)
            mean = np.nanmean(padded, 0)
            half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * np.nanstd(padded, 0, ddof=1) /
                            np.sqrt(np.maximum(n, 1)), 0.0) if len(curves) > 1 else np.zeros(length)
            epochs = np.arange(1, length + 1)
            line, = ax.plot(epochs, mean, color=colour(cond), ls=next(styles) if _dist(cond) != "scalar" else "-",
                            lw=1.5)
            ax.fill_between(epochs, mean - half, mean + half, color=colour(cond), alpha=0.15, lw=0)
            cv = cond.table["dt_cv"].mean()
            handles.setdefault(_dist(cond) + ("" if _dist(cond) == "scalar" or math.isnan(cv) else f" cv={cv:.2f}"),
                               line)
        ax.set_title("\n".join(textwrap.wrap(name or "all runs", 40)), fontsize=10)
        ax.set_xlabel("epoch", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)", fontsize=10)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=9, frameon=False)
    fig.suptitle("test accuracy, mean and 95% band over seeds", fontsize=11)
    fig.tight_layout()
    plotting.save(fig, out / "learning_curves.png")
    return "learning_curves.png"


def paired_differences(out: Path, analysis: Analysis) -> Optional[str]:
    comps = [(p, r) for p, (_, r) in zip(analysis.pairings, analysis.comparisons.iterrows())
             if p.baseline is not None and r["pairs"]]
    if not comps:
        return None
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(comps) + 1.4))
    from hets_ep.report.runs import paired

    for i, (p, r) in enumerate(comps):
        both = paired(p, analysis.metric)
        d = (both["condition"] - both["baseline"]).to_numpy()
        jitter = np.linspace(-0.18, 0.18, len(d)) if len(d) > 1 else np.zeros(1)
        ax.scatter(d, i + jitter, s=9, color=colour(p.condition), alpha=0.55, lw=0)
        if inference.finite(r.get("ci_low")):
            ax.plot([r["ci_low"], r["ci_high"]], [i, i], color="k", lw=2)
        ax.plot([r["mean_diff"]], [i], "o", color="k", ms=5)
        if inference.finite(r.get("p_holm")) and r["p_holm"] < analysis.alpha:
            ax.annotate("*", (max(d.max(), r.get("ci_high") or d.max()), i), xytext=(4, -4),
                        textcoords="offset points", fontsize=14)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(comps)), [f"{p.condition.label}\nvs {p.baseline.label}" for p, _ in comps], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"{analysis.metric}: condition − baseline ({'points' if analysis.metric in POINTS else 'share'}"
                  "), per seed; mean and 95% bootstrap CI; * Holm-significant", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plotting.save(fig, out / "paired_differences.png")
    return "paired_differences.png"


def _heatmaps(out: Path, name: str, title: str, panels: dict[str, dict[tuple[str, str], tuple[float, str]]],
              row: str, col: str, centre_zero: bool, colour_label: str) -> str:
    """One heatmap per panel, one colour scale for all (centred at zero when asked)."""
    plt = plotting.pyplot()
    from matplotlib.colors import Normalize, TwoSlopeNorm

    number = lambda s: (0, float(s), s) if s.replace(".", "", 1).replace("-", "", 1).isdigit() else (1, 0, s)  # noqa: E731
    values = [v for cells in panels.values() for v, _ in cells.values() if inference.finite(v)]
    bound = max(abs(min(values, default=0)), abs(max(values, default=0)), 1e-9)
    norm = TwoSlopeNorm(0.0, -bound, bound) if centre_zero else Normalize(min(values, default=0),
                                                                           max(values, default=1))
    cmap = plt.get_cmap("RdBu" if centre_zero else "viridis")
    fig, axes = _panels(len(panels), width=3.6, height=3.0, max_cols=4)
    image = None
    for ax, (panel, cells) in zip(axes, panels.items()):
        rows = sorted({r for r, _ in cells}, key=number)
        cols = sorted({c for _, c in cells}, key=number)
        grid = np.full((len(rows), len(cols)), np.nan)
        for (r, c), (v, _) in cells.items():
            grid[rows.index(r), cols.index(c)] = v if inference.finite(v) else np.nan
        image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
        for (r, c), (v, text) in cells.items():
            if inference.finite(v):
                shade = cmap(norm(v))
                light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
                ax.text(cols.index(c), rows.index(r), text, ha="center", va="center", fontsize=8.5,
                        color="black" if light else "white")
        ax.set_xticks(range(len(cols)), cols, fontsize=9)
        ax.set_yticks(range(len(rows)), rows, fontsize=9)
        ax.set_xlabel(col, fontsize=10)
        ax.set_ylabel(row, fontsize=10)
        ax.set_title("\n".join(textwrap.wrap(panel, 32)), fontsize=9.5)  # panel titles must not overlap
    fig.subplots_adjust(hspace=0.55, top=1 - 0.9 / fig.get_figheight())  # room for the wrapped panel titles
    if image is not None:
        fig.colorbar(image, ax=[a for a in axes if a.get_visible()], shrink=0.8, label=colour_label)
    fig.suptitle(title, fontsize=11)
    plotting.save(fig, out / name)
    return name


def grid(out: Path, analysis: Analysis, row: str, col: str, name: str = "grid.png") -> Optional[str]:
    """Paired differences mapped over ``row × col``, one panel per value of the other keys."""
    panels: dict[str, dict] = {}
    for p, (_, r) in zip(analysis.pairings, analysis.comparisons.iterrows()):
        if p.baseline is None or not r["pairs"]:
            continue
        cond = p.condition
        panel = " ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in cond.values.items()
                         if k not in (row, col) and k not in SHAPE_KEYS[1:])
        star = "*" if inference.finite(r.get("p_holm")) and r["p_holm"] < analysis.alpha else ""
        ci = (f"\n[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]" if inference.finite(r.get("ci_low")) else "")
        panels.setdefault(panel, {})[(fmt(cond.values.get(row)), fmt(cond.values.get(col)))] = (
            r["mean_diff"], f"{r['mean_diff']:+.1f}{star}{ci}")
    if not panels:
        return None
    return _heatmaps(out, name, f"{analysis.metric}: condition − baseline (points); 95% CI; * Holm-significant",
                     panels, row, col, True, "difference (points)")


def robustness(out: Path, analysis: Analysis) -> str:
    row, col = analysis.options.robust
    panels: dict[str, dict] = {}
    rob = analysis.robustness
    others = [k for k in rob.columns if k not in ("dt", "dist", "cell", row, col, "runs", "trained_runs",
                                                  "cell_trains", "late_mean")]
    for _, r in rob.iterrows():
        panel = " ".join([r["dt"], *(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others)])
        share = r["trained_runs"] / max(r["runs"], 1)
        panels.setdefault(panel, {})[(fmt(r[row]), fmt(r[col]))] = (share, f"{r['trained_runs']}/{r['runs']}")
    title = f"runs that train (late ≥ chance + {analysis.options.train_fraction:g} × (1 − chance), no collapse)"
    return _heatmaps(out, "robustness.png", title, panels, row, col, False, "share of runs that train")


def dt_histograms(out: Path, analysis: Analysis) -> Optional[str]:
    by_dist: dict[str, list[Condition]] = {}
    for cond in analysis.conditions:
        by_dist.setdefault(_dist(cond), []).append(cond)
    shaped = {d: c for d, c in by_dist.items() if d != "scalar"}
    if not shaped:
        return None
    scalar_means = sorted({float(c.runs[0].summary.dt.get("mean", np.nan)) for c in by_dist.get("scalar", [])})
    fig, axes = _panels(len(shaped), width=3.4, height=2.6, max_cols=3)
    for ax, (dist, conds) in zip(axes, shaped.items()):
        for cond in conds:
            path = cond.runs[0].path / record.DT
            if not path.exists():
                continue
            with np.load(path) as f:
                values = np.concatenate([f[k].ravel() for k in f.files])
            ax.hist(values, bins=60, histtype="step", density=True, color=colour(cond),
                    label=cond.label.replace(dist + " ", ""))
        for m in scalar_means:
            ax.axvline(m, color="black", lw=0.8, ls="--")
        ax.set_title(f"{dist} (dashed: scalar steps)", fontsize=10)
        ax.set_xlabel("dt", fontsize=10)
        ax.tick_params(labelsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    axes[0].set_ylabel("density over neurons (first seed)", fontsize=10)
    fig.tight_layout()
    plotting.save(fig, out / "dt_histograms.png")
    return "dt_histograms.png"


def equivalent_step(out: Path, analysis: Analysis) -> Optional[str]:
    eq = analysis.equivalent
    if eq is None or not len(eq):
        return None
    plt = plotting.pyplot()
    key = eq["key"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    scalar = [c for c in analysis.conditions if _dist(c) == "scalar" and key in c.values]
    xs = sorted(float(c.values[key]) for c in scalar)
    by_x = {float(c.values[key]): c for c in scalar}
    summaries = [inference.describe(by_x[x].metric(analysis.metric)) for x in xs]
    ax.plot(xs, [s["mean"] for s in summaries], "k-o", label="scalar dt", ms=4)
    ax.fill_between(xs, [s["ci_low"] if s["ci_low"] is not None else s["mean"] for s in summaries],
                    [s["ci_high"] if s["ci_high"] is not None else s["mean"] for s in summaries], color="k",
                    alpha=0.12, lw=0)
    conds = {c.label: c for c in analysis.conditions}
    for _, r in eq.iterrows():
        shade = colour(conds[r["condition"]]) if r["condition"] in conds else "tab:gray"
        ax.axhline(r["metric_mean"], color=shade, lw=0.8, ls=":")
        if inference.finite(r["equivalent"]):
            lo = r["ci_low"] if inference.finite(r["ci_low"]) else r["equivalent"]
            hi = r["ci_high"] if inference.finite(r["ci_high"]) else r["equivalent"]
            ax.errorbar([r["equivalent"]], [r["metric_mean"]], xerr=[[r["equivalent"] - lo], [hi - r["equivalent"]]],
                        fmt="s", color=shade, capsize=3, label=f"{r['condition']} (at {key}={r['own']:g})")
        else:
            ax.plot([r["own"]], [r["metric_mean"]], "x", color=shade, label=f"{r['condition']}: {r['position']}")
    _label(ax, f"scalar {key}", f"{analysis.metric} (%)",
           "equivalent scalar step: where each condition meets the scalar curve (95% CI)")
    plotting.save(fig, out / "equivalent_step.png")
    return "equivalent_step.png"


def convergence(out: Path, analysis: Analysis) -> Optional[str]:
    conds = [c for c in analysis.conditions if c.finished["test_unconverged"].notna().any()]
    if not conds:
        return None
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.36 * len(conds) + 1.4))
    for i, cond in enumerate(conds):
        for column, marker, offset in (("test_unconverged", "o", -0.12), ("nudged_unconverged", "^", 0.12)):
            values = cond.finished[column].dropna().astype(float)
            if len(values):
                ax.scatter(values, np.full(len(values), i + offset), marker=marker, s=10, color=colour(cond),
                           alpha=0.5, lw=0)
                ax.plot([values.mean()], [i + offset], marker, color="k", ms=4)
    ax.set_yticks(range(len(conds)), [c.label for c in conds], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples whose fixed-point residual exceeds the tolerance (late epochs): "
                  "o free phase (test), ^ nudged phase (training)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plotting.save(fig, out / "convergence.png")
    return "convergence.png"


def compute(out: Path, analysis: Analysis) -> Optional[str]:
    conds = [c for c in analysis.conditions if c.finished["relaxation_steps"].notna().any()]
    if not conds:
        return None
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = iter(["o", "s", "^", "D", "v", "P", "X", "*"] * 8)
    for cond in conds:
        done = cond.finished.dropna(subset=["relaxation_steps"])
        steps, metric = done["relaxation_steps"].astype(float), cond.metric(analysis.metric).reindex(done["seed"])
        marker = next(styles)
        ax.scatter(steps, metric, s=10, color=colour(cond), marker=marker, alpha=0.4, lw=0)
        ax.errorbar([steps.mean()], [metric.mean()], xerr=[[steps.mean() - steps.min()], [steps.max() - steps.mean()]],
                    fmt=marker, color=colour(cond), ms=6, capsize=2, label=cond.label)
    ax.set_xscale("log")
    _label(ax, "relaxation steps per run (every phase of every training batch; bars: range over seeds)",
           f"{analysis.metric} ({'%' if analysis.metric in POINTS else ''})", "accuracy against compute")
    plotting.save(fig, out / "compute.png")
    return "compute.png"


def render(out: Path, analysis: Analysis) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = [learning_curves(out, analysis), paired_differences(out, analysis)]
        if analysis.options.grid:
            names.append(grid(out, analysis, *analysis.options.grid))
        if analysis.robustness is not None:
            names.append(robustness(out, analysis))
            names.append(grid(out, analysis, *analysis.options.robust, name="robustness_differences.png"))
        names += [dt_histograms(out, analysis), equivalent_step(out, analysis), convergence(out, analysis),
                  compute(out, analysis)]
        if analysis.boundaries is not None and len(analysis.boundaries):
            from hets_ep.report import boundary

            names.append(boundary.figure(out, analysis.boundaries, analysis.boundary_curves, analysis.options.boundary,
                                         analysis.boundary_log))
    return [n for n in names if n]
