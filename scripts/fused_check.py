"""Is the fused kernel right on this device? Run before any timing (scripts/gpu_bench.sh).

For the default network (784-512-10), a cross-entropy read-out network with asynchronous updates
and exact integration, and a three-hidden-layer network with skips and energy dynamics: the
backend the run would choose (a kernel that does not compile falls back, and says so), then on a
batch of 200 MNIST images (two tiles, one padded) the free phase and a nudged phase on the fused
kernel against the scan kernel, and BPTT's gradient through each. Exits 1 if any state differs by
more than 1e-4 or any gradient by more than 1e-3 (relative to the largest entry).

    python scripts/fused_check.py
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp

from hets_ep import ep, fused
from hets_ep.build import build_run
from hets_ep.config import compose
from hets_ep.dynamics import relax

NETWORKS = {"784-512-10": [],
            "ce read-out, async, exact": ["model.loss=ce", "model.activation=steep_sigmoid",
                                          "dynamics.update_order=async", "dynamics.integrator=exact"],
            "3 hidden, skips, energy": ["model=mlp3_skip", "model.dynamics=energy"]}
STATE_TOL, GRAD_TOL = 1e-4, 1e-3


def largest_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v)) / max(float(jnp.max(jnp.abs(u))), 1e-30))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check(name: str, overrides: list[str]) -> bool:
    run = build_run(compose(["dataset.subset=256", "dynamics.backend=fused", "dt=lognormal", *overrides]))
    _, line = fused.resolve(compose(["dynamics.backend=fused", *overrides]), jax.default_backend(), run.net,
                            run.data.input_shape)
    print(f"{name}: {line}", flush=True)
    if run.cfg.dynamics.backend != "fused":
        return False
    x, y = jnp.asarray(run.data.x_train[:200]), jnp.asarray(run.data.y_train[:200])
    params, dt = jax.tree.map(lambda a: a[0], run.state.params), jax.tree.map(lambda a: a[0], run.state.dt)
    kernel, scan = run.cfg.dynamics, dataclasses.replace(run.cfg.dynamics, backend="scan")

    def phases(dynamics):
        drive = run.net.drive(params, x)
        zeros = tuple(jnp.zeros((len(x), *d.shape)) for d in dt)
        free = relax(run.net, params, drive, zeros, dt, 60, dynamics, window=1)
        nudged = relax(run.net, params, drive, free.state, dt, 20, dynamics, jnp.asarray(0.2), y, window=1)
        return free.state, nudged.state

    def bptt(dynamics):
        return ep.bptt_estimate(run.net, params, x, y, dt, dataclasses.replace(run.cfg.ep, estimator="bptt",
                                                                                 T1=60), dynamics).grads

    states = largest_difference(jax.jit(lambda: phases(scan))(), jax.jit(lambda: phases(kernel))())
    grads = largest_difference(jax.jit(lambda: bptt(scan))(), jax.jit(lambda: bptt(kernel))())
    ok = states <= STATE_TOL and grads <= GRAD_TOL
    print(f"  fused − scan: states {states:.1e} (≤ {STATE_TOL:g}), BPTT gradients {grads:.1e} (≤ {GRAD_TOL:g}): "
          f"{'ok' if ok else 'WRONG'}", flush=True)
    return ok


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    results = [check(name, overrides) for name, overrides in NETWORKS.items()]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
