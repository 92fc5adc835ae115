"""What every job of ``hets-ep train|gradcheck`` does around its task, inside Hydra: its entry
read from the pre-flight's plan (:mod:`hets_ep.plan`: its config, folder, label and dt draw),
JAX set up for the machine, errors recorded, signals turned into a checkpoint and a resumable
record.

A job's error reaches the command line through one channel,
:data:`hets_ep.signals.outcome` (a job in another process through its run record, which the
sweep's end reads: :class:`hets_ep.callbacks.SweepEnd`).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hets_ep import provenance, record, signals, slurm, xla
from hets_ep.config import Config
from hets_ep.errors import HetsEpError
from hets_ep.plan import Job, Plan, this_job
from hets_ep.signals import RunInterrupted

log = logging.getLogger("hets_ep")


def in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def log_to_file(message: str) -> None:
    """Write ``message`` into the job's log file only (Hydra's ``train.log``), not the console,
    where the command line prints it once."""
    entry = logging.LogRecord("hets_ep", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(entry)


def prepare_jax(config: Config, members: int) -> None:
    """Before JAX starts: one XLA thread per job when a sweep runs jobs side by side; the CPU
    split into devices for a program of several members (seeds, or a stacked sweep's jobs); the
    compilation cache."""
    from hets_ep.data.registry import cache_dir

    hc = HydraConfig.get()
    concurrent = hc.mode == RunMode.MULTIRUN and hc.launcher.get("n_jobs", 1) not in (None, 1)
    xla.configure(**xla.job_settings(concurrent, members))
    xla.enable_compilation_cache(cache_dir())


def guarded(task: Callable[[Plan, Job], None]):
    """Each job of a run or sweep: ``task(plan, job)`` on the job's entry in the pre-flight's
    plan (Hydra's composition of the job is not read). A user-fixable problem is written into
    the job's ``train.log`` (not the console: the command line prints it once) and into its record —
    ``status: failed`` with the error, unless the folder holds a run — and reported through
    :data:`hets_ep.signals.outcome`. In a sweep the other jobs go on, and the sweep's end
    names every failure. A job of a sweep that was signalled does not start."""

    @functools.wraps(task)
    def wrapper(_hydra_composed: DictConfig) -> None:
        for noisy in ("jax", "absl"):  # backend probing and orbax's save log are noise to users
            logging.getLogger(noisy).setLevel(logging.WARNING)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if in_sweep():  # in a worker process of a parallel sweep: from its first job on
            signals.stop.hold()
            signals.stop.watch(Path(HydraConfig.get().sweep.dir) / record.STOP)
        entry = None
        try:
            if signals.stop.received is not None:  # stopped before this job began
                raise RunInterrupted(signals.stop.received, run_dir, started=False)
            planned, entry = this_job()
            task(planned, entry)
        except RunInterrupted as err:
            if err.started:
                log.warning("%s", err)
            else:  # a job of a stopped sweep: its log says so, the console does not repeat it per job
                log_to_file(str(err))
            if not in_sweep():
                signals.outcome.report(err)
            elif err.signum == signals.submitit_signal():  # a time limit ahead: submitit resubmits the job
                signals.stop.previous(err.signum)(err.signum, None)
            elif err.signum == signal.SIGTERM and slurm.being_requeued():
                sys.exit(err.exit_code)  # no result: the sweep waits for Slurm to restart this job
        except HetsEpError as err:
            log_to_file(f"error: {err}")
            if not record.holds_run(run_dir) and run_dir.is_dir():
                record.write_summary(run_dir, record.failed(entry.config.seed if entry else 0, str(err),
                                                            versions=provenance.versions(), runtime=provenance.job()))
            if not in_sweep():
                signals.outcome.report(err)

    return wrapper
