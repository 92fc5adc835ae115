"""Experiment trackers, read back with each tool's own reader: TensorBoard's event accumulator,
the MLflow client, and W&B's own protobuf records of an offline run."""

from __future__ import annotations

import json
from pathlib import Path
import struct
import sys

import pytest

from conftest import train_here
from hets_ep import record
from hets_ep.errors import ConfigError

pytestmark = pytest.mark.slow  # three trackers written and read back (optional integrations; CI runs them)


def _wandb_records(path):
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then LevelDB-log
    framed chunks (crc32, length, type) holding W&B's ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, buffer, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buffer)
            out.append(rec)
            buffer = b""
        elif kind == 0:
            break
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train_here(root / "run", "train.epochs=1", "logger=[tensorboard,mlflow,wandb]", f"logger.mlflow.tracking_uri={uri}")
    train_here(root / "run", "train.epochs=2", "resume=true", "logger=[tensorboard,mlflow,wandb]",
               f"logger.mlflow.tracking_uri={uri}")
    return root, uri


def test_tensorboard_holds_the_config_metrics_dt_and_stability(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = run
    events = EventAccumulator(str(root / "run" / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    rows = record.read_rows(root / "run")
    assert [e.step for e in events.Scalars("test_acc")] == [1, 2]
    assert [e.value for e in events.Scalars("test_acc")] == pytest.approx([r.test_acc for r in rows])
    assert "train_nudged_fp_residual" in events.Tags()["scalars"] and "lr/0" in events.Tags()["scalars"]
    assert events.Histograms("dt")[0].histogram_value.num == 64 + 10
    assert "summary/stability/collapse_count" in events.Tags()["scalars"]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_holds_one_run_continued_after_resume(run):
    from mlflow.tracking import MlflowClient

    root, uri = run
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("hets-ep").experiment_id])
    assert len(runs) == 1  # the resumed run continued its MLflow run
    mlrun = runs[0]
    assert mlrun.data.params["dt.dist"] == "scalar" and mlrun.data.params["model.hidden"] == "[64]"
    history = client.get_metric_history(mlrun.info.run_id, "test_acc")
    rows = record.read_rows(root / "run")
    assert [m.step for m in history] == [r.epoch for r in rows]
    assert [m.value for m in history] == pytest.approx([r.test_acc for r in rows])
    assert mlrun.data.metrics["summary.late_test_acc"] == pytest.approx(record.read_summary(root / "run").late_test_acc)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["status"] == "completed"
    assert "dt_histogram.json" in [a.path for a in client.list_artifacts(mlrun.info.run_id)]
    assert mlrun.info.artifact_uri.startswith(Path(uri[len("sqlite:///"):]).resolve().parent.as_uri())  # not ./mlruns
    assert json.loads((root / "run" / "trackers.json").read_text())["mlflow"] == mlrun.info.run_id


def test_wandb_offline_run_files_hold_config_history_and_summary(run):
    root, _ = run
    files = sorted((root / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    records = [r for f in files for r in _wandb_records(f)]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged = {h["_step"]: h["test_acc"] for h in history if "test_acc" in h}
    assert logged == pytest.approx({r.epoch: r.test_acc for r in record.read_rows(root / "run")})
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for i in r.run.config.update}
    assert config["dt.dist"] == "scalar" and config["ep.estimator"] == "symmetric"
    summary = {i.key or "/".join(i.nested_key): i.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert "summary/late_test_acc" in summary and json.loads(summary["status"]) == "completed"
    assert any(h.get("dt/_type") == "histogram" and sum(h["dt/values"]) == 64 + 10 for h in history)


def test_a_missing_tracker_library_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ConfigError, match=r"logger=tensorboard needs its client library: pip install "
                                          r"'hets-ep\[tensorboard\]'"):
        train_here(tmp_path, "train.epochs=1", "logger=tensorboard")
