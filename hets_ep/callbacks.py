"""Hydra callbacks: what happens when a sweep ends.

:class:`SweepEnd` (on by default, ``conf/train.yaml``) runs in the process that launched the
sweep, after every job returned: it prints a compact table of the sweep (one line per
condition), writes the report into ``SWEEP_DIR/report`` (``hydra.callbacks.sweep_end.report=false``
turns both off), and reads every job's record for failures and interruptions, which it reports
through :data:`hets_ep.signals.outcome` (Hydra turns a callback's exceptions into warnings):
the command line then fails with one line naming the failed jobs and the first error.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hets_ep import record, signals
from hets_ep.errors import HetsEpError
from hets_ep.record import Status
from hets_ep.signals import RunInterrupted

log = logging.getLogger("hets_ep")


class SweepEnd(Callback):
    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((d for d in sweep.iterdir() if d.is_dir() and (d / record.SUMMARY).is_file()),
                      key=lambda d: (len(d.name), d.name)) if sweep.is_dir() else []
        summaries = {d: record.read_summary(d) for d in jobs}
        if self.report and summaries:
            from hets_ep.report import sweep_summary

            sweep_summary(sweep)
        failed = [(d, s) for d, s in summaries.items() if s.status == Status.FAILED]
        interrupted = [d for d, s in summaries.items() if s.status == Status.INTERRUPTED]
        if signals.stop.received is not None or (interrupted and not failed):
            signals.outcome.report(RunInterrupted(signals.stop.received or signal.SIGTERM, sweep, sweep=True))
        elif failed:
            first, summary = failed[0]
            signals.outcome.report(HetsEpError(
                f"{len(failed)} of {len(summaries)} sweep jobs failed ({', '.join(d.name for d, _ in failed)}); job "
                f"{first.name}: {summary.error} (its log: {first / 'train.log'})"))
