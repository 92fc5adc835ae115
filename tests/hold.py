"""A Hydra callback for the tests that send signals: it holds a run or sweep at a chosen moment
until a stop signal has arrived, so the work a signal interrupts cannot finish first, however
fast the machine. It writes ``marker`` when it starts holding: the test waits for that file,
then sends its signal.

    +hydra.callbacks.hold._target_=hold.Hold +hydra.callbacks.hold.at=epoch
    +hydra.callbacks.hold.marker=/tmp/ready  [+hydra.callbacks.hold.job=0]

``at``: ``start`` (before the run or the sweep's first job, in the main process), ``epoch`` (after job
``job``'s first epoch is written and checkpointed) or ``between`` (after job ``job`` ended).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback


def _wait_for_a_stop(marker: str) -> None:
    from hets_ep import signals

    Path(marker).write_text("holding")
    deadline = time.time() + 600
    while signals.stop.received is None and time.time() < deadline:
        time.sleep(0.01)


class Hold(Callback):
    def __init__(self, at: str, marker: str, job: int = 0) -> None:
        self.at, self.marker, self.job = at, marker, job

    def _mine(self) -> bool:
        return int(HydraConfig.get().job.get("num", 0) or 0) == self.job

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if self.at == "start":
            _wait_for_a_stop(self.marker)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if self.at == "start":
            _wait_for_a_stop(self.marker)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if self.at != "epoch" or not self._mine():
            return
        from hets_ep.train import Trainer

        end_epoch = Trainer._end_epoch

        def held(trainer, *args, **kw):
            end_epoch(trainer, *args, **kw)
            Trainer._end_epoch = end_epoch  # once
            _wait_for_a_stop(self.marker)

        Trainer._end_epoch = held

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self.at == "between" and self._mine():
            _wait_for_a_stop(self.marker)
