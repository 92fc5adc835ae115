"""Sweeps stacked into one program (``hydra/launcher=stacked``): the jobs of a multirun that differ
only in values that are arrays at run time — the keys :class:`hets_ep.config.Roles` marks
``member``: the seed, the dt draw (distribution, mean, cv, matched statistic …; not
``dt.redraw`` or ``dt.per``), |β| and the learning-rate scale — train as the members of one
vmapped program, each job still writing its own run folder and record as if it ran alone.

The pre-flight (:mod:`hets_ep.preflight`) groups (:func:`groups`, pure) the jobs whose validated
configs are equal but for those keys (at most ``max_members`` a group, and never a job with
``train.parallel_seeds`` > 1) and writes the groups into the plan (:mod:`hets_ep.plan`); the
launcher (the Hydra plugin ``hydra_plugins.hets_ep_stacked``) runs them. A group of one runs as
Hydra's basic launcher runs a job. A larger group runs once, in its first job (Hydra's
``run_job``: its folder, log and callbacks), with every job of the group as a member
(:class:`hets_ep.train.Trainer`); the other jobs' folders get Hydra's files
(``.hydra/config.yaml`` …) from Hydra's own writer. The shared
checkpoints live in the first job's folder, so ``resume=true`` re-forms the same groups and
continues them; a signal checkpoints the whole group and marks each of its jobs interrupted.
What was stacked, and why the other jobs were not, is logged before the first job starts.
"""

from __future__ import annotations

from typing import Sequence

from hets_ep.config import Config, roles


def flat(cfg: Config) -> dict[str, str]:
    """A job's config as ``{dotted key: repr(value)}`` (without ``resume``)."""
    from omegaconf import OmegaConf

    from hets_ep.record import flatten

    return {k: repr(v) for k, v in flatten(OmegaConf.to_container(OmegaConf.structured(cfg))).items() if k != "resume"}


def signature(cfg: Config) -> tuple:
    """What a job's config is but for the keys a stacked program holds per member."""
    return tuple(sorted((k, v) for k, v in flat(cfg).items() if not roles(k).member))


def differing(x: dict[str, str], y: dict[str, str], member: bool = False) -> list[str]:
    """The keys in which two jobs' configs (:func:`flat`) differ: those a program holds per
    member, or (by default) the others, which keep the jobs apart."""
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k) and roles(k).member == member)


def groups(configs: Sequence[Config], max_members: int) -> list[list[int]]:
    """Job indices grouped into stacked programs, in job order."""
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


def explain(configs: Sequence[Config], stacked: list[list[int]]) -> list[str]:
    """Log lines: which jobs run as one program, and why the others do not."""
    lines = [f"stacked sweep: {len(configs)} jobs in {len(stacked)} programs"]
    flats = [flat(c) for c in configs]  # once each: a sweep's jobs are compared pairwise
    for group in stacked:
        if len(group) > 1:
            keys = sorted({k for i in group[1:] for k in differing(flats[group[0]], flats[i], member=True)})
            lines.append(f"  jobs {', '.join(map(str, group))}: one program ({len(group)} members; they differ only "
                         f"in {', '.join(keys)})")
    alone = [g[0] for g in stacked if len(g) == 1]
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
