"""Stability statistics of a run, from its epoch rows: the one definition the summary and the
report both use.

With accuracies ``a_1 … a_E`` of the monitored split (validation if the run has one, else
test) and running best ``b_t = max_{s≤t} a_s``:

* **drawdown** ``d_t = b_t − a_t``; **max drawdown** ``max_t d_t``.
* **collapse event**: an epoch where ``d_t`` rises above ``collapse_drop`` after being at or
  below it; consecutive epochs below count as one event. **Recovery epochs**: epochs from a
  collapse until ``a_t ≥ b − collapse_drop`` again (unrecovered ones are counted apart).
* **never learned**: ``max_t a_t < 1/classes + chance_margin``; such a run is a failure of its
  own kind, not counted as a collapse.
* **jitter**: standard deviation of ``a_t`` over the last ``jitter_window`` epochs.
* **epochs to target**: first epoch with ``a_t ≥ target_acc``.
* **late** (of the test accuracy): its mean over the last ``late_window`` epochs, the report's
  primary metric; **auc**: its mean over all epochs; **late validation accuracy** likewise, for
  choosing a condition without looking at the test set.
* **loss spikes**: training batches whose log loss rose above the median of the previous
  ``spike_window`` batches' log losses by more than ``spike_factor`` robust standard deviations
  (1.4826 × the median absolute deviation) and by at least a factor ``spike_floor``, and whose
  loss is at least ``spike_min_loss`` (counted on device, per epoch; summed over the run). On
  the log scale against the losses' own spread, a run whose loss falls smoothly has none however
  small its loss gets, and a batch whose loss is tiny is none whatever its ratio (record version
  5; version 4 had no absolute floor and counted the batch-to-batch fluctuations of a near-zero
  loss; older records counted batches above 3 × the median).
* **relaxation steps**: the steps every phase of every training batch took, summed over the
  run (the compute a condition spends; with ``ep.tol`` it varies).
* **spectral radius**: of the relaxation step's Jacobian at the free fixed point of a fixed
  test batch (:func:`hets_ep.dynamics.spectral_radius`), averaged over the late window.
* **divergence**: the epoch where NaN/inf or an exploding state (``|s| > explode_threshold``)
  first appeared (recorded by the runner; the run stops there with ``status: diverged``).
* **stopped at chance** (``train.stop_on_collapse``): the monitored accuracy stayed below
  ``1/classes + chance_margin`` for ``train.collapse_patience`` epochs in a row; the run ends
  there with ``status: stopped`` and its reason (:func:`at_chance`), and counts as not trained.
* **relaxation health** (from the free phase on the test set): residuals, the share of
  samples whose fixed-point residual exceeds ``residual_tol``, oscillation. Under state noise
  the residual has a floor set by the noise (:func:`noise_floor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from hets_ep.config import StabilityConfig
    from hets_ep.record import EpochRow


def noise_floor(noise: float) -> str:
    """Why phases under state noise end above the residual tolerance, for a cap note."""
    return (f"under state noise (dynamics.noise={noise:g}) the residual does not fall below a floor set by the noise, "
            "however many steps a phase takes: more steps or a tolerance will not lower it, and it measures the noise "
            "as much as the relaxation")


def cap_advice(*, capped: float, free_unconverged: float, nudged_unconverged: float, t1: int, t2: int,
               tol: Optional[float], noise: float, residual_tol: float, free_steps: Optional[float] = None,
               nudged_steps: Optional[float] = None) -> Optional[str]:
    """The one rule for relaxation that stopped short, for a report's condition and an evaluation
    alike: with ``ep.tol``, a phase stopped at its cap above it (``capped``: the share of batches)
    → raise the caps; with fixed steps, most samples (over half) end a phase above the residual
    tolerance → relax to a tolerance; under state noise either → the noise floor, which no budget
    removes. None when the relaxation converged."""
    unsettled = max(free_unconverged or 0.0, nudged_unconverged or 0.0) > 0.5
    hit = tol is not None and (capped or 0.0) > 0
    if noise > 0 and (hit or unsettled):
        return f"phases end above the residual tolerance; {noise_floor(noise)}"
    if hit:
        steps = "" if free_steps is None else (f" (phases took {free_steps:.0f} free and {nudged_steps:.0f} nudged "
                                               "steps on average)")
        return (f"a phase stopped at its cap (ep.T1={t1}, ep.T2={t2}) above ep.tol={tol:g} in {_percent(capped)} of "
                f"batches{steps}: raise ep.T1/ep.T2 (say ep.T1={4 * t1} ep.T2={4 * t2}) for the steps it needs to be "
                "counted, not bounded")
    if tol is None and unsettled:
        return (f"most samples end a phase above the residual tolerance {residual_tol:g} after its fixed {t1}/{t2} steps "
                f"(free {_share(free_unconverged)}, nudged {_share(nudged_unconverged)}): relax to a tolerance "
                f"(ep.tol={residual_tol:g} ep.T1={max(10 * t1, 1000)} ep.T2={max(10 * t2, 1000)}) to compare "
                "converged dynamics")
    return None


def _percent(share: float) -> str:
    """A share as a percentage that a rare event does not round to 0.0% (0.012%, 3.4%)."""
    return f"{100 * share:.2g}%" if share < 0.01 else f"{100 * share:.1f}%"


def _share(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


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


def curve_statistics(accs: Sequence[float], classes: int, cfg: StabilityConfig) -> dict:
    """Statistics of an accuracy curve (see the module docstring)."""
    a = np.asarray(accs, np.float64)
    if a.size == 0:
        return {"epochs": 0, "never_learned": True, "collapse_count": 0, "max_drawdown": None,
                "jitter": None, "epochs_to_target": None, "collapses": [], "mean_recovery_epochs": None,
                "unrecovered_collapses": 0}
    events = collapses(a, cfg.collapse_drop)
    recovered = [e["recovery_epochs"] for e in events if e["recovery_epochs"] is not None]
    reached = np.nonzero(a >= cfg.target_acc)[0]
    tail = a[-cfg.jitter_window:]
    return {
        "epochs": int(a.size),
        "never_learned": bool(a.max() < 1.0 / classes + cfg.chance_margin),
        "collapse_count": len(events),
        "collapses": events,
        "mean_recovery_epochs": float(np.mean(recovered)) if recovered else None,
        "unrecovered_collapses": len(events) - len(recovered),
        "max_drawdown": float(drawdowns(a).max()),
        "jitter": float(tail.std()) if tail.size > 1 else 0.0,
        "epochs_to_target": int(reached[0]) + 1 if reached.size else None,
    }


def run_statistics(rows: Sequence[EpochRow], monitor: str, classes: int, cfg: StabilityConfig,
                   diverged_epoch: Optional[int] = None) -> dict:
    """Every per-run statistic of ``summary.json``'s ``stability``: the monitored curve's
    statistics, loss spikes, relaxation steps, the late spectral radius and the relaxation
    health (see the module docstring). Fields an older record did not measure are None."""
    stats = curve_statistics([getattr(r, f"{monitor}_acc") for r in rows], classes, cfg)
    late = rows[-cfg.late_window:]
    last = rows[-1] if rows else None
    stats.update(
        diverged_epoch=diverged_epoch,
        auc=mean_or_none([r.test_acc for r in rows]),
        late_val_acc=late_mean([r.val_acc for r in rows], cfg.late_window),
        loss_spikes=total_or_none([r.train_loss_spikes for r in rows]),
        relaxation_steps=total_or_none([r.train_relaxation_steps for r in rows]),
        late_spectral_radius=mean_or_none([r.spectral_radius for r in late]),
        mean_test_fp_residual=mean_or_none([r.test_fp_residual for r in rows]),
        final_test_unconverged=last.test_unconverged if last else None,
        final_train_nudged_unconverged=last.train_nudged_unconverged if last else None,
        mean_test_step_residual=mean_or_none([r.test_step_residual for r in rows]),
        mean_oscillation=mean_or_none([r.test_oscillation for r in rows]),
    )
    return stats


def epoch_monitors(accs: Sequence[float], drop: float) -> dict:
    """Monitors for the latest epoch: running best, current drawdown, collapses so far."""
    a = np.asarray(accs, np.float64)
    return {"best_acc": float(a.max()), "drawdown": float(drawdowns(a)[-1]),
            "collapses_so_far": len(collapses(a, drop))}


def at_chance(accs: Sequence[float], classes: int, margin: float, patience: int) -> Optional[str]:
    """Why a run should stop at chance (``train.stop_on_collapse``): its last ``patience``
    accuracies all below ``1/classes + margin``; None if it should go on."""
    level = 1.0 / classes + margin
    recent = list(accs)[-patience:]
    if len(recent) < patience or max(recent) >= level:
        return None
    return (f"accuracy below chance + {margin:g} ({100 * level:.1f}%) for {patience} epochs in a row "
            f"(train.stop_on_collapse)")


def late_mean(values: Sequence[Optional[float]], window: int) -> Optional[float]:
    """The mean over the last ``window`` epochs (fewer if the run is shorter) of the values they
    have (None: not measured): the ``late`` metric, less noisy than the final epoch alone."""
    kept = [v for v in values[-window:] if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def total_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    """The sum, or None if any value is missing (a total of part of a run is no total)."""
    return float(np.sum(values)) if values and all(v is not None for v in values) else None
