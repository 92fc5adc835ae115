"""``hets-ep evaluate RUN_DIR [OVERRIDES]``: a run's last checkpoint, evaluated again.

Restores the run's trained weights (without touching the run) and evaluates them on the test
split of its own dataset or another one with the same image shape and classes
(``dataset=fashion_mnist``), with the run's own dynamics — or others, so that two conditions'
dynamics compare **on the same weights**: ``dt=scalar dt.mean=0.5`` (dt redrawn from each
seed's stream), ``dynamics.integrator=exact``, ``dynamics.update_order=async``, ``ep.T1=300``,
``ep.tol=1e-4``, ``stability.residual_tol=1e-3``. The keys it may change are those the schema
marks (:class:`hets_ep.config.Roles`). Reports per seed: accuracy and loss, the fixed-point
residuals and unconverged shares of the free and nudged phases, the steps each took (and
whether a phase stopped at its step cap unconverged), and the spectral radius of the relaxation
step at the free fixed points of the probe batch. Prints one line per seed and writes
``RUN_DIR/evaluation-<dataset>[-<overrides>].json``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from hets_ep import atomic, record, signals, stability, steps, xla
from hets_ep.build import build_run
from hets_ep.checkpointing import Checkpoints
from hets_ep.config import Config, config_keys, roles
from hets_ep.data.registry import cache_dir, describe
from hets_ep.errors import HetsEpError
from hets_ep.placement import Placement
from hets_ep.preflight import overlay

ALLOWED = sorted({k.split(".")[0] if roles(k.split(".")[0]).evaluate else k for k in config_keys()
                  if roles(k).evaluate})


def _config(run_dir: Path, overrides: list[str]) -> tuple[Config, Config]:
    """The run's own config and the one to evaluate with: the run's, with ``overrides`` (another
    dataset keeps the run's normalisation unless told otherwise)."""
    saved, trained = record.load_config(run_dir), record.saved_config(run_dir)
    named = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if "dataset" in named and "dataset.normalize" not in named:
        overrides = [*overrides, f"dataset.normalize={trained.dataset.normalize}"]
    cfg = overlay(saved, overrides, lambda key: roles(key).evaluate,
                  f"evaluate changes only {', '.join(ALLOWED)} (and their keys)")
    return trained, cfg


def output_path(run_dir: Path, dataset: str, overrides: list[str]) -> Path:
    """``RUN_DIR/evaluation-<dataset>[-<override>…].json``."""
    parts = [re.sub(r"[^\w.=,+-]", "_", o) for o in overrides if not o.startswith("dataset")]
    return run_dir / ("-".join([f"evaluation-{dataset}", *parts]) + ".json")


def cap_note(result: dict, cfg: Config) -> str | None:
    """What to do when the relaxation stopped short (:func:`hets_ep.stability.cap_advice`)."""
    capped = float(result["capped"]) if cfg.ep.tol is not None else 0.0
    return stability.cap_advice(capped=capped, free_unconverged=result["unconverged"],
                                nudged_unconverged=result["nudged_unconverged"], t1=cfg.ep.T1, t2=cfg.ep.T2,
                                tol=cfg.ep.tol, noise=cfg.dynamics.noise if cfg.dynamics.noise_eval else 0.0,
                                residual_tol=cfg.stability.residual_tol, free_steps=result["free_steps"],
                                nudged_steps=result["nudged_steps"])


def evaluate(run_dir: Path, overrides: list[str]) -> list[dict]:
    """Per seed: the last checkpoint's metrics under ``overrides`` (see the module docstring)."""
    if not (run_dir / record.CONFIG).is_file():
        raise HetsEpError(f"{run_dir}: not a run directory (no {record.CONFIG})")
    trained, cfg = _config(run_dir, overrides)
    xla.configure(cpu_devices=xla.members_per_device(trained.train.parallel_seeds))
    xla.enable_compilation_cache(cache_dir())
    own = describe(trained.dataset.name, trained.dataset.root, trained.dataset.path)[:2]
    other = describe(cfg.dataset.name, cfg.dataset.root, cfg.dataset.path)[:2]
    if other != own:
        raise HetsEpError(f"dataset {cfg.dataset.name} has {other[1]} classes of {other[0]} images; the run was "
                          f"trained on {own[1]} classes of {own[0]}")
    run = build_run(cfg, evaluation=True)
    cfg = run.cfg  # its relaxation backend resolved
    checkpoints = Checkpoints(run_dir / record.CHECKPOINTS)
    try:
        restored = checkpoints.restore_latest({"state": run.state}) if checkpoints.steps() else None
    finally:
        checkpoints.close()
    if restored is None:
        raise HetsEpError(f"{run_dir}: no checkpoint to evaluate")
    tree, meta = restored
    state = steps.TrainState(*tree["state"])
    if cfg.dt != trained.dt:  # the trained weights with another dt draw
        state = state._replace(dt=run.state.dt)
    place = Placement(len(run.seeds), cfg.train.eval_batch_size, cfg.train.eval_batch_size)
    state = place.members(state)
    sums = steps.evaluate(steps.make_eval_step(run.net, cfg.ep, cfg.dynamics, cfg.stability.residual_tol, nudged=True),
                          state, place.members(steps.zero_sums(len(run.seeds))),
                          steps.host_batches(run.data.x_test, run.data.y_test, cfg.train.eval_batch_size, place.shared))
    probe = steps.make_spectral_probe(run.net, cfg.ep, cfg.dynamics, cfg.stability.spectral_iters)
    radii = probe(state, place.shared(run.data.x_test[:cfg.stability.spectral_batch])) \
        if cfg.stability.spectral_iters else None
    out = []
    for k, (seed, means, (_, stats)) in enumerate(zip(run.seeds, steps.means(sums), run.dts)):
        result = {name: value for name, value in means._asdict().items() if name not in ("finite", "loss_spikes")}
        spectral = steps.spectral_summary(None if radii is None else np.asarray(radii), k)
        out.append({"seed": seed, "epoch": meta["epoch"], "dataset": cfg.dataset.name,
                    "examples": len(run.data.x_test), "overrides": overrides, "dt": stats, **result,
                    "spectral_radius": spectral[0] if spectral else None,
                    "spectral_radius_max": spectral[1] if spectral else None,
                    "cap_note": cap_note(result, cfg)})
    atomic.write_json(output_path(run_dir, cfg.dataset.name, overrides), out)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holding .hydra/config.yaml and checkpoints/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"optional: what to change, among {', '.join(ALLOWED)}")
    args = parser.parse_args(argv)
    with signals.stop.installed():
        results = evaluate(args.run_dir, args.overrides)
    for r in results:
        radius = "–" if r["spectral_radius"] is None else f"{r['spectral_radius']:.3f}"
        print(f"seed {r['seed']} after epoch {r['epoch']}: {r['dataset']} test accuracy {r['acc']:.4f}, loss "
              f"{r['loss']:.4f}; free phase: fixed-point residual {r['fp_residual']:.2e}, unconverged "
              f"{r['unconverged']:.3f}, {r['free_steps']:.1f} steps; nudged: residual {r['nudged_fp_residual']:.2e}, "
              f"unconverged {r['nudged_unconverged']:.3f}, {r['nudged_steps']:.1f} steps; spectral radius {radius} "
              f"({r['examples']} examples)")
        if r["cap_note"]:
            print(f"note: seed {r['seed']}: {r['cap_note']}")
    print(f"written to {output_path(args.run_dir, results[0]['dataset'], args.overrides)}")
