"""Stability statistics of a run, from its per-epoch test accuracy.

With test accuracies ``a_1 … a_E`` and running best ``b_t = max_{s≤t} a_s``:

* **drawdown** ``d_t = b_t − a_t``; **max drawdown** ``max_t d_t``.
* **collapse event**: an epoch where ``d_t`` rises above ``collapse_drop`` (default 5 points)
  after being at or below it; consecutive epochs below count as one event. **Recovery epochs**:
  epochs from a collapse until ``a_t ≥ b − collapse_drop`` again (unrecovered ones are counted
  apart).
* **never learned**: ``max_t a_t < 1/classes + chance_margin``; such a run is a failure of its
  own kind, not counted as a collapse.
* **jitter**: standard deviation of ``a_t`` over the last ``jitter_window`` epochs.
* **epochs to target**: first epoch with ``a_t ≥ target_acc``.
* **late**: mean of ``a_t`` over the last ``late_window`` epochs (the report's primary metric).
* **divergence**: the epoch where NaN/inf or an exploding state (``|s| > explode_threshold``)
  first appeared (recorded by the runner; the run stops there with ``status: diverged``).
* **relaxation health** (from the free phase on the test set): residual
  ``‖s_T − s_{T−1}‖/‖s_T‖`` averaged over samples, the share of samples whose residual exceeds
  ``residual_tol``, and the mean number of sign flips of ``Δs`` per neuron over the last
  steps (oscillation).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def drawdowns(accs: Sequence[float]) -> np.ndarray:
    """``d_t = max_{s≤t} a_s − a_t`` for each epoch."""
    a = np.asarray(accs, np.float64)
    return np.maximum.accumulate(a) - a if a.size else a


def collapses(accs: Sequence[float], drop: float) -> list[dict]:
    """Collapse events: ``{"epoch", "best", "depth", "recovery_epochs"}`` (1-based epochs)."""
    a = np.asarray(accs, np.float64)
    events, inside = [], False
    best = -np.inf
    for t, acc in enumerate(a):
        best = max(best, acc)
        down = best - acc > drop
        if down and not inside:
            events.append({"epoch": t + 1, "best": float(best), "depth": float(best - acc), "recovery_epochs": None})
        elif down:
            events[-1]["depth"] = max(events[-1]["depth"], float(best - acc))
        elif inside:
            events[-1]["recovery_epochs"] = t + 1 - events[-1]["epoch"]
        inside = down
    return events


def run_statistics(accs: Sequence[float], classes: int, *, collapse_drop: float = 0.05, chance_margin: float = 0.05,
                   jitter_window: int = 5, target_acc: float = 0.9) -> dict:
    """Per-run statistics of a test-accuracy curve (see the module docstring)."""
    a = np.asarray(accs, np.float64)
    if a.size == 0:
        return {"epochs": 0, "never_learned": True, "collapse_count": 0, "max_drawdown": None,
                "jitter": None, "epochs_to_target": None, "collapses": [], "mean_recovery_epochs": None,
                "unrecovered_collapses": 0}
    events = collapses(a, collapse_drop)
    recovered = [e["recovery_epochs"] for e in events if e["recovery_epochs"] is not None]
    reached = np.nonzero(a >= target_acc)[0]
    tail = a[-jitter_window:]
    return {
        "epochs": int(a.size),
        "never_learned": bool(a.max() < 1.0 / classes + chance_margin),
        "collapse_count": len(events),
        "collapses": events,
        "mean_recovery_epochs": float(np.mean(recovered)) if recovered else None,
        "unrecovered_collapses": len(events) - len(recovered),
        "max_drawdown": float(drawdowns(a).max()),
        "jitter": float(tail.std()) if tail.size > 1 else 0.0,
        "epochs_to_target": int(reached[0]) + 1 if reached.size else None,
    }


def epoch_monitors(accs: Sequence[float], drop: float) -> dict:
    """Monitors for the latest epoch: running best, current drawdown, collapses so far."""
    a = np.asarray(accs, np.float64)
    return {"best_acc": float(a.max()), "drawdown": float(drawdowns(a)[-1]),
            "collapses_so_far": len(collapses(a, drop))}


def late_mean(accs: Sequence[float], window: int) -> Optional[float]:
    """The mean over the last ``window`` epochs (fewer if the run is shorter): the ``late``
    metric, less noisy than the final epoch alone."""
    return float(np.mean(accs[-window:])) if len(accs) else None


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None
