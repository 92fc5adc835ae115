"""Hydra instantiates launchers only from ``hydra_plugins``: hets-ep's stacked launcher, used by
``conf/hydra/launcher/stacked.yaml``: the Hydra glue here, the grouping (pure) in
:mod:`hets_ep.stacked_sweep`."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from hets_ep.hydra_api import save_config
from hets_ep.job import name as job_name
from hets_ep.preflight import job_config
from hets_ep.stacked_sweep import explain, groups, members

log = logging.getLogger("hets_ep")


class StackedLauncher(Launcher):
    """Jobs that differ only in keys held per member (seed, dt, β, lr_scale) run as the members of one program."""

    def __init__(self, max_members: int = 64) -> None:
        self.max_members = max_members
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        """Compose and group the jobs (:func:`hets_ep.stacked_sweep.groups`), run each group once:
        in its first job (Hydra's ``run_job``: its folder, log and callbacks), the others getting
        Hydra's files and the group's outcome."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        composed = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            composed.append((list(overrides), sweep_config, job_config(sweep_config)))
        plan = groups([c for _, _, c in composed], self.max_members)
        for line in explain([c for _, _, c in composed], plan):
            log.info(line)
        returns: list = [None] * len(composed)
        for group in plan:
            dirs = []
            for i in group:
                overrides, sweep_config, _ = composed[i]
                out = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
                dirs.append(out)
                if i != group[0]:  # the first job's folder is Hydra's run_job's; the others get Hydra's files here
                    hydra_files = out / str(sweep_config.hydra.output_subdir)
                    task = copy.deepcopy(sweep_config)
                    with open_dict(task):
                        del task["hydra"]
                    with open_dict(sweep_config.hydra.runtime):
                        sweep_config.hydra.runtime.output_dir = str(out.absolute())
                    save_config(task, "config.yaml", hydra_files)
                    save_config(sweep_config, "hydra.yaml", hydra_files)
                    save_config(OmegaConf.create(overrides), "overrides.yaml", hydra_files)
            labels = [job_name(int(composed[i][1].hydra.job.num), composed[i][0]) for i in group]
            token = members.set([(composed[i][2], d, label) for i, d, label in zip(group, dirs, labels)]
                                if len(group) > 1 else None)
            try:
                ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                              config=composed[group[0]][1], job_dir_key="hydra.sweep.dir",
                              job_subdir_key="hydra.sweep.subdir")
            finally:
                members.reset(token)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            returns[group[0]] = ret
            for i, out in zip(group[1:], dirs[1:]):
                overrides, sweep_config, _ = composed[i]
                task = copy.deepcopy(sweep_config)
                with open_dict(task):
                    del task["hydra"]
                returns[i] = JobReturn(overrides=overrides, cfg=task, hydra_cfg=sweep_config, working_dir=os.getcwd(),
                                       task_name=ret.task_name, status=ret.status, _return_value=ret._return_value)
        return returns
