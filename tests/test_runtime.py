"""Process guards: the run lock, stop signals, versions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hets_ep import record
from hets_ep.errors import HetsEpError
from hets_ep.provenance import versions
from hets_ep.lock import run_lock
from hets_ep.signals import StopSignals


def test_a_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    (tmp_path / record.LOCK).write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(HetsEpError, match=f"is in use by process {os.getpid()}"):
        with run_lock(tmp_path):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / record.LOCK).write_text(str(dead.pid))
    with run_lock(tmp_path):
        assert (tmp_path / record.LOCK).read_text() == str(os.getpid())
    assert not (tmp_path / record.LOCK).exists()


def test_stop_signals_become_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals().installed() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_versions_name_the_stack_and_the_device():
    v = versions()
    assert {"hets_ep", "jax", "flax", "optax", "numpy", "python", "device"} <= set(v)
    assert v["device"].startswith("cpu")
