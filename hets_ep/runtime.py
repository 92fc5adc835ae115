"""Process guards around a run: stop signals, the run-directory lock, library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from pathlib import Path

from hets_ep import __version__, record
from hets_ep.errors import HetsEpError


class RunInterrupted(HetsEpError):
    """Raised after a run checkpointed and wrote ``status: interrupted`` on SIGINT/SIGTERM."""

    def __init__(self, signum: int, run_dir: Path):
        super().__init__(f"{signal.Signals(signum).name}: run checkpointed in {run_dir}; continue it with "
                         "resume=true (same hydra.run.dir) or resume=" + str(run_dir))
        self.exit_code = 128 + signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between batches."""

    def __init__(self):
        self.received: int | None = None

    def _handle(self, signum, _frame):
        self.received = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (created exclusively, holding our pid) while a process trains there.

    A second process aiming at the same directory fails at once instead of interleaving its
    writes; a lock left by a killed process (its pid no longer running) is taken over.
    """
    lock = Path(run_dir) / record.LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise HetsEpError(
                f"{run_dir} is in use by process {pid}; wait for it or choose another hydra.run.dir") from None
    else:
        raise HetsEpError(f"{run_dir}: cannot take the run lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def versions() -> dict[str, str]:
    """Versions of hets-ep and the numerical stack, and the device that runs the kernel."""
    import flax
    import jax
    import numpy as np
    import optax

    device = jax.devices()[0]
    return {"hets_ep": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "device": f"{device.platform}:{getattr(device, 'device_kind', '')}"}
