"""``hets-ep evaluate RUN_DIR [dataset=NAME] [dataset.KEY=VALUE] [train.eval_batch_size=N]``.

Restores the run's last checkpoint and evaluates it, free phase only, on the test split of its
own dataset or another one with the same image shape and classes (``dataset=fashion_mnist``),
without touching the run. Prints one line per seed and writes
``RUN_DIR/evaluation-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from omegaconf import OmegaConf

from hets_ep import atomic, record, runtime
from hets_ep.config import validate
from hets_ep.data.registry import cache_dir
from hets_ep.errors import ConfigError, HetsEpError

# What an evaluation may change; everything else is the run's own config.
_ALLOWED = ("dataset", "train.eval_batch_size")


def _overridden(saved, overrides: list[str]):
    cfg = OmegaConf.create(OmegaConf.to_container(saved))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(_ALLOWED):
            raise ConfigError(f"{item}: evaluate takes dataset=NAME, dataset.KEY=VALUE and train.eval_batch_size=N")
        if key == "dataset":  # another dataset: its own files, all of its test split
            cfg.dataset = {"name": value, "normalize": cfg.dataset.normalize}
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    cfg.resume = False
    return validate(cfg)


def evaluate(run_dir: Path, overrides: list[str]) -> list[dict]:
    """Per seed: loss, accuracy and relaxation diagnostics of the last checkpoint."""
    from hets_ep.data import load_dataset
    from hets_ep.train import Trainer

    if not (run_dir / record.CONFIG).is_file():
        raise HetsEpError(f"{run_dir}: not a run directory (no {record.CONFIG})")
    saved = OmegaConf.load(run_dir / record.CONFIG)
    cfg = _overridden(saved, overrides)
    trained = dataclasses.replace(_overridden(saved, []), train=cfg.train)
    runtime.configure_xla(cpu_devices=runtime.members_per_device(cfg.train.parallel_seeds))
    runtime.enable_compilation_cache(cache_dir())
    trainer = Trainer(trained, run_dir)
    try:
        data, d = trainer.data, cfg.dataset
        if d != trained.dataset:
            data = load_dataset(d.name, d.root, d.path, d.subset, d.normalize, d.test_subset)
            if (data.input_shape, data.classes) != (trainer.data.input_shape, trainer.data.classes):
                raise HetsEpError(f"dataset {d.name} has {data.classes} classes of {data.input_shape} images; the run "
                                  f"was trained on {trainer.data.classes} classes of {trainer.data.input_shape}")
        if not trainer.restore():
            raise HetsEpError(f"{run_dir}: no checkpoint to evaluate")
        results = trainer._evaluate(data.x_test, data.y_test, time.perf_counter())
    finally:
        trainer.checkpoints.close()
    out = [{"seed": m.seed, "epoch": trainer.epoch, "dataset": d.name, "examples": len(data.x_test),
            **{k: v for k, v in r.items() if k != "finite" and not k.startswith("nudged")}}
           for m, r in zip(trainer.members, results)]
    atomic.write_json(run_dir / f"evaluation-{d.name}.json", out)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="dataset=NAME, dataset.KEY=VALUE, train.eval_batch_size=N")
    args = parser.parse_args(argv)
    with runtime.stop.installed():
        results = evaluate(args.run_dir, args.overrides)
    for r in results:
        print(f"seed {r['seed']} after epoch {r['epoch']}: {r['dataset']} test accuracy {r['acc']:.4f}, loss "
              f"{r['loss']:.4f}, fixed-point residual {r['fp_residual']:.2e}, unconverged {r['unconverged']:.3f} "
              f"({r['examples']} examples)")
    print(f"written to {args.run_dir / ('evaluation-' + results[0]['dataset'] + '.json')}")
