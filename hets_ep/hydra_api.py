"""The private parts of Hydra (1.3) hets-ep relies on, in one module, so that a Hydra upgrade
changes one file: running an app on arguments parsed beforehand, Hydra's own argument parser,
splitting a sweep into jobs, applying key overrides to a composed config, and writing a job's
``.hydra/`` files. Everything else hets-ep uses of Hydra is its public API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig


def args_parser() -> argparse.ArgumentParser:
    """Hydra's command-line parser (``-m``, ``--cfg``, ``--help``, overrides, …)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, task: Callable, config_path: str,
        config_name: str) -> None:
    """Run a Hydra app on arguments already parsed by :func:`args_parser` (what ``@hydra.main``
    does after parsing ``sys.argv``)."""
    from hydra._internal.utils import _run_hydra

    _run_hydra(args=args, args_parser=parser, task_function=task, config_path=config_path, config_name=config_name)


def sweep_jobs(overrides: Sequence) -> list[list[str]]:
    """Every job of a sweep, as Hydra's basic sweeper splits parsed overrides (the Cartesian
    product of the swept values)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return [job for batch in BasicSweeper.split_arguments(list(overrides), None) for job in batch]


def apply_overrides(overrides: Sequence, cfg: DictConfig) -> None:
    """Apply parsed key overrides (not config groups) to a composed config, in place, as Hydra's
    config loader does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def save_config(cfg, name: str, folder: Path) -> None:
    """Write one of a job's ``.hydra/`` files as Hydra's ``run_job`` does."""
    from hydra.core.utils import _save_config

    _save_config(cfg, name, Path(folder))
