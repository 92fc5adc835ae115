"""``hets-ep train|gradcheck|evaluate|report|bench``: a thin dispatch to the Hydra apps and tools.

Every problem a user can fix ends as one line on stderr and a non-zero exit: 2 for a bad
value, a missing file or a failed job; 128 + signal for a run stopped by SIGINT/SIGTERM after
it checkpointed. Hydra's errors reach this module (``HYDRA_FULL_ERROR``) instead of Hydra's
own traceback printer.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hets_ep import __version__, atomic, callbacks, record, runtime
from hets_ep.config import (CONFIG_GROUPS, Config, compose, config_keys, did_you_mean, register_schema,
                            validate)
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.runtime import RunInterrupted

log = logging.getLogger("hets_ep")
register_schema()
OmegaConf.register_new_resolver("hets_ep_jobs", runtime.parallel_jobs, replace=True)

USAGE = """usage: hets-ep COMMAND [ARGS]

commands:
  train      train one configuration, or a sweep with -m (Hydra overrides: dt=lognormal seed=3)
  gradcheck  compare EP gradient estimates with BPTT on one batch (same overrides as train)
  evaluate   evaluate a run's last checkpoint: hets-ep evaluate RUN_DIR [dataset=...]
  report     tables, tests and figures from run or sweep directories: hets-ep report PATH...
  bench      throughput benchmark of the relaxation kernel, estimators and sweeps

hets-ep train --help lists the config groups and keys; hets-ep --version prints the version."""

# Overrides that may differ when a run is continued from its directory.
_RESUMABLE_CHANGES = ("resume", "train.epochs", "train.progress", "train.check_every")


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


_PRECHECK_LIMIT = 256


def precheck(args: list[str]) -> None:
    """Compose and validate every configuration a command line names, before any work.

    A sweep ``-m a=1,2 b=x,y`` is checked over its whole product (beyond 256 combinations, each
    value once, with the first value of the other sweeps), so a bad value fails at once rather
    than after the first jobs ran. Runs with Hydra's own flags (``--help``, ``--cfg``, …) are
    left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return
    overrides = [a for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        sweeps = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                  for o in parsed if o.is_sweep_override()]
        if math.prod(map(len, sweeps)) <= _PRECHECK_LIMIT:
            variants = [fixed + list(combo) for combo in itertools.product(*sweeps)]
        else:
            firsts = [values[0] for values in sweeps]
            variants = [fixed + firsts[:i] + [v] + firsts[i + 1:] for i, values in enumerate(sweeps) for v in values]
        for variant in variants:
            try:
                compose(variant)
            except Exception as err:
                fail(_explain(err, variant))
    except Exception as err:  # Hydra, OmegaConf and our own validation errors alike
        fail(_one_line(err))
    _check_launcher(args)


def _explain(err: Exception, variant: list[str]) -> str:
    """One line for a refused configuration: an unknown key (with a near miss), else the error
    prefixed with the override that caused it."""
    known = set(config_keys())
    for override in variant:
        key = override.split("=", 1)[0].lstrip("+~")
        if "/" not in key and "." in key and key not in known and key.split(".")[0] in CONFIG_GROUPS:
            return f"{key}: unknown key{did_you_mean(key)}"
        if "." not in key and key not in known and key not in CONFIG_GROUPS:
            return f"{key}: unknown key{did_you_mean(key)}"
    message = _one_line(err)
    culprit = next((o for o in variant if _refused(o)), None)
    key = culprit.split("=", 1)[0].lstrip("+~") if culprit else None
    return f"{culprit}: {message}" if key and key not in message else message


def _refused(override: str) -> bool:
    try:
        compose([override])
        return False
    except Exception:
        return True


def _check_launcher(args: list[str]) -> None:
    launcher = next((a.split("=", 1)[1] for a in args if a.startswith("hydra/launcher=")), None)
    if launcher and launcher.startswith(("slurm", "submitit_slurm")) and shutil.which("sbatch") is None:
        fail(f"hydra/launcher={launcher} submits to Slurm, but sbatch is not on this machine's PATH; run it on "
             "the cluster's login node, or drop hydra/launcher to run the sweep here")


MIN_FREE_BYTES = 100 * 2**20


def check_output_dir(args: list[str]) -> None:
    """Fail before any work if the run (or sweep) directory cannot be written, is nearly full,
    or already holds a run that this command would overwrite (without ``resume``)."""
    multirun = "-m" in args or "--multirun" in args
    prefix = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    explicit = next((a[len(prefix):] for a in args if a.startswith(prefix)), None)
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), "false")
    target = Path(explicit or "outputs")
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
    if explicit and resume.lower() == "false" and target.is_dir():
        runs = [target] if not multirun else sorted(d for d in target.iterdir() if d.is_dir())
        used = [d for d in runs if record.holds_run(d)]
        if used:
            fail(f"{used[0]} already holds a run; pass resume=true to continue it, or choose another directory")


def _resume_in_place(args: list[str]) -> list[str]:
    """``resume=PATH`` continues the run in PATH itself: its log grows there, its record stays
    there, and no new output folder appears (Hydra writes no ``.hydra/`` over the saved one)."""
    path = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if path is None or path.lower() in ("true", "false") or "-m" in args or "--multirun" in args:
        return args
    if not (Path(path) / record.CONFIG).is_file():
        fail(f"resume={path}: not a run directory (no {record.CONFIG})")
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={path}",
                                                                       "hydra.output_subdir=null"]


def _override_keys() -> list[str]:
    """The config keys this command line sets explicitly."""
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


# The error of a single run, reported by _hydra_command once Hydra returns (raising it through
# Hydra would add Hydra's own "Error executing job" line).
_run_errors: list[HetsEpError] = []


def _guarded(task):
    """Each job of a run or sweep: a user-fixable problem is logged (into the job's
    ``train.log``), and a job that cannot start records ``status: failed`` with the error
    (unless its folder holds a run). A single run's error is reported by :func:`main` as one
    line; in a sweep the other jobs go on, and the sweep's end reports every failure
    (:class:`hets_ep.callbacks.SweepEnd`)."""

    def wrapper(cfg: DictConfig) -> None:
        for noisy in ("jax", "absl"):  # backend probing and orbax's save log are noise to users
            logging.getLogger(noisy).setLevel(logging.WARNING)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if _in_sweep():  # in a worker process of a parallel sweep: from its first job on
            runtime.stop.hold()
        try:
            if runtime.stop.received is not None:  # a sweep stopped before this job began
                raise RunInterrupted(runtime.stop.received, run_dir, started=False)
            task(cfg)
        except RunInterrupted as err:
            log.warning("%s", err)
            if not _in_sweep():
                _run_errors.append(err)
            elif err.signum == runtime.submitit_signal():  # a time limit ahead: submitit resubmits the job
                runtime.stop.previous(err.signum)(err.signum, None)
            elif err.signum == signal.SIGTERM and runtime.being_requeued():
                sys.exit(err.exit_code)  # no result: the sweep waits for Slurm to restart this job
        except HetsEpError as err:
            log.error("%s", err)
            if not record.holds_run(run_dir) and run_dir.is_dir():
                record.write_summary(run_dir, record.failed(cfg.get("seed", 0), str(err)))
            if not _in_sweep():
                _run_errors.append(err)

    return wrapper


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def train_app(cfg: DictConfig) -> None:
    from hets_ep.train import train

    config, run_dir = configure(cfg)
    _prepare_jax(config)
    for summary in train(config, run_dir):
        where = run_dir if config.train.parallel_seeds == 1 else run_dir / f"seed_{summary.seed}"
        log.info("seed %d %s: best %s accuracy %s after %d epochs; outputs in %s", summary.seed, summary.status,
                 summary.monitor, summary.best_acc, summary.epochs_completed, where)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def gradcheck_app(cfg: DictConfig) -> None:
    from hets_ep.gradcheck import gradcheck

    config, run_dir = configure(cfg)
    _prepare_jax(config)
    report = gradcheck(config)
    atomic.write_json(run_dir / record.GRADCHECK, report)
    print(f"gradcheck written to {run_dir / record.GRADCHECK}")


def _hydra_command(command: str, args: list[str]) -> None:
    hydra_flags = any(a.startswith("-") and a not in ("-m", "--multirun") for a in args)
    precheck(args)
    args = _resume_in_place(args)
    if command == "train" and not hydra_flags:
        check_output_dir(args)
    if runtime.stop.received is not None:
        fail(f"{signal.Signals(runtime.stop.received).name} before the run started; nothing was written",
             128 + runtime.stop.received)
    sys.argv = [f"hets-ep {command}", *args]
    if command == "gradcheck" and not any(a.startswith("hydra.job.name=") for a in args):
        sys.argv.append("hydra.job.name=gradcheck")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # job errors reach the handlers below, not Hydra's printer
    try:
        (train_app if command == "train" else gradcheck_app)()
        if _run_errors:
            raise _run_errors.pop()
        callbacks.raise_failures()
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

