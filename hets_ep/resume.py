"""Continuing a run, in one place: which run ``resume=…`` continues, with which config, and
whether a run starts by restoring its checkpoint.

* ``resume=PATH`` continues that run folder; ``resume=true`` without ``hydra.run.dir`` finds the
  latest interrupted, failed or unfinished run of the same configuration under the run root
  (:func:`find`, in the pre-flight; a sweep's jobs each continue their own folder).
* The continued run keeps its saved config; the command may change only the keys a continued
  run may (:class:`hets_ep.config.Roles`: ``train.epochs``, …), written back into the record
  (:func:`saved_config`, :func:`keep`); both in the pre-flight, the job reading them from its plan.
* A run restores its last checkpoint when asked to, or when Slurm restarted its job
  (:func:`wanted`); the trainer does the restoring.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from hets_ep import atomic, lock, provenance, record, slurm
from hets_ep.config import Config, roles
from hets_ep.errors import ConfigError, HetsEpError

log = logging.getLogger("hets_ep")


def comparable(cfg: Config) -> dict[str, Any]:
    """A config's values that make its run what it is: every key but those a continued run may
    change (:class:`hets_ep.config.Roles`), flattened."""
    flat = record.flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    return {k: v for k, v in flat.items() if not roles(k).resume}


def differences(a: Config, b: Config) -> list[str]:
    """The keys (but those a continued run may change) in which two configs differ."""
    x, y = comparable(a), comparable(b)
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))


def _pattern_root(pattern: str) -> Path:
    """The folder above every directory a ``hydra.run.dir`` pattern makes (``outputs``)."""
    fixed = pattern.split("${", 1)[0]
    return Path(fixed if fixed.endswith("/") or "${" not in pattern else os.path.dirname(fixed) or ".")


def _continuable(run: Path, epochs: int) -> bool:
    """Whether a single run can be continued: interrupted, failed, killed (running without its
    process), or completed short of ``epochs``."""
    try:
        summary = json.loads((run / record.SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    status = summary.get("status")
    if status == record.Status.RUNNING:
        return not lock.in_use(run)
    return status in (record.Status.INTERRUPTED, record.Status.FAILED) or (
        status == record.Status.COMPLETED and summary.get("epochs_completed", 0) < epochs)


def find(run_dir_given: bool, cfg: Config, hydra_node: DictConfig) -> Optional[Path]:
    """The run a single run continues in place: ``resume=PATH``'s, or with ``resume=true`` and
    no ``hydra.run.dir`` (``run_dir_given``) the latest run of this very configuration under the
    run root that can be continued. None when the run starts afresh (or continues the directory
    it was given)."""
    resume = cfg.resume
    if isinstance(resume, str) and resume.lower() not in ("true", "false"):
        run = Path(resume)
        if not (run / record.CONFIG).is_file():
            raise ConfigError(f"resume={run}: not a run directory (no {record.CONFIG})")
        return run
    if resume is not True or run_dir_given:
        return None
    pattern = OmegaConf.to_container(hydra_node.run, resolve=False)["dir"]
    root, sweeps = _pattern_root(pattern), _pattern_root(OmegaConf.to_container(hydra_node.sweep,
                                                                                  resolve=False)["dir"])
    found, others = [], []
    for summary in sorted(root.rglob(record.SUMMARY)) if root.is_dir() else []:
        run = summary.parent
        if sweeps in run.parents or not (run / record.CONFIG).is_file() or not _continuable(run, cfg.train.epochs):
            continue
        try:
            differ = differences(record.saved_config(run), cfg)
        except HetsEpError:
            continue
        (others if differ else found).append((summary.stat().st_mtime_ns, run, differ))
    if found:
        return max(found)[1]
    named = "; ".join(f"{run} (differs in {', '.join(differ[:3])}{', …' if len(differ) > 3 else ''})"
                      for _, run, differ in sorted(others, reverse=True)[:3])
    raise ConfigError(f"resume=true: no interrupted, failed or unfinished run of this configuration under {root}"
                      + (f"; runs there that could be continued: {named}" if named else "")
                      + "; drop resume to start a new run, or pass resume=RUN_DIR")


def saved_config(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> tuple[DictConfig, bool]:
    """The saved config of ``run_dir``, checked against this command's ``overrides``, with the
    keys a continued run may change (``train.epochs``, …) updated; and whether any was (then
    :func:`keep` writes it back into the record, once the command's checks have passed)."""
    saved = record.load_config(run_dir)
    explicit = [k for k in (o.split("=", 1)[0].lstrip("+~") for o in overrides) if not k.startswith("hydra")]
    differing = [k for k in explicit if not roles(k).resume and OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    if differing:
        raise ConfigError(f"resume={run_dir} continues that run with its saved config, but this command "
                          f"changes {', '.join(differing)}; drop those overrides or start a new run")
    changed = [k for k in set(explicit) if roles(k).resume and k != "resume"
               and OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    for key in changed:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    return saved, bool(changed)


def keep(run_dir: Path, saved: DictConfig) -> None:
    """Write a continued run's updated config (:func:`saved_config`) into its record."""
    atomic.write_text(run_dir / record.CONFIG, OmegaConf.to_yaml(saved))


def wanted(cfg: Config, run_dir: Path) -> bool:
    """Whether a run starts from its last checkpoint: ``resume`` asked for it, or Slurm restarted
    its job (a requeue or a time limit) and the run continues where it stopped."""
    if cfg.resume:
        return True
    if slurm.requeued(run_dir):
        log.info("Slurm restarted job %s (restart %d): continuing its run from the last checkpoint",
                 provenance.job()["slurm_job"], provenance.job()["restarts"])
        return True
    return False
