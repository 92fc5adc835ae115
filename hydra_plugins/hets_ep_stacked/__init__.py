"""Hydra instantiates launchers only from ``hydra_plugins``: hets-ep's stacked launcher, used by
``conf/hydra/launcher/stacked.yaml``: the Hydra glue here; the grouping (pure,
:mod:`hets_ep.stacked_sweep`) is the pre-flight's, read from the plan (:mod:`hets_ep.plan`)."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from hets_ep.hydra_api import save_config
from hets_ep.plan import read
from hets_ep.stacked_sweep import explain

log = logging.getLogger("hets_ep")


def _without_hydra(sweep_config):
    """A job's config as its task sees it: Hydra's node removed."""
    task = copy.deepcopy(sweep_config)
    with open_dict(task):
        del task["hydra"]
    return task


class StackedLauncher(Launcher):
    """Jobs that differ only in keys held per member (seed, dt, β, lr_scale) run as the members of one program."""

    def __init__(self, max_members: int = 64) -> None:
        """``max_members`` (``hydra.launcher.max_members``): the pre-flight groups the jobs by it."""
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        """Run each program of the pre-flight's plan (:mod:`hets_ep.plan`, grouped there by
        :func:`hets_ep.stacked_sweep.groups`) once: in its first job (Hydra's ``run_job``: its
        folder, log and callbacks), the others getting Hydra's files and the group's outcome."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        planned = read(sweep_dir)
        composed = {}  # Hydra's own composition of each job: its node and .hydra/ files
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            composed[idx] = (list(overrides), sweep_config)
        programs = [group for group in planned.groups() if group[0] in composed]
        if planned.search is not None:  # a search's round: its grouping is logged as it launches
            configs = [planned.jobs[n].config for n in composed]
            for line in explain(configs, [[n - initial_job_idx for n in g] for g in programs]):
                log.info(line)
        returns = {}
        for group in programs:
            for i in group[1:]:  # the first job's folder is Hydra's run_job's; the others get Hydra's files here
                overrides, sweep_config = composed[i]
                with open_dict(sweep_config.hydra.runtime):
                    sweep_config.hydra.runtime.output_dir = str(planned.jobs[i].folder)
                hydra_files = planned.jobs[i].folder / str(sweep_config.hydra.output_subdir)
                save_config(_without_hydra(sweep_config), "config.yaml", hydra_files)
                save_config(sweep_config, "hydra.yaml", hydra_files)
                save_config(OmegaConf.create(overrides), "overrides.yaml", hydra_files)
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                          config=composed[group[0]][1], job_dir_key="hydra.sweep.dir",
                          job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            returns[group[0]] = ret
            for i in group[1:]:
                overrides, sweep_config = composed[i]
                returns[i] = JobReturn(overrides=overrides, cfg=_without_hydra(sweep_config), hydra_cfg=sweep_config,
                                       working_dir=os.getcwd(), task_name=ret.task_name, status=ret.status,
                                       _return_value=ret._return_value)
        return [returns[idx] for idx in composed]
