"""``hets-ep report PATH...``: tables and figures from run and sweep directories.

Runs are found recursively (a directory holding ``summary.json`` and ``.hydra/config.yaml``).
They are grouped into *conditions* by the config keys whose values differ between runs, the
seed excepted. Because seed k shares initial weights and data order across conditions, each
condition is also compared **pairwise** with a baseline condition, seed by seed.

Writes ``report.md``, ``report.csv`` and figures into the output directory and prints the
main table.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from hets_ep import atomic, record
from hets_ep.errors import HetsEpError
from hets_ep.record import RunRecord

# Keys that never define a condition: bookkeeping, paths, display, guards and analysis thresholds.
_IGNORED = ("seed", "resume", "train.progress", "train.check_every", "train.eval_batch_size", "dataset.root",
            "train.parallel_seeds", "train.explode_threshold", "stability.", "gradcheck.")


@dataclass
class Condition:
    label: str
    values: dict[str, object]
    runs: list[RunRecord] = field(default_factory=list)


def find_runs(paths: Sequence[str]) -> list[RunRecord]:
    """Every run directory below ``paths`` (one that holds summary.json and its config)."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise HetsEpError(f"{root}: no such file or directory")
        candidates = [root] if record.is_run(root) else []
        candidates += sorted(p.parent for p in root.rglob(record.SUMMARY) if p.parent != root)
        runs += [record.read_run(run_dir) for run_dir in candidates if record.is_run(run_dir)]
    if not runs:
        raise HetsEpError(f"no runs found under {', '.join(paths)} (a run directory holds summary.json and "
                          ".hydra/config.yaml; point at outputs/multirun/… or at run directories)")
    return runs


def group(runs: list[RunRecord]) -> list[Condition]:
    """Conditions: runs with equal values for every varying key but the seed."""
    first = ("dt.dist", "dt.mean", "dt.cv")
    keys = sorted({k for r in runs for k in r.config}, key=lambda k: (k not in first, first.index(k) if k in first
                                                                       else 0, k))
    varying = [k for k in keys if not k.startswith(_IGNORED)
               and len({repr(r.config.get(k)) for r in runs}) > 1]
    conditions: dict[tuple, Condition] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in varying}
        ident = tuple(repr(values[k]) for k in varying)
        if ident not in conditions:
            label = " ".join(f"{k.split('.', 1)[-1] if k.startswith('dt.') else k}={_fmt(v)}"
                             for k, v in values.items()) or "all runs"
            conditions[ident] = Condition(label, values)
        conditions[ident].runs.append(run)
    return sorted(conditions.values(), key=lambda c: [repr(v) for v in c.values.values()])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ",".join(map(_fmt, value)) + "]"
    return str(value)


def _mean_std(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None, None, 0
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0, len(kept)


def condition_row(cond: Condition, target: float) -> dict:
    """The table row of one condition (accuracies as fractions)."""
    runs = cond.runs
    count = defaultdict(int)
    for r in runs:
        count[r.status] += 1
    finals = [r.summary.final_test_acc for r in runs]
    bests = [r.summary.best_test_acc for r in runs]
    stats = [r.summary.stability for r in runs]
    to_target = [next((i + 1 for i, a in enumerate(r.curve()) if a >= target), None) for r in runs]
    final_mean, final_std, _ = _mean_std(finals)
    learned = [s for s in stats if not s.get("never_learned")]
    return {
        "condition": cond.label,
        "n": len(runs),
        "completed": count["completed"], "diverged": count["diverged"], "interrupted": count["interrupted"],
        "never_learned": sum(bool(s.get("never_learned")) for s in stats),
        "best_acc": _mean_std(bests)[:2], "final_acc": (final_mean, final_std),
        "cv_final": final_std / final_mean if final_mean else None,
        "collapse_rate": (sum(s.get("collapse_count", 0) > 0 for s in learned) / len(learned)) if learned else None,
        "max_drawdown": _mean_std([s.get("max_drawdown") for s in stats])[:2],
        "epochs_to_target": _mean_std([float(t) if t else None for t in to_target])[0],
        "reached_target": sum(t is not None for t in to_target),
        "residual": _mean_std([s.get("mean_test_residual") for s in stats])[0],
        "unconverged": _mean_std([s.get("final_unconverged") for s in stats])[0],
        "dt_mean": _mean_std([r.summary.dt.get("mean") for r in runs])[0],
        "dt_cv": _mean_std([r.summary.dt.get("cv") for r in runs])[0],
        "wall_s": _mean_std([r.summary.timings.get("total_s") for r in runs])[0],
    }


def _matches(values: dict, selector: dict[str, str]) -> bool:
    return all(_fmt(values.get(k)) == v for k, v in selector.items())


def paired(conditions: list[Condition], baseline: dict[str, str], match: Sequence[str]) -> list[dict]:
    """Per condition: seed-by-seed differences against its baseline condition.

    The baseline of a condition is the condition selected by ``baseline`` (``{key: value}``)
    that agrees with it on the ``match`` keys (e.g. the scalar-dt run at the same mean dt).
    """
    bases = [c for c in conditions if _matches(c.values, baseline)]
    out = []
    for cond in conditions:
        if cond in bases:
            continue
        base = next((b for b in bases if all(_fmt(b.values.get(k)) == _fmt(cond.values.get(k)) for k in match)),
                    None)
        if base is None:
            continue
        by_seed = {r.seed: r for r in base.runs}
        rows = [(r, by_seed[r.seed]) for r in cond.runs if r.seed in by_seed]
        if not rows:
            continue

        def diffs(get):
            values = [(get(a), get(b)) for a, b in rows]
            return [a - b for a, b in values if a is not None and b is not None]

        final = diffs(lambda r: r.summary.final_test_acc)
        best = diffs(lambda r: r.summary.best_test_acc)
        drawdown = diffs(lambda r: r.summary.stability.get("max_drawdown"))
        out.append({
            "condition": cond.label, "baseline": base.label, "pairs": len(rows),
            "final_diff": _mean_std(final)[:2], "best_diff": _mean_std(best)[:2],
            "drawdown_diff": _mean_std(drawdown)[:2],
            "improved": sum(d > 0 for d in final), "worse": sum(d < 0 for d in final),
            "final_diffs": final,
        })
    return out


def _pct(pair, digits: int = 2) -> str:
    mean, std = pair
    return "–" if mean is None else f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def _num(value, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def markdown(rows: list[dict], pairs: list[dict], target: float) -> str:
    head = ["condition", "n (ok/div/int)", "never learned", "best acc %", "final acc %", "CV final", "collapse rate",
            "max drawdown %", f"epochs to {100 * target:g}%", "residual", "unconverged", "realised dt mean/cv",
            "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["condition"], f"{r['n']} ({r['completed']}/{r['diverged']}/{r['interrupted']})",
                 str(r["never_learned"]), _pct(r["best_acc"]), _pct(r["final_acc"]), _num(r["cv_final"]),
                 _num(r["collapse_rate"], "{:.2f}"), _pct(r["max_drawdown"]),
                 f"{_num(r['epochs_to_target'], '{:.1f}')} ({r['reached_target']}/{r['n']})",
                 _num(r["residual"], "{:.1e}"), _num(r["unconverged"], "{:.3f}"),
                 f"{_num(r['dt_mean'], '{:.3f}')} / {_num(r['dt_cv'], '{:.2f}')}", _num(r["wall_s"], "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "Paired by seed (condition − baseline, percentage points):", "",
                  "| condition | baseline | pairs | final acc diff | best acc diff | max drawdown diff | improved / worse |",
                  "|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['condition']} | {p['baseline']} | {p['pairs']} | {_pct(p['final_diff'])} | "
                         f"{_pct(p['best_diff'])} | {_pct(p['drawdown_diff'])} | {p['improved']} / {p['worse']} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], pairs: list[dict]) -> None:
    by_condition = {p["condition"]: p for p in pairs}
    buffer = _io.StringIO()
    fields = ["condition", "n", "completed", "diverged", "interrupted", "never_learned", "best_acc_mean",
              "best_acc_std", "final_acc_mean", "final_acc_std", "cv_final", "collapse_rate", "max_drawdown_mean",
              "max_drawdown_std", "epochs_to_target", "reached_target", "residual", "unconverged", "dt_mean", "dt_cv",
              "wall_s", "paired_baseline", "paired_final_diff_mean", "paired_final_diff_std", "paired_improved",
              "paired_pairs"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        p = by_condition.get(r["condition"], {})
        writer.writerow({
            **{k: r[k] for k in ("condition", "n", "completed", "diverged", "interrupted", "never_learned", "cv_final",
                                 "collapse_rate", "epochs_to_target", "reached_target", "residual", "unconverged",
                                 "dt_mean", "dt_cv", "wall_s")},
            "best_acc_mean": r["best_acc"][0], "best_acc_std": r["best_acc"][1],
            "final_acc_mean": r["final_acc"][0], "final_acc_std": r["final_acc"][1],
            "max_drawdown_mean": r["max_drawdown"][0], "max_drawdown_std": r["max_drawdown"][1],
            "paired_baseline": p.get("baseline"), "paired_final_diff_mean": p.get("final_diff", (None,))[0],
            "paired_final_diff_std": p.get("final_diff", (None, None))[1], "paired_improved": p.get("improved"),
            "paired_pairs": p.get("pairs"),
        })
    atomic.write_text(path, buffer.getvalue())


def figures(out: Path, conditions: list[Condition], pairs: list[dict]) -> list[str]:
    """Learning-curve bands, per-seed finals, collapse rates, dt histograms, residuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        with atomic.atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written.append(name)

    width = max(6.0, 0.6 * len(conditions) + 3)
    for key, name, ylabel, log in (("test_acc", "learning_curves.png", "test accuracy", False),
                                   ("test_step_residual", "residual.png", "free-phase residual (test)", True)):
        fig, ax = plt.subplots(figsize=(7, 4))
        for cond in conditions:
            curves = [r.curve(key) for r in cond.runs if r.rows]
            if not curves:
                continue
            length = max(map(len, curves))
            padded = np.array([c + [np.nan] * (length - len(c)) for c in curves], dtype=float)
            mean, std = np.nanmean(padded, 0), np.nanstd(padded, 0)
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, mean, label=cond.label)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        ax.set(xlabel="epoch", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=6)
        fig.tight_layout()
        save(fig, name)

    fig, ax = plt.subplots(figsize=(width, 4))
    for i, cond in enumerate(conditions):
        finals = [r.summary.final_test_acc for r in cond.runs if r.summary.final_test_acc is not None]
        ax.scatter(np.full(len(finals), i) + np.linspace(-0.15, 0.15, len(finals)), finals, s=14)
        if finals:
            ax.hlines(np.mean(finals), i - 0.3, i + 0.3, color="k")
    ax.set_xticks(range(len(conditions)), [c.label for c in conditions], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="final test accuracy (per seed)")
    fig.tight_layout()
    save(fig, "final_accuracy.png")

    fig, ax = plt.subplots(figsize=(width, 3.5))
    rates = []
    for cond in conditions:
        stats = [r.summary.stability for r in cond.runs]
        rates.append(np.mean([s.get("collapse_count", 0) > 0 for s in stats]) if stats else 0)
    ax.bar(range(len(conditions)), rates)
    ax.set_xticks(range(len(conditions)), [c.label for c in conditions], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="share of runs with a collapse", ylim=(0, 1))
    fig.tight_layout()
    save(fig, "collapse_rate.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for cond in conditions:
        dt_file = cond.runs[0].path / "dt.npz"
        if dt_file.exists():
            with np.load(dt_file) as f:
                values = np.concatenate([f[k].ravel() for k in f.files])
            ax.hist(values, bins=50, histtype="step", density=True, label=cond.label)
    ax.set(xlabel="dt", ylabel="density", title="dt draws (first seed of each condition)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, "dt_histograms.png")

    if pairs:
        fig, ax = plt.subplots(figsize=(width, 4))
        for i, p in enumerate(pairs):
            d = 100 * np.asarray(p["final_diffs"])
            ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, s=14)
            ax.errorbar(i, d.mean(), yerr=d.std(ddof=1) if len(d) > 1 else 0, fmt="o", color="k")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(pairs)), [p["condition"] for p in pairs], rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="final accuracy − baseline (points, per seed)")
        fig.tight_layout()
        save(fig, "paired_differences.png")
    return written


def grid(out: Path, conditions: list[Condition], pairs: list[dict], row: str, col: str,
         baseline: dict[str, str]) -> str:
    """Maps of the paired final-accuracy difference over ``row × col`` (heatmaps + markdown).

    Conditions that differ in other keys too (say ``dt.dist``) get one map each; the baseline
    conditions fill the cells no other condition takes, shown as 0 (they are the reference).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label = {p["condition"]: p for p in pairs}
    bases = [c for c in conditions if _matches(c.values, baseline)]
    groups: dict[str, list[Condition]] = defaultdict(list)
    for cond in conditions:
        if cond not in bases:
            rest = " ".join(f"{k}={_fmt(v)}" for k, v in cond.values.items() if k not in (row, col))
            groups[rest].append(cond)
    number = lambda s: float(s) if s.replace(".", "", 1).isdigit() else s  # noqa: E731
    lines = [f"Paired final-accuracy difference vs baseline (points, mean ± std; seeds improved / pairs), "
             f"{row} × {col}:", ""]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.6), squeeze=False)
    for ax, (name, members) in zip(axes[0], sorted(groups.items())):
        cells: dict[tuple[str, str], Optional[dict]] = {}
        for cond in members + bases:
            cells.setdefault((_fmt(cond.values.get(row)), _fmt(cond.values.get(col))), by_label.get(cond.label)
                             if cond in members else None)
        rows = sorted({r for r, _ in cells}, key=number)
        cols = sorted({c for _, c in cells}, key=number)
        values = np.full((len(rows), len(cols)), np.nan)
        lines += [f"**{name}**" if name else "", "", "| " + row + " \\ " + col + " | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for i, r in enumerate(rows):
            texts = []
            for j, c in enumerate(cols):
                if (r, c) not in cells:
                    texts.append("")
                elif cells[(r, c)] is None:
                    values[i, j] = 0.0
                    texts.append("baseline")
                else:
                    p = cells[(r, c)]
                    values[i, j] = 100 * p["final_diff"][0]
                    texts.append(f"{_pct(p['final_diff'])} ({p['improved']}/{p['pairs']})")
            lines.append(f"| {r} | " + " | ".join(texts) + " |")
        lines.append("")
        bound = np.nanmax(np.abs(values)) or 1.0
        ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
        for i in range(len(rows)):
            for j in range(len(cols)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:+.1f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel=col, ylabel=row, title=name or "final accuracy − baseline")
    fig.suptitle("final accuracy − baseline (points)")
    fig.tight_layout()
    with atomic.atomic_path(out / "grid.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return "\n".join(lines) + "\n"


def _selector(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise HetsEpError(f"--baseline: expected KEY=VALUE[,KEY=VALUE], got {text!r}")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def build_report(paths: Sequence[str], out: Path, baseline: str = "dt.dist=scalar", match: Sequence[str] = (),
                 target: float = 0.9, grid_keys: Optional[Sequence[str]] = None) -> str:
    """Write the report into ``out``; returns the markdown table."""
    runs = find_runs(paths)
    conditions = group(runs)
    rows = [condition_row(c, target) for c in conditions]
    pairs = paired(conditions, _selector(baseline), match)
    table = markdown(rows, pairs, target)
    out.mkdir(parents=True, exist_ok=True)
    names = figures(out, conditions, pairs)
    if grid_keys:
        table += "\n" + grid(out, conditions, pairs, *grid_keys, _selector(baseline))
        names.append("grid.png")
    body = [f"# hets-ep report\n\n{len(runs)} runs in {len(conditions)} conditions from "
            f"{', '.join(map(str, paths))}. Accuracies in percent, mean ± std over seeds; collapse rate over "
            f"runs that learned; residual = free-phase ‖s_T − s_T−1‖/‖s_T‖ on the test set.\n", table]
    body += [f"![{n}]({n})\n" for n in names]
    atomic.write_text(out / "report.md", "\n".join(body))
    write_csv(out / "report.csv", rows, pairs)
    return table


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output directory (default: FIRST_PATH/report)")
    parser.add_argument("--baseline", default="dt.dist=scalar",
                        help="the baseline condition(s) for paired differences, KEY=VALUE[,…] (default dt.dist=scalar)")
    parser.add_argument("--match", default="", help="keys a condition shares with its baseline, e.g. dt.mean")
    parser.add_argument("--target", type=float, default=0.9, help="accuracy for 'epochs to target' (default 0.9)")
    parser.add_argument("--grid", help="ROW,COL: also map the paired difference over two keys, e.g. dt.mean,dt.cv")
    args = parser.parse_args(argv)
    grid_keys = args.grid.split(",") if args.grid else None
    if grid_keys is not None and len(grid_keys) != 2:
        raise HetsEpError(f"--grid takes two keys ROW,COL, got {args.grid!r}")
    out = args.out or Path(args.paths[0]) / "report"
    table = build_report(args.paths, out, args.baseline, [k for k in args.match.split(",") if k], args.target,
                         grid_keys)
    print(table)
    print(f"report written to {out / 'report.md'}")
