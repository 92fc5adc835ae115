"""What a run writes, in one place: file names, the typed epoch row and the typed summary.

A run directory holds::

    .hydra/config.yaml   the resolved config (Hydra's own)
    metrics.jsonl        one EpochRow per line
    summary.json         one Summary (with the record version)
    dt.npz               the sampled time steps, one array per state layer
    checkpoints/         orbax checkpoints for resume
    plots/               the learning curve

The trainer writes these through :func:`write_rows` and :func:`write_summary`; the report and
the output-directory check read them back through :func:`read_run`. ``RECORD_VERSION`` counts
changes of the layout; a record of an older version is read through :func:`_upgrade`, and a
newer one is refused with a message naming the version it needs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from hets_ep import atomic
from hets_ep.errors import HetsEpError

RECORD_VERSION = 2

CONFIG = Path(".hydra") / "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DT = "dt.npz"
CHECKPOINTS = "checkpoints"
LEARNING_CURVE = Path("plots") / "learning_curve.png"
LOCK = ".lock"
GRADCHECK = "gradcheck.json"

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


@dataclasses.dataclass
class EpochRow:
    """One line of ``metrics.jsonl``. Accuracies are fractions; losses, residuals and the
    oscillation count are means over samples of the free phase (the ``nudged_*`` fields: of
    the nudged phase). Fixed-point residuals ``‖T(s) − s‖/‖s‖`` do not depend on dt (see
    :mod:`hets_ep.dynamics`); a sample is unconverged when its residual exceeds
    ``stability.residual_tol``. ``best_acc``, ``drawdown`` and ``collapses_so_far`` follow the
    monitored split (``Summary.monitor``)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    train_fp_residual: Optional[float]
    train_unconverged: Optional[float]
    train_step_residual: float   # ‖s_T − s_{T−1}‖ / ‖s_T‖ (shrinks with dt itself)
    test_fp_residual: Optional[float]
    test_unconverged: float
    test_step_residual: float
    test_oscillation: float      # sign flips of Δs per neuron over the last ep.window steps
    max_state: float
    lr: list[float]              # each layer's rate at the end of the epoch
    epoch_time_s: float
    samples_per_s: float         # training samples per second of this member
    best_acc: float
    drawdown: float
    collapses_so_far: int
    val_loss: Optional[float] = None   # with dataset.val_size > 0
    val_acc: Optional[float] = None
    train_nudged_fp_residual: Optional[float] = None   # EP estimators only
    train_nudged_unconverged: Optional[float] = None
    gradcheck_min_cosine: Optional[float] = None   # EP vs BPTT on a probe batch (stability.gradcheck_every)
    gradcheck_mean_cosine: Optional[float] = None


@dataclasses.dataclass
class Summary:
    """``summary.json``: the run's outcome, rewritten after every epoch.

    ``best_acc``/``best_epoch`` are read on the monitored split (``val`` with a validation
    split, else ``test``), ``test_acc_at_best`` is the test accuracy at that epoch, and
    ``late_test_acc`` the mean test accuracy over the last ``stability.late_window`` epochs
    (the report's primary metric). A run that failed before training holds ``error``.
    """

    status: str
    seed: int
    epochs_completed: int
    epochs_planned: int
    monitor: str
    best_acc: Optional[float]
    best_epoch: Optional[int]
    test_acc_at_best: Optional[float]
    best_test_acc: Optional[float]
    final_test_acc: Optional[float]
    late_test_acc: Optional[float]
    final_train_acc: Optional[float]
    stability: dict[str, Any]    # stability.run_statistics + divergence epoch and residual summaries
    dt: dict[str, Any]           # timeconstants.dt_stats: nominal and realised statistics of the draw
    timings: dict[str, Any]
    versions: dict[str, str]
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)  # host, Slurm job and restarts
    error: Optional[str] = None
    version: int = RECORD_VERSION


@dataclasses.dataclass
class RunRecord:
    """A run directory as read back: its flattened config, summary and epoch rows."""

    path: Path
    config: dict[str, Any]
    summary: Summary
    rows: list[EpochRow]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.summary.seed))

    @property
    def status(self) -> str:
        return self.summary.status

    def curve(self, key: str = "test_acc") -> list[float]:
        return [getattr(r, key) for r in self.rows]


def write_rows(run_dir: Path, rows: list[EpochRow]) -> None:
    atomic.write_jsonl(Path(run_dir) / METRICS, [dataclasses.asdict(r) for r in rows])


def write_summary(run_dir: Path, summary: Summary) -> None:
    atomic.write_json(Path(run_dir) / SUMMARY, dataclasses.asdict(summary))


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run record (a summary and its config)."""
    return (Path(run_dir) / SUMMARY).is_file() and (Path(run_dir) / CONFIG).is_file()


def holds_run(run_dir: Path) -> bool:
    """Whether starting a fresh run in ``run_dir`` would overwrite one (a run that failed
    before training holds nothing to lose)."""
    if (Path(run_dir) / CHECKPOINTS).exists():
        return True
    if not (Path(run_dir) / SUMMARY).exists():
        return False
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text()).get("status") != "failed"
    except (OSError, json.JSONDecodeError, AttributeError):
        return True


def failed(seed: int, error: str) -> Summary:
    """The summary of a run that stopped before training, with its error."""
    from hets_ep.runtime import job, versions

    return Summary(status="failed", seed=seed, epochs_completed=0, epochs_planned=0, monitor="test", best_acc=None,
                   best_epoch=None, test_acc_at_best=None, best_test_acc=None, final_test_acc=None,
                   late_test_acc=None, final_train_acc=None, stability={}, dt={}, timings={}, versions=versions(),
                   runtime=job(), error=error)


def read_summary(run_dir: Path) -> Summary:
    return _read_summary(run_dir)[0]


def _read_summary(run_dir: Path) -> tuple[Summary, int]:
    """The summary (upgraded to this version) and the version it was written with."""
    path = Path(run_dir) / SUMMARY
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None
    version = raw.get("version", 1)
    _check_version(version, path)
    return _build(Summary, _upgrade_summary(raw) if version < RECORD_VERSION else raw, path), version


def read_rows(run_dir: Path, version: int = RECORD_VERSION) -> list[EpochRow]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None
    return [_build(EpochRow, _upgrade_row(r) if version < RECORD_VERSION else r, path) for r in raw]


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, flattened to dotted keys (lists as tuples)."""
    path = Path(run_dir) / CONFIG
    try:
        return _flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    except (OSError, ValueError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None


def read_run(run_dir: Path) -> RunRecord:
    summary, version = _read_summary(run_dir)
    return RunRecord(Path(run_dir), read_config(run_dir), summary, read_rows(run_dir, version))


def _check_version(version: int, path: Path) -> None:
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise HetsEpError(f"{path}: written with run-record version {version}; this hets-ep reads versions up to "
                          f"{RECORD_VERSION}: upgrade hets-ep to read it")


def _build(cls, raw: dict, path: Path):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise HetsEpError(f"{path}: unexpected fields {', '.join(unknown)}; written by another hets-ep version?")
    try:
        return cls(**raw)
    except TypeError as err:
        raise HetsEpError(f"{path}: incomplete record ({err})") from None


# Version 1 (hets-ep 0.1.0) named the step residual `*_residual` and the running best `best_test_acc`,
# had no fixed-point residuals, and monitored the test set.
_V1_ROW_NAMES = {"train_residual": "train_step_residual", "test_residual": "test_step_residual",
                 "best_test_acc": "best_acc"}


def _upgrade_row(raw: dict) -> dict:
    return {"train_fp_residual": None, "train_unconverged": None, "test_fp_residual": None,
            **{_V1_ROW_NAMES.get(k, k): v for k, v in raw.items()}}


def _upgrade_summary(raw: dict) -> dict:
    return {**raw, "monitor": "test", "best_acc": raw.get("best_test_acc"),
            "test_acc_at_best": raw.get("best_test_acc"), "late_test_acc": None, "version": RECORD_VERSION}


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
