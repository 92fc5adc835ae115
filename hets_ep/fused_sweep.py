"""Sweeps fused into one program (``hydra/launcher=fused``): the jobs of a multirun that differ
only in values that are arrays at run time — the keys :class:`hets_ep.config.Roles` marks
``member``: the seed, the dt draw (distribution, mean, cv, matched statistic …; not
``dt.redraw`` or ``dt.per``), |β| and the learning-rate scale — train as the members of one
vmapped program, each job still writing its own run folder and record as if it ran alone.

The launcher composes every job with Hydra's own config loader and validates it, then groups
the jobs whose configs are equal but for those keys (at most ``max_members`` a group, and never
a job with ``train.parallel_seeds`` > 1). A group of one runs as Hydra's basic launcher
runs a job. A larger group runs once, in its first job (Hydra's ``run_job``: its folder, log and
callbacks), with every job of the group as a member (:class:`hets_ep.train.Trainer`); the other
jobs' folders get Hydra's files (``.hydra/config.yaml`` …) from Hydra's own writer. The shared
checkpoints live in the first job's folder, so ``resume=true`` re-forms the same groups and
continues them; a signal checkpoints the whole group and marks each of its jobs interrupted.
What was fused, and why the other jobs were not, is logged before the first job starts.
"""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path
from typing import Optional, Sequence

from hets_ep.config import Config, roles

log = logging.getLogger("hets_ep")

# The members of the fused group the current job trains — each job's config, run folder and
# label — set by the launcher around the group's run.
members: contextvars.ContextVar[Optional[list[tuple[Config, Path, str]]]] = contextvars.ContextVar("members",
                                                                                                    default=None)


def flat(cfg: Config) -> dict[str, str]:
    """A job's config as ``{dotted key: repr(value)}`` (without ``resume``)."""
    from omegaconf import OmegaConf

    from hets_ep.record import flatten

    return {k: repr(v) for k, v in flatten(OmegaConf.to_container(OmegaConf.structured(cfg))).items() if k != "resume"}


def signature(cfg: Config) -> tuple:
    """What a job's config is but for the keys a fused program holds per member."""
    return tuple(sorted((k, v) for k, v in flat(cfg).items() if not roles(k).member))


def differing(x: dict[str, str], y: dict[str, str], member: bool = False) -> list[str]:
    """The keys in which two jobs' configs (:func:`flat`) differ: those a program holds per
    member, or (by default) the others, which keep the jobs apart."""
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k) and roles(k).member == member)


def groups(configs: Sequence[Config], max_members: int) -> list[list[int]]:
    """Job indices grouped into fused programs, in job order."""
    by_signature: dict[tuple, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, cfg in enumerate(configs):
        if cfg.train.parallel_seeds > 1:
            order.append([i])
            continue
        chunks = by_signature.setdefault(signature(cfg), [])
        if not chunks or len(chunks[-1]) >= max_members:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(i)
    return order


def explain(configs: Sequence[Config], fused: list[list[int]]) -> list[str]:
    """Log lines: which jobs run as one program, and why the others do not."""
    lines = [f"fused sweep: {len(configs)} jobs in {len(fused)} programs"]
    flats = [flat(c) for c in configs]  # once each: a sweep's jobs are compared pairwise
    for group in fused:
        if len(group) > 1:
            keys = sorted({k for i in group[1:] for k in differing(flats[group[0]], flats[i], member=True)})
            lines.append(f"  jobs {', '.join(map(str, group))}: one program ({len(group)} members; they differ only "
                         f"in {', '.join(keys)})")
    alone = [g[0] for g in fused if len(g) == 1]
    for i in alone:
        cfg = configs[i]
        if cfg.train.parallel_seeds > 1:
            why = "train.parallel_seeds > 1 (its seeds are already one program)"
        else:
            others = [j for j in range(len(configs)) if j != i]
            keys = min((differing(flats[i], flats[j]) for j in others), key=len, default=None)
            why = ("no other job to fuse with" if keys is None else
                   f"it differs from every other job in {', '.join(keys[:4])}" if keys else
                   "the program of the jobs like it is full: hydra.launcher.max_members")
        lines.append(f"  job {i}: alone ({why})")
    return lines


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """Hydra's launch for ``hydra/launcher=fused`` (``launcher``: the plugin,
    ``hydra_plugins.hets_ep_fused``): compose and group the jobs, run each group once."""
    import copy
    import os

    from hydra.core.utils import JobReturn, _save_config, configure_log, filter_overrides, run_job, setup_globals
    from omegaconf import OmegaConf, open_dict

    from hets_ep.job import name as job_name
    from hets_ep.preflight import job_config

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    composed = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
        composed.append((list(overrides), sweep_config, job_config(sweep_config)))
    plan = groups([c for _, _, c in composed], launcher.max_members)
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
                _save_config(task, "config.yaml", hydra_files)
                _save_config(sweep_config, "hydra.yaml", hydra_files)
                _save_config(OmegaConf.create(overrides), "overrides.yaml", hydra_files)
        labels = [job_name(int(composed[i][1].hydra.job.num), composed[i][0]) for i in group]
        token = members.set([(composed[i][2], d, label) for i, d, label in zip(group, dirs, labels)]
                            if len(group) > 1 else None)
        try:
            ret = run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function,
                          config=composed[group[0]][1], job_dir_key="hydra.sweep.dir",
                          job_subdir_key="hydra.sweep.subdir")
        finally:
            members.reset(token)
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
        returns[group[0]] = ret
        for i, out in zip(group[1:], dirs[1:]):
            overrides, sweep_config, _ = composed[i]
            task = copy.deepcopy(sweep_config)
            with open_dict(task):
                del task["hydra"]
            returns[i] = JobReturn(overrides=overrides, cfg=task, hydra_cfg=sweep_config, working_dir=os.getcwd(),
                                   task_name=ret.task_name, status=ret.status, _return_value=ret._return_value)
    return returns
