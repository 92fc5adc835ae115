"""``hets-ep bench``: throughput of the training step and of whole studies, every ratio between
figures measured in the same run on the same device.

**Kernel** (always): one-sided EP, β = 0.1, T1 = 30, T2 = 10 (the MNIST check of Laborieux et
al.) on MLP 784-512-10 at batch 128 and 1024, MLP 784-512-512-10 and the ConvNet on 32×32×3
(random inputs: throughput does not depend on pixel values). For each: training samples/s
(median over repeats, after compilation), compile time, compiled-step memory, matmul FLOPs per
sample, achieved GFLOP/s against the measured matmul peak, and two baselines: a *naive* one
(the drive recomputed at every step, one Python iteration per step, as the PyTorch reference
code does) and a *plain* one (an 80-line ``jit`` + ``lax.scan`` of the same update with scalar
dt, hand-written fields and no diagnostics). Also K = 8 seeds in one program, and the memory
of EP and BPTT as T1 grows.

**Study throughput** (``--study``): seed-samples/s of the two workloads a study runs — the
large-step preset (energy dynamics, batch 20, T1 100, T2 25) and the default network
(symmetric EP, batch 32) — under each way of running several seeds on this machine, each in
fresh processes: one process (XLA's default threading), one process on one XLA thread, K-seed
``vmap`` on one device, K seeds split over the CPU's cores (what ``train.parallel_seeds`` does),
N processes on one thread each (what a sweep does by default), and N processes × K/N seeds.
Then, for the two study workloads and workload 1, where a relaxation step's time goes: the
marginal time of one free-phase step on one core (the runner's kernel; with the scan unrolled
2, 4, 8 times; a hand-written step with the energy's gradient written out; the same with a
scalar dt; 8 seeds in one ``vmap``, per seed), its share of one core's matmul peak, and the
time per batch spent outside the relaxation.

**Sweep** (``--sweep N``): an N-seed cell of the large-step preset (10k images, 1 epoch) run as
N separate ``hets-ep train`` processes one after another, and as one ``hets-ep train -m``
(the default launcher), end to end.

**Relaxation** (``--relax``): on 32 MNIST images and the default network (784-512-10, leaky,
hard sigmoid) at initial weights, scalar dt 0.5 and lognormal mean 0.5 cv 0.5, each update order
(``sync``, ``async``): the steps the free phase needs until every sample's fixed-point
residual is below 1e-3 and 1e-4, the time of the ``ep.tol`` relaxation (checked every 5 steps)
against a fixed scan of the steps it took (equal final residual: the cost of checking), and
the time of a fixed 30-step phase (``ep.tol`` unset) against the same 30 steps through the
while loop with a tolerance never met (what the fixed path saves). Then the cost of a training
step per estimator: one-sided, symmetric and holomorphic EP with N = 2, 4, 6 (σ(4x−2)), as ratios
to symmetric.

**Speed** (``--speed``): whole training runs on the default task (all 60k MNIST images, 10
epochs, ``hets-ep train``'s defaults) — today's synchronous fixed-step default against
asynchronous relaxation with fewer steps — each in a fresh process: wall time, test accuracy,
relaxation steps per batch, and the speed-up at equal accuracy.

**GPU** (``--gpu``, for ``scripts/gpu_bench.sh``): workload 1 at batch 128 and 1024, 8 and 64
seeds of the large-step workload at batch 20, the ConvNet at batch 128.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hets_ep import atomic, ep, optim, provenance, steps, xla
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig, ModelConfig, OptimizerConfig, StabilityConfig
from hets_ep.dynamics import relax
from hets_ep.dynamics import step as dynamics_step
from hets_ep.models import Network
from hets_ep.timeconstants import sample_dt

PHASES = EPConfig("one_sided", beta=0.1, T1=30, T2=10)
WORKLOADS = {
    "mlp 784-512-10 b128": dict(model=ModelConfig(hidden=[512]), input_shape=(28, 28, 1), batch=128),
    "mlp 784-512-10 b1024": dict(model=ModelConfig(hidden=[512]), input_shape=(28, 28, 1), batch=1024),
    "mlp 784-512-512-10 b128": dict(model=ModelConfig(hidden=[512, 512]), input_shape=(28, 28, 1), batch=128),
    "convnet 32x32x3 b128": dict(model=ModelConfig(arch="convnet", channels=[32, 64]), input_shape=(32, 32, 3),
                                 batch=128),
}
# The two workloads of a study (docs/study2/PLAN.md): what one seed of each computes per batch.
STUDY = {
    "large-step preset b20": dict(model=ModelConfig(activation="steep_sigmoid", dynamics="energy"),
                                  input_shape=(28, 28, 1), batch=20, dt=DtConfig("lognormal", 0.8, cv=0.5, dt_max=2.0),
                                  phases=EPConfig("one_sided", beta=1.0, T1=100, T2=25),
                                  optimizer=OptimizerConfig(lr=[0.1, 0.05], momentum=0.0, schedule="constant")),
    "default network b32": dict(model=ModelConfig(), input_shape=(28, 28, 1), batch=32,
                                dt=DtConfig("scalar", 0.5), phases=EPConfig("symmetric", beta=0.5, T1=30, T2=10),
                                optimizer=OptimizerConfig()),
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
    n_steps = phases.T1 + (2 if phases.estimator == "symmetric" else 1) * phases.T2
    return 2 * f[0] + (2 * n_steps + 2) * sum(f[1:])


def _network(spec: dict) -> Network:
    return spec["model"].build(10)


def _state(spec: dict, members: int, tx):
    net = _network(spec)
    shapes = net.state_shapes(spec["input_shape"])
    dt_spec = spec.get("dt", DtConfig("lognormal", 0.5, cv=0.5))
    state = steps.init_state(net, tx, spec["input_shape"], range(members),
                             [sample_dt(s, dt_spec, shapes)[0] for s in range(members)], StabilityConfig().spike_window)
    rng = np.random.default_rng(0)
    x = rng.random((members, spec["batch"], *spec["input_shape"]), dtype=np.float32)
    y = rng.integers(0, 10, (members, spec["batch"])).astype(np.int32)
    return net, state, steps.Batch(jnp.asarray(x), jnp.asarray(y))


def _ours(spec: dict, members: int = 1, phases: EPConfig = PHASES):
    """``(run, compile_s, memory_bytes)``: the runner's jitted training step, compiled."""
    tx = optax.sgd(0.01)
    net, state, batch = _state(spec, members, tx)
    train_step = steps.make_train_step(net, phases, spec.get("dynamics", DynamicsConfig()), tx, StabilityConfig())
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
    """The naive baseline: one jitted step per Python iteration, the drive recomputed inside."""
    tx = optax.sgd(0.01)
    net, state, batch = _state(spec, 1, tx)
    params, dt, x, y = (steps.member(t, 0) for t in (state.params, state.dt, batch.x, batch.y))

    @jax.jit
    def one_step(params, s, beta):
        return dynamics_step(net, params, net.drive(params, x), s, dt, "sync", beta, y)[0]

    gradient = jax.jit(lambda p, s1, s0, beta: ep.energy_gradient(net, p, x, y, ((1.0, s1, beta), (-1.0, s0, None)),
                                                                   beta))
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


def _plain(spec: dict, phases: EPConfig = PHASES, dt: float = 0.5):
    """The plain baseline for an MLP with one hidden layer: the runner's leaky hard-sigmoid
    update (every layer moves from the same old state) and one-sided EP step, written directly
    as ``jit`` + ``lax.scan`` with a scalar dt and no diagnostics, accumulators or per-neuron
    steps."""
    batch, hidden = spec["batch"], spec["model"].hidden[0]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, int(np.prod(spec["input_shape"]))), dtype=np.float32))
    target = jax.nn.one_hot(jnp.asarray(rng.integers(0, 10, batch)), 10)
    w1 = jnp.asarray(rng.uniform(-1, 1, (x.shape[1], hidden)).astype(np.float32)) / np.sqrt(x.shape[1])
    w2 = jnp.asarray(rng.uniform(-1, 1, (hidden, 10)).astype(np.float32)) / np.sqrt(hidden)
    params = (w1, jnp.zeros(hidden), w2, jnp.zeros(10))

    @jax.jit
    def train_step(params):
        w1, b1, w2, b2 = params
        drive = x @ w1 + b1

        def relax(s, beta, n):
            def body(s, _):
                h, o = s
                return (h + dt * (jnp.clip(drive + o @ w2.T, 0, 1) - h),
                        o + dt * (jnp.clip(h @ w2 + b2 + beta * (target - o), 0, 1) - o)), None
            return jax.lax.scan(body, s, length=n)[0]

        free = relax((jnp.zeros((batch, hidden)), jnp.zeros((batch, 10))), 0.0, phases.T1)
        nudged = relax(free, phases.beta, phases.T2)
        scale = 0.01 / (phases.beta * batch)
        dh, do = nudged[0] - free[0], nudged[1] - free[1]
        return (w1 + scale * x.T @ dh, b1 + scale * dh.sum(0),
                w2 + scale * (nudged[0].T @ nudged[1] - free[0].T @ free[1]), b2 + scale * do.sum(0))

    def run():
        nonlocal params
        params = train_step(params)
        jax.block_until_ready(params)

    run()
    return run


def hand_step(net: Network, params, drive: jax.Array, s, dt):
    """The runner's free-phase step (:func:`hets_ep.dynamics.step`) for an MLP with one hidden
    layer, with the gradient of the energy written out by hand: ``h`` ``(B, H)`` and ``o``
    ``(B, 10)`` move from the same old state.

    * leaky:  ``h ← h + dt_h ⊙ (σ(d + o W₂ᵀ) − h)``, ``o ← o + dt_o ⊙ (σ(h W₂ + b₂) − o)``
    * energy: ``h ← clip(h − dt_h ⊙ (h − ρ'(h) ⊙ (d + ρ(o) W₂ᵀ)))``, likewise ``o`` with
      ``ρ(h) W₂ + b₂``; ``ρ`` the steep sigmoid, ``ρ' = 4ρ(1 − ρ)``.
    """
    (h, o), (dt_h, dt_o) = s, dt
    w2, b2 = params["params"]["layers_1"]["kernel"], params["params"]["layers_1"]["bias"]
    if net.dynamics == "leaky":
        sigma = net.act.fn
        return h + dt_h * (sigma(drive + o @ w2.T) - h), o + dt_o * (sigma(h @ w2 + b2) - o)
    if net.activation != "steep_sigmoid":
        raise ValueError(f"no hand-written energy step for {net.activation}")
    rho_h, rho_o = net.act.fn(h), net.act.fn(o)
    slope_h, slope_o = 4 * rho_h * (1 - rho_h), 4 * rho_o * (1 - rho_o)
    lo, hi = net.act.lo, net.act.hi
    return (jnp.clip(h - dt_h * (h - slope_h * (drive + rho_o @ w2.T)), lo, hi),
            jnp.clip(o - dt_o * (o - slope_o * (rho_h @ w2 + b2)), lo, hi))


def kernel(repeats: int = 5, batches: int = 10, quick: bool = False) -> dict:
    """The kernel section (see the module docstring)."""
    peak = matmul_peak()
    results = {"device": provenance.versions()["device"], "versions": provenance.versions(), "matmul_peak_gflops": peak,
               "workloads": {}}
    for name, spec in WORKLOADS.items():
        if quick and name != "mlp 784-512-10 b128":
            continue
        run, compile_s, nbytes = _ours(spec)
        run()
        seconds = _timeit(lambda: [run() for _ in range(batches)], repeats) / batches
        flops = flops_per_sample(_network(spec), spec["input_shape"], PHASES)
        samples_per_s = spec["batch"] / seconds
        naive_s = _timeit(_naive(spec), max(2, repeats // 2))
        row = {"batch": spec["batch"], "samples_per_s": samples_per_s, "compile_s": compile_s,
               "step_memory_bytes": nbytes, "flops_per_sample": flops, "gflops": flops * samples_per_s / 1e9,
               "fraction_of_peak": flops * samples_per_s / 1e9 / peak,
               "naive_samples_per_s": spec["batch"] / naive_s, "speedup_vs_naive": naive_s / seconds}
        if spec["model"].arch == "mlp" and len(spec["model"].hidden) == 1:
            plain = _plain(spec)
            plain_s = _timeit(lambda: [plain() for _ in range(batches)], repeats) / batches
            row.update(plain_samples_per_s=spec["batch"] / plain_s, speedup_vs_plain=plain_s / seconds)
        results["workloads"][name] = row
        print(f"{name:<26} {samples_per_s:>11,.0f} samples/s  {row['gflops']:7.1f} GFLOP/s "
              f"({100 * row['fraction_of_peak']:4.1f}% of peak)  {row['speedup_vs_naive']:5.1f}× naive"
              + (f"  {row['speedup_vs_plain']:4.2f}× plain" if "speedup_vs_plain" in row else ""), flush=True)

    spec, k = WORKLOADS["mlp 784-512-10 b128"], 8
    vmapped, _, _ = _ours(spec, members=k)
    single, _, _ = _ours(spec, members=1)
    vmapped(), single()
    t_vmapped = _timeit(vmapped, repeats)
    t_sequential = _timeit(lambda: [single() for _ in range(k)], repeats)
    results["parallel_seeds"] = {"K": k, "vmapped_s": t_vmapped, "sequential_s": t_sequential,
                                 "speedup": t_sequential / t_vmapped}
    print(f"{k} seeds in one program (one device): {t_sequential / t_vmapped:.2f}× the speed of {k} sequential steps",
          flush=True)
    results["memory_vs_T1"] = {}
    for estimator in ("one_sided", "bptt"):
        for t1 in (30, 300) if quick else (30, 100, 300):
            _, _, nbytes = _ours(spec, phases=EPConfig(estimator, beta=0.1, T1=t1, T2=10))
            results["memory_vs_T1"][f"{estimator} T1={t1}"] = nbytes
    print("compiled step memory:", ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in results["memory_vs_T1"].items()
                                             if v is not None), flush=True)
    return results


# -- study throughput: each measurement in fresh processes -----------------------------------------

def measure(workload: str, members: int, batches: int, cpu_devices: int = 1) -> dict:
    """Steady-state seed-samples/s of ``members`` seeds of a study workload in this process."""
    xla.configure(cpu_devices=cpu_devices)
    from hets_ep.placement import Placement

    spec = STUDY[workload]
    net = _network(spec)
    params0 = net.init(jax.random.key(0), spec["input_shape"])
    tx = optim.build(spec["optimizer"], params0, 500, 10)
    _, state, batch = _state(spec, members, tx)
    place = Placement(members, spec["batch"], spec["batch"])
    state, batch = place.members(state), steps.Batch(place.batch(batch.x), place.batch(batch.y))
    train_step = steps.make_train_step(net, spec["phases"], DynamicsConfig(), tx, StabilityConfig())
    for _ in range(3):
        state = train_step(state, batch)
    jax.block_until_ready(state)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(batches):
            state = train_step(state, batch)
        jax.block_until_ready(state)
        rates.append(members * spec["batch"] * batches / (time.perf_counter() - start))
    return {"seed_samples_per_s": statistics.median(rates), "devices": len(jax.devices())}


def _measure_in(processes: int, workload: str, members: int, batches: int, single_thread: bool,
                cpu_devices: int = 1) -> float:
    """Total seed-samples/s of ``processes`` fresh processes measuring at the same time."""
    env = dict(os.environ)
    if single_thread:
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *xla.SINGLE_THREAD_FLAGS]).strip()
    cmd = [sys.executable, "-m", "hets_ep.bench", "--measure", workload, str(members), str(batches),
           str(cpu_devices)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"bench measurement failed: {' '.join(cmd)}")
    return sum(json.loads(out.strip().splitlines()[-1])["seed_samples_per_s"] for out in outs)


def study(batches: int = 200, quick: bool = False) -> dict:
    """The study-throughput section (see the module docstring)."""
    n = xla.cores()
    out = {"cores": n, "workloads": {}}
    for workload, spec in STUDY.items():
        b = batches if "b20" in workload else batches * 2
        modes = {"one process": (1, 1, False, 1), "one process, one XLA thread": (1, 1, True, 1)}
        for k in (2, 4, 8) if not quick else (8,):
            modes[f"{k} seeds vmap, one device"] = (1, k, False, 1)
            modes[f"{k} seeds across the cores (parallel_seeds)"] = (1, k, False, xla.members_per_device(k))
        modes[f"{n} processes × 1 thread (sweep default)"] = (n, 1, True, 1)
        modes[f"{n} processes × 1 thread × {8 // n} seeds"] = (n, max(1, 8 // n), True, 1)
        rows = {}
        for mode, (procs, members, single, devices) in modes.items():
            rate = _measure_in(procs, workload, members, max(10, b // members), single, devices)
            rows[mode] = {"processes": procs, "seeds_per_process": members, "single_thread": single,
                          "cpu_devices": devices, "seed_samples_per_s": rate}
        base = rows["one process"]["seed_samples_per_s"]
        for row in rows.values():
            row["ratio"] = row["seed_samples_per_s"] / base
        out["workloads"][workload] = {"modes": rows}
        for mode, row in rows.items():
            print(f"{workload:<22} {mode:<44} {row['seed_samples_per_s']:>10,.0f} seed-samples/s "
                  f"{row['ratio']:5.2f}×", flush=True)
    out["per_step"] = {}
    for workload in (*STUDY, "mlp 784-512-10 b128"):
        row = out["per_step"][workload] = _per_step_in_fresh_process(workload)
        print(f"{workload:<22} per step (one core): " + ", ".join(
            f"{name} {1e6 * t:.1f} µs" for name, t in row["step_s"].items()), flush=True)
    return out


# -- per-step cost: where a relaxation step's time goes --------------------------------------------

def _relaxation(net: Network, params, x, dt, unroll: int = 1, hand: bool = False, members: bool = False):
    """``steps -> (() -> state)``: the free phase from zero on inputs ``x``, by the runner's
    kernel or by :func:`hand_step`; with ``members``, every argument has a leading seed axis."""
    def free(params, x, dt, n):
        drive = net.drive(params, x)
        s0 = tuple(jnp.zeros((x.shape[0], *d.shape), drive.dtype) for d in dt)
        if hand:
            return jax.lax.scan(lambda s, _: (hand_step(net, params, drive, s, dt), None), s0, length=n)[0]
        return relax(net, params, drive, s0, dt, n, DynamicsConfig(), window=1, unroll=unroll).state

    fn = jax.jit(jax.vmap(free, in_axes=(0, 0, 0, None)) if members else free, static_argnums=3)
    return lambda n: functools.partial(fn, params, x, dt, n)


def per_step(workload: str, rounds: int = 15) -> dict:
    """Marginal time of one free-phase relaxation step of ``workload`` in this process, for the
    runner's kernel and for alternatives, and the time per batch spent outside the relaxation
    (the drive, the weight gradient, the optimizer, the statistics).

    A step's time is ``(t(2T) − t(T)) / T`` with ``t`` the best of ``rounds`` interleaved runs,
    so start-up and the work before and after the scan cancel out.
    """
    spec = {**WORKLOADS, **STUDY}[workload]
    phases, k = spec.get("phases", PHASES), 8
    net = _network(spec)
    tx = optax.sgd(0.01)
    _, state, batch = _state(spec, k, tx)
    params, dt, x = steps.member(state.params, 0), steps.member(state.dt, 0), batch.x[0]
    scalar_dt = tuple(jnp.full_like(d, jnp.mean(d)) for d in dt)
    variants = {
        "runner (autodiff of the energy)": (_relaxation(net, params, x, dt), 1),
        **{f"runner, scan unroll {u}": (_relaxation(net, params, x, dt, unroll=u), 1) for u in (2, 4, 8)},
        "hand-written gradient": (_relaxation(net, params, x, dt, hand=True), 1),
        "hand-written gradient, scalar dt": (_relaxation(net, params, x, scalar_dt, hand=True), 1),
        f"runner, {k} seeds in one vmap (per seed)": (_relaxation(net, state.params, batch.x, state.dt,
                                                                  members=True), k),
    }
    n = phases.T1
    timed = {name: ((make(n), make(2 * n)), seeds) for name, (make, seeds) in variants.items()}
    train_step = steps.make_train_step(net, phases, DynamicsConfig(), tx, StabilityConfig())
    one_state, one_batch = jax.tree.map(lambda a: a[:1], state), steps.Batch(batch.x[:1], batch.y[:1])

    def train_batch():
        nonlocal one_state
        one_state = train_step(one_state, one_batch)
        jax.block_until_ready(one_state)

    for _ in range(3):
        train_batch()
    a = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = {name: [np.inf, np.inf] for name in timed}
    best_batch = best_dot = np.inf
    for _ in range(rounds):
        for name, (fns, _) in timed.items():
            for i, fn in enumerate(fns):
                best[name][i] = min(best[name][i], _timeit(lambda: jax.block_until_ready(fn()), 1))
        best_batch = min(best_batch, _timeit(train_batch, 1))
        best_dot = min(best_dot, _timeit(lambda: dot(a, a).block_until_ready(), 1))
    step_s = {name: (best[name][1] - best[name][0]) / n / seeds for name, (_, seeds) in timed.items()}
    runner = step_s["runner (autodiff of the energy)"]
    steps_per_batch = phases.T1 + (2 if phases.estimator == "symmetric" else 1) * phases.T2
    flops = 2 * spec["batch"] * sum(net.module.flops(spec["input_shape"])[1:])
    peak = 2 * 1024**3 / best_dot / 1e9  # the best of the rounds: a peak, measured beside the steps
    return {"batch": spec["batch"], "step_s": step_s, "step_mflop": flops / 1e6, "matmul_peak_gflops": peak,
            "fraction_of_peak": flops / runner / 1e9 / peak, "train_step_s": best_batch,
            "steps_per_batch": steps_per_batch, "outside_relaxation_s": best_batch - steps_per_batch * runner}


def _per_step_in_fresh_process(workload: str) -> dict:
    """:func:`per_step` in a fresh process on one XLA thread, as each job of a sweep runs, and
    pinned to one core, which keeps the figures steady from one run to the next."""
    out = subprocess.run([sys.executable, "-m", "hets_ep.bench", "--per-step", workload], capture_output=True,
                         text=True, env={**os.environ, "XLA_FLAGS": " ".join(xla.SINGLE_THREAD_FLAGS)})
    if out.returncode:
        raise RuntimeError(f"bench per-step measurement failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep(seeds: int = 8) -> dict:
    """End to end: an N-seed cell as N separate processes one after another, and as one multirun."""
    args = ["train.progress=false", "experiment=study2_large_step", "dt=lognormal", "train.epochs=1",
            "hydra.callbacks.sweep_end.report=false"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for seed in range(seeds):
            subprocess.run([sys.executable, "-m", "hets_ep", "train", *args, f"seed={seed}",
                            f"hydra.run.dir={tmp}/one/{seed}"], check=True, capture_output=True)
        separate = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hets_ep", "train", "-m", *args,
                        f"seed={','.join(map(str, range(seeds)))}", f"hydra.sweep.dir={tmp}/sweep"],
                       check=True, capture_output=True)
        multirun = time.perf_counter() - start
    print(f"{seeds}-seed cell: {separate:.0f} s as separate processes, {multirun:.0f} s as one sweep: "
          f"{separate / multirun:.2f}×", flush=True)
    return {"seeds": seeds, "separate_processes_s": separate, "multirun_s": multirun, "speedup": separate / multirun}


# -- relaxation: steps to a residual, the cost of ep.tol, the estimators' cost -----------------------

def _mnist(n: int):
    from hets_ep.data import load_dataset

    data = load_dataset("mnist", subset=n, test_subset=1)
    return jnp.asarray(data.x_train), jnp.asarray(data.y_train)


def relaxation(repeats: int = 5) -> dict:
    """The relaxation section (see the module docstring)."""
    x, y = _mnist(32)
    net = ModelConfig().build(10)
    params = net.init(jax.random.key(0), x.shape[1:])
    drive = net.drive(params, x)
    out = {"steps_to_residual": {}, "estimators": {}}
    for dt_name, spec in (("scalar 0.5", DtConfig("scalar", 0.5)), ("lognormal 0.5 cv 0.5",
                                                                     DtConfig("lognormal", 0.5, cv=0.5))):
        dt = tuple(map(jnp.asarray, sample_dt(0, spec, net.state_shapes(x.shape[1:]))[0]))
        s0 = tuple(jnp.zeros((32, *d.shape)) for d in dt)
        for order in ("sync", "async"):
            dynamics = DynamicsConfig(update_order=order)

            def run(n, tol=None, every=5):
                fn = jax.jit(lambda d: relax(net, params, d, s0, dt, n, dynamics, window=1, tol=tol,
                                             tol_every=every))
                fn(drive)
                return fn

            row = {}
            for tol in (1e-3, 1e-4):
                taken = int(run(2000, tol, 1)(drive).steps)  # checked at every step: the fewest steps
                checked = run(2000, tol)
                reached = int(checked(drive).steps)
                fixed = run(reached)  # the same steps, so the same final residual
                t_checked = _timeit(lambda: jax.block_until_ready(checked(drive)), repeats)
                t_fixed = _timeit(lambda: jax.block_until_ready(fixed(drive)), repeats)
                row[f"tol {tol:g}"] = {"steps": taken, "steps_checked_every_5": reached, "tol_s": t_checked,
                                       "fixed_s": t_fixed, "ratio": t_checked / t_fixed}
            plain, looped = run(30), run(30, 1e-30)
            row["fixed 30 steps"] = {"fixed_s": _timeit(lambda: jax.block_until_ready(plain(drive)), repeats),
                                     "while_s": _timeit(lambda: jax.block_until_ready(looped(drive)), repeats)}
            row["fixed 30 steps"]["ratio"] = row["fixed 30 steps"]["while_s"] / row["fixed 30 steps"]["fixed_s"]
            out["steps_to_residual"][f"{dt_name}, {order}"] = row
            print(f"{dt_name + ', ' + order:<28} steps to residual 1e-3: {row['tol 0.001']['steps']:>4}, 1e-4: "
                  f"{row['tol 0.0001']['steps']:>4}; ep.tol / fixed at equal residual "
                  f"{row['tol 0.0001']['ratio']:.2f}×; 30 steps through the while loop / scan "
                  f"{row['fixed 30 steps']['ratio']:.2f}×", flush=True)
    spec = {"model": ModelConfig(activation="steep_sigmoid"), "input_shape": (28, 28, 1), "batch": 32,
            "dt": DtConfig("scalar", 0.5)}
    times = {}
    for name, phases in (("one_sided", EPConfig("one_sided")), ("symmetric", EPConfig("symmetric")),
                         *((f"holomorphic N={n}", EPConfig("holomorphic", N=n)) for n in (2, 4, 6))):
        run, _, _ = _ours(spec, phases=phases)
        run()
        times[name] = _timeit(lambda: [run() for _ in range(10)], repeats) / 10
    for name, seconds in times.items():
        out["estimators"][name] = {"batch_s": seconds, "ratio_to_symmetric": seconds / times["symmetric"]}
        print(f"{name:<18} {1e3 * seconds:7.2f} ms per batch of 32: {seconds / times['symmetric']:.2f}× symmetric",
              flush=True)
    return out


# -- speed: whole training runs to the same accuracy -------------------------------------------------

SPEED = {"sync, fixed T1 30 / T2 10 (the default)": [],
         "sync, fixed T1 10 / T2 4": ["ep.T1=10", "ep.T2=4"],
         "async, fixed T1 10 / T2 4": ["dynamics.update_order=async", "ep.T1=10", "ep.T2=4"]}


def speed() -> dict:
    """The speed section (see the module docstring): each run in a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SPEED.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hets_ep", "train", "train.progress=false", *overrides,
                            f"hydra.run.dir={tmp}/{len(out)}"], check=True, capture_output=True)
            wall = time.perf_counter() - start
            summary = json.loads((Path(tmp) / str(len(out)) / "summary.json").read_text())
            rows = [json.loads(line) for line in (Path(tmp) / str(len(out)) / "metrics.jsonl").read_text().splitlines()]
            steps = float(np.mean([r["train_free_steps"] + 2 * r["train_nudged_steps"] for r in rows]))
            out[name] = {"wall_s": wall, "train_s": summary["timings"]["total_s"],
                         "final_test_acc": summary["final_test_acc"], "steps_per_batch": steps}
            print(f"{name:<42} {wall:6.1f} s end to end ({summary['timings']['total_s']:.1f} s training), "
                  f"test accuracy {summary['final_test_acc']:.4f}, {steps:.0f} relaxation steps per batch", flush=True)
    base = out[next(iter(SPEED))]
    for row in out.values():
        row["speedup_train"] = base["train_s"] / row["train_s"]
        row["speedup_wall"] = base["wall_s"] / row["wall_s"]
    return out


def gpu(repeats: int = 5, quick: bool = False) -> dict:
    """The GPU section: workload 1 at batch 128 and 1024, 8 and 64 seeds of the large-step
    workload at batch 20, the ConvNet at batch 128 (``quick``: batch 128 and 8 seeds only)."""
    out = {"device": provenance.versions()["device"], "versions": provenance.versions(), "workloads": {}}
    names = ("mlp 784-512-10 b128",) if quick else ("mlp 784-512-10 b128", "mlp 784-512-10 b1024",
                                                    "convnet 32x32x3 b128")
    for name in names:
        run, compile_s, _ = _ours(WORKLOADS[name])
        run()
        seconds = _timeit(lambda: [run() for _ in range(10)], repeats) / 10
        out["workloads"][name] = {"samples_per_s": WORKLOADS[name]["batch"] / seconds, "compile_s": compile_s}
        print(f"{name:<26} {WORKLOADS[name]['batch'] / seconds:>12,.0f} samples/s", flush=True)
    for k in (8,) if quick else (8, 64):
        rate = measure("large-step preset b20", k, 20)["seed_samples_per_s"]
        out["workloads"][f"large-step preset b20 × {k} seeds"] = {"seed_samples_per_s": rate}
        print(f"large-step preset b20 × {k:<3} seeds {rate:>12,.0f} seed-samples/s", flush=True)
    return out


def markdown(results: dict) -> str:
    k = results["kernel"]
    rows = [f"Device: {k['device']} (jax {k['versions']['jax']}); measured matmul peak "
            f"{k['matmul_peak_gflops']:.1f} GFLOP/s (float32).", "",
            "| workload | samples/s | compile s | step memory MiB | MFLOP/sample | GFLOP/s | % of peak | × naive "
            "| × plain |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in k["workloads"].items():
        mem = "–" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.1f}"
        plain = f"{r['speedup_vs_plain']:.2f}" if "speedup_vs_plain" in r else "–"
        rows.append(f"| {name} | {r['samples_per_s']:,.0f} | {r['compile_s']:.1f} | {mem} | "
                    f"{r['flops_per_sample'] / 1e6:.2f} | {r['gflops']:.1f} | {100 * r['fraction_of_peak']:.1f} | "
                    f"{r['speedup_vs_naive']:.1f} | {plain} |")
    p = k["parallel_seeds"]
    rows += ["", f"{p['K']} seeds in one vmap-ed program on one device: {p['speedup']:.2f}× the throughput of "
                 f"{p['K']} sequential single-seed steps.", "", "| compiled training step | memory MiB |", "|---|---|"]
    rows += [f"| {name} | {v / 2**20:.1f} |" for name, v in k["memory_vs_T1"].items() if v is not None]
    if "study" in results:
        s = results["study"]
        rows += ["", f"Study throughput on {s['cores']} cores (seed-samples/s; ratio to one process):", "",
                 "| workload | mode | seed-samples/s | ratio |", "|---|---|---|---|"]
        for workload, w in s["workloads"].items():
            rows += [f"| {workload} | {mode} | {r['seed_samples_per_s']:,.0f} | {r['ratio']:.2f}× |"
                     for mode, r in w["modes"].items()]
        names = list(next(iter(s["per_step"].values()))["step_s"])
        rows += ["", "Per relaxation step, µs (one XLA thread pinned to one core; marginal time of a step):", "",
                 "| workload | " + " | ".join(names)
                 + " | MFLOP | % of one core's peak | batch ms | outside the relaxation ms |",
                 "|---|" + "---|" * (len(names) + 4)]
        rows += [f"| {workload} | " + " | ".join(f"{1e6 * w['step_s'][name]:.1f}" for name in names)
                 + f" | {w['step_mflop']:.2f} | {100 * w['fraction_of_peak']:.1f} | {1e3 * w['train_step_s']:.2f} | "
                   f"{1e3 * w['outside_relaxation_s']:.2f} |" for workload, w in s["per_step"].items()]
    if "relax" in results:
        r = results["relax"]
        rows += ["", "Free-phase steps until every sample's fixed-point residual is below the tolerance (32 MNIST "
                     "images, initial weights), and the cost of relaxing to a tolerance:", "",
                 "| dt, update order | steps to 1e-3 | steps to 1e-4 | ep.tol / fixed scan at equal residual (1e-4) "
                 "| 30 steps: while loop / scan |", "|---|---|---|---|---|"]
        rows += [f"| {name} | {v['tol 0.001']['steps']} | {v['tol 0.0001']['steps']} | "
                 f"{v['tol 0.0001']['ratio']:.2f}× | {v['fixed 30 steps']['ratio']:.2f}× |"
                 for name, v in r["steps_to_residual"].items()]
        rows += ["", "| estimator | ms per training batch (32) | × symmetric |", "|---|---|---|"]
        rows += [f"| {name} | {1e3 * v['batch_s']:.2f} | {v['ratio_to_symmetric']:.2f} |"
                 for name, v in r["estimators"].items()]
    if "speed" in results:
        rows += ["", "| training run (60k MNIST, 10 epochs) | wall s | training s | test accuracy | steps per batch "
                     "| × faster (training) |", "|---|---|---|---|---|---|"]
        rows += [f"| {name} | {v['wall_s']:.1f} | {v['train_s']:.1f} | {100 * v['final_test_acc']:.2f}% | "
                 f"{v['steps_per_batch']:.0f} | {v['speedup_train']:.2f} |" for name, v in results["speed"].items()]
    if "sweep" in results:
        w = results["sweep"]
        rows += ["", f"A {w['seeds']}-seed cell of the large-step preset (10k images, 1 epoch), end to end: "
                     f"{w['separate_processes_s']:.0f} s as separate processes one after another, "
                     f"{w['multirun_s']:.0f} s as one `hets-ep train -m`: {w['speedup']:.2f}×."]
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hets-ep bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench.json"), help="JSON of all figures")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer workloads and modes (a smoke test)")
    parser.add_argument("--study", action="store_true", help="also the study-throughput section (minutes)")
    parser.add_argument("--sweep", type=int, default=0, metavar="N",
                        help="also time an N-seed cell end to end, separate processes against one sweep (minutes)")
    parser.add_argument("--relax", action="store_true",
                        help="also steps to a residual per update order, the cost of ep.tol, the estimators' cost")
    parser.add_argument("--speed", action="store_true",
                        help="also whole default training runs, sync fixed steps against async (minutes)")
    parser.add_argument("--gpu", action="store_true", help="the GPU section only (scripts/gpu_bench.sh)")
    parser.add_argument("--measure", nargs=4, metavar=("WORKLOAD", "SEEDS", "BATCHES", "DEVICES"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--per-step", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        workload, members, batches, devices = args.measure
        print(json.dumps(measure(workload, int(members), int(batches), int(devices))))
        return
    if args.per_step:
        if hasattr(os, "sched_setaffinity"):  # before XLA starts its threads, which inherit it
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(per_step(args.per_step)))
        return
    if args.gpu:
        results = gpu(args.repeats, args.quick)
        atomic.write_json(args.out, results)
        print(f"figures written to {args.out}")
        return
    results = {"kernel": kernel(repeats=args.repeats, quick=args.quick)}
    if args.study:
        results["study"] = study(batches=40 if args.quick else 200, quick=args.quick)
    if args.relax:
        results["relax"] = relaxation(args.repeats)
    if args.speed:
        results["speed"] = speed()
    if args.sweep:
        results["sweep"] = sweep(args.sweep)
    atomic.write_json(args.out, results)
    print()
    print(markdown(results))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
