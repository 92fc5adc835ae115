"""The benchmark's workloads, each a run config composed from the presets (``hets-ep train``
would run the same program), and the state a timing starts from (:func:`prepare`): built by
:func:`hets_ep.build.build_run` on random images of the workload's shape (throughput does not
depend on pixel values, and the ConvNet's CIFAR-10 shape needs no download)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from hets_ep import steps
from hets_ep.build import Run, build_run
from hets_ep.config import Config, compose
from hets_ep.data import Dataset

# The MNIST check of Laborieux et al.: one-sided EP, β 0.1, T1 30, T2 10, per-neuron dt.
KERNEL = ("ep=one_sided", "ep.beta=0.1", "ep.T1=30", "ep.T2=10", "dt=lognormal")


@dataclasses.dataclass(frozen=True)
class Workload:
    overrides: tuple[str, ...]
    input_shape: tuple[int, ...] = (28, 28, 1)

    @property
    def config(self) -> Config:
        return compose(list(self.overrides))

    @property
    def batch(self) -> int:
        return self.config.train.batch_size


WORKLOADS = {
    "mlp 784-512-10 b128": Workload((*KERNEL, "train.batch_size=128")),
    "mlp 784-512-10 b1024": Workload((*KERNEL, "train.batch_size=1024")),
    "mlp 784-512-512-10 b128": Workload((*KERNEL, "model=mlp2", "train.batch_size=128")),
    "convnet 32x32x3 b128": Workload((*KERNEL, "model=convnet", "train.batch_size=128"), (32, 32, 3)),
}
# The two workloads of a study (docs/study2/PLAN.md): the large-step preset (energy dynamics,
# batch 20, T1 100, T2 25) with HTS, and the default network (symmetric EP, batch 32).
STUDY = {
    "large-step preset b20": Workload(("experiment=study2_large_step", "dt=lognormal")),
    "default network b32": Workload(()),
}


def synthetic(workload: Workload, members: int = 1) -> Dataset:
    """Random images and labels of the workload's shape: one batch per member."""
    rng = np.random.default_rng(0)
    n = workload.batch * members
    x = rng.random((n, *workload.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return Dataset("synthetic", x, y, x[: workload.batch], y[: workload.batch], 10)


def prepare(workload: Workload, members: int = 1, **changes) -> tuple[Run, steps.Batch]:
    """The run of ``members`` seeds of a workload (``changes``: config sections replaced, e.g.
    ``ep=EPConfig(…)``), and one training batch per member."""
    cfg = workload.config
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, parallel_seeds=members), **changes)
    data = synthetic(workload, members)
    run = build_run(cfg, data)
    shape = (members, workload.batch)
    return run, steps.Batch(jnp.asarray(data.x_train.reshape(*shape, *workload.input_shape)),
                            jnp.asarray(data.y_train.reshape(shape)))
