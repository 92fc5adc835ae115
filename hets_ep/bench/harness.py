"""Timing: the median of repeats, the measured matmul peak, and the runner's compiled training
step with its compile time, memory and relaxation steps (counted by the kernel itself)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from hets_ep import steps
from hets_ep.bench.workloads import Workload, prepare
from hets_ep.models import Network


def timeit(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Achieved float32 GFLOP/s of one large matrix product on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    return 2 * size**3 / timeit(lambda: dot(a, a).block_until_ready(), repeats) / 1e9


def flops_per_sample(net: Network, input_shape, steps_per_batch: float) -> float:
    """Drive and first-layer gradient once each; every other layer forward and transposed at
    each relaxation step, plus its weight gradient at the two states EP compares."""
    f = net.module.flops(input_shape)
    return 2 * f[0] + (2 * steps_per_batch + 2) * sum(f[1:])


class Runner:
    """The runner's jitted training step of a workload, compiled: ``run()`` takes one step;
    ``compile_s``, ``memory_bytes`` and ``steps_per_batch`` (the relaxation steps of one batch,
    as the kernel counts them) describe it."""

    def __init__(self, workload: Workload, members: int = 1, **changes):
        self.run_spec, batch = prepare(workload, members, **changes)
        run = self.run_spec
        train_step = steps.make_train_step(run.net, run.cfg.ep, run.cfg.dynamics, run.tx, run.cfg.stability)
        start = time.perf_counter()
        compiled = train_step.lower(run.state, batch, run.hyper).compile()
        self.compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        self.memory_bytes = sum(getattr(memory, f, 0) for f in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                                "output_size_in_bytes")) if memory is not None else None
        self._step, self._state, self._batch, self._hyper = compiled, run.state, batch, run.hyper
        self.run()
        sums = jax.device_get(self._state.sums)
        self.steps_per_batch = float(sums.relaxation_steps[0] / sums.batches[0])

    def run(self) -> None:
        self._state = self._step(self._state, self._batch, self._hyper)
        jax.block_until_ready(self._state)
