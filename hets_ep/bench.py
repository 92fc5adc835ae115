"""``hets-ep bench``: throughput of the training step against the device's matmul peak and a
naive baseline, all measured in the same run.

Workloads (one-sided EP, β = 0.1, T1 = 30, T2 = 10, the MNIST check of Laborieux et al.):
MLP 784-512-10 at batch 128 and 1024, MLP 784-512-512-10 at batch 128, and the ConvNet on
32×32×3 inputs at batch 128 (random inputs: throughput does not depend on pixel values).

For each: training samples/s (median over repeats, after compilation), compile time, memory
of the compiled step, matmul FLOPs per sample from the layer shapes and phase lengths,
achieved GFLOP/s and its fraction of the measured matmul peak (a large ``jnp.dot``). The naive
baseline recomputes the input drive at every step and loops over steps in Python (a direct
port of the PyTorch reference implementations). Also measured: K = 8 seeds in one ``vmap``-ed
program against 8 sequential steps, and the compiled memory of EP and BPTT as T1 grows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hets_ep import atomic, ep, steps
from hets_ep.config import DtConfig, EPConfig
from hets_ep.dynamics import step as dynamics_step
from hets_ep.models import Network, build_network
from hets_ep.runtime import versions
from hets_ep.timeconstants import sample_dt

PHASES = EPConfig("one_sided", beta=0.1, T1=30, T2=10)
WORKLOADS = {
    "mlp 784-512-10 b128": dict(arch="mlp", hidden=(512,), input_shape=(28, 28, 1), batch=128),
    "mlp 784-512-10 b1024": dict(arch="mlp", hidden=(512,), input_shape=(28, 28, 1), batch=1024),
    "mlp 784-512-512-10 b128": dict(arch="mlp", hidden=(512, 512), input_shape=(28, 28, 1), batch=128),
    "convnet 32x32x3 b128": dict(arch="convnet", channels=(32, 64), input_shape=(32, 32, 3), batch=128),
}


def _timeit(fn: Callable[[], object], repeats: int) -> float:
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
    return 2 * size**3 / _timeit(lambda: dot(a, a).block_until_ready(), repeats) / 1e9


def flops_per_sample(net: Network, input_shape, phases: EPConfig) -> float:
    """Drive and first-layer gradient once each; every other layer forward and transposed at
    each step, plus its weight gradient at the two states EP compares."""
    f = net.module.flops(input_shape)
    steps = phases.T1 + (2 if phases.estimator == "symmetric" else 1) * phases.T2
    return 2 * f[0] + (2 * steps + 2) * sum(f[1:])


def _setup(spec: dict, members: int = 1):
    net = build_network(spec["arch"], 10, hidden=spec.get("hidden", (512,)), channels=spec.get("channels", (32, 64)))
    shapes = net.state_shapes(spec["input_shape"])
    params = [net.init(jax.random.key(s), spec["input_shape"]) for s in range(members)]
    dts = [tuple(map(jnp.asarray, sample_dt(s, DtConfig("lognormal", 0.5, cv=0.5), shapes)[0]))
           for s in range(members)]
    rng = np.random.default_rng(0)
    x = rng.random((members, spec["batch"], *spec["input_shape"]), dtype=np.float32)
    y = rng.integers(0, 10, (members, spec["batch"])).astype(np.int32)
    return net, steps.stack(params), steps.stack(dts), jnp.asarray(x), jnp.asarray(y)


def _ours(spec: dict, members: int = 1, phases: EPConfig = PHASES):
    """``(step, compile_s, memory_bytes)``: the runner's jitted training step, compiled."""
    net, params, dt, x, y = _setup(spec, members)
    tx = optax.sgd(0.01)
    train_step = steps.make_train_step(net, phases, tx, 1e-3)
    state = steps.TrainState(params, jax.vmap(tx.init)(params), steps.zero_sums(members), dt,
                             jnp.stack([jax.random.key_data(jax.random.key(s)) for s in range(members)]),
                             jnp.zeros((members,), jnp.int32))
    batch = steps.Batch(x, y)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    nbytes = sum(getattr(memory, f, 0) for f in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                 "output_size_in_bytes")) if memory is not None else None

    def run():
        nonlocal state
        state = compiled(state, batch)
        jax.block_until_ready(state)

    return run, compile_s, nbytes


def _naive(spec: dict, phases: EPConfig = PHASES):
    """The baseline: one jitted step per Python iteration, the drive recomputed inside."""
    net, params, dt, x, y = _setup(spec)
    params, dt, x, y = (jax.tree.map(lambda a: a[0], t) for t in (params, dt, x, y))

    @jax.jit
    def one_step(params, s, beta):
        return dynamics_step(net, params, net.drive(params, x), s, dt, beta, y)[0]

    gradient = jax.jit(lambda p, s1, s0, beta: ep.energy_gradient_difference(net, p, x, y, s1, beta, s0, None))
    tx = optax.sgd(0.01)
    update = jax.jit(lambda g, o, p: tx.update(g, o, p))
    opt_state = tx.init(params)
    beta = jnp.float32(phases.beta)
    zero = jnp.float32(0.0)

    def run():
        s = tuple(jnp.zeros((spec["batch"], *d.shape)) for d in dt)
        for _ in range(phases.T1):
            s = one_step(params, s, zero)
        free = s
        for _ in range(phases.T2):
            s = one_step(params, s, beta)
        updates, _ = update(gradient(params, s, free, beta), opt_state, params)
        jax.block_until_ready(updates)

    run()
    return run


def _device_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench(repeats: int = 5, batches: int = 10, naive_repeats: int = 3, quick: bool = False) -> dict:
    peak = matmul_peak()
    results = {"device": versions()["device"], "versions": versions(), "matmul_peak_gflops": peak, "workloads": {}}
    for name, spec in WORKLOADS.items():
        if quick and name != "mlp 784-512-10 b128":
            continue
        run, compile_s, nbytes = _ours(spec)
        run()
        seconds = _timeit(lambda: [run() for _ in range(batches)], repeats) / batches
        net = _setup(spec)[0]
        flops = flops_per_sample(net, spec["input_shape"], PHASES)
        samples_per_s = spec["batch"] / seconds
        naive = _naive(spec)
        naive_s = _timeit(naive, naive_repeats)
        results["workloads"][name] = {
            "batch": spec["batch"], "samples_per_s": samples_per_s, "compile_s": compile_s,
            "step_memory_bytes": nbytes, "flops_per_sample": flops, "gflops": flops * samples_per_s / 1e9,
            "fraction_of_peak": flops * samples_per_s / 1e9 / peak,
            "naive_samples_per_s": spec["batch"] / naive_s, "speedup_vs_naive": naive_s / seconds,
        }
        print(f"{name:<26} {samples_per_s:>11,.0f} samples/s  {flops * samples_per_s / 1e9:7.1f} GFLOP/s "
              f"({100 * flops * samples_per_s / 1e9 / peak:4.1f}% of peak)  {naive_s / seconds:5.1f}× naive", flush=True)

    spec = WORKLOADS["mlp 784-512-10 b128"]
    k = 8
    vmapped, _, _ = _ours(spec, members=k)
    single, _, _ = _ours(spec, members=1)
    vmapped(), single()
    t_vmapped = _timeit(vmapped, repeats)
    t_sequential = _timeit(lambda: [single() for _ in range(k)], repeats)
    results["parallel_seeds"] = {"K": k, "vmapped_s": t_vmapped, "sequential_s": t_sequential,
                                 "speedup": t_sequential / t_vmapped}
    print(f"{k} seeds in one program: {t_sequential / t_vmapped:.2f}× the speed of {k} sequential steps", flush=True)

    results["memory_vs_T1"] = {}
    for estimator in ("one_sided", "bptt"):
        for t1 in (30, 300) if quick else (30, 100, 300):
            _, _, nbytes = _ours(spec, phases=EPConfig(estimator, beta=0.1, T1=t1, T2=10))
            results["memory_vs_T1"][f"{estimator} T1={t1}"] = nbytes
    print("compiled step memory:", ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in results["memory_vs_T1"].items()
                                             if v is not None))
    results["device_peak_bytes"] = _device_peak_bytes()
    return results


def markdown(results: dict) -> str:
    rows = [f"Device: {results['device']} (jax {results['versions']['jax']}); measured matmul peak "
            f"{results['matmul_peak_gflops']:.1f} GFLOP/s (float32).", "",
            "| workload | samples/s | compile s | step memory MiB | MFLOP/sample | GFLOP/s | % of peak | × naive |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results["workloads"].items():
        mem = "–" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.1f}"
        rows.append(f"| {name} | {r['samples_per_s']:,.0f} | {r['compile_s']:.1f} | {mem} | "
                    f"{r['flops_per_sample'] / 1e6:.2f} | {r['gflops']:.1f} | {100 * r['fraction_of_peak']:.1f} | "
                    f"{r['speedup_vs_naive']:.1f} |")
    p = results["parallel_seeds"]
    rows += ["", f"{p['K']} seeds in one vmap-ed program: {p['speedup']:.2f}× the throughput of {p['K']} "
                 "sequential single-seed steps.", "", "| compiled training step | memory MiB |", "|---|---|"]
    rows += [f"| {k} | {v / 2**20:.1f} |" for k, v in results["memory_vs_T1"].items() if v is not None]
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench.json"), help="JSON of all figures")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the first workload (a smoke test)")
    args = parser.parse_args(argv)
    results = bench(repeats=args.repeats, quick=args.quick)
    atomic.write_json(args.out, results)
    print()
    print(markdown(results))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
