"""The run-directory lock: one process trains in a run directory at a time, and a lock left by a
killed process is recognised as stale."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

from hets_ep.errors import HetsEpError
from hets_ep.record import LOCK


def in_use(run_dir: Path) -> Optional[int]:
    """The process that holds ``run_dir``'s lock, if it still runs (else None: a run killed
    without a chance to clean up leaves a stale lock)."""
    try:
        pid = int((Path(run_dir) / LOCK).read_text() or "0")
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid  # another user's process
    except OSError:
        return None
    return pid


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (created exclusively, holding our pid) while a process trains there.

    A second process aiming at the same directory fails at once instead of interleaving its
    writes; a lock left by a killed process (its pid no longer running) is taken over.
    """
    lock = Path(run_dir) / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = in_use(run_dir)
            if pid is None:
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
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
