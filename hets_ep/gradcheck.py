"""``hets-ep gradcheck``: EP's gradient estimates against BPTT on one batch of the dataset."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from hets_ep import ep, seeding
from hets_ep.config import Config
from hets_ep.data import load_dataset
from hets_ep.errors import ConfigError
from hets_ep.timeconstants import sample_dt


def gradcheck(cfg: Config) -> dict:
    """Cosine similarity and norm ratio per weight tensor, for each estimator, at initial weights.

    Uses the first ``gradcheck.batch_size`` training examples and the run's model, dt draw
    and phases (``ep.T1``, ``ep.T2``, ``ep.beta``). Agreement needs a converged free phase: the
    report includes its residual. Prints a table and returns the report.
    """
    if cfg.ep.beta <= 0:
        raise ConfigError("gradcheck needs ep.beta > 0 (the EP estimators nudge with β)")
    phases = cfg.ep if cfg.ep.estimator != "bptt" else dataclasses.replace(cfg.ep, estimator="symmetric")
    data = load_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.path, cfg.gradcheck.batch_size,
                        cfg.dataset.normalize)
    net = cfg.model.build(data.classes)
    params = net.init(seeding.key(cfg.seed, "init"), data.input_shape)
    dt, dt_stats = sample_dt(cfg.seed, cfg.dt, net.state_shapes(data.input_shape))
    compare = ep.make_comparator(net, phases, tuple(cfg.gradcheck.estimators))
    report = compare(params, jnp.asarray(data.x_train), jnp.asarray(data.y_train), tuple(map(jnp.asarray, dt)),
                     seeding.key(cfg.seed, "estimator"))
    report.update(beta=phases.beta, T1=phases.T1, T2=phases.T2, batch_size=len(data.x_train), dt=dt_stats)
    print(f"free-phase residual {report['free_residual']:.2e} (β={phases.beta}, T1={phases.T1}, T2={phases.T2})")
    print(f"{'estimator':<12} {'tensor':<20} {'cosine':>8} {'norm ratio':>11}")
    for name, tensors in report["estimators"].items():
        for tensor, v in tensors.items():
            print(f"{name:<12} {tensor:<20} {v['cosine']:>8.4f} {v['norm_ratio']:>11.4f}")
    return report
