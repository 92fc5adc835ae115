"""What a run writes, in one place: file names, statuses, the typed epoch row and summary.

A run directory holds::

    .hydra/config.yaml   the resolved config (Hydra's own)
    metrics.jsonl        one EpochRow per line
    summary.json         one Summary (with the record version)
    dt.npz               the sampled time steps, one array per state layer
    checkpoints/         orbax checkpoints for resume
    plots/               the learning curve

The trainer writes these through :func:`write_rows` and :func:`write_summary`, the summary
built by :func:`summarize` (a pure function of the rows); the report and the output-directory
check read them back through :func:`read_run`. ``RECORD_VERSION`` counts changes of the
layout; a record of an older version is read through the ``_upgrade_*`` functions (its config
gets the keys added since, at the values that reproduce what it ran, and its statistics are
computed by today's definitions from its rows), and a newer one is refused with a message
naming the version it needs.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import DictConfig, OmegaConf

from hets_ep import atomic, stability
from hets_ep.errors import HetsEpError

if TYPE_CHECKING:
    from hets_ep.config import Config

RECORD_VERSION = 5

CONFIG = Path(".hydra") / "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DT = "dt.npz"
CHECKPOINTS = "checkpoints"
LEARNING_CURVE = Path("plots") / "learning_curve.png"
LOCK = ".lock"
GRADCHECK = "gradcheck.json"
STOP = ".stop"   # in a sweep directory: the sweep was signalled (hets_ep.signals.StopSignals)


class Status(str, enum.Enum):
    """A run's state in ``summary.json`` (written as its value)."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    STOPPED = "stopped"          # ended early at chance (train.stop_on_collapse): finished, not trained

    def __str__(self) -> str:
        return self.value


# Runs whose metrics count: a diverged or stopped run scores what it scored before it ended.
FINISHED = (Status.COMPLETED, Status.DIVERGED, Status.STOPPED)
# Finished runs that did not train, whatever their accuracy: they ended before their last epoch.
FAILED_TO_TRAIN = (Status.DIVERGED, Status.STOPPED)


@dataclasses.dataclass
class EpochRow:
    """One line of ``metrics.jsonl``; each name is ``SPLIT_METRIC`` with the metric named where
    it is computed (:class:`hets_ep.steps.Sums`). Accuracies are fractions; losses, residuals and
    the oscillation count are means over samples of the free phase (``*_nudged_*``: of the nudged
    phases); ``*_steps`` are means over batches of the steps a phase took (``*_max``: the most),
    ``train_capped`` the share of batches where a phase stopped at its cap unconverged (with
    ``ep.tol``), ``train_relaxation_steps`` the steps of every phase of the epoch's batches
    together. Fixed-point residuals ``‖T(s) − s‖/‖s‖`` do not depend on dt (see
    :mod:`hets_ep.dynamics`); a sample is unconverged when its residual exceeds
    ``stability.residual_tol``. ``best_acc``, ``drawdown`` and ``collapses_so_far`` follow the
    monitored split (``Summary.monitor``). Fields a run did not measure are None."""

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
    train_free_steps: Optional[float] = None
    train_free_steps_max: Optional[float] = None
    train_nudged_steps: Optional[float] = None
    train_nudged_steps_max: Optional[float] = None
    train_capped: Optional[float] = None               # with ep.tol
    train_relaxation_steps: Optional[float] = None
    train_loss_spikes: Optional[int] = None
    test_free_steps: Optional[float] = None
    spectral_radius: Optional[float] = None            # mean over the probe batch (stability.spectral_*)
    spectral_radius_max: Optional[float] = None
    gradcheck_min_cosine: Optional[float] = None   # EP vs BPTT on a probe batch (stability.gradcheck_every)
    gradcheck_mean_cosine: Optional[float] = None


@dataclasses.dataclass
class Summary:
    """``summary.json``: the run's outcome, rewritten after every epoch.

    ``best_acc``/``best_epoch`` are read on the monitored split (``val`` with a validation
    split, else ``test``), ``test_acc_at_best`` is the test accuracy at that epoch, and
    ``late_test_acc`` the mean test accuracy over the last ``stability.late_window`` epochs
    (the report's primary metric). A run that failed holds ``error``; one stopped at chance
    (``status: stopped``) its ``stop_reason``, after ``epochs_completed`` epochs.
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
    stability: dict[str, Any]    # stability.run_statistics
    dt: dict[str, Any]           # timeconstants.dt_stats: nominal and realised statistics of the draw
    timings: dict[str, Any]
    versions: dict[str, str]
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)  # host, Slurm job and restarts
    classes: Optional[int] = None  # of the dataset (chance level is 1/classes)
    error: Optional[str] = None
    stop_reason: Optional[str] = None  # status stopped: why it ended early (train.stop_on_collapse), after epochs_completed
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


def summarize(rows: list[EpochRow], status: str, seed: int, cfg: Config, classes: int, *, dt: dict,
              timings: dict, versions: dict, runtime: dict, diverged_epoch: Optional[int] = None,
              stop_reason: Optional[str] = None) -> Summary:
    """The summary of a run from its rows: the one place its statistics are computed."""
    monitor = cfg.monitor
    watched = [getattr(r, f"{monitor}_acc") for r in rows]
    tests = [r.test_acc for r in rows]
    best = max(range(len(rows)), key=watched.__getitem__) if rows else None
    return Summary(
        status=str(status), seed=seed, epochs_completed=len(rows), epochs_planned=cfg.train.epochs, monitor=monitor,
        best_acc=watched[best] if rows else None,
        best_epoch=best + 1 if rows else None,
        test_acc_at_best=tests[best] if rows else None,
        best_test_acc=max(tests) if rows else None,
        final_test_acc=tests[-1] if rows else None,
        late_test_acc=stability.late_mean(tests, cfg.stability.late_window),
        final_train_acc=rows[-1].train_acc if rows else None,
        stability=stability.run_statistics(rows, monitor, classes, cfg.stability, diverged_epoch),
        dt=dt, timings=timings, versions=versions, runtime=runtime, classes=classes, stop_reason=stop_reason,
    )


def write_rows(run_dir: Path, rows: list[EpochRow]) -> None:
    atomic.write_jsonl(Path(run_dir) / METRICS, [dataclasses.asdict(r) for r in rows])


def write_summary(run_dir: Path, summary: Summary) -> None:
    atomic.write_json(Path(run_dir) / SUMMARY, dataclasses.asdict(summary))


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run record (a summary and its config)."""
    return (Path(run_dir) / SUMMARY).is_file() and (Path(run_dir) / CONFIG).is_file()


def holds_run(run_dir: Path) -> bool:
    """Whether starting a fresh run in ``run_dir`` would overwrite one: a checkpoint, or a
    summary of a run that got further than failing before training."""
    checkpoints = Path(run_dir) / CHECKPOINTS
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return True
    if not (Path(run_dir) / SUMMARY).exists():
        return False
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text()).get("status") != Status.FAILED
    except (OSError, json.JSONDecodeError, AttributeError):
        return True


def failed(seed: int, error: str, *, versions: dict, runtime: dict) -> Summary:
    """The summary of a run that stopped with an error before training."""
    return Summary(status=str(Status.FAILED), seed=seed, epochs_completed=0, epochs_planned=0, monitor="test",
                   best_acc=None, best_epoch=None, test_acc_at_best=None, best_test_acc=None, final_test_acc=None,
                   late_test_acc=None, final_train_acc=None, stability={}, dt={}, timings={}, versions=versions,
                   runtime=runtime, error=error)


def read_summary(run_dir: Path) -> Summary:
    return _read_summary(run_dir)[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None


def _read_summary(run_dir: Path, rows: Optional[list[EpochRow]] = None,
                  config: Optional[dict] = None) -> tuple[Summary, int]:
    """The summary (upgraded to this version; with the rows and config, its statistics
    recomputed by today's definitions) and the version it was written with."""
    path = Path(run_dir) / SUMMARY
    raw = _read_json(path)
    version = raw.get("version", 1)
    _check_version(version, path)
    if version < RECORD_VERSION:
        raw = _upgrade_summary(raw, version, rows, config)
    return _build(Summary, raw, path), version


def read_rows(run_dir: Path, version: int = RECORD_VERSION) -> list[EpochRow]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None
    return [_build(EpochRow, _upgrade_row(r, version) if version < RECORD_VERSION else r, path) for r in raw]


def load_config(run_dir: Path) -> DictConfig:
    """The run's saved config (``.hydra/config.yaml``), its renamed keys under today's names (what
    a continued run and ``evaluate`` start from)."""
    path = Path(run_dir) / CONFIG
    try:
        cfg = OmegaConf.load(path)
    except (OSError, ValueError) as err:
        raise HetsEpError(f"{path}: unreadable ({err})") from None
    for old, new in _RENAMED_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if isinstance(node, DictConfig) and leaf in node:
            value = node.pop(leaf)
            OmegaConf.update(cfg, new, value, force_add=True)
    if "match_mean" in cfg.get("dt", {}):  # version 2 held the mean (or nothing) with a flag
        cfg.dt.match = "mean" if cfg.dt.pop("match_mean") else "none"
    return cfg


def saved_config(run_dir: Path) -> Config:
    """The run's saved config, validated (today's defaults for keys added since)."""
    from hets_ep.config import validate

    return validate(load_config(run_dir))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, flattened to dotted keys (lists as tuples), with the keys
    added since it was written at the values that reproduce what it ran."""
    return _upgrade_config(flatten(OmegaConf.to_container(load_config(run_dir), resolve=False)))


def read_run(run_dir: Path) -> RunRecord:
    version = _read_json(Path(run_dir) / SUMMARY).get("version", 1)
    _check_version(version, Path(run_dir) / SUMMARY)
    config = read_config(run_dir)
    rows = read_rows(run_dir, version)
    summary, _ = _read_summary(run_dir, rows, config)
    return RunRecord(Path(run_dir), config, summary, rows)


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
# had no fixed-point residuals, and monitored the test set. Version 2 had no step counts, loss
# spikes or spectral radius (the fields default to None).
_V1_ROW_NAMES = {"train_residual": "train_step_residual", "test_residual": "test_step_residual",
                 "best_test_acc": "best_acc"}


def _upgrade_row(raw: dict, version: int) -> dict:
    if version >= 2:
        return raw
    return {"train_fp_residual": None, "train_unconverged": None, "test_fp_residual": None,
            **{_V1_ROW_NAMES.get(k, k): v for k, v in raw.items()}}


def _upgrade_summary(raw: dict, version: int, rows: Optional[list[EpochRow]], config: Optional[dict]) -> dict:
    out = dict(raw)
    if version < 2:
        out.update(monitor="test", best_acc=raw.get("best_test_acc"), test_acc_at_best=raw.get("best_test_acc"),
                   late_test_acc=None)
    if rows is not None and config is not None:
        from hets_ep.config import StabilityConfig

        thresholds = StabilityConfig(**{f.name: config[f"stability.{f.name}"]
                                        for f in dataclasses.fields(StabilityConfig)
                                        if f"stability.{f.name}" in config})
        old = raw.get("stability", {})
        out["classes"] = out.get("classes") or _known_classes(config.get("dataset.name"))
        # Statistics the record holds keep their values (same definitions); the ones added since
        # are computed (`never_learned` needs the class count: records without one keep theirs).
        added = stability.run_statistics(rows, out["monitor"], out["classes"] or 10, thresholds,
                                         old.get("diverged_epoch"))
        out["stability"] = {**added, **old}
        out["late_test_acc"] = stability.late_mean([r.test_acc for r in rows], thresholds.late_window)
    out["version"] = RECORD_VERSION
    return out


def _known_classes(dataset: Optional[str]) -> Optional[int]:
    from hets_ep.data.registry import SOURCES

    return SOURCES[dataset].classes if dataset in SOURCES else None


# Keys renamed since version 1: version 4 named the update order `dynamics.update_order`.
_RENAMED_KEYS = {"dynamics.schedule": "dynamics.update_order"}
# Keys added to the config since version 1, at the values that reproduce what older runs ran
# (version 5 added the loss spikes' absolute floor: none before).
_ADDED_KEYS = {"dt.match": "mean", "dt.layers": None, "dynamics.integrator": "euler", "dynamics.update_order": "sync",
               "dynamics.noise": 0.0, "dynamics.noise_mode": "step", "dynamics.noise_eval": False, "ep.N": 4,
               "ep.tol": None, "ep.tol_every": 5, "stability.spike_min_loss": 0.0}


def _upgrade_config(flat: dict[str, Any]) -> dict[str, Any]:
    """Keys added since the record was written: at the values that reproduce what it ran, the
    others (thresholds of the analysis) at the schema's defaults."""
    from hets_ep.config import Config

    for key, value in {**flatten(OmegaConf.to_container(OmegaConf.structured(Config))), **_ADDED_KEYS}.items():
        if key not in flat and not any(k.startswith(key + ".") for k in flat):
            flat[key] = value
    return flat


def flatten(node, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists as tuples)."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
