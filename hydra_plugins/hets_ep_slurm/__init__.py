"""Hydra instantiates launchers only from ``hydra_plugins``: hets-ep's Slurm launcher, used by
``conf/hydra/launcher/slurm.yaml``; the behaviour lives in :mod:`hets_ep.slurm`."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from hets_ep import slurm


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Hydra's submitit Slurm launcher that notices jobs which die without a result."""

    def launch(self, job_overrides, initial_job_idx):
        return slurm.launch(self, job_overrides, initial_job_idx)
