"""``hets-ep evaluate RUN_DIR [OVERRIDES]``: a run's last checkpoint, evaluated again.

Restores the run's trained weights (without touching the run) and evaluates them on the test
split of its own dataset or another one with the same image shape and classes
(``dataset=fashion_mnist``), with the run's own dynamics — or others, so that two conditions'
dynamics compare **on the same weights**: ``dt=scalar dt.mean=0.5`` (dt redrawn from each
seed's stream), ``dynamics.integrator=exact``, ``dynamics.schedule=async``, ``ep.T1=300``,
``ep.tol=1e-4``, ``stability.residual_tol=1e-3``. Reports per seed: accuracy and loss, the
fixed-point residuals and unconverged shares of the free and nudged phases, the steps each
took, and the spectral radius of the relaxation step at the free fixed points of the probe
batch. Prints one line per seed and writes ``RUN_DIR/evaluation-<dataset>[-<overrides>].json``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from hets_ep import atomic, optim, record, runtime, steps
from hets_ep.checkpointing import Checkpoints
from hets_ep.config import Config, compose, validate
from hets_ep.data import load_dataset
from hets_ep.data.registry import cache_dir
from hets_ep.errors import ConfigError, HetsEpError
from hets_ep.placement import Placement
from hets_ep.timeconstants import sample_dt

# What an evaluation may change; everything else is the run's own config.
ALLOWED = ("dataset", "dt", "dynamics", "ep.T1", "ep.T2", "ep.tol", "ep.tol_every", "ep.beta", "ep.N",
           "train.eval_batch_size", "stability.residual_tol", "stability.spectral_batch", "stability.spectral_iters")


def _overridden(saved, overrides: list[str]) -> Config:
    cfg = OmegaConf.create(OmegaConf.to_container(saved))
    groups_first = sorted(overrides, key=lambda o: o.partition("=")[0] not in ("dataset", "dt"))
    for item in groups_first:
        key, sep, value = item.partition("=")
        if not sep or not (key in ALLOWED or key.split(".")[0] in ("dataset", "dt", "dynamics")):
            raise ConfigError(f"{item}: evaluate changes only {', '.join(ALLOWED)} (and their KEY=VALUE)")
        if key == "dataset":  # another dataset: its own files, all of its test split
            cfg.dataset = {"name": value, "normalize": cfg.dataset.normalize}
        elif key == "dt":  # another distribution: its group file over the schema's defaults
            cfg.dt = OmegaConf.structured(compose([f"dt={value}"]).dt)
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    cfg.resume = False
    return validate(cfg)


def output_path(run_dir: Path, dataset: str, overrides: list[str]) -> Path:
    """``RUN_DIR/evaluation-<dataset>[-<override>…].json``."""
    parts = [re.sub(r"[^\w.=,+-]", "_", o) for o in overrides if not o.startswith("dataset")]
    return run_dir / ("-".join([f"evaluation-{dataset}", *parts]) + ".json")


def evaluate(run_dir: Path, overrides: list[str]) -> list[dict]:
    """Per seed: the last checkpoint's metrics under ``overrides`` (see the module docstring)."""
    if not (run_dir / record.CONFIG).is_file():
        raise HetsEpError(f"{run_dir}: not a run directory (no {record.CONFIG})")
    saved = OmegaConf.load(run_dir / record.CONFIG)
    trained, cfg = _overridden(saved, []), _overridden(saved, overrides)
    runtime.configure_xla(cpu_devices=runtime.members_per_device(trained.train.parallel_seeds))
    runtime.enable_compilation_cache(cache_dir())
    d = trained.dataset
    own = load_dataset(d.name, d.root, d.path, d.subset, d.normalize, d.test_subset)
    data = own
    if cfg.dataset != trained.dataset:
        d = cfg.dataset
        data = load_dataset(d.name, d.root, d.path, d.subset, d.normalize, d.test_subset)
        if (data.input_shape, data.classes) != (own.input_shape, own.classes):
            raise HetsEpError(f"dataset {d.name} has {data.classes} classes of {data.input_shape} images; the run "
                              f"was trained on {own.classes} classes of {own.input_shape}")
    net = trained.model.build(own.classes)
    seeds = [trained.seed + i for i in range(trained.train.parallel_seeds)]
    shapes = net.state_shapes(own.input_shape)
    tx = optim.build(trained.optimizer, steps.member(_params_like(net, own.input_shape, seeds), 0), 1,
                     trained.train.epochs)
    draws = [sample_dt(s, cfg.dt, shapes) for s in seeds]
    like = steps.init_state(net, tx, own.input_shape, seeds, [dt for dt, _ in draws], trained.stability.spike_window)
    checkpoints = Checkpoints(run_dir / record.CHECKPOINTS)
    try:
        restored = checkpoints.restore_latest({"state": like}) if checkpoints.steps() else None
    finally:
        checkpoints.close()
    if restored is None:
        raise HetsEpError(f"{run_dir}: no checkpoint to evaluate")
    tree, meta = restored
    state = steps.TrainState(*tree["state"])
    if cfg.dt != trained.dt:  # the trained weights with another dt draw
        state = state._replace(dt=like.dt)
    place = Placement(len(seeds), cfg.train.eval_batch_size, cfg.train.eval_batch_size)
    state = place.members(state)
    sums = steps.evaluate(steps.make_eval_step(net, cfg.ep, cfg.dynamics, cfg.stability.residual_tol, nudged=True),
                          state, place.members(steps.zero_sums(len(seeds))),
                          steps.host_batches(data.x_test, data.y_test, cfg.train.eval_batch_size, place.shared))
    results = steps.means(sums)
    probe = steps.make_spectral_probe(net, cfg.ep, cfg.dynamics, cfg.stability.spectral_iters)
    radius = np.asarray(probe(state, place.shared(data.x_test[:cfg.stability.spectral_batch]))) \
        if cfg.stability.spectral_iters else None
    out = [{"seed": s, "epoch": meta["epoch"], "dataset": cfg.dataset.name, "examples": len(data.x_test),
            "overrides": overrides, "dt": stats, **{k: v for k, v in r.items() if k not in ("finite", "loss_spikes")},
            "spectral_radius": float(radius[k].mean()) if radius is not None else None,
            "spectral_radius_max": float(radius[k].max()) if radius is not None else None}
           for k, (s, r, (_, stats)) in enumerate(zip(seeds, results, draws))]
    atomic.write_json(output_path(run_dir, cfg.dataset.name, overrides), out)
    return out


def _params_like(net, input_shape, seeds):
    """Initial weights of the seeds, for shapes (the checkpoint replaces them)."""
    from hets_ep import seeding

    return steps.stack([net.init(seeding.key(s, "init"), input_shape) for s in seeds])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holding .hydra/config.yaml and checkpoints/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"optional: what to change, among {', '.join(ALLOWED)}")
    args = parser.parse_args(argv)
    with runtime.stop.installed():
        results = evaluate(args.run_dir, args.overrides)
    for r in results:
        radius = "–" if r["spectral_radius"] is None else f"{r['spectral_radius']:.3f}"
        print(f"seed {r['seed']} after epoch {r['epoch']}: {r['dataset']} test accuracy {r['acc']:.4f}, loss "
              f"{r['loss']:.4f}; free phase: fixed-point residual {r['fp_residual']:.2e}, unconverged "
              f"{r['unconverged']:.3f}, {r['free_steps']:.1f} steps; nudged: residual {r['nudged_fp_residual']:.2e}, "
              f"unconverged {r['nudged_unconverged']:.3f}, {r['nudged_steps']:.1f} steps; spectral radius {radius} "
              f"({r['examples']} examples)")
    print(f"written to {output_path(args.run_dir, results[0]['dataset'], args.overrides)}")
