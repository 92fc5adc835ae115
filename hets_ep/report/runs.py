"""Finding runs, their per-run metrics, conditions, and which condition pairs with which.

A *run* is a directory holding a run record (:mod:`hets_ep.record`). Runs are grouped into
*conditions* by the config keys whose values differ between runs (the seed and bookkeeping
keys excepted). A condition is compared with a *baseline* condition seed by seed, because
seed k shares initial weights and data order across conditions. The keys split in two:
*treatment* keys (``dt.*``: the time-step condition under study) and *context* keys (all other
varying keys: estimator, learning rate, dataset size, epochs, …); a condition only ever pairs
with a baseline of the same context, so runs that differ in ``dataset.subset`` or
``train.epochs`` are never compared as if they differed in dt only.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from hets_ep import record, stability
from hets_ep.errors import HetsEpError
from hets_ep.record import RunRecord

# Keys that never define a condition: bookkeeping, paths, display, guards and analysis thresholds.
IGNORED = ("seed", "resume", "train.progress", "train.check_every", "train.eval_batch_size", "dataset.root",
           "train.parallel_seeds", "train.explode_threshold", "stability.", "gradcheck.")
TREATMENT = "dt."
# Metrics of a run: larger is better for accuracies, smaller for the drawdown and collapses.
METRICS = {"late": +1, "final": +1, "best": +1, "auc": +1, "max_drawdown": -1, "collapse": -1}
BINARY = ("collapse", "trained")


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run directory at or below ``paths``."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise HetsEpError(f"{root}: no such file or directory")
        candidates = [root] if record.is_run(root) else []
        candidates += sorted(p.parent for p in root.rglob(record.SUMMARY) if p.parent != root)
        runs += [record.read_run(d) for d in candidates if record.is_run(d)]
    if not runs:
        raise HetsEpError(f"no runs found under {', '.join(map(str, paths))} (a run directory holds "
                          f"{record.SUMMARY} and {record.CONFIG}; point at outputs/multirun/… or at run directories)")
    return runs


def run_metrics(run: RunRecord, train_threshold: float) -> dict:
    """One run's per-seed row: the metrics, binary outcomes, convergence and realised dt."""
    accs = run.curve("test_acc")
    cfg = run.config
    window = int(cfg.get("stability.late_window", 3))
    drop = float(cfg.get("stability.collapse_drop", 0.05))
    rows, summary = run.rows, run.summary
    late_rows = rows[-window:]
    events = stability.collapses(accs, drop) if accs else []
    late = stability.late_mean(accs, window)

    def late_mean(key):
        return stability.mean_or_none([getattr(r, key) for r in late_rows])

    return {
        "seed": run.seed, "status": run.status, "epochs": len(accs),
        "late": late, "final": accs[-1] if accs else None, "best": max(accs) if accs else None,
        "auc": float(np.mean(accs)) if accs else None,
        "max_drawdown": float(stability.drawdowns(accs).max()) if accs else None,
        "collapse_count": len(events), "collapse": bool(events) if accs else None,
        "never_learned": summary.stability.get("never_learned"),
        "trained": (late is not None and late >= train_threshold and not events) if accs else None,
        "diverged_epoch": summary.stability.get("diverged_epoch"),
        "test_fp_residual": late_mean("test_fp_residual"),
        "test_unconverged": late_mean("test_unconverged"),
        "train_unconverged": late_mean("train_unconverged"),
        "nudged_unconverged": late_mean("train_nudged_unconverged"),
        "dt_mean": summary.dt.get("mean"), "dt_cv": summary.dt.get("cv"),
        "wall_s": summary.timings.get("total_s"), "path": str(run.path),
    }


@dataclasses.dataclass
class Condition:
    """Runs that share every varying key but the seed."""

    values: dict[str, object]          # the varying keys' values
    runs: list[RunRecord]
    table: pd.DataFrame                # run_metrics of each run, one row per seed
    label: str = ""

    @property
    def treatment(self) -> dict[str, object]:
        return {k: v for k, v in self.values.items() if k.startswith(TREATMENT)}

    @property
    def context(self) -> dict[str, object]:
        return {k: v for k, v in self.values.items() if not k.startswith(TREATMENT)}

    def metric(self, name: str) -> pd.Series:
        """Per seed, in points for accuracies (×100), as 0/1 for binary outcomes."""
        column = self.table.set_index("seed")[name]
        if name in BINARY:
            return column.dropna().astype(float)
        return column.dropna().astype(float) * 100.0

    def keys_text(self) -> str:
        return " ".join(f"{k}={fmt(v)}" for k, v in self.values.items())


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(map(fmt, value)) + "]"
    return str(value)


def varying_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Keys whose values differ between runs (dt keys first), the ignored ones excepted."""
    first = ("dt.dist", "dt.mean", "dt.cv")
    keys = sorted({k for r in runs for k in r.config},
                  key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
    return [k for k in keys if not k.startswith(IGNORED) and len({repr(r.config.get(k)) for r in runs}) > 1]


def group(runs: Sequence[RunRecord], train_threshold: float = 0.9) -> list[Condition]:
    """Conditions (sorted by their values), each with its per-seed table and display label."""
    varying = varying_keys(runs)
    by_values: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_values.setdefault(tuple(repr(run.config.get(k)) for k in varying), []).append(run)
    conditions = []
    for members in by_values.values():
        values = {k: members[0].config.get(k) for k in varying}
        table = pd.DataFrame([run_metrics(r, train_threshold) for r in members]).sort_values("seed")
        conditions.append(Condition(values, members, table.reset_index(drop=True)))
    conditions.sort(key=lambda c: [_sortable(v) for v in c.values.values()])
    for cond in conditions:
        cond.label = label(cond, varying)
    return conditions


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, repr(value))


def label(cond: Condition, varying: Sequence[str]) -> str:
    """A short name: the distribution with its *realised* mean and cv, then the context keys
    by their last component (``T2=100 lr_scale=4``)."""
    parts = []
    if any(k.startswith(TREATMENT) for k in varying):
        dist = cond.values.get("dt.dist", cond.runs[0].config.get("dt.dist", "dt"))
        mean, cv = cond.table["dt_mean"].mean(), cond.table["dt_cv"].mean()
        shown = f"{dist} μ={mean:.2f}" if not math.isnan(mean) else str(dist)
        if dist != "scalar" and not math.isnan(cv):
            shown += f" cv={cv:.2f}"
        parts.append(shown)
    shorts = [k.rsplit(".", 1)[-1] for k in varying]
    for key, short in zip(varying, shorts):
        if key.startswith(TREATMENT):
            continue
        name = short if shorts.count(short) == 1 else key
        parts.append(f"{name}={fmt(cond.values[key])}")
    return " ".join(parts) or "all runs"


def selector(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE]`` as a dict."""
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise HetsEpError(f"--baseline: expected KEY=VALUE[,KEY=VALUE] or best, got {text!r}")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def matches(cond: Condition, chosen: dict[str, str]) -> bool:
    return all(fmt(cond.values.get(k, cond.runs[0].config.get(k))) == v for k, v in chosen.items())


@dataclasses.dataclass
class Pairing:
    condition: Condition
    baseline: Optional[Condition]
    note: str = ""


def pairings(conditions: Sequence[Condition], baseline: str = "dt.dist=scalar", match: Sequence[str] = (),
             metric: str = "late") -> list[Pairing]:
    """Each non-baseline condition with its baseline: a condition chosen by ``baseline``
    (``KEY=VALUE,…``, or ``best``: of the scalar-dt conditions, the one with the best mean
    ``metric``) that has the same context keys and agrees on the ``match`` keys."""
    base_selector = selector("dt.dist=scalar" if baseline == "best" else baseline)
    bases = [c for c in conditions if matches(c, base_selector)]
    if not bases:
        return [Pairing(c, None, f"no condition matches the baseline {baseline}: not compared") for c in conditions]
    out = []
    for cond in conditions:
        if cond in bases:
            continue
        same = [b for b in bases if b.context == cond.context and all(fmt(b.values.get(k)) == fmt(cond.values.get(k))
                                                                       for k in match)]
        if not same:
            differs = sorted({k for b in bases for k in cond.context if fmt(b.values.get(k)) != fmt(cond.values[k])})
            out.append(Pairing(cond, None, f"no baseline with the same {', '.join(differs or match)}: not compared"))
            continue
        if baseline == "best":
            direction = METRICS.get(metric, 1)
            base = max(same, key=lambda b: direction * b.metric(metric).mean())
        else:
            base = same[0]
        out.append(Pairing(cond, base))
    return out


def paired(pairing: Pairing, metric: str) -> pd.DataFrame:
    """Per seed both conditions share: the metric of each (columns ``condition``, ``baseline``)."""
    a, b = pairing.condition.metric(metric), pairing.baseline.metric(metric)
    both = pd.concat({"condition": a, "baseline": b}, axis=1, join="inner")
    return both.sort_index()
