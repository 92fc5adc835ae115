"""``hets-ep train|gradcheck|evaluate|report|bench``: dispatch, and the two Hydra apps.

``train`` and ``gradcheck`` are parsed once by Hydra's argument parser; every job they name is
composed and checked before any work (:mod:`hets_ep.preflight`), then Hydra runs the same parsed
arguments, each job inside :func:`hets_ep.job.guarded`. Every problem a user can fix ends as one
line on stderr and a non-zero exit: 2 for a bad value, a missing file or a failed job; 128 +
signal for a run stopped by SIGINT/SIGTERM after it checkpointed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from omegaconf import DictConfig, OmegaConf

from hets_ep import __version__, stacked_sweep, hydra_api, job, preflight, record, signals, xla
from hets_ep.config import describe_options, register_schema
from hets_ep.errors import HetsEpError
from hets_ep.signals import RunInterrupted

log = logging.getLogger("hets_ep")
register_schema()
OmegaConf.register_new_resolver("hets_ep_jobs", xla.parallel_jobs, replace=True)
OmegaConf.register_new_resolver("hets_ep_options", describe_options, replace=True)

USAGE = """usage: hets-ep COMMAND [ARGS]

commands:
  train      train one configuration, or a sweep with -m (Hydra overrides: dt=lognormal seed=3)
  gradcheck  compare EP gradient estimates with BPTT on one batch (same overrides as train)
  evaluate   evaluate a run's last checkpoint: hets-ep evaluate RUN_DIR [dataset=... dt=... ep.T1=...]
  report     tables, tests and figures from run or sweep directories: hets-ep report PATH...
  bench      throughput benchmark of the relaxation kernel, estimators and sweeps

hets-ep train --help lists the config groups and presets, keys and launchers; hets-ep --version prints the
version."""


def fail(message: str, code: int = 2):
    print(f"hets-ep: error: {message}", file=sys.stderr)
    sys.exit(code)


@job.guarded
def train_app(cfg: DictConfig) -> None:
    from hets_ep.train import train

    config, run_dir = job.configure(cfg)
    stacked = stacked_sweep.members.get()
    job.prepare_jax(config, members=len(stacked) if stacked else config.train.parallel_seeds)
    name = job.name()
    for k, summary in enumerate(train(config, run_dir, name, stacked)):
        if stacked:
            _, where, label = stacked[k]
        else:
            label, where = name, run_dir if config.train.parallel_seeds == 1 else run_dir / f"seed_{summary.seed}"
        log.info("%sseed %d %s: best %s accuracy %s after %d epochs; outputs in %s", f"{label}: " if label else "",
                 summary.seed, summary.status, summary.monitor, summary.best_acc, summary.epochs_completed, where)


@job.guarded
def gradcheck_app(cfg: DictConfig) -> None:
    from hets_ep.gradcheck import gradcheck

    config, run_dir = job.configure(cfg)
    job.prepare_jax(config, members=1)
    gradcheck(config, run_dir)


def _quoted(value) -> str:
    """A value for a Hydra override, quoted unless it is ``null``."""
    text = str(value)
    return text if text == "null" else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _hydra_command(command: str, argv: list[str]) -> None:
    cmd = preflight.parse(command, argv)
    if cmd.args.experimental_rerun is not None:
        fail("--experimental-rerun is not supported; continue a run with resume=RUN_DIR")
    if not cmd.answered_by_hydra:
        plan = preflight.precheck(cmd)
        if plan.resumed is not None and cmd.value("resume") is True:  # the run found: continued in place
            plan.settings["resume"] = plan.resumed
        cmd.args.overrides += [f"{key}={_quoted(value)}" for key, value in plan.settings.items()]
        if plan.launcher == "stacked" and plan.search is None:  # a search's rounds are grouped as they launch
            print("\n".join(stacked_sweep.explain(plan.configs, stacked_sweep.groups(plan.configs, plan.max_members))))
        if cmd.multirun:
            signals.stop.share(plan.directory / record.STOP)
            os.environ[job.SWEPT] = " ".join([*cmd.swept, *([plan.search.axis] if plan.search else [])])
    if signals.stop.received is not None:
        fail(f"{signal.Signals(signals.stop.received).name} before the run started; nothing was written",
             128 + signals.stop.received)
    if command == "gradcheck" and cmd.value("hydra.job.name") is None:
        cmd.args.overrides.append("hydra.job.name=gradcheck")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach the handlers below, not Hydra's printer
    try:
        hydra_api.run(cmd.args, cmd.parser, train_app if command == "train" else gradcheck_app, "conf", "train")
        signals.outcome.raise_first()
    except RunInterrupted as err:
        print(f"hets-ep: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except HetsEpError as err:
        fail(str(err))
    except Exception as err:  # Hydra's own errors: conflicting flags, launcher failures
        fail(preflight.one_line(err))


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
            with signals.stop.installed():  # a signal at any moment from here on becomes a clean stop
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
