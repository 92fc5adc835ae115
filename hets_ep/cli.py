"""``hets-ep train|gradcheck|report|bench``: a thin dispatch to the Hydra apps and tools."""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hets_ep import __version__, atomic, record
from hets_ep.config import CONFIG_GROUPS, Config, compose, config_keys, did_you_mean, register_schema, validate
from hets_ep.errors import ConfigError, HetsEpError

log = logging.getLogger("hets_ep")
register_schema()

USAGE = """usage: hets-ep COMMAND [ARGS]

commands:
  train      train one configuration, or a sweep with -m (Hydra overrides: dt=lognormal seed=3)
  gradcheck  compare EP gradient estimates with BPTT on one batch (same overrides as train)
  report     tables and figures from run or sweep directories: hets-ep report PATH...
  bench      throughput benchmark of the relaxation kernel and estimators

hets-ep train --help lists the config groups and keys."""

# Overrides that may differ when a run is continued from its directory.
_RESUMABLE_CHANGES = ("resume", "train.epochs", "train.progress", "train.check_every")


def fail(message: str, code: int = 2):
    print(f"hets-ep: error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(err: Exception) -> str:
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


def _override_keys() -> list[str]:
    """The config keys this command line sets explicitly."""
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return [k for k in keys if not k.startswith("hydra")]


def _resume_from(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The saved config of ``run_dir``, checked against this command's overrides."""
    saved_path = run_dir / record.CONFIG
    if not saved_path.is_file():
        raise ConfigError(f"resume={run_dir}: not a run directory (no .hydra/config.yaml)")
    saved = OmegaConf.load(saved_path)
    explicit = _override_keys()
    differing = [k for k in explicit if k not in _RESUMABLE_CHANGES
                 and OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    if differing:
        raise ConfigError(f"resume={run_dir} continues that run with its saved config, but this command "
                          f"changes {', '.join(differing)}; drop those overrides or start a new run")
    saved.resume = True
    for key in set(explicit) & set(_RESUMABLE_CHANGES) - {"resume"}:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    return saved


def configure(cfg: DictConfig) -> tuple[Config, Path]:
    """Validate the composed config and pick the run directory (``resume=PATH`` moves it)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if isinstance(cfg.get("resume"), str) and cfg.resume.lower() not in ("true", "false"):
        run_dir = Path(cfg.resume)
        cfg = _resume_from(cfg, run_dir)
        log.info("continuing the run in %s", run_dir)
    return validate(cfg), run_dir


def _guarded(task):
    """Report a user-fixable problem as one line and a non-zero exit, not a traceback."""

    def wrapper(cfg: DictConfig) -> None:
        from hets_ep.runtime import RunInterrupted

        for noisy in ("jax", "absl"):  # backend probing and orbax's save log are noise to users
            logging.getLogger(noisy).setLevel(logging.WARNING)

        try:
            task(cfg)
        except RunInterrupted as err:
            log.warning("%s", err)
            sys.exit(err.exit_code)
        except HetsEpError as err:
            fail(str(err))

    return wrapper


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def train_app(cfg: DictConfig) -> None:
    from hets_ep.train import train

    config, run_dir = configure(cfg)
    for summary in train(config, run_dir):
        log.info("seed %d %s: best test accuracy %s after %d epochs; outputs in %s", summary.seed,
                 summary.status, summary.best_test_acc, summary.epochs_completed, run_dir)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@_guarded
def gradcheck_app(cfg: DictConfig) -> None:
    from hets_ep.gradcheck import gradcheck

    config, run_dir = configure(cfg)
    report = gradcheck(config)
    atomic.write_json(run_dir / record.GRADCHECK, report)
    print(f"gradcheck written to {run_dir / record.GRADCHECK}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in ("train", "gradcheck"):
        precheck(rest)
        if command == "train" and not any(a.startswith("-") and a not in ("-m", "--multirun") for a in rest):
            check_output_dir(rest)
        sys.argv = [f"hets-ep {command}", *rest]
        if command == "gradcheck" and not any(a.startswith("hydra.job.name=") for a in rest):
            sys.argv.append("hydra.job.name=gradcheck")
        try:
            (train_app if command == "train" else gradcheck_app)()
        except ValueError as err:  # Hydra's own usage errors (conflicting flags) arrive as ValueError
            fail(str(err))
    elif command == "report":
        from hets_ep.report import main as report_main

        try:
            report_main(rest)
        except HetsEpError as err:
            fail(str(err))
    elif command == "bench":
        from hets_ep.bench import main as bench_main

        bench_main(rest)
    else:
        fail(f"unknown command {command!r}; choose train, gradcheck, report or bench (hets-ep --help)")


if __name__ == "__main__":
    main()
