"""Process guards and set-up around a run: stop signals, the run-directory lock, how XLA uses
this machine (threads, CPU devices, the compilation cache), versions."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import re
import signal
import subprocess
from pathlib import Path

from hets_ep import __version__, record
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


def log_to_file(message: str) -> None:
    """Write ``message`` into the job's log file only (Hydra's ``train.log``), not the console,
    where the command line prints it once."""
    entry = logging.LogRecord("hets_ep", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(entry)


def submitit_signal() -> int | None:
    """The signal submitit's Slurm jobs get before their time limit (USR2 unless configured),
    in such a job; None elsewhere."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


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


log = logging.getLogger(__name__)

SINGLE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a Slurm allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def accelerator_visible() -> bool:
    """Whether JAX will run on a GPU: a CUDA or ROCm device, JAX's plugin for it, and neither
    hidden (``CUDA_VISIBLE_DEVICES=``) nor ruled out (``JAX_PLATFORMS=cpu``); checked without
    starting JAX's backends, which would claim the device."""
    import importlib.util

    device = any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/kfd"))
    plugin = any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                             "jax_rocm60_plugin", "jax_rocm7_plugin"))
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES") == "" or os.environ.get("JAX_PLATFORMS", "") == "cpu"
    return device and plugin and not hidden


def parallel_jobs() -> int:
    """How many jobs of a sweep run at once on this machine (``hydra/launcher=parallel``): one per
    core on a CPU, one at a time when an accelerator is visible (each job would claim it)."""
    return 1 if accelerator_visible() else cores()


def members_per_device(members: int) -> int:
    """CPU devices to shard ``members`` seeds over: the largest divisor of ``members`` that is at
    most the number of cores, so every device holds the same number of seeds."""
    return max(d for d in range(1, min(members, cores()) + 1) if members % d == 0)


def configure_xla(*, single_thread: bool = False, cpu_devices: int = 1) -> None:
    """Set how XLA uses the CPU, before JAX starts its backends (later calls change nothing).

    ``single_thread``: one XLA thread (for jobs that share the machine with other jobs);
    ``cpu_devices``: split the CPU into that many devices, so the seeds of
    ``train.parallel_seeds`` run on separate cores (each member is independent: results are
    those of separate runs).
    """
    from jax._src import xla_bridge

    import jax

    if xla_bridge.backends_are_initialized():
        return
    if single_thread:
        present = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = " ".join([present, *(f for f in SINGLE_THREAD_FLAGS if f not in present)]).strip()
    if cpu_devices > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", cpu_devices)


def enable_compilation_cache(root: Path) -> None:
    """Keep compiled programs under ``root/xla/<cpu>`` (JAX's persistent cache), so a run whose
    program was compiled before (the next seed of a sweep, a resumed run) starts in a second.
    The folder is per CPU model and instruction set: code compiled for one CPU never runs on
    another. ``HETS_EP_COMPILE_CACHE=off`` turns it off."""
    import jax

    if os.environ.get("HETS_EP_COMPILE_CACHE", "").lower() in ("off", "0", "false"):
        return
    cpu = platform.processor() or platform.machine()
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    fingerprint = hashlib.sha256(f"{cpu} {flags}".encode()).hexdigest()[:16]
    jax.config.update("jax_compilation_cache_dir", str(Path(root) / "xla" / f"{platform.machine()}-{fingerprint}"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 2**30)


def job() -> dict[str, object]:
    """Where this process runs: the host and, under Slurm, the job (``ARRAYID_TASK`` for array
    jobs) and how often Slurm restarted it (requeue after pre-emption or a time limit)."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    slurm_job = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env.get("SLURM_JOB_ID")
    return {"host": platform.node(), "slurm_job": slurm_job, "restarts": int(env.get("SLURM_RESTART_COUNT", 0))}


def requeued(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an unfinished run of this very Slurm job: Slurm restarted the
    job (a requeue after pre-emption, or submitit's resubmission at a time limit), which then
    continues from its checkpoint without being asked to."""
    me = job()["slurm_job"]
    if not me:
        return False
    try:
        summary = record.read_summary(run_dir)
    except HetsEpError:
        return False
    return summary.runtime.get("slurm_job") == me and summary.status in (record.Status.INTERRUPTED, record.Status.RUNNING)


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
