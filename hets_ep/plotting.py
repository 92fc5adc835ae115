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

    return plt


def save(fig, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and close it (labels are never clipped)."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)


def learning_curve(path: Path, rows: Sequence[EpochRow]) -> None:
    """Accuracy (train, test, validation if any) and the free-phase residual over epochs."""
    plt = pyplot()
    epochs = [r.epoch for r in rows]
    fig, (ax_acc, ax_res) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_acc.plot(epochs, [r.train_acc for r in rows], label="train (free phase)")
    ax_acc.plot(epochs, [r.test_acc for r in rows], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    ax_res.semilogy(epochs, [max(r.test_step_residual, 1e-12) for r in rows])
    ax_res.set(xlabel="epoch", ylabel="‖s_T − s_T−1‖ / ‖s_T‖", title="free-phase residual (test)")
    fig.tight_layout()
    save(fig, path)
