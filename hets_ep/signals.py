"""Stop signals: SIGINT/SIGTERM turned into a flag the trainer checks between batches, and the
one channel through which a job's error reaches the command line."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hets_ep.errors import HetsEpError


class RunInterrupted(HetsEpError):
    """Raised after a run checkpointed and wrote ``status: interrupted`` on a stop signal (or,
    with ``started=False``, when the signal came before the run began: nothing was written)."""

    def __init__(self, signum: int, run_dir: Path, started: bool = True, sweep: bool = False):
        name = signal.Signals(signum).name
        if sweep:
            message = (f"{name}: the sweep stopped, each running job checkpointed; continue it with the same command "
                       f"and hydra.sweep.dir={run_dir} resume=true")
        elif started:
            message = f"{name}: run checkpointed in {run_dir}; continue it with resume={run_dir}"
        else:
            message = f"{name} before the run in {run_dir} started; nothing was written"
        super().__init__(message)
        self.signum, self.exit_code, self.started = signum, 128 + signum, started


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag that the trainer checks between batches (training and
    evaluation alike), so a run always stops at a point it can checkpoint.

    :data:`stop` is the process's one instance: the command line installs it before any work
    (a signal during start-up or compilation is then noticed at the first check, not turned
    into a traceback); :meth:`installed` nests, restoring the previous handlers on exit.

    A sweep's jobs may run in worker processes that a signal to the main process alone (from
    ``kill``, ``timeout``, a scheduler) does not reach. So the main process :meth:`share`s a
    signal through a file in the sweep directory, and each job :meth:`watch`es that file: a job
    running checkpoints and stops at its next batch, and no later job starts.
    """

    def __init__(self):
        self._received: int | None = None
        self._depth = 0
        self._held = False
        self._previous: dict = {}
        self._shared: Path | None = None
        self._watched: Path | None = None

    @property
    def received(self) -> int | None:
        """The signal this process (or, for a watched sweep, the sweep) received, if any."""
        if self._received is None and self._watched is not None and self._watched.exists():
            try:
                self._received = int(self._watched.read_text() or signal.SIGTERM)
            except (OSError, ValueError):
                self._received = signal.SIGTERM
        return self._received

    @received.setter
    def received(self, signum: int | None) -> None:
        self._received = signum

    def share(self, path: Path) -> None:
        """In a sweep's main process: write each signal received into ``path`` (a stale one
        from an earlier, stopped run of the same sweep is removed first)."""
        path.unlink(missing_ok=True)
        self._shared = path

    def watch(self, path: Path) -> None:
        """In a sweep's job: count a signal written into ``path`` as received."""
        self._watched = path

    def _handle(self, signum, _frame):
        self._received = signum
        if self._shared is not None:
            try:
                self._shared.parent.mkdir(parents=True, exist_ok=True)
                self._shared.write_text(str(signum))
            except OSError:
                pass  # the workers then stop only if the signal reached them too

    def install(self) -> None:
        """Catch the signals from now on: SIGINT, SIGTERM and, in a job submitit runs on Slurm,
        its time-limit warning."""
        if self._depth == 0:
            signals = [signal.SIGINT, signal.SIGTERM] + ([submitit_signal()] if submitit_signal() else [])
            self._previous = {s: signal.signal(s, self._handle) for s in signals}
        self._depth += 1

    def previous(self, signum: int):
        """The handler ours replaced for ``signum`` (in a submitit job: submitit's, which
        resubmits the job at its time limit)."""
        return self._previous.get(signum, signal.SIG_DFL)

    def hold(self) -> None:
        """Catch the signals for the rest of this process's life, once: the command line before
        its imports, and each worker process of a parallel sweep at its first job — a signal
        that stopped one job (Ctrl-C reaches every process of the group) then also keeps the
        worker's later jobs from starting."""
        if not self._held:
            self._held = True
            self.install()

    @contextlib.contextmanager
    def installed(self):
        self.install()
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for s, handler in self._previous.items():
                    signal.signal(s, handler)
                self._received, self._shared, self._watched = None, None, None


stop = StopSignals()


class Outcome:
    """The one channel through which a job's error reaches the command line in this process:
    Hydra logs a job's own exception before re-raising it (the same error printed twice) and
    turns a callback's into a warning, so both report here and the command line raises the
    first once Hydra returns."""

    def __init__(self):
        self._errors: list[HetsEpError] = []

    def report(self, error: HetsEpError) -> None:
        self._errors.append(error)

    def raise_first(self) -> None:
        errors, self._errors = self._errors, []
        if errors:
            raise errors[0]


outcome = Outcome()


def submitit_signal() -> int | None:
    """The signal submitit's Slurm jobs get before their time limit (USR2 unless configured),
    in such a job; None elsewhere."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
