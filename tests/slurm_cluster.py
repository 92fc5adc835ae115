"""A real single-node Slurm for the tests: munged, slurmctld and slurmd, started as root with a
generated ``slurm.conf`` in a temporary folder (``SLURM_CONF`` points at it), stopped afterwards.

Installs Debian's ``slurm-wlm`` and ``munge`` if they are missing (about 20 seconds). Where
Slurm cannot be started (not root, no apt, no network), :func:`start` raises
:class:`Unavailable` with the one-line reason the tests skip with. Accounting is off, as on a
bare cluster: the launcher must not depend on ``sacct`` to notice a job's end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")


class Unavailable(Exception):
    """Slurm cannot be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0:
        raise Unavailable("Slurm is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable("Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True, env=env,
                          timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True,
                              env=env, timeout=600)
    if done.returncode != 0:
        raise Unavailable(f"apt-get could not install {' '.join(PACKAGES)}: {done.stderr.strip().splitlines()[-1:]}")


class Cluster:
    """A running single-node cluster: ``env`` is what a process needs to use it."""

    def __init__(self, folder: Path):
        if os.geteuid() != 0:
            raise Unavailable("a local Slurm needs root to start its daemons")
        _install()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "munge"):
            (folder / sub).mkdir(exist_ok=True)
        os.chmod(folder / "munge", 0o700)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = folder / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen] = []
        self.processes.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
             f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'munge' / 'munged.log'}",
             f"--seed-file={folder / 'munge' / 'munged.seed'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self.node = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024
        self.conf = folder / "slurm.conf"
        self.conf.write_text(f"""ClusterName=hets-ep-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=nohold_on_prolog_fail
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._wait_for(lambda: self.munge_socket.exists(), "munged")
        self.processes.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self.processes.append(subprocess.Popen(["slurmd", "-D", "-f", str(self.conf), "-N", self.node], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self._wait_for(self._idle, "the node to come up", timeout=60)

    def _idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")

    def _wait_for(self, ready, what: str, timeout: float = 30) -> None:
        start = time.time()
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.time() - start > timeout:
                log = self.folder / "slurmctld.log"
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                self.stop()
                raise Unavailable(f"waiting for {what}: {', '.join(dead) + ' exited' if dead else 'timed out'} "
                                  f"{tail}")
            time.sleep(0.2)

    def run(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=True).stdout

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        for p in reversed(self.processes):
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
