"""Experiment trackers (the ``logger`` config group): TensorBoard, MLflow, Weights & Biases.

Off by default; ``logger=tensorboard``, ``logger=mlflow``, ``logger=wandb``, several at once
(``logger=[tensorboard,mlflow]``, or ``logger=many`` for TensorBoard and MLflow). Each tracker
gets, per seed: the config (flattened), every numeric field of each epoch's row (step = epoch),
the stability statistics and outcome at the end, and the histogram of the dt draw. Each library
is an optional extra (``pip install 'hets-ep[tensorboard]'`` …), imported only when chosen.

A run that is resumed continues its tracker run where one has ids (MLflow, W&B: kept in
``RUN_DIR/trackers.json``); TensorBoard appends to the run's own event folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from hets_ep import atomic, record
from hets_ep.errors import ConfigError

if TYPE_CHECKING:
    from hets_ep.config import Config, LoggerConfig

IDS = "trackers.json"
log = logging.getLogger(__name__)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(node):
        node = dataclasses.asdict(node)
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalars(mapping: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) mapping; lists become ``key/0``, ``key/1``, …"""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, bool):
            out[prefix + key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix + key] = float(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{prefix}{key}/{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
    return out


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={extra} needs its client library: pip install 'hets-ep[{extra}]'") from None


_MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}


def check_available(chosen: LoggerConfig) -> None:
    """Refuse, before anything is written, a tracker whose client library is not installed."""
    import importlib.util

    for kind, module in _MODULES.items():
        if getattr(chosen, kind) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={kind} needs its client library: pip install 'hets-ep[{kind}]'")


class Tracker:
    """One seed's run in one tracker (``run_id``: the tracker's own id, kept for resuming)."""

    kind = ""
    run_id: Optional[str] = None

    def start(self, config: dict[str, Any], dt: tuple[np.ndarray, ...]) -> None: ...

    def epoch(self, row: record.EpochRow) -> None: ...

    def finish(self, summary: record.Summary) -> None: ...


class TensorBoard(Tracker):
    kind = "tensorboard"

    def __init__(self, folder: Path):
        self.writer = _need("tensorboardX", "tensorboard").SummaryWriter(str(folder))

    def start(self, config, dt):
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)
        self.writer.add_histogram("dt", np.concatenate([d.ravel() for d in dt]), 0)
        self.writer.flush()

    def epoch(self, row):
        for key, value in _scalars(dataclasses.asdict(row)).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row.epoch)
        self.writer.flush()

    def finish(self, summary):
        step = summary.epochs_completed
        for key, value in _scalars({"stability": summary.stability, "late_test_acc": summary.late_test_acc,
                                    "best_acc": summary.best_acc, "final_test_acc": summary.final_test_acc}).items():
            self.writer.add_scalar(f"summary/{key}", value, step)
        self.writer.add_text("status", summary.status, step)
        self.writer.close()


class MLflow(Tracker):
    kind = "mlflow"

    def __init__(self, cfg, name: str, run_id: Optional[str]):
        mlflow = _need("mlflow", "mlflow")
        self.client = mlflow.tracking.MlflowClient(cfg.tracking_uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            cfg.experiment, artifact_location=_artifact_location(cfg.tracking_uri))
        self.run_id = run_id or self.client.create_run(experiment_id, run_name=name).info.run_id
        self.resumed = run_id is not None

    def start(self, config, dt):
        if not self.resumed:
            items = list(config.items())
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=[_mlflow().entities.Param(k, str(v)[:500])
                                                           for k, v in items[i:i + 100]])
            values = np.concatenate([d.ravel() for d in dt])
            counts, edges = np.histogram(values, bins=50)
            self.client.log_dict(self.run_id, {"edges": edges.tolist(), "counts": counts.tolist()},
                                 "dt_histogram.json")

    def epoch(self, row):
        entities = _mlflow().entities
        metrics = [entities.Metric(k.replace("/", "."), v, 0, row.epoch)
                   for k, v in _scalars(dataclasses.asdict(row)).items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary):
        entities = _mlflow().entities
        values = _scalars({"stability": summary.stability, "late_test_acc": summary.late_test_acc,
                           "best_acc": summary.best_acc, "final_test_acc": summary.final_test_acc})
        self.client.log_batch(self.run_id, metrics=[entities.Metric(f"summary.{k.replace('/', '.')}", v, 0,
                                                                    summary.epochs_completed)
                                                    for k, v in values.items()],
                              tags=[entities.RunTag("status", summary.status)])
        if summary.status in record.FINISHED:
            self.client.set_terminated(self.run_id, "FINISHED" if summary.status == record.Status.COMPLETED
                                       else "FAILED")


def _artifact_location(tracking_uri: str) -> Optional[str]:
    """Artifacts beside a local SQLite store (MLflow's default, ``./mlruns``, would land in
    whatever folder the command runs from); a server chooses its own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlflow-artifacts").as_uri()
    return None


def _mlflow():
    import mlflow

    return mlflow


class Wandb(Tracker):
    kind = "wandb"

    def __init__(self, cfg, folder: Path, name: str, run_id: Optional[str], config: dict[str, Any]):
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb = _need("wandb", "wandb")
        self.wandb = wandb
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(folder), name=name,
                              id=run_id, resume="allow" if run_id else None, config=config,
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        self.run_id = self.run.id

    def start(self, config, dt):
        self.run.log({"dt": self.wandb.Histogram(np.concatenate([d.ravel() for d in dt]))}, step=0)

    def epoch(self, row):
        self.run.log(_scalars(dataclasses.asdict(row)), step=row.epoch)

    def finish(self, summary):
        for key, value in _scalars({"stability": summary.stability, "late_test_acc": summary.late_test_acc,
                                    "best_acc": summary.best_acc, "final_test_acc": summary.final_test_acc}).items():
            self.run.summary[f"summary/{key}"] = value
        self.run.summary["status"] = summary.status
        self.run.finish(exit_code=0 if summary.status in record.FINISHED else 1)


class Trackers:
    """Every member's trackers; one that fails is dropped with a warning (a tracking server going
    away must not stop training)."""

    def __init__(self, per_member: list[list[Tracker]]):
        self.per_member = per_member

    def send(self, k: int, call: str, *args) -> None:
        """Call ``call(*args)`` on member ``k``'s trackers."""
        for tracker in list(self.per_member[k]) if k < len(self.per_member) else []:
            try:
                getattr(tracker, call)(*args)
            except Exception as err:  # the trackers' libraries raise anything
                log.warning("logger %s failed (%s: %s); the run goes on without it", tracker.kind,
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                self.per_member[k].remove(tracker)


def build(cfg: Config, run_dir: Path, seed: int, dt: tuple[np.ndarray, ...]) -> list[Tracker]:
    """The trackers ``cfg.logger`` asks for, started for the seed that writes into ``run_dir``."""
    chosen: LoggerConfig = cfg.logger
    if not (chosen.tensorboard or chosen.mlflow or chosen.wandb):
        return []
    ids_path = run_dir / IDS
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    config = _flat(dataclasses.replace(cfg, seed=seed))
    name = f"{run_dir.parent.name}/{run_dir.name}"
    trackers: list[Tracker] = []
    if chosen.tensorboard:
        trackers.append(TensorBoard(Path(chosen.tensorboard.dir or run_dir / "tensorboard")))
    if chosen.mlflow:
        trackers.append(MLflow(chosen.mlflow, name, ids.get("mlflow")))
    if chosen.wandb:
        trackers.append(Wandb(chosen.wandb, Path(chosen.wandb.dir or run_dir), name, ids.get("wandb"), config))
    current = {t.kind: t.run_id for t in trackers if t.run_id}
    if current != ids:
        atomic.write_json(ids_path, current)
    for tracker in trackers:
        tracker.start(config, dt)
    return trackers
