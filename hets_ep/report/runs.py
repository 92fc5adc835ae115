"""Finding runs, their per-run metrics, conditions, and which condition pairs with which.

A *run* is a directory holding a run record (:mod:`hets_ep.record`). Runs are grouped into
*conditions* by the config keys whose values differ between runs, among the keys that change
what is computed (the seed, paths, trackers, display, guards and analysis thresholds never
define a condition). A condition is compared with a *baseline* condition seed by seed, because
seed k shares initial weights and data order across conditions. The keys split in two:
*treatment* keys (``dt.*`` and ``dynamics.*``: the time steps and how they integrate) and
*context* keys (all other varying keys: estimator, learning rate, dataset size, epochs, …); a
condition only ever pairs with a baseline of the same context, so runs that differ in
``dataset.subset`` or ``train.epochs`` are never compared as if they differed in dt only.

Each (condition, seed) counts once. Where a seed appears more than once (a rerun sweep, two
overlapping folders, a copied run), one run is kept by a fixed rule — a finished run (completed
or diverged) before an unfinished one, then the one written last — and the others are set
aside and named (:attr:`Grouping.set_aside`); with ``strict`` the report refuses instead. Only
finished runs have metrics: an interrupted, failed or running run is counted by its status, and
its partial curve is never scored as if it were complete.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from hets_ep import record, stability
from hets_ep.errors import HetsEpError
from hets_ep.record import FAILED_TO_TRAIN, FINISHED, RunRecord

TREATMENT = ("dt.", "dynamics.")
# Per-run metrics a comparison can use, with their direction: +1 larger is better, −1 smaller.
METRICS = {"late": +1, "final": +1, "best": +1, "auc": +1, "max_drawdown": -1, "collapse": -1, "jitter": -1,
           "val_late": +1}
# Secondary endpoints, compared beside the primary metric (their direction is not a verdict).
SECONDARY = ("max_drawdown", "jitter", "loss_spikes", "relaxation_steps", "wall_s", "spectral_radius")
# Endpoints whose per-seed ratios vary by multiples: tested on the log scale (a geometric-mean ratio).
RATIO = ("relaxation_steps", "wall_s")
# Metrics in accuracy units, shown in points (×100).
POINTS = ("late", "final", "best", "auc", "max_drawdown", "jitter", "val_late")
BINARY = ("collapse", "trained")
# What each matching rule holds equal (a label names it with its realised value).
MATCHED = {"mean": ("μ", "dt_mean"), "geomean": ("geomean", "dt_geomean"), "tau": ("hmean", "dt_hmean"),
           "none": ("μ", "dt_mean")}


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run directory at or below ``paths`` (each once, however many paths hold it)."""
    runs, seen = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise HetsEpError(f"{root}: no such file or directory")
        candidates = [root] if record.is_run(root) else []
        candidates += sorted(p.parent for p in root.rglob(record.SUMMARY) if p.parent != root)
        for d in candidates:
            if record.is_run(d) and d.resolve() not in seen:
                seen.add(d.resolve())
                runs.append(record.read_run(d))
    if not runs:
        raise HetsEpError(f"no runs found under {', '.join(map(str, paths))} (a run directory holds "
                          f"{record.SUMMARY} and {record.CONFIG}; point at outputs/multirun/… or at run directories)")
    return runs


def chance(run: RunRecord) -> float:
    """Chance accuracy of the run's dataset (1 / classes)."""
    return 1.0 / (run.summary.classes or 10)


def trained(status: str, late: Optional[float], collapse_count: Optional[int], chance_level: float,
            fraction: float) -> Optional[bool]:
    """Whether a run trained: finished, late accuracy at least ``fraction`` of the way from chance to
    perfect, never collapsed; a run that diverged or was stopped at chance did not (even one that
    ended before its first epoch's row). None for a run that has not finished."""
    if status in [str(s) for s in FAILED_TO_TRAIN]:
        return False
    if status not in [str(s) for s in FINISHED] or late is None:
        return None
    return bool(late >= chance_level + fraction * (1.0 - chance_level) and not collapse_count)


def run_metrics(run: RunRecord, train_fraction: float) -> dict:
    """One run's per-seed row, read from its record (the statistics as :mod:`hets_ep.stability`
    defined them for its summary): metrics only for a finished run."""
    summary, st = run.summary, run.summary.stability
    finished = summary.status in FINISHED and bool(run.rows)
    late = summary.late_test_acc if finished else None
    collapse_count = st.get("collapse_count") if finished else None
    window = int(run.config["stability.late_window"])

    def late_mean(key):
        return stability.late_mean([getattr(r, key) for r in run.rows], window) if finished else None

    return {
        "seed": run.seed, "status": summary.status, "epochs": summary.epochs_completed,
        "late": late, "final": summary.final_test_acc if finished else None,
        "best": summary.best_test_acc if finished else None,
        "auc": st.get("auc") if finished else None,
        "val_late": st.get("late_val_acc") if finished else None,
        "max_drawdown": st.get("max_drawdown") if finished else None,
        "jitter": st.get("jitter") if finished else None,
        "collapse_count": collapse_count, "collapse": bool(collapse_count) if finished else None,
        "never_learned": st.get("never_learned") if finished else None,
        "chance": chance(run),
        "trained": trained(summary.status, late, collapse_count, chance(run), train_fraction),
        "late_epochs": min(window, summary.epochs_completed) if finished else None,
        "loss_spikes": st.get("loss_spikes") if finished else None,
        "relaxation_steps": st.get("relaxation_steps") if finished else None,
        "spectral_radius": st.get("late_spectral_radius") if finished else None,
        "diverged_epoch": st.get("diverged_epoch"),
        "test_fp_residual": late_mean("test_fp_residual"),
        "test_unconverged": late_mean("test_unconverged"),
        "train_unconverged": late_mean("train_unconverged"),
        "nudged_unconverged": late_mean("train_nudged_unconverged"),
        "capped": late_mean("train_capped"),
        "free_steps": late_mean("train_free_steps"), "nudged_steps": late_mean("train_nudged_steps"),
        **{f"config_{k}": run.config.get(k) for k in ("ep.T1", "ep.T2", "ep.tol")},
        **{f"dt_{k}": summary.dt.get(k) for k in ("mean", "geomean", "hmean", "cv", "tau_cv")},
        "wall_s": summary.timings.get("total_s"), "commit": summary.versions.get("commit"),
        "dirty": summary.versions.get("dirty"), "path": str(run.path),
    }


@dataclasses.dataclass
class Condition:
    """Runs that share every varying key but the seed (one run per seed)."""

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

    @property
    def finished(self) -> pd.DataFrame:
        return self.table[self.table["status"].isin([str(s) for s in FINISHED])]

    def metric(self, name: str) -> pd.Series:
        """Per finished seed, in points for accuracy metrics (×100), as 0/1 for binary outcomes."""
        column = self.finished.set_index("seed")[name].dropna()
        if name in BINARY:
            return column.astype(float)
        return column.astype(float) * (100.0 if name in POINTS else 1.0)

    def keys_text(self) -> str:
        return " ".join(f"{k}={fmt(v)}" for k, v in self.values.items())


@dataclasses.dataclass
class Grouping:
    conditions: list[Condition]
    set_aside: list[tuple[Path, Path]]   # (run set aside, the run kept for its condition and seed)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(map(fmt, value)) + "]"
    return str(value)


def varying_keys(runs: Sequence[RunRecord], leave_out: Sequence[str] = ()) -> list[str]:
    """Keys that define a condition (:class:`hets_ep.config.Roles`) and whose values differ
    between runs, dt keys first (``leave_out``: keys not to group by, such as a stress axis)."""
    from hets_ep.config import roles

    first = ("dt.dist", "dt.mean", "dt.cv")
    keys = sorted({k for r in runs for k in r.config},
                  key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
    return [k for k in keys if roles(k).condition and k not in leave_out
            and len({repr(r.config.get(k)) for r in runs}) > 1]


def _keep(runs: list[RunRecord]) -> tuple[RunRecord, list[RunRecord]]:
    """The run a (condition, seed) keeps: finished before unfinished, then the latest written."""
    def rank(run: RunRecord):
        return (run.status in FINISHED, (run.path / record.SUMMARY).stat().st_mtime_ns, str(run.path))

    ordered = sorted(runs, key=rank, reverse=True)
    return ordered[0], ordered[1:]


def group(runs: Sequence[RunRecord], train_fraction: float, strict: bool = False) -> Grouping:
    """Conditions (sorted by their values), each with its per-seed table and display label."""
    varying = varying_keys(runs)
    by_values: dict[tuple, dict[int, list[RunRecord]]] = {}
    for run in runs:
        by_values.setdefault(tuple(repr(run.config.get(k)) for k in varying), {}).setdefault(run.seed, []).append(run)
    conditions, aside = [], []
    for seeds in by_values.values():
        duplicates = {seed: members for seed, members in seeds.items() if len(members) > 1}
        if duplicates and strict:
            seed, members = next(iter(duplicates.items()))
            raise HetsEpError(f"seed {seed} appears {len(members)} times in one condition "
                              f"({', '.join(str(m.path) for m in members)}); keep one, or drop --strict to keep the "
                              "finished run written last")
        kept = []
        for members in seeds.values():
            chosen, others = _keep(members)
            kept.append(chosen)
            aside += [(o.path, chosen.path) for o in others]
        values = {k: kept[0].config.get(k) for k in varying}
        table = pd.DataFrame([run_metrics(r, train_fraction) for r in kept]).sort_values("seed")
        conditions.append(Condition(values, sorted(kept, key=lambda r: r.seed), table.reset_index(drop=True)))
    conditions.sort(key=lambda c: [_sortable(v) for v in c.values.values()])
    for cond in conditions:
        cond.label = label(cond, varying)
    return Grouping(conditions, aside)


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, repr(value))


def label(cond: Condition, varying: Sequence[str], realised: bool = True) -> str:
    """A short name: the distribution with the *realised* value of the statistic its draws
    matched (``μ`` the mean, ``geomean``, ``hmean`` = Δt / mean τ) and cv, then the other keys by
    their last component (``T2=100 lr_scale=4``). Without ``realised`` (a curve along a dt key,
    whose levels change the statistic) the distribution, its cv and the statistic it matches."""
    parts = []
    if any(k.startswith(TREATMENT) for k in varying):
        config = cond.runs[0].config
        dist = cond.values.get("dt.dist", config.get("dt.dist", "dt"))
        name, column = MATCHED.get(str(config.get("dt.match", "mean")), MATCHED["mean"])
        if dist == "scalar":
            name, column = MATCHED["mean"]
        value, cv = cond.table[column].astype(float).mean(), cond.table["dt_cv"].astype(float).mean()
        shown = f"{dist} {name}={value:.2f}" if realised and not math.isnan(value) else str(dist)
        if dist != "scalar" and not math.isnan(cv):
            shown += f" cv={cv:.2f}"
        if not realised and dist != "scalar":
            shown += f" ({name}-matched)"
        parts.append(shown)
    keys = [k for k in varying if k not in ("dt.dist", "dt.mean", "dt.cv")]
    shorts = [k.rsplit(".", 1)[-1] for k in keys]
    for key, short in zip(keys, shorts):
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


def same_value(value, text: str) -> bool:
    """Whether a config value is the one a selector's text names (``0.0`` names 0, ``null`` None)."""
    if fmt(value) == text or str(value).lower() == text.lower() or (value is None and text.lower() in ("null", "none")):
        return True
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and float(text) == float(value)
    except ValueError:
        return False


def matches(cond: Condition, chosen: dict[str, str]) -> bool:
    return all(same_value(cond.values.get(k, cond.runs[0].config.get(k)), v) for k, v in chosen.items())


@dataclasses.dataclass
class Pairing:
    condition: Condition
    baseline: Optional[Condition]
    note: str = ""


def pairings(conditions: Sequence[Condition], baseline: str, match: Sequence[str], metric: str) -> list[Pairing]:
    """Each non-baseline condition with its baseline: a condition chosen by ``baseline``
    (``KEY=VALUE,…``, or ``best``: of the scalar-dt conditions, the one with the best mean
    ``metric``, the selection metric) that has the same context keys and agrees on the ``match``
    keys."""
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
            out.append(Pairing(cond, max(same, key=lambda b: direction * b.metric(metric).mean())))
            continue
        closest = _closest(cond, same, base_selector)
        if len(closest) > 1:
            free = sorted({k for b in closest for k in b.treatment if fmt(b.values[k]) != fmt(closest[0].values[k])})
            out.append(Pairing(cond, None, f"{len(closest)} baselines fit ({', '.join(b.label for b in closest)}); "
                                           f"choose with --match {','.join(free)}: not compared"))
            continue
        out.append(Pairing(cond, closest[0]))
    return out


def _closest(cond: Condition, bases: Sequence[Condition], chosen: dict[str, str]) -> list[Condition]:
    """The baselines that share the most treatment values with ``cond`` (the keys the baseline
    selector fixes aside): scalar dt at the same mean and with the same dynamics, say."""
    def shared(b: Condition) -> int:
        return sum(fmt(b.values.get(k)) == fmt(v) for k, v in cond.treatment.items() if k not in chosen)

    most = max(map(shared, bases))
    return [b for b in bases if shared(b) == most]


def paired(pairing: Pairing, metric: str) -> pd.DataFrame:
    """Per seed both conditions share: the metric of each (columns ``condition``, ``baseline``)."""
    a, b = pairing.condition.metric(metric), pairing.baseline.metric(metric)
    both = pd.concat({"condition": a, "baseline": b}, axis=1, join="inner")
    return both.sort_index()
