"""Hydra instantiates launchers only from ``hydra_plugins``: hets-ep's fused launcher, used by
``conf/hydra/launcher/fused.yaml``; the behaviour lives in :mod:`hets_ep.fused_sweep`."""

from hydra.plugins.launcher import Launcher

from hets_ep import fused_sweep


class FusedLauncher(Launcher):
    """Jobs that differ only in keys held per member (seed, dt, β, lr_scale) run as the members of one program."""

    def __init__(self, max_members: int = 64) -> None:
        self.max_members = max_members
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        return fused_sweep.launch(self, job_overrides, initial_job_idx)
