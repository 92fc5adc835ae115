"""Where and with what a run ran: the versions of the numerical stack, the device, the commit of
the source tree (and whether it had uncommitted changes), the host and Slurm job."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from hets_ep import __version__


def job() -> dict[str, object]:
    """Where this process runs: the host and, under Slurm, the job (``ARRAYID_TASK`` for array
    jobs) and how often Slurm restarted it (requeue after pre-emption or a time limit)."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    slurm_job = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env.get("SLURM_JOB_ID")
    return {"host": platform.node(), "slurm_job": slurm_job, "restarts": int(env.get("SLURM_RESTART_COUNT", 0))}


def versions() -> dict[str, object]:
    """Versions of hets-ep and the numerical stack, the device that runs the kernel, and the
    source commit (:func:`source`)."""
    import flax
    import jax
    import numpy as np
    import optax

    device = jax.devices()[0]
    return {"hets_ep": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", **source()}


@functools.lru_cache(maxsize=None)
def source() -> dict[str, object]:
    """The git commit of the source tree hets-ep runs from and whether it had uncommitted changes
    (``dirty``); both None when it runs from an installed copy outside a git work tree."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}
