"""The pre-flight's plan: every job of a run or sweep as it will run, decided once at the
command line (:func:`hets_ep.preflight.precheck`) and written beside the sweep, in
``<sweep dir>/plan.pkl`` (a single run: ``<run dir>/plan.pkl``). A job reads its entry and
nothing else: its validated config (a continued run's: its saved config), its run folder, its
label, its dt draw per seed, and under ``hydra/launcher=stacked`` the jobs its program trains.

Hydra still composes each job for its own bookkeeping (the job's folder, log and ``.hydra/``
files); hets-ep composes, validates and draws once per job, here. A boundary search adds each
round's jobs as it launches them (:func:`hets_ep.preflight.extend`). The file is a pickle: it
holds the validated dataclasses and the draws exactly, for the jobs of this sweep only (a later
command over the same folder writes its own).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

from hets_ep import atomic
from hets_ep.config import Config
from hets_ep.errors import HetsEpError

FILE = "plan.pkl"


@dataclasses.dataclass
class Job:
    """One job as it will run."""

    number: int                       # Hydra's job number (0 for a single run)
    overrides: tuple[str, ...]        # the job's own overrides, as typed
    label: str                        # ``job 3 (seed=1 dt=gamma)`` in a sweep: its log lines say whose they are
    folder: Path                      # its run folder
    config: Config                    # validated; a continued run's: its saved config
    dts: list[tuple[Any, dict]]       # per seed ``seed … seed+K−1``: the dt draw and its statistics
    members: tuple[int, ...] = ()     # hydra/launcher=stacked: the jobs its program trains (itself first)
    stacked_into: Optional[int] = None  # hydra/launcher=stacked: the job whose program trains this one


@dataclasses.dataclass
class Plan:
    """What the pre-flight decided for a run or sweep."""

    directory: Path                    # the sweep directory, or the single run's folder
    multirun: bool
    swept: tuple[str, ...] = ()        # the keys a sweep varies (a search: its axis too), for the jobs' labels
    launcher: Optional[str] = None     # hydra/launcher's choice
    max_members: int = 64              # hydra/launcher=stacked: the most jobs in one program
    resumed: Optional[Path] = None     # the run a single run continues in place (resume=…)
    search: Any = None                 # hydra/sweeper=boundary: its settings (hets_ep.boundary_search.Search)
    jobs: dict[int, Job] = dataclasses.field(default_factory=dict)

    @property
    def configs(self) -> list[Config]:
        return [self.jobs[n].config for n in sorted(self.jobs)]

    def label(self, number: int, overrides: Sequence[str]) -> str:
        """A sweep's job by its number and its values of the swept keys; "" for a single run."""
        if not self.multirun:
            return ""
        values = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in self.swept]
        return f"job {number}" + (f" ({' '.join(values)})" if values else "")

    def groups(self) -> list[list[int]]:
        """The programs, in job order: each the numbers of the jobs it trains."""
        return [list(job.members or (number,)) for number, job in sorted(self.jobs.items())
                if job.stacked_into is None]

    def members(self, job: Job) -> list[Job]:
        """The jobs ``job``'s program trains: its stacked group, or itself."""
        return [self.jobs[n] for n in job.members] if job.members else [job]


def path(directory: Path) -> Path:
    return Path(directory) / FILE


def write(plan: Plan) -> None:
    atomic.write_bytes(path(plan.directory), pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))


def read(directory: Path) -> Plan:
    try:
        return pickle.loads(path(directory).read_bytes())
    except FileNotFoundError:
        raise HetsEpError(f"{path(directory)}: no plan; start runs and sweeps with hets-ep train (or gradcheck), "
                          "which checks every job and writes it") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise HetsEpError(f"{path(directory)}: unreadable ({err}); run the command again") from None


def this_job() -> tuple[Plan, Job]:
    """Inside a job of a Hydra app: the plan beside its run or sweep, and the job's entry."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    plan = read(Path(hc.sweep.dir if multirun else hc.run.dir))
    number = hc.job.num if multirun else 0
    job = plan.jobs.get(number)
    if job is None or (multirun and list(job.overrides) != list(hc.overrides.task)):
        raise HetsEpError(f"{path(plan.directory)}: holds no plan for job {number} "
                          f"({' '.join(hc.overrides.task)}); run the command again")
    return plan, job
