"""The run record: typed rows and summary, written and read back; older and newer versions."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from conftest import ROOT
from hets_ep import record
from hets_ep.errors import HetsEpError
from hets_ep.provenance import versions

V1_RUN = ROOT / "tests" / "data" / "v1_run"  # written by hets-ep 0.1.0 (record version 1)


def _row(epoch: int) -> record.EpochRow:
    return record.EpochRow(epoch=epoch, train_loss=0.5, train_acc=0.8, test_loss=0.4, test_acc=0.85,
                           train_fp_residual=2e-3, train_unconverged=0.2, train_step_residual=1e-3,
                           test_fp_residual=2e-3, test_unconverged=0.1, test_step_residual=1e-3,
                           test_oscillation=0.0, max_state=1.0, lr=[0.1, 0.05], epoch_time_s=1.0,
                           samples_per_s=100.0, best_acc=0.85, drawdown=0.0, collapses_so_far=0,
                           train_nudged_fp_residual=3e-3, train_nudged_unconverged=0.3)


def test_rows_and_summary_round_trip(tmp_path):
    rows = [_row(1), _row(2)]
    summary = record.Summary(status="completed", seed=3, epochs_completed=2, epochs_planned=2, monitor="test",
                             best_acc=0.85, best_epoch=1, test_acc_at_best=0.85, best_test_acc=0.85,
                             final_test_acc=0.85, late_test_acc=0.85, final_train_acc=0.8,
                             stability={"collapse_count": 0}, dt={"mean": 0.5}, timings={}, versions={"hets_ep": "x"})
    record.write_rows(tmp_path, rows)
    record.write_summary(tmp_path, summary)
    assert record.read_rows(tmp_path) == rows
    assert record.read_summary(tmp_path) == summary
    assert json.loads((tmp_path / record.SUMMARY).read_text())["version"] == record.RECORD_VERSION


def test_a_version_1_run_directory_still_reads():
    run = record.read_run(V1_RUN)
    assert run.summary.version == record.RECORD_VERSION and run.summary.status == "completed"
    assert run.seed == 3 and run.config["dt.dist"] == "lognormal" and run.config["model.hidden"] == (64,)
    assert [r.epoch for r in run.rows] == [1, 2]
    assert run.rows[0].test_step_residual == pytest.approx(0.004262809371948242)  # was `test_residual`
    assert run.rows[0].test_fp_residual is None  # not measured then
    assert run.rows[1].best_acc == run.summary.best_test_acc == run.summary.best_acc
    # today's definitions fill what version 1 did not compute, from its rows
    assert run.summary.monitor == "test" and run.summary.late_test_acc == pytest.approx((0.6806 + 0.7469) / 2)
    assert run.summary.stability["relaxation_steps"] is None and run.summary.stability["max_drawdown"] == 0.0
    assert run.config["dt.match"] == "mean" and run.config["dynamics.integrator"] == "euler"


def test_a_newer_record_is_refused_with_the_version_it_needs(tmp_path):
    shutil.copytree(V1_RUN, tmp_path / "run")
    raw = json.loads((tmp_path / "run" / record.SUMMARY).read_text())
    (tmp_path / "run" / record.SUMMARY).write_text(json.dumps({**raw, "version": record.RECORD_VERSION + 1}))
    with pytest.raises(HetsEpError, match=f"run-record version {record.RECORD_VERSION + 1}; .* upgrade hets-ep"):
        record.read_run(tmp_path / "run")


def test_a_failed_run_holds_nothing_to_lose(tmp_path):
    record.write_summary(tmp_path, record.failed(7, "dataset.path: not found", versions={}, runtime={}))
    assert not record.holds_run(tmp_path) and record.read_summary(tmp_path).error == "dataset.path: not found"
    (tmp_path / record.CHECKPOINTS).mkdir()
    assert not record.holds_run(tmp_path)  # an empty checkpoint folder holds nothing either
    (tmp_path / record.CHECKPOINTS / "40").mkdir()
    assert record.holds_run(tmp_path)


def test_unknown_or_missing_fields_are_named(tmp_path):
    record.write_rows(tmp_path, [_row(1)])
    raw = dataclasses.asdict(_row(1))
    (tmp_path / record.METRICS).write_text(json.dumps({**raw, "surprise": 1}) + "\n")
    with pytest.raises(HetsEpError, match="unexpected fields surprise"):
        record.read_rows(tmp_path)
    del raw["test_acc"]
    (tmp_path / record.METRICS).write_text(json.dumps(raw) + "\n")
    with pytest.raises(HetsEpError, match="incomplete record"):
        record.read_rows(tmp_path)


def test_versions_name_the_stack_and_the_device():
    v = versions()
    assert {"hets_ep", "jax", "flax", "optax", "numpy", "python", "device"} <= set(v)
    assert v["device"].startswith("cpu")
