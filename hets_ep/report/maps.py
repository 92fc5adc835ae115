"""Two maps of a report: the equivalent scalar step of each condition (``--equivalent KEY``) and
the robustness map over two hyperparameters (``--robust KEY1,KEY2``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from hets_ep.errors import HetsEpError
from hets_ep.report import inference
from hets_ep.report.runs import Condition, Pairing, fmt, paired

if TYPE_CHECKING:
    from hets_ep.report.analysis import ReportOptions


def equivalent(conditions: Sequence[Condition], pairs: Sequence[Pairing], key: str, metric: str,
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


def robustness(conditions: Sequence[Condition], pairs: Sequence[Pairing], keys: tuple[str, str],
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
