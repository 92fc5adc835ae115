"""Sweeps on Slurm: Hydra's submitit launcher, made to survive pre-emption and time limits.

``hydra/launcher=slurm`` (CPUs) and ``hydra/launcher=slurm_gpu`` submit a sweep as a Slurm job
array through ``hydra_plugins.hets_ep_slurm.SlurmLauncher`` (Hydra takes launchers only from
``hydra_plugins``), which is Hydra's submitit launcher with one change (:func:`launch`): it
waits for each job by its result file *and* by Slurm's queue, so a job that leaves the queue
without a result (killed, lost with its node) fails the sweep within seconds instead of being
polled forever when ``sacct`` has no accounting to ask.

What a job does when Slurm stops it (see :func:`hets_ep.job.guarded`):

* **pre-emption or** ``scontrol requeue``: Slurm sends SIGTERM; the run checkpoints where it
  stands and the job exits *without* a result, since Slurm will restart it: the restarted job
  recognises its own interrupted run (:func:`requeued`) and continues it.
  A SIGTERM that is not a requeue (``scancel``) leaves ``status: interrupted`` as the result.
* **time limit**: submitit's warning signal (``--signal=USR2@signal_delay_s``) arrives before the
  limit; the run checkpoints, then submitit resubmits the job (up to ``max_num_timeout`` times),
  which continues the same way.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hets_ep import provenance, record
from hets_ep.errors import HetsEpError

log = logging.getLogger(__name__)

# A job gone from the queue this long without a result has died (its result file is written
# before it leaves the queue; the margin covers a shared filesystem's delay).
GONE_GRACE_S = 30.0
POLL_S = 2.0


def in_queue(job_id: str) -> bool:
    """Whether Slurm still lists the job (pending, running, requeued, completing)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and bool(out.stdout.strip())


def wait(job: Any) -> JobReturn:
    """The job's result; :class:`HetsEpError` when it left Slurm's queue without one."""
    gone_since = None
    while not job.paths.result_pickle.exists():
        if in_queue(job.job_id):
            gone_since = None
        elif gone_since is None:
            gone_since = time.time()
        elif time.time() - gone_since > GONE_GRACE_S:
            tail = ""
            if job.paths.stderr.exists():
                lines = [line for line in job.paths.stderr.read_text(errors="replace").splitlines() if line.strip()]
                tail = f"; its last line: {lines[-1][:300]}" if lines else ""
            raise HetsEpError(f"Slurm job {job.job_id} ended without a result (killed, or lost with its node){tail}"
                              f" (its log: {job.paths.stderr})")
        time.sleep(POLL_S)
    return job.results()[0]


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """Hydra's submitit launch (``launcher`` is the launcher plugin, ``hydra_plugins.hets_ep_slurm``),
    waiting on each job with :func:`wait`."""
    import submitit

    assert launcher.config is not None
    init_keys = {"submitit_folder", "max_num_timeout"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=launcher.params["submitit_folder"],
                                     slurm_max_num_timeout=launcher.params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.params.items()
                                  if k not in init_keys})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Slurm sweep output dir: {sweep_dir}")
    params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*params))
    return [wait(job) for job in jobs]


# -- a job that Slurm stops: pre-emption, requeue, time limits ----------------------------------

def being_requeued() -> bool:
    """Whether Slurm is stopping this job to requeue it (pre-emption, ``scontrol requeue``):
    Slurm counts the restart before it signals, so its count is above the job's own."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    count = re.search(r"\bRestarts=(\d+)", out)
    return bool(count) and int(count.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def requeued(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an unfinished run of this very Slurm job: Slurm restarted the
    job (a requeue after pre-emption, or submitit's resubmission at a time limit), which then
    continues from its checkpoint without being asked to."""
    me = provenance.job()["slurm_job"]
    if not me:
        return False
    try:
        summary = record.read_summary(run_dir)
    except HetsEpError:
        return False
    return summary.runtime.get("slurm_job") == me and summary.status in (record.Status.INTERRUPTED,
                                                                        record.Status.RUNNING)
