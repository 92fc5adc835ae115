"""One way to build a run from its config: :func:`build_run` (the flax examples'
``create_train_state``), used by training, ``evaluate``, ``gradcheck`` and the benchmark.

A run of ``train.parallel_seeds = K`` seeds ``seed … seed+K−1`` holds, per seed, its split of
the training set (training and validation indices), its dt draw and its learning rates; and for
all seeds the network, the optimizer, the initial :class:`hets_ep.steps.TrainState` and the
:class:`hets_ep.steps.Hyper` (one member each).
Building writes nothing and leaves the arrays on the default device (placement is the caller's).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
import optax

from hets_ep import fused, optim, seeding, steps
from hets_ep.config import Config
from hets_ep.data import Dataset, load_dataset, validation_split
from hets_ep.errors import ConfigError
from hets_ep.models import Network
from hets_ep.models.network import State
from hets_ep.timeconstants import sample_dt

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    cfg: Config
    data: Dataset
    net: Network
    seeds: list[int]
    splits: list[tuple[np.ndarray, np.ndarray]]   # per seed: training and validation indices
    dts: list[tuple[State, dict]]                 # per seed: the dt draw and its statistics
    steps_per_epoch: int
    rates: list[list[float]]                      # per seed: each layer's base learning rate
    tx: optax.GradientTransformation
    schedule: optax.Schedule                      # the rate multiplier by step
    state: steps.TrainState                       # initial: weights, optimizer state, dt, keys
    hyper: steps.Hyper                            # per seed: |β| and the learning-rate scale


def check_batch(cfg: Config, train_size: int) -> None:
    """Refuse a training batch larger than the training examples a seed has."""
    if cfg.train.batch_size > train_size:
        d = cfg.dataset
        held = f" after dataset.val_size={d.val_size}" if d.val_size else ""
        subset = f" (dataset.subset={d.subset})" if d.subset else ""
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} exceeds the {train_size} training examples"
                          f"{subset}{held}")


def member_dts(members: list[Config], net: Network, input_shape) -> list[tuple[State, dict]]:
    """Each member's dt draw and its statistics, from its seed's own stream (the draw the
    command line's checks make for a job: :func:`hets_ep.preflight.check_job`)."""
    shapes = net.state_shapes(input_shape)
    return [sample_dt(m.seed, m.dt, shapes) for m in members]


def build_run(cfg: Config, data: Dataset | None = None, *, evaluation: bool = False,
              members: list[Config] | None = None, dts: list[tuple[State, dict]] | None = None) -> Run:
    """Everything a run of ``cfg`` computes with, before its first step (``data``: already
    loaded, else read as ``cfg.dataset`` says; ``evaluation``: built to evaluate trained weights,
    so the training split need not hold a batch). Its members are the seeds ``seed … seed+K−1``
    of ``train.parallel_seeds = K``, or ``members``: configs that differ from ``cfg`` only in
    keys the program holds per member (:class:`hets_ep.config.Roles`: a stacked sweep's jobs,
    :mod:`hets_ep.stacked_sweep`). ``dts``: the members' dt draws, already made (a job's, by
    the command line's checks: :mod:`hets_ep.plan`); else drawn here."""
    d = cfg.dataset
    data = data or load_dataset(d.name, d.root, d.path, d.subset, d.normalize, d.test_subset)
    net = cfg.model.build(data.classes)
    cfg, backend = fused.resolve(cfg, jax.default_backend(), net, data.input_shape)
    log.info("%s", backend)
    members = members or [dataclasses.replace(cfg, seed=cfg.seed + i) for i in range(cfg.train.parallel_seeds)]
    seeds = [m.seed for m in members]
    splits = [validation_split(len(data.x_train), d.val_size, s) for s in seeds]
    if not evaluation:
        check_batch(cfg, len(splits[0][0]))
    steps_per_epoch = len(splits[0][0]) // cfg.train.batch_size
    dts = dts or member_dts(members, net, data.input_shape)
    first = net.init(seeding.key(seeds[0], "init"), data.input_shape)
    tx = optim.build(cfg.optimizer, first, steps_per_epoch, cfg.train.epochs)
    state = steps.init_state(net, tx, data.input_shape, seeds, [dt for dt, _ in dts], cfg.stability.spike_window)
    return Run(cfg, data, net, seeds, splits, dts, steps_per_epoch,
               [optim.layer_rates(m.optimizer, first) for m in members], tx,
               optim.schedule(cfg.optimizer, steps_per_epoch, cfg.train.epochs), state, steps.hyper(members))
