"""Figures: matplotlib without a display, saved atomically; the per-run learning curve.

:func:`pyplot` is the one place that selects the non-interactive Agg backend, and
:func:`save` the one place that writes a figure (to a temporary file, then renamed), so a
killed process never leaves half a PNG. The report's figures (:mod:`hets_ep.report.figures`)
use both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from hets_ep import atomic

if TYPE_CHECKING:
    from hets_ep.record import EpochRow


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9})
    return plt


def save(fig, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and close it (labels are never clipped)."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)


def learning_curve(path: Path, rows: Sequence[EpochRow]) -> None:
    """Accuracy (train, test, validation if any) and the free phase's two residuals over epochs:
    the fixed-point residual ``‖T(s) − s‖/‖s‖`` (dt-free: conditions compare on it) and the step
    residual ``‖s_T − s_{T−1}‖/‖s_T‖`` (which shrinks with dt itself)."""
    plt = pyplot()
    epochs = [r.epoch for r in rows]
    fig, (ax_acc, ax_res) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_acc.plot(epochs, [r.train_acc for r in rows], label="train (free phase)")
    ax_acc.plot(epochs, [r.test_acc for r in rows], label="test")
    if any(r.val_acc is not None for r in rows):
        ax_acc.plot(epochs, [r.val_acc for r in rows], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    if all(r.test_fp_residual is not None for r in rows):
        ax_res.semilogy(epochs, [max(r.test_fp_residual, 1e-12) for r in rows],
                        label="fixed-point residual ‖T(s) − s‖/‖s‖")
    ax_res.semilogy(epochs, [max(r.test_step_residual, 1e-12) for r in rows], ls="--",
                    label="step residual ‖s_T − s_T−1‖/‖s_T‖")
    ax_res.set(xlabel="epoch", ylabel="residual at the end of the free phase", title="relaxation (test set)")
    ax_res.legend()
    fig.tight_layout()
    save(fig, path)
