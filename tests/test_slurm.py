"""Sweeps on a real single-node Slurm (tests/slurm_cluster.py): a job array, pre-emption by
requeue, the time limit, a failing job and a cancelled one. Marked ``slurm``: they run with
--run-slow or CI=true, and skip with the reason where Slurm cannot be started here."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import MNIST_ROOT, ROOT, hets_ep, metrics_without_timing
from hets_ep import record

pytestmark = pytest.mark.slurm

# A run long enough to be stopped mid-epoch (1,000 batches an epoch) and to meet a one-minute limit.
LONG = ("train.progress=false", f"dataset.root={MNIST_ROOT}", "dataset.subset=4000", "dataset.test_subset=1000",
        "model.hidden=[64]", "train.batch_size=4")
EPOCHS = "train.epochs=4"
ON_SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.callbacks.sweep_end.report=false")


def _sweep(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hets_ep", "train", "-m", *ON_SLURM, *args], cwd=ROOT,
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _jobs(cluster) -> list[tuple[str, str, str]]:
    """``(id, state, reason)`` of every job Slurm lists."""
    return [tuple(line.split()) for line in cluster.run("squeue", "-h", "-o", "%i %T %r").splitlines()]


def _release(cluster) -> None:
    """Start requeued jobs now: Slurm holds them back ~2 minutes by default (BeginTime)."""
    for job, state, reason in _jobs(cluster):
        if state == "PENDING" and reason == "BeginTime":
            cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")


def _finish(proc: subprocess.Popen, cluster, timeout: float = 600) -> tuple[int, str, str]:
    start = time.time()
    while proc.poll() is None:
        _release(cluster)
        assert time.time() - start < timeout, "the sweep did not end"
        time.sleep(1)
    out, err = proc.communicate()
    return proc.returncode, out, err


def test_a_sweep_runs_as_a_job_array_and_the_report_reads_it(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(slurm, *LONG, "dataset.subset=1000", "train.batch_size=32", "train.epochs=1", "seed=0,1",
                  "dt=scalar,lognormal", "dt.mean=0.3", f"hydra.sweep.dir={sweep}")
    code, _, err = _finish(proc, slurm)
    assert code == 0, err[-2000:]
    assert {record.read_summary(sweep / str(i)).runtime["slurm_job"].split("_")[0] for i in range(4)} == \
        {record.read_summary(sweep / "0").runtime["slurm_job"].split("_")[0]}  # one array
    hets_ep("report", str(sweep), "--out", str(tmp_path / "report"), check=True)
    assert len(pd.read_csv(tmp_path / "report" / "seeds.csv")) == 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    hets_ep("train", *LONG, EPOCHS, f"hydra.run.dir={run_dir}", check=True)
    return run_dir


def test_a_requeued_job_resumes_by_itself_and_ends_as_if_never_stopped(slurm, tmp_path, uninterrupted):
    sweep = tmp_path / "sweep"
    proc = _sweep(slurm, *LONG, EPOCHS, "seed=0", f"hydra.sweep.dir={sweep}")
    while not (sweep / "0" / record.METRICS).exists():  # epoch 1 is done: the requeue lands in epoch 2
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    job = _jobs(slurm)[0][0]
    slurm.run("scontrol", "requeue", job)  # what pre-emption with requeue does
    code, _, err = _finish(proc, slurm)
    assert code == 0, err[-2000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "received SIGTERM: checkpointed in epoch 2" in log and "Slurm restarted job" in log
    summary = record.read_summary(sweep / "0")
    assert summary.status == "completed" and summary.runtime["restarts"] >= 1
    assert metrics_without_timing(sweep / "0") == metrics_without_timing(uninterrupted)


def test_a_job_at_its_time_limit_is_resubmitted_and_ends_equal(slurm, tmp_path):
    """A two-minute limit with the warning 30 s ahead, for a run of about 2.5 minutes of training
    on a quiet 2-core machine: the run checkpoints, submitit resubmits it, until it is done.
    Slurm may send the warning up to 60 s before it is due, so a job can meet it 30 s after it
    starts: well after its process has a handler (a one-minute limit could send it during the
    start-up imports, which the signal's default action ends)."""
    reference, sweep = tmp_path / "uninterrupted", tmp_path / "sweep"
    hets_ep("train", *LONG, "train.epochs=200", f"hydra.run.dir={reference}", check=True)
    proc = _sweep(slurm, *LONG, "train.epochs=200", "seed=0", "hydra.launcher.timeout_min=2",
                  "hydra.launcher.signal_delay_s=30", f"hydra.sweep.dir={sweep}")
    code, _, err = _finish(proc, slurm, timeout=1200)
    assert code == 0, err[-2000:]
    assert "received SIGUSR2: checkpointed" in (sweep / "0" / "train.log").read_text()
    assert record.read_summary(sweep / "0").runtime["restarts"] >= 1
    assert metrics_without_timing(sweep / "0") == metrics_without_timing(reference)


def test_a_failing_job_fails_the_sweep_promptly_with_its_error(slurm, tmp_path):
    """A fault only a job can meet (its data, read on the node, is corrupt): the precheck passes."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(MNIST_ROOT, corrupt)
    (corrupt / "train-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
    sweep = tmp_path / "sweep"
    proc = _sweep(slurm, *LONG, "dataset.subset=1000", "train.batch_size=32", "train.epochs=1",
                  f"dataset.root={MNIST_ROOT},{corrupt}", f"hydra.sweep.dir={sweep}")
    code, _, err = _finish(proc, slurm, timeout=300)
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("hets-ep: error: 1 of 2 sweep jobs failed (1); job 1: "), last
    assert "train-labels-idx1-ubyte.gz: SHA-256 mismatch" in last, last
    assert record.read_summary(sweep / "0").status == "completed"
    ended = max((sweep / d / record.SUMMARY).stat().st_mtime for d in ("0", "1"))
    assert time.time() - ended < 60  # the sweep saw the end within seconds, not after polling on


def test_a_cancelled_job_ends_the_sweep_instead_of_hanging(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(slurm, *LONG, EPOCHS, "seed=0", f"hydra.sweep.dir={sweep}")
    while not (sweep / "0" / record.METRICS).exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    slurm.run("scancel", _jobs(slurm)[0][0])
    code, _, err = _finish(proc, slurm, timeout=300)
    assert code == 128 + 15, err[-2000:]
    assert f"hydra.sweep.dir={sweep} resume=true" in err.strip().splitlines()[-1]
    assert record.read_summary(sweep / "0").status == "interrupted"
