"""``hets-ep train|gradcheck|evaluate|report|bench``: a thin dispatch to the Hydra apps and tools.

The command line is parsed once (:class:`CommandLine`, with Hydra's own override parser).
Before any work, every job it names — a whole sweep — is composed and checked (:func:`precheck`):
the schema's values, and what needs the model and data shapes (the dt sampler's reachability,
per-layer lists, the batch against the training set, the trackers' libraries). The run or sweep
directory is fixed here, so a signal and the outcome of each job are found there.

Every problem a user can fix ends as one line on stderr and a non-zero exit: 2 for a bad
value, a missing file or a failed job; 128 + signal for a run stopped by SIGINT/SIGTERM after
it checkpointed. A job's error reaches this module through one channel,
:data:`hets_ep.runtime.outcome` (a job in another process through its run record, which the
sweep's end reads); Hydra's errors reach it directly (``HYDRA_FULL_ERROR``).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hets_ep import __version__, atomic, record, runtime
from hets_ep.config import Config, compose_groups, did_you_mean, group_options, register_schema, validate
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.runtime import RunInterrupted

log = logging.getLogger("hets_ep")
register_schema()
OmegaConf.register_new_resolver("hets_ep_jobs", runtime.parallel_jobs, replace=True)

USAGE = """usage: hets-ep COMMAND [ARGS]

commands:
  train      train one configuration, or a sweep with -m (Hydra overrides: dt=lognormal seed=3)
  gradcheck  compare EP gradient estimates with BPTT on one batch (same overrides as train)
  evaluate   evaluate a run's last checkpoint: hets-ep evaluate RUN_DIR [dataset=... dt=... ep.T1=...]
  report     tables, tests and figures from run or sweep directories: hets-ep report PATH...
  bench      throughput benchmark of the relaxation kernel, estimators and sweeps

hets-ep train --help lists the config groups, keys and launchers; hets-ep --version prints the version."""

# Overrides that may differ when a run is continued from its directory.
_RESUMABLE_CHANGES = ("resume", "train.epochs", "train.progress", "train.check_every")
MIN_FREE_BYTES = 100 * 2**20


def fail(message: str, code: int = 2):
    print(f"hets-ep: error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(err: BaseException) -> str:
    """The first line of an error, with its cause and the valid options where Hydra has them."""
    parts = [str(err).strip().splitlines()[0]] if str(err).strip() else [type(err).__name__]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        parts.append(str(cause).strip().splitlines()[0])
    options = getattr(err, "options", None)
    if options:
        parts.append("choose one of " + ", ".join(options))
    return "; ".join(parts)


@dataclasses.dataclass
class CommandLine:
    """One parse of ``hets-ep train|gradcheck ARGS``: Hydra's flags, the job overrides (fixed
    and swept, parsed by Hydra's override parser) and Hydra's own settings."""

    command: str
    flags: list[str]          # -m and Hydra's own (--help, --cfg, …)
    fixed: list[Any]          # parsed job overrides that are not swept
    swept: list[Any]          # parsed job overrides with several values
    hydra: dict[str, str]     # hydra.KEY=VALUE and hydra/GROUP=OPTION, as given

    @property
    def multirun(self) -> bool:
        return "-m" in self.flags or "--multirun" in self.flags

    @property
    def hydra_flags(self) -> bool:
        """Whether Hydra answers the command itself (``--help``, ``--cfg job``, …)."""
        return any(f.startswith("-") and f not in ("-m", "--multirun") for f in self.flags)

    def value(self, key: str) -> Optional[Any]:
        """The value a fixed override gives ``key`` (None if not given)."""
        found = [o.value() for o in self.fixed if o.key_or_group == key]
        return found[-1] if found else None

    def jobs(self) -> list[list[str]]:
        """Every job's overrides: the fixed ones and one value of each sweep."""
        fixed = [o.input_line for o in self.fixed]
        values = [[_with_value(o, v) for v in _sweep_values(o)] for o in self.swept]
        return [fixed + list(combo) for combo in itertools.product(*values)]

    def args(self, settings: dict[str, str]) -> list[str]:
        """The command line for Hydra, with Hydra ``settings`` over the given ones."""
        hydra_args = [f"{k}={v}" for k, v in {**self.hydra, **settings}.items()]
        return [*self.flags, *(o.input_line for o in (*self.fixed, *self.swept)), *hydra_args]


def _sweep_values(override) -> list:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator()) if _is_group(override.key_or_group) else \
            list(override.sweep_iterator())
    return [override.value()]


def _with_value(override, value) -> str:
    prefix = "+" if override.is_add() else "++" if override.is_force_add() else ""
    if isinstance(value, str) and _is_group(override.key_or_group):
        return f"{prefix}{override.key_or_group}={value}"
    return f"{prefix}{override.key_or_group}={_literal(value)}"


def _literal(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return repr(value)


@functools.lru_cache(maxsize=None)
def _is_group(key: str) -> bool:
    return "/" in key or (("." not in key) and bool(group_options(key)))


# Hydra's flags that take a value (``--info`` an optional one, from its choices).
_VALUED_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                 "-cd", "--experimental-rerun")
_INFO = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def parse(command: str, args: list[str]) -> CommandLine:
    """Split and parse a ``train``/``gradcheck`` command line (Hydra's grammar)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags, rest, tokens = [], [], iter(args)
    for token in tokens:
        if token.startswith("-"):
            flags.append(token)
            if token in _VALUED_FLAGS or (token in ("--info", "-i") and args[args.index(token) + 1:][:1] and
                                          args[args.index(token) + 1] in _INFO):
                flags.append(next(tokens, ""))
        else:
            rest.append(token)
    settings = [a for a in rest if a.lstrip("+~").startswith("hydra")]
    jobs = [a for a in rest if not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(jobs)
    except Exception as err:  # Hydra's grammar errors
        fail(_one_line(err))
    hydra_settings = dict(a.split("=", 1) if "=" in a else (a, "") for a in settings)
    return CommandLine(command, flags, [o for o in parsed if not o.is_sweep_override()],
                       [o for o in parsed if o.is_sweep_override()], hydra_settings)


def precheck(cmd: CommandLine) -> None:
    """Compose and validate every job a command line names, before any work: a sweep is
    checked over its whole product, each group combination composed once and the key values
    set on it; then what needs shapes (:func:`check_job`). Hydra's own flags are left to it."""
    if cmd.hydra_flags:
        return
    composed: dict[tuple, DictConfig] = {}
    for job in cmd.jobs():
        groups = tuple(o for o in job if _is_group(o.lstrip("+~").split("=", 1)[0]))
        try:
            _check_options(groups)
            if groups not in composed:
                composed[groups] = compose_groups(list(groups))
            config = _set_keys(composed[groups], [o for o in job if o not in groups])
            check_job(config)
        except Exception as err:  # Hydra, OmegaConf and our own validation errors alike
            fail(_explain(err, cmd, job))
    _check_launcher(cmd)


def _check_options(groups: Sequence[str]) -> None:
    """Refuse an unknown option of a config group, naming a near miss and the options."""
    for override in groups:
        group, _, value = override.lstrip("+~").partition("=")
        options = group_options(group) if "/" not in group else []
        chosen = [v.strip() for v in value.strip("[]").split(",")] if value.startswith("[") else [value]
        for option in chosen:
            if options and option not in options and option != "null":
                close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
                raise ConfigError(f"{group}={option}: unknown option{f'; did you mean {close[0]}?' if close else ''}; "
                                  f"choose one of {', '.join(options)}")


def _set_keys(base: DictConfig, overrides: list[str]) -> Config:
    """``base`` with key overrides applied as Hydra applies them, validated."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                del node[leaf]
            continue
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>" and not (override.is_add() or
                                                                                   override.is_force_add()):
            raise ConfigError(f"{key}: unknown key{did_you_mean(key)}")
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
    return validate(cfg)


def _explain(err: Exception, cmd: CommandLine, job: list[str]) -> str:
    """One line for a refused job: the error, and which sweep values make that job."""
    message = _one_line(err)
    if not cmd.swept:
        return message
    return f"{message} (in the sweep's job {' '.join(job[len(cmd.fixed):])})"


@functools.lru_cache(maxsize=None)
def _shapes(dataset: tuple) -> tuple[tuple[int, ...], int, int]:
    from hets_ep.data.registry import describe

    return describe(*dataset)


def check_job(cfg: Config) -> None:
    """What the schema alone cannot see: the dataset's shape and size against the batch and the
    validation split, per-layer rate lists against the model's layers, the dt sampler's
    reachability on the model's state shapes, the trackers' libraries."""
    from hets_ep import loggers
    from hets_ep.optim import layer_count

    d = cfg.dataset
    input_shape, classes, n_train = _shapes((d.name, d.root, d.path))
    n_train = min(n_train, d.subset or n_train)
    _check(d.val_size < n_train, "dataset.val_size",
           f"{d.val_size} leaves none of the {n_train} training examples to train on")
    train_size = n_train - d.val_size
    if cfg.train.batch_size > train_size:
        held = f" after dataset.val_size={d.val_size}" if d.val_size else ""
        subset = f" (dataset.subset={d.subset})" if d.subset else ""
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} exceeds the {train_size} training examples"
                          f"{subset}{held}")
    layers = layer_count(cfg.model)
    _check(len(cfg.optimizer.lr) in (1, layers), "optimizer.lr",
           f"lists {len(cfg.optimizer.lr)} rates; the model has {layers} layers: give 1 or {layers}")
    _sample(_frozen(cfg.dt), _state_shapes(_frozen(cfg.model), input_shape, classes))
    loggers.check_available(cfg.logger)


def _frozen(section) -> tuple:
    """A config section's values, hashable (lists as tuples), in field order."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in dataclasses.astuple(section))


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@functools.lru_cache(maxsize=None)
def _state_shapes(model: tuple, input_shape: tuple, classes: int) -> tuple:
    from hets_ep.config import ModelConfig

    return ModelConfig(*model).build(classes).state_shapes(input_shape)


@functools.lru_cache(maxsize=None)
def _sample(dt: tuple, shapes: tuple) -> None:
    from hets_ep.config import DtConfig
    from hets_ep.timeconstants import check_reachable

    check_reachable(DtConfig(*dt), shapes)


def _check_launcher(cmd: CommandLine) -> None:
    launcher = cmd.hydra.get("hydra/launcher")
    if launcher and launcher.startswith(("slurm", "submitit_slurm")) and shutil.which("sbatch") is None:
        fail(f"hydra/launcher={launcher} submits to Slurm, but sbatch is not on this machine's PATH; run it on "
             "the cluster's login node, or drop hydra/launcher to run the sweep here")


def output_dir(cmd: CommandLine) -> Path:
    """The run (or sweep) directory: as given, ``resume=PATH``'s, or a fresh time-stamped one
    (the same pattern as ``conf/train.yaml``)."""
    key = "hydra.sweep.dir" if cmd.multirun else "hydra.run.dir"
    resume = cmd.value("resume")
    if isinstance(resume, str) and resume.lower() not in ("true", "false") and not cmd.multirun:
        return Path(resume)
    if key in cmd.hydra:
        return Path(cmd.hydra[key])
    now = datetime.datetime.now()
    stamp = Path(now.strftime("%Y-%m-%d")) / now.strftime("%H-%M-%S-%f")
    return Path("outputs") / ("multirun" if cmd.multirun else "") / stamp


def check_output_dir(cmd: CommandLine, target: Path) -> None:
    """Fail before any work if the run (or sweep) directory cannot be written, is nearly full,
    or already holds a run that this command would overwrite (without ``resume``)."""
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        fail(f"cannot write run outputs under {target}: {err.strerror or err}")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        fail(f"only {free / 2**20:.0f} MiB free under {existing}; a run needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
    resume = cmd.value("resume")
    if resume in (None, False) and target.is_dir():
        runs = [target] if not cmd.multirun else sorted(d for d in target.iterdir() if d.is_dir())
        used = [d for d in runs if record.holds_run(d)]
        if used:
            fail(f"{used[0]} already holds a run; pass resume=true to continue it, or choose another directory")


def _resume_in_place(run_dir: Path) -> dict[str, str]:
    """``resume=PATH`` continues the run in PATH itself: its log grows there, its record stays
    there, and no new output folder appears (Hydra writes no ``.hydra/`` over the saved one)."""
    if not (run_dir / record.CONFIG).is_file():
        fail(f"resume={run_dir}: not a run directory (no {record.CONFIG})")
    return {"hydra.output_subdir": "null"}


def _override_keys() -> list[str]:
    """The config keys this job's command line sets explicitly."""
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return [k for k in keys if not k.startswith("hydra")]


def _resume_from(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The saved config of ``run_dir``, checked against this command's overrides; the keys a
    continued run may change (``train.epochs``, …) are updated in the saved record too."""
    saved = OmegaConf.load(run_dir / record.CONFIG)
    explicit = _override_keys()
    differing = [k for k in explicit if k not in _RESUMABLE_CHANGES
                 and OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    if differing:
        raise ConfigError(f"resume={run_dir} continues that run with its saved config, but this command "
                          f"changes {', '.join(differing)}; drop those overrides or start a new run")
    changed = [k for k in set(explicit) & set(_RESUMABLE_CHANGES) - {"resume"}
               if OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    for key in changed:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    if changed:
        atomic.write_text(run_dir / record.CONFIG, OmegaConf.to_yaml(saved))
    saved.resume = True
    return saved


def configure(cfg: DictConfig) -> tuple[Config, Path]:
    """Validate the composed config and pick the run directory (``resume=PATH``: that run's)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if isinstance(cfg.get("resume"), str) and cfg.resume.lower() not in ("true", "false"):
        run_dir = Path(cfg.resume)
        cfg = _resume_from(cfg, run_dir)
        log.info("continuing the run in %s", run_dir)
    return validate(cfg), run_dir


def _prepare_jax(config: Config) -> None:
    """Before JAX starts: one XLA thread per job when a sweep runs jobs side by side; the CPU
    split into devices for parallel seeds; the compilation cache."""
    from hets_ep.data.registry import cache_dir

    hc = HydraConfig.get()
    concurrent = hc.mode == RunMode.MULTIRUN and hc.launcher.get("n_jobs", 1) not in (None, 1)
    runtime.configure_xla(single_thread=concurrent,
                          cpu_devices=1 if concurrent else runtime.members_per_device(config.train.parallel_seeds))
    runtime.enable_compilation_cache(cache_dir())


def _in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


# The keys a sweep varies, for its jobs' log lines (set by the command line, inherited by workers).
_SWEPT = "HETS_EP_SWEPT_KEYS"


def _job_name() -> str:
    """In a sweep, ``job N (its values of the swept keys)``: the log lines of jobs side by side
    say whose they are."""
    if not _in_sweep():
        return ""
    hc = HydraConfig.get()
    swept = set(os.environ.get(_SWEPT, "").split())
    values = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return f"job {hc.job.num}" + (f" ({' '.join(values)})" if values else "")


def _guarded(task):
    """Each job of a run or sweep. A user-fixable problem is written into the job's
    ``train.log`` (not the console: the command line prints it once) and into its record —
    ``status: failed`` with the error, unless the folder holds a run — and reported through
    :data:`hets_ep.runtime.outcome`. In a sweep the other jobs go on, and the sweep's end
    names every failure (:class:`hets_ep.callbacks.SweepEnd`). A job of a sweep that was
    signalled does not start."""

    def wrapper(cfg: DictConfig) -> None:
        for noisy in ("jax", "absl"):  # backend probing and orbax's save log are noise to users
            logging.getLogger(noisy).setLevel(logging.WARNING)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if _in_sweep():  # in a worker process of a parallel sweep: from its first job on
            runtime.stop.hold()
            runtime.stop.watch(Path(HydraConfig.get().sweep.dir) / record.STOP)
        try:
            if runtime.stop.received is not None:  # stopped before this job began
                raise RunInterrupted(runtime.stop.received, run_dir, started=False)
            task(cfg)
        except RunInterrupted as err:
            if err.started:
                log.warning("%s", err)
            else:  # a job of a stopped sweep: its log says so, the console does not repeat it per job
                runtime.log_to_file(str(err))
            if not _in_sweep():
                runtime.outcome.report(err)
            elif err.signum == runtime.submitit_signal():  # a time limit ahead: submitit resubmits the job
                runtime.stop.previous(err.signum)(err.signum, None)
            elif err.signum == signal.SIGTERM and runtime.being_requeued():
                sys.exit(err.exit_code)  # no result: the sweep waits for Slurm to restart this job
        except HetsEpError as err:
            runtime.log_to_file(f"error: {err}")
            if not record.holds_run(run_dir) and run_dir.is_dir():
                record.write_summary(run_dir, record.failed(cfg.get("seed", 0), str(err), versions=runtime.versions(),
                                                            runtime=runtime.job()))
            if not _in_sweep():
                runtime.outcome.report(err)

    return wrapper


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def train_app(cfg: DictConfig) -> None:
    from hets_ep.train import train

    config, run_dir = configure(cfg)
    _prepare_jax(config)
    for summary in train(config, run_dir, _job_name()):
        where = run_dir if config.train.parallel_seeds == 1 else run_dir / f"seed_{summary.seed}"
        log.info("seed %d %s: best %s accuracy %s after %d epochs; outputs in %s", summary.seed, summary.status,
                 summary.monitor, summary.best_acc, summary.epochs_completed, where)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def gradcheck_app(cfg: DictConfig) -> None:
    from hets_ep.gradcheck import gradcheck

    config, run_dir = configure(cfg)
    _prepare_jax(config)
    gradcheck(config, run_dir)


def _hydra_command(command: str, args: list[str]) -> None:
    cmd = parse(command, args)
    precheck(cmd)
    settings: dict[str, str] = {}
    if not cmd.hydra_flags:
        target = output_dir(cmd)
        settings[f"hydra.{'sweep' if cmd.multirun else 'run'}.dir"] = str(target)
        if cmd.value("resume") not in (None, True, False) and not cmd.multirun:
            settings.update(_resume_in_place(target))
        elif command == "train":
            check_output_dir(cmd, target)
        if cmd.multirun:
            runtime.stop.share(target / record.STOP)
            os.environ[_SWEPT] = " ".join(o.key_or_group for o in cmd.swept)
    if runtime.stop.received is not None:
        fail(f"{signal.Signals(runtime.stop.received).name} before the run started; nothing was written",
             128 + runtime.stop.received)
    if command == "gradcheck":
        settings.setdefault("hydra.job.name", cmd.hydra.get("hydra.job.name", "gradcheck"))
    sys.argv = [f"hets-ep {command}", *cmd.args(settings)]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach the handlers below, not Hydra's printer
    try:
        (train_app if command == "train" else gradcheck_app)()
        runtime.outcome.raise_first()
    except RunInterrupted as err:
        print(f"hets-ep: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except HetsEpError as err:
        fail(str(err))
    except Exception as err:  # Hydra's own errors: conflicting flags, launcher failures
        fail(_one_line(err))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] in ("--version", "version"):
        print(f"hets-ep {__version__}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    try:
        if command in ("train", "gradcheck"):
            with runtime.stop.installed():  # a signal at any moment from here on becomes a clean stop
                _hydra_command(command, rest)
        elif command == "evaluate":
            from hets_ep.evaluate import main as evaluate_main

            evaluate_main(rest)
        elif command == "report":
            from hets_ep.report import main as report_main

            report_main(rest)
        elif command == "bench":
            from hets_ep.bench import main as bench_main

            bench_main(rest)
        else:
            fail(f"unknown command {command!r}; choose train, gradcheck, evaluate, report or bench (hets-ep --help)")
    except HetsEpError as err:
        fail(str(err))
