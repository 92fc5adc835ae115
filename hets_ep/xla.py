"""How XLA uses this machine: threads per job, the CPU split into devices for parallel seeds,
the persistent compilation cache. Each setting must come before JAX starts its backends."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

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


def job_settings(concurrent: bool, members: int) -> dict:
    """How XLA serves one job (:func:`configure`'s arguments): one thread when jobs run side by
    side (``concurrent``), else the CPU split into devices for its ``members``."""
    return {"single_thread": concurrent, "cpu_devices": 1 if concurrent else members_per_device(members)}


def configure(*, single_thread: bool = False, cpu_devices: int = 1) -> None:
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
