"""The pre-flight of ``hets-ep train|gradcheck`` (and of ``evaluate``'s overrides): one parse of
the command line, every job it names composed and checked before any work.

The command line is parsed once, by Hydra's own argument parser (:func:`parse`); the overrides
stay the strings the user typed. A sweep is split into jobs by Hydra's sweeper
(``BasicSweeper.split_arguments``), each job composed by Hydra's compose API (once per choice of
config groups; the key overrides applied by Hydra's config loader), then validated against the
schema and checked where only shapes can tell (:func:`check_job`, which makes each job's dt
draw). The run or sweep directory is the one the composed config names (``hydra.run.dir``, its
time stamp fixed here), or the run a ``resume`` continues (:func:`hets_ep.resume.find`). What was
decided is the plan (:mod:`hets_ep.plan`), each job's only input; Hydra then runs the same parsed
arguments (:mod:`hets_ep.cli`).

Every problem ends as :class:`ConfigError` with one line that starts with the key or the
override, and in a sweep names the job by its swept values.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from hets_ep import hydra_api, record, resume
from hets_ep.config import Config, did_you_mean, group_options, register_schema, validate
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.plan import Job as PlannedJob, Plan, write as write_plan

MIN_FREE_BYTES = 100 * 2**20
DEPRECATED_LAUNCHER = "fused"   # hydra/launcher=stacked's old name (until the next version)
# Hydra's flags after which Hydra answers the command itself; nothing is checked or started.
_ANSWERED_BY_HYDRA = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")


@dataclasses.dataclass
class CommandLine:
    """One parse of ``hets-ep train|gradcheck ARGS`` by Hydra's argument parser."""

    command: str
    args: argparse.Namespace      # Hydra's: overrides (as typed), multirun, cfg, help, …
    parser: argparse.ArgumentParser

    @property
    def multirun(self) -> bool:
        return bool(self.args.multirun)

    @property
    def answered_by_hydra(self) -> bool:
        """Whether Hydra answers the command itself (``--help``, ``--cfg job``, …)."""
        return any(getattr(self.args, flag, None) for flag in _ANSWERED_BY_HYDRA)

    @functools.cached_property
    def overrides(self) -> list:
        """The overrides parsed by Hydra's grammar."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            return OverridesParser.create().parse_overrides(self.args.overrides)
        except Exception as err:  # Hydra's grammar errors
            raise ConfigError(one_line(err)) from None

    @property
    def swept(self) -> list[str]:
        """The keys the command sweeps over."""
        return [o.key_or_group for o in self.overrides if o.is_sweep_override()]

    def value(self, key: str) -> Any:
        """The value the command gives ``key`` (the last one given; None if none)."""
        found = [o.value() for o in self.overrides if o.key_or_group == key and not o.is_sweep_override()]
        return found[-1] if found else None

    def jobs(self) -> list[list[str]]:
        """Every job's overrides, as Hydra's sweeper splits them."""
        if not self.multirun:
            return [list(self.args.overrides)]
        return hydra_api.sweep_jobs(self.overrides)

    def label(self, job: Sequence[str]) -> str:
        """A job of a sweep by its swept values (``dt.cv=5``)."""
        swept = set(self.swept)
        return " ".join(o for o in job if o.lstrip("+~").split("=", 1)[0] in swept)


def parse(command: str, argv: Sequence[str]) -> CommandLine:
    """Parse ``hets-ep train|gradcheck ARGV`` with Hydra's argument parser."""
    parser = hydra_api.args_parser()
    parser.prog = f"hets-ep {command}"
    return CommandLine(command, parser.parse_args(list(argv)), parser)


def one_line(err: BaseException) -> str:
    """The first line of an error, with its cause and the valid options where Hydra has them."""
    parts = [str(err).strip().splitlines()[0]] if str(err).strip() else [type(err).__name__]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        parts.append(str(cause).strip().splitlines()[0])
    options = getattr(err, "options", None)
    if options:
        parts.append("choose one of " + ", ".join(options))
    return "; ".join(parts)


def _explained(err: Exception) -> ConfigError:
    """Hydra's and OmegaConf's composition errors as one line that starts with the key."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(option, err.options, n=1, cutoff=0.6)
        return ConfigError(f"{group}={option}: unknown option{f'; did you mean {close[0]}?' if close else ''}; "
                           f"choose one of {', '.join(err.options)}")
    if isinstance(err, ConfigCompositionException) and err.__cause__ is not None:
        cause = err.__cause__
        key = getattr(cause, "full_key", None)
        if key and str(err).startswith("Could not override"):
            return ConfigError(f"{key}: unknown key{did_you_mean(key)}")
        if key:
            return ConfigError(f"{key}: {str(cause).strip().splitlines()[0]}")
    if isinstance(err, HetsEpError):
        return ConfigError(str(err))
    return ConfigError(one_line(err))


def _is_group(key: str) -> bool:
    return "/" in key or ("." not in key and bool(group_options(key)))


class Composer:
    """Hydra's compose API over ``conf/``, each choice of config groups composed once and the
    key overrides applied to a copy by Hydra's own config loader."""

    def __init__(self):
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        """The config (with Hydra's own node) that ``hets-ep train OVERRIDES`` composes."""
        from hydra import compose, initialize_config_module
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        for o in parsed:
            if _is_group(o.key_or_group) and not isinstance(o.value(), str):
                options = group_options(o.key_or_group)
                raise ConfigError(f"{o.input_line}: unknown option"
                                  + (f"; choose one of {', '.join(options)}" if options else ""))
        groups = tuple(o.input_line for o in parsed if _is_group(o.key_or_group))
        if groups not in self._composed:
            register_schema()
            with initialize_config_module("hets_ep.conf", version_base="1.3"):
                self._composed[groups] = compose("train", overrides=list(groups), return_hydra_config=True)
        cfg = copy.deepcopy(self._composed[groups])
        hydra_api.apply_overrides([o for o in parsed if not _is_group(o.key_or_group)], cfg)
        return cfg


def job_config(composed: DictConfig) -> Config:
    """A composed config without Hydra's node, validated."""
    plain = OmegaConf.to_container(composed, resolve=False)
    plain.pop("hydra", None)
    return validate(OmegaConf.create(plain))


def task_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's own overrides: those Hydra passes its task (not Hydra's settings, ``hydra…``)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def precheck(cmd: CommandLine) -> Plan:
    """Compose and validate every job the command line names, then what needs shapes
    (:func:`check_job`, which makes each job's dt draw); fix the run or sweep directory and
    check it can be written. Returns the plan (:mod:`hets_ep.plan`), written by the caller once
    nothing can fail any more; a boundary search's jobs join it round by round (:func:`extend`)."""
    compose, composed, configs, jobs = Composer(), [], [], cmd.jobs()

    def checked(job, check):
        try:
            return check()
        except Exception as err:  # Hydra, OmegaConf and our own validation errors alike
            message = str(_explained(err))
            raise ConfigError(f"{message} (in the sweep's job {cmd.label(job)})" if cmd.swept else message) from None

    for job in jobs:
        composed.append(checked(job, lambda: compose(job)))
        configs.append(checked(job, lambda: job_config(composed[-1])))
    hydra_node = composed[0].hydra
    _check_launcher(hydra_node.runtime.choices.get("hydra/launcher"))
    launcher = hydra_node.runtime.choices.get("hydra/launcher")
    if launcher == DEPRECATED_LAUNCHER:
        print(f"hets-ep: hydra/launcher={DEPRECATED_LAUNCHER} is now hydra/launcher=stacked (jobs stacked into one "
              "program); the old name goes in the next version", file=sys.stderr)
        launcher = "stacked"
    if cmd.multirun and OmegaConf.to_container(hydra_node.sweep, resolve=False).get("subdir") != "${hydra.job.num}":
        raise ConfigError("hydra.sweep.subdir: hets-ep writes job N of a sweep into SWEEP_DIR/N (where resume=true "
                          "and the report find it); set hydra.sweep.dir instead")
    plan = Plan(Path(hydra_node.sweep.dir if cmd.multirun else hydra_node.run.dir).absolute(), cmd.multirun,
                tuple(cmd.swept), launcher, int(hydra_node.launcher.get("max_members", 64)))
    if hydra_node.runtime.choices.get("hydra/sweeper") == "boundary":
        plan.search = _check_search(cmd, hydra_node, compose)
        plan.swept += (plan.search.axis,)
    stacked = _groups(plan, configs)
    _configure_jax(cmd, hydra_node, len(stacked[0]) if plan.launcher == "stacked" else configs[0].train.parallel_seeds)
    changed = False
    if not cmd.multirun:
        found = resume.find(cmd.value("hydra.run.dir") is not None, configs[0], hydra_node)
        plan.resumed = found.absolute() if found else None
        plan.directory = plan.resumed or plan.directory
        if plan.resumed is not None:  # continued with its saved config
            saved, changed = resume.saved_config(composed[0], plan.resumed, task_overrides(cmd.args.overrides))
            configs[0] = validate(OmegaConf.merge(saved, {"resume": True}))
    dts = [checked(job, lambda: check_job(cfg)) for job, cfg in zip(jobs, configs)]
    if cmd.command == "train":
        check_output_dir(plan.directory, continuing=bool(configs[0].resume), sweep=cmd.multirun)
    if changed:
        resume.keep(plan.resumed, saved)
    if plan.search is None:  # a search's jobs are its rounds', planned as they launch
        _add(plan, [task_overrides(job) for job in jobs], 0, configs, dts, stacked)
    return plan


def extend(plan: Plan, batch: Sequence[Sequence[str]], first: int,
           compose: Callable[[Sequence[str]], DictConfig]) -> None:
    """Add the jobs ``first, first+1, …`` (their overrides ``batch``: a boundary search's round)
    to ``plan``, each composed (``compose``: inside Hydra, its config loader), validated and drawn
    as :func:`precheck` does, and write the plan."""
    configs, dts = [], []
    for overrides in batch:
        try:
            configs.append(job_config(compose(overrides)))
            dts.append(check_job(configs[-1]))
        except Exception as err:
            raise ConfigError(f"{_explained(err)} (in the search's job {' '.join(overrides)})") from None
    _add(plan, [list(o) for o in batch], first, configs, dts, _groups(plan, configs))
    write_plan(plan)


def _groups(plan: Plan, configs: Sequence[Config]) -> list[list[int]]:
    """The jobs (indices into ``configs``) each program trains: a stacked launcher's groups
    (:func:`hets_ep.stacked_sweep.groups`), else each job alone."""
    if plan.launcher != "stacked":
        return [[i] for i in range(len(configs))]
    from hets_ep.stacked_sweep import groups

    return groups(configs, plan.max_members)


def _add(plan: Plan, batch: Sequence[Sequence[str]], first: int, configs: Sequence[Config], dts: Sequence[list],
         stacked: list[list[int]]) -> None:
    for i, (overrides, cfg, drawn) in enumerate(zip(batch, configs, dts)):
        number = first + i
        plan.jobs[number] = PlannedJob(number, tuple(overrides), plan.label(number, overrides),
                                       plan.directory / str(number) if plan.multirun else plan.directory, cfg, drawn)
    for group in stacked:
        if len(group) > 1:
            numbers = tuple(first + i for i in group)
            plan.jobs[numbers[0]].members = numbers
            for number in numbers[1:]:
                plan.jobs[number].stacked_into = numbers[0]


def _check_search(cmd: CommandLine, hydra_node: DictConfig, compose: Composer):
    """``hydra/sweeper=boundary``: its settings against the command line (a number of the schema
    as the axis, not swept by hand; a range; a budget of at least one round), and every condition
    composed and validated at both ends of the range."""
    from hets_ep.boundary_search import Search, split
    from hets_ep.config import key_type

    if not cmd.multirun:
        raise ConfigError("hydra/sweeper=boundary runs a sweep: add -m (--multirun)")
    given = OmegaConf.to_container(hydra_node.sweeper)
    given.pop("_target_", None)
    axis = given.get("axis")
    kind = key_type(axis) if isinstance(axis, str) else None
    if axis is not None and (kind not in (int, float) or axis == "seed"):
        raise ConfigError(f"hydra.sweeper.axis: {axis} is not a number the schema holds (a stress such as "
                          "dynamics.noise, ep.beta, optimizer.lr_scale, dt.mean, ep.T1)" + did_you_mean(str(axis)))
    if axis in cmd.swept:
        raise ConfigError(f"hydra.sweeper.axis: {axis} is swept on the command line; the search sets its levels: drop "
                          f"{axis}=…")
    for key in ("low", "high", "budget", "level", "train_fraction", "seeds_per_round"):
        value = given.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"hydra.sweeper.{key}: must be a number, got {value!r}")
    search = Search(**given, integer=kind is int)
    conditions, seeds = split(cmd.args.overrides)
    search.check(len(conditions), len(seeds))
    for condition in conditions:
        for end in (search.low, search.high):
            overrides = [*condition, f"seed={seeds[0]}", f"{axis}={int(end) if kind is int else end}"]
            try:
                job_config(compose(overrides))
            except Exception as err:
                raise ConfigError(f"{_explained(err)} (at hydra.sweeper's {'low' if end == search.low else 'high'} "
                                  f"end, {axis}={end})") from None
    return search


def _configure_jax(cmd: CommandLine, hydra_node: DictConfig, members: int) -> None:
    """Set XLA up as a job run in this process needs it (its CPU split into ``members`` devices;
    a single run, or a sweep's basic or stacked launcher), before the checks start JAX to draw
    each job's time steps (a sweep's worker processes set up their own)."""
    from hets_ep import xla

    concurrent = cmd.multirun and hydra_node.launcher.get("n_jobs", 1) not in (None, 1)
    xla.configure(**xla.job_settings(concurrent, members))


def check_job(cfg: Config) -> list:
    """What the schema alone cannot see: the dataset's shape and size against the batch and the
    validation split, per-layer rate lists against the model's layers, each seed's own dt draw
    on the model's state shapes, the trackers' libraries. Returns the draws (per seed ``seed …
    seed+K−1``: the dt and its statistics), which the job trains with."""
    from hets_ep import loggers
    from hets_ep.build import check_batch
    from hets_ep.optim import layer_count

    d = cfg.dataset
    input_shape, classes, n_train = _shapes((d.name, d.root, d.path))
    n_train = min(n_train, d.subset or n_train)
    _check(d.val_size < n_train, "dataset.val_size",
           f"{d.val_size} leaves none of the {n_train} training examples to train on")
    check_batch(cfg, n_train - d.val_size)
    layers = layer_count(cfg.model)
    _check(len(cfg.optimizer.lr) in (1, layers), "optimizer.lr",
           f"lists {len(cfg.optimizer.lr)} rates; the model has {layers} layers: give 1 or {layers}")
    shapes = _state_shapes(_frozen(cfg.model), input_shape, classes)
    drawn = [_draw(_frozen(cfg.dt), shapes, seed) for seed in range(cfg.seed, cfg.seed + cfg.train.parallel_seeds)]
    loggers.check_available(cfg.logger)
    return drawn


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _frozen(section) -> tuple:
    """A config section's values, hashable (lists as tuples), in field order."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in dataclasses.astuple(section))


@functools.lru_cache(maxsize=None)
def _shapes(dataset: tuple) -> tuple[tuple[int, ...], int, int]:
    from hets_ep.data.registry import describe

    return describe(*dataset)


@functools.lru_cache(maxsize=None)
def _state_shapes(model: tuple, input_shape: tuple, classes: int) -> tuple:
    from hets_ep.config import ModelConfig

    return ModelConfig(*model).build(classes).state_shapes(input_shape)


@functools.lru_cache(maxsize=None)
def _draw(dt: tuple, shapes: tuple, seed: int) -> tuple:
    """A seed's dt draw (:func:`hets_ep.timeconstants.sample_dt`, its own stream): whether a
    truncated family can hold the request depends on it."""
    from hets_ep.config import DtConfig
    from hets_ep.timeconstants import sample_dt

    try:
        return sample_dt(seed, DtConfig(*dt), shapes)
    except ConfigError as err:
        raise ConfigError(f"{err} (with seed {seed}'s draw)") from None


def _check_launcher(launcher: Optional[str]) -> None:
    if launcher and launcher.startswith(("slurm", "submitit_slurm")) and shutil.which("sbatch") is None:
        raise ConfigError(f"hydra/launcher={launcher} submits to Slurm, but sbatch is not on this machine's PATH; "
                          "run it on the cluster's login node, or drop hydra/launcher to run the sweep here")


def check_output_dir(target: Path, continuing: bool, sweep: bool) -> None:
    """Fail before any work if the run (or sweep) directory cannot be written, is nearly full,
    or already holds a run that this command would overwrite (unless ``continuing``: ``resume``)."""
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ConfigError(f"cannot write run outputs under {target}: {err.strerror or err}") from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"only {free / 2**20:.0f} MiB free under {existing}; a run needs at least "
                          f"{MIN_FREE_BYTES / 2**20:.0f} MiB")
    if not continuing and target.is_dir():
        runs = sorted(d for d in target.iterdir() if d.is_dir()) if sweep else [target]
        used = [d for d in runs if record.holds_run(d)]
        if used:
            raise ConfigError(f"{used[0]} already holds a run; pass resume=true to continue it, or choose another "
                              "directory")


# -- overrides on a saved config (evaluate) ----------------------------------------------------

def overlay(saved: DictConfig, overrides: Sequence[str], allowed: Callable[[str], bool], what: str) -> Config:
    """``saved`` with ``overrides`` applied as Hydra applies them — a config group's option
    (``dt=scalar``) replaces that section with the option composed over the schema's defaults,
    a key (``ep.T1=300``) sets its value — each checked by ``allowed(key)``; validated."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as err:
        raise ConfigError(one_line(err)) from None
    cfg = OmegaConf.create(OmegaConf.to_container(saved))
    compose = Composer()
    for override in sorted(parsed, key=lambda o: not _is_group(o.key_or_group)):  # a group's keys after it
        key = override.key_or_group
        if not allowed(key) or override.is_sweep_override():
            raise ConfigError(f"{override.input_line}: {what}")
        if _is_group(key):
            try:
                section = compose([override.input_line])[key]
            except Exception as err:
                raise _explained(err) from None
            OmegaConf.update(cfg, key, OmegaConf.to_container(section), merge=False)
        else:
            if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise ConfigError(f"{key}: unknown key{did_you_mean(key)}")
            OmegaConf.update(cfg, key, override.value(), merge=False)
    cfg.resume = False
    return validate(cfg)
