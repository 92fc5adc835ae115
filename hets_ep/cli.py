"""``hets-ep train|gradcheck|evaluate|report|bench``: dispatch, and the two Hydra apps.

``train`` and ``gradcheck`` are parsed once by Hydra's argument parser; every job they name is
composed and checked before any work (:mod:`hets_ep.preflight`) and written into the plan beside
the run or sweep (:mod:`hets_ep.plan`); then Hydra runs the same parsed arguments, each job
inside :func:`hets_ep.job.guarded` reading its entry in the plan. Every problem a user can fix ends as one
line on stderr and a non-zero exit: 2 for a bad value, a missing file or a failed job; 128 +
signal for a run stopped by SIGINT/SIGTERM after it checkpointed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from omegaconf import OmegaConf

from hets_ep import __version__, hydra_api, job, plan, preflight, record, signals, stacked_sweep, xla
from hets_ep.config import describe_options, register_schema
from hets_ep.errors import HetsEpError
from hets_ep.plan import Job, Plan
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
def train_app(planned: Plan, entry: Job) -> None:
    from hets_ep.train import train

    config, members = entry.config, planned.members(entry)
    stacked = [(m.config, m.folder, m.label) for m in members] if len(members) > 1 else None
    job.prepare_jax(config, members=len(members) if stacked else config.train.parallel_seeds)
    if planned.resumed is not None:
        log.info("continuing the run in %s", entry.folder)
    dts = [m.dts[0] for m in members] if stacked else entry.dts
    for k, summary in enumerate(train(config, entry.folder, entry.label, stacked, dts)):
        if stacked:
            label, where = members[k].label, members[k].folder
        else:
            label, where = entry.label, entry.folder if config.train.parallel_seeds == 1 else \
                entry.folder / f"seed_{summary.seed}"
        log.info("%sseed %d %s: best %s accuracy %s after %d epochs; outputs in %s", f"{label}: " if label else "",
                 summary.seed, summary.status, summary.monitor, summary.best_acc, summary.epochs_completed, where)


@job.guarded
def gradcheck_app(planned: Plan, entry: Job) -> None:
    from hets_ep.gradcheck import gradcheck

    job.prepare_jax(entry.config, members=1)
    gradcheck(entry.config, entry.folder, entry.dts)


def _quoted(value) -> str:
    """A value for a Hydra override, quoted."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _hydra_settings(planned: Plan) -> list[str]:
    """Hydra's own settings for where the plan says the run or sweep writes (the directory's
    time stamp fixed by the pre-flight; a continued run's folder, whose saved config Hydra must
    not overwrite)."""
    if planned.multirun:
        return [f"hydra.sweep.dir={_quoted(planned.directory)}"]
    return [f"hydra.run.dir={_quoted(planned.directory)}",
            *(["hydra.output_subdir=null"] if planned.resumed is not None else [])]


def _hydra_command(command: str, argv: list[str]) -> None:
    cmd = preflight.parse(command, argv)
    if cmd.args.experimental_rerun is not None:
        fail("--experimental-rerun is not supported; continue a run with resume=RUN_DIR")
    if not cmd.answered_by_hydra:
        planned = preflight.precheck(cmd)
        cmd.args.overrides += _hydra_settings(planned)
        if planned.launcher == "stacked" and planned.search is None:  # a search's rounds are grouped as they launch
            print("\n".join(stacked_sweep.explain(planned.configs, planned.groups())))
        if cmd.multirun:
            signals.stop.share(planned.directory / record.STOP)
    if signals.stop.received is not None:
        fail(f"{signal.Signals(signals.stop.received).name} before the run started; nothing was written",
             128 + signals.stop.received)
    if not cmd.answered_by_hydra:
        plan.write(planned)
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
