"""The benchmark's sections (see :mod:`hets_ep.bench`): each measures in this process or in fresh
ones, and returns its figures as a JSON-ready dict."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep import provenance, steps, xla
from hets_ep.bench import baselines
from hets_ep.bench.harness import Runner, flops_per_sample, matmul_peak, timeit
from hets_ep.bench.workloads import STUDY, WORKLOADS, Workload, prepare
from hets_ep.build import build_run
from hets_ep.config import DtConfig, DynamicsConfig, EPConfig
from hets_ep.dynamics import relax


def kernel(repeats: int = 5, batches: int = 10, quick: bool = False) -> dict:
    """The kernel section (see :mod:`hets_ep.bench`)."""
    peak = matmul_peak()
    results = {"device": provenance.versions()["device"], "versions": provenance.versions(),
               "matmul_peak_gflops": peak, "workloads": {}}
    for name, workload in WORKLOADS.items():
        if quick and name != "mlp 784-512-10 b128":
            continue
        runner = Runner(workload)
        seconds = timeit(lambda: [runner.run() for _ in range(batches)], repeats) / batches
        flops = flops_per_sample(runner.run_spec.net, workload.input_shape, runner.steps_per_batch)
        samples_per_s = workload.batch / seconds
        naive_s = timeit(baselines.naive(workload), max(2, repeats // 2))
        row = {"batch": workload.batch, "samples_per_s": samples_per_s, "compile_s": runner.compile_s,
               "step_memory_bytes": runner.memory_bytes, "steps_per_batch": runner.steps_per_batch,
               "flops_per_sample": flops, "gflops": flops * samples_per_s / 1e9,
               "fraction_of_peak": flops * samples_per_s / 1e9 / peak,
               "naive_samples_per_s": workload.batch / naive_s, "speedup_vs_naive": naive_s / seconds}
        model = workload.config.model
        if model.arch == "mlp" and len(model.hidden) == 1:
            plain = baselines.plain(workload)
            plain_s = timeit(lambda: [plain() for _ in range(batches)], repeats) / batches
            row.update(plain_samples_per_s=workload.batch / plain_s, speedup_vs_plain=plain_s / seconds)
        results["workloads"][name] = row
        print(f"{name:<26} {samples_per_s:>11,.0f} samples/s  {row['gflops']:7.1f} GFLOP/s "
              f"({100 * row['fraction_of_peak']:4.1f}% of peak)  {row['speedup_vs_naive']:5.1f}× naive"
              + (f"  {row['speedup_vs_plain']:4.2f}× plain" if "speedup_vs_plain" in row else ""), flush=True)

    workload, k = WORKLOADS["mlp 784-512-10 b128"], 8
    vmapped, single = Runner(workload, members=k), Runner(workload, members=1)
    t_vmapped = timeit(vmapped.run, repeats)
    t_sequential = timeit(lambda: [single.run() for _ in range(k)], repeats)
    results["parallel_seeds"] = {"K": k, "vmapped_s": t_vmapped, "sequential_s": t_sequential,
                                 "speedup": t_sequential / t_vmapped}
    print(f"{k} seeds in one program (one device): {t_sequential / t_vmapped:.2f}× the speed of {k} sequential steps",
          flush=True)
    results["memory_vs_T1"] = {}
    for estimator in ("one_sided", "bptt"):
        for t1 in (30, 300) if quick else (30, 100, 300):
            phases = dataclasses.replace(workload.config.ep, estimator=estimator, T1=t1)
            results["memory_vs_T1"][f"{estimator} T1={t1}"] = Runner(workload, ep=phases).memory_bytes
    print("compiled step memory:", ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in results["memory_vs_T1"].items()
                                             if v is not None), flush=True)
    return results


# -- study throughput: each measurement in fresh processes -----------------------------------------

def measure(workload: str, members: int, batches: int, cpu_devices: int = 1) -> dict:
    """Steady-state seed-samples/s of ``members`` seeds of a study workload in this process."""
    xla.configure(cpu_devices=cpu_devices)
    from hets_ep.placement import Placement

    spec = STUDY[workload]
    run, batch = prepare(spec, members)
    place = Placement(members, spec.batch, spec.batch)
    state, hyper = place.members(run.state), place.members(run.hyper)
    batch = steps.Batch(place.batch(batch.x), place.batch(batch.y))
    train_step = steps.make_train_step(run.net, run.cfg.ep, run.cfg.dynamics, run.tx, run.cfg.stability)
    for _ in range(3):
        state = train_step(state, batch, hyper)
    jax.block_until_ready(state)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(batches):
            state = train_step(state, batch, hyper)
        jax.block_until_ready(state)
        rates.append(members * spec.batch * batches / (time.perf_counter() - start))
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
    """The study-throughput section (see :mod:`hets_ep.bench`)."""
    n = xla.cores()
    out = {"cores": n, "workloads": {}}
    for workload in STUDY:
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

def _relaxation(net, params, x, dt, dynamics: DynamicsConfig, unroll: int = 1, hand: bool = False,
                members: bool = False):
    """``steps -> (() -> state)``: the free phase from zero on inputs ``x``, by the runner's
    kernel or by :func:`~hets_ep.bench.baselines.hand_step`; with ``members``, every argument has
    a leading seed axis."""
    def free(params, x, dt, n):
        drive = net.drive(params, x)
        s0 = tuple(jnp.zeros((x.shape[0], *d.shape), drive.dtype) for d in dt)
        if hand:
            return jax.lax.scan(lambda s, _: (baselines.hand_step(net, params, drive, s, dt), None), s0, length=n)[0]
        return relax(net, params, drive, s0, dt, n, dynamics, window=1, unroll=unroll).state

    fn = jax.jit(jax.vmap(free, in_axes=(0, 0, 0, None)) if members else free, static_argnums=3)
    return lambda n: functools.partial(fn, params, x, dt, n)


def per_step(workload: str, rounds: int = 15) -> dict:
    """Marginal time of one free-phase relaxation step of ``workload`` in this process, for the
    runner's kernel and for alternatives, and the time per batch spent outside the relaxation
    (the drive, the weight gradient, the optimizer, the statistics).

    A step's time is ``(t(2T) − t(T)) / T`` with ``t`` the best of ``rounds`` interleaved runs,
    so start-up and the work before and after the scan cancel out.
    """
    spec, k = {**WORKLOADS, **STUDY}[workload], 8
    run, batch = prepare(spec, k)
    net, state, dynamics = run.net, run.state, run.cfg.dynamics
    params, dt, x = steps.member(state.params, 0), steps.member(state.dt, 0), batch.x[0]
    scalar_dt = tuple(jnp.full_like(d, jnp.mean(d)) for d in dt)
    variants = {
        "runner (autodiff of the energy)": (_relaxation(net, params, x, dt, dynamics), 1),
        **{f"runner, scan unroll {u}": (_relaxation(net, params, x, dt, dynamics, unroll=u), 1) for u in (2, 4, 8)},
        "hand-written gradient": (_relaxation(net, params, x, dt, dynamics, hand=True), 1),
        "hand-written gradient, scalar dt": (_relaxation(net, params, x, scalar_dt, dynamics, hand=True), 1),
        f"runner, {k} seeds in one vmap (per seed)": (_relaxation(net, state.params, batch.x, state.dt, dynamics,
                                                                  members=True), k),
    }
    n = run.cfg.ep.T1
    timed = {name: ((make(n), make(2 * n)), seeds) for name, (make, seeds) in variants.items()}
    one = Runner(spec)
    a = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = {name: [np.inf, np.inf] for name in timed}
    best_batch = best_dot = np.inf
    for _ in range(rounds):
        for name, (fns, _) in timed.items():
            for i, fn in enumerate(fns):
                best[name][i] = min(best[name][i], timeit(lambda: jax.block_until_ready(fn()), 1))
        best_batch = min(best_batch, timeit(one.run, 1))
        best_dot = min(best_dot, timeit(lambda: dot(a, a).block_until_ready(), 1))
    step_s = {name: (best[name][1] - best[name][0]) / n / seeds for name, (_, seeds) in timed.items()}
    runner = step_s["runner (autodiff of the energy)"]
    flops = 2 * spec.batch * sum(net.module.flops(spec.input_shape)[1:])
    peak = 2 * 1024**3 / best_dot / 1e9  # the best of the rounds: a peak, measured beside the steps
    return {"batch": spec.batch, "step_s": step_s, "step_mflop": flops / 1e6, "matmul_peak_gflops": peak,
            "fraction_of_peak": flops / runner / 1e9 / peak, "train_step_s": best_batch,
            "steps_per_batch": one.steps_per_batch, "outside_relaxation_s": best_batch - one.steps_per_batch * runner}


def _per_step_in_fresh_process(workload: str) -> dict:
    """:func:`per_step` in a fresh process on one XLA thread, as each job of a sweep runs, and
    pinned to one core, which keeps the figures steady from one run to the next."""
    out = subprocess.run([sys.executable, "-m", "hets_ep.bench", "--per-step", workload], capture_output=True,
                         text=True, env={**os.environ, "XLA_FLAGS": " ".join(xla.SINGLE_THREAD_FLAGS)})
    if out.returncode:
        raise RuntimeError(f"bench per-step measurement failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep(seeds: int = 8) -> dict:
    """End to end: an N-seed cell as N separate processes one after another and as one multirun
    (the default launcher); then N seeds × 2 dt conditions as the default parallel sweep and as a
    fused one (``hydra/launcher=stacked``: one program)."""
    args = ["train.progress=false", "experiment=study2_large_step", "train.epochs=1",
            "hydra.callbacks.sweep_end.report=false"]
    seed_list = f"seed={','.join(map(str, range(seeds)))}"

    def timed(*command: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hets_ep", "train", *command], check=True, capture_output=True)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        separate = sum(timed(*args, "dt=lognormal", f"seed={seed}", f"hydra.run.dir={tmp}/one/{seed}")
                       for seed in range(seeds))
        multirun = timed("-m", *args, "dt=lognormal", seed_list, f"hydra.sweep.dir={tmp}/sweep")
        parallel = timed("-m", *args, "dt=scalar,lognormal", seed_list, f"hydra.sweep.dir={tmp}/parallel")
        fused = timed("-m", *args, "dt=scalar,lognormal", seed_list, "hydra/launcher=stacked",
                      f"hydra.sweep.dir={tmp}/fused")
    print(f"{seeds}-seed cell: {separate:.0f} s as separate processes, {multirun:.0f} s as one sweep: "
          f"{separate / multirun:.2f}×; {seeds} seeds × 2 dt: {parallel:.0f} s as the default sweep, {fused:.0f} s "
          f"fused: {parallel / fused:.2f}×", flush=True)
    return {"seeds": seeds, "separate_processes_s": separate, "multirun_s": multirun, "speedup": separate / multirun,
            "two_conditions_parallel_s": parallel, "two_conditions_fused_s": fused,
            "fused_speedup": parallel / fused}


# -- relaxation: steps to a residual, the cost of ep.tol, the estimators' cost -----------------------

RELAXATION = Workload(("train.batch_size=32",))  # the default network on 32 images


def relaxation(repeats: int = 5) -> dict:
    """The relaxation section (see :mod:`hets_ep.bench`), on 32 MNIST images at initial weights."""
    from hets_ep.data import load_dataset

    data = load_dataset("mnist", subset=32, test_subset=1)
    out = {"steps_to_residual": {}, "estimators": {}}
    for dt_name, dt_spec in (("scalar 0.5", DtConfig("scalar", 0.5)),
                             ("lognormal 0.5 cv 0.5", DtConfig("lognormal", 0.5, cv=0.5))):
        run = build_run(dataclasses.replace(RELAXATION.config, dt=dt_spec), data)
        net, params, dt = run.net, steps.member(run.state.params, 0), steps.member(run.state.dt, 0)
        drive = net.drive(params, jnp.asarray(data.x_train))
        s0 = tuple(jnp.zeros((32, *d.shape)) for d in dt)
        for order in ("sync", "async"):
            dynamics = DynamicsConfig(update_order=order)

            def relaxed(n, tol=None, every=5):
                fn = jax.jit(lambda d: relax(net, params, d, s0, dt, n, dynamics, window=1, tol=tol,
                                             tol_every=every))
                fn(drive)
                return fn

            row = {}
            for tol in (1e-3, 1e-4):
                taken = int(relaxed(2000, tol, 1)(drive).steps)  # checked at every step: the fewest steps
                checked = relaxed(2000, tol)
                reached = int(checked(drive).steps)
                fixed = relaxed(reached)  # the same steps, so the same final residual
                t_checked = timeit(lambda: jax.block_until_ready(checked(drive)), repeats)
                t_fixed = timeit(lambda: jax.block_until_ready(fixed(drive)), repeats)
                row[f"tol {tol:g}"] = {"steps": taken, "steps_checked_every_5": reached, "tol_s": t_checked,
                                       "fixed_s": t_fixed, "ratio": t_checked / t_fixed}
            scanned, looped = relaxed(30), relaxed(30, 1e-30)
            row["fixed 30 steps"] = {"fixed_s": timeit(lambda: jax.block_until_ready(scanned(drive)), repeats),
                                     "while_s": timeit(lambda: jax.block_until_ready(looped(drive)), repeats)}
            row["fixed 30 steps"]["ratio"] = row["fixed 30 steps"]["while_s"] / row["fixed 30 steps"]["fixed_s"]
            out["steps_to_residual"][f"{dt_name}, {order}"] = row
            print(f"{dt_name + ', ' + order:<28} steps to residual 1e-3: {row['tol 0.001']['steps']:>4}, 1e-4: "
                  f"{row['tol 0.0001']['steps']:>4}; ep.tol / fixed at equal residual "
                  f"{row['tol 0.0001']['ratio']:.2f}×; 30 steps through the while loop / scan "
                  f"{row['fixed 30 steps']['ratio']:.2f}×", flush=True)
    smooth = Workload(("train.batch_size=32", "model.activation=steep_sigmoid"))
    times = {}
    for name, phases in (("one_sided", EPConfig("one_sided")), ("symmetric", EPConfig("symmetric")),
                         *((f"holomorphic N={n}", EPConfig("holomorphic", N=n)) for n in (2, 4, 6))):
        runner = Runner(smooth, ep=phases)
        times[name] = timeit(lambda: [runner.run() for _ in range(10)], repeats) / 10
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
    """The speed section (see :mod:`hets_ep.bench`): each run in a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SPEED.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hets_ep", "train", "train.progress=false", *overrides,
                            f"hydra.run.dir={tmp}/{len(out)}"], check=True, capture_output=True)
            wall = time.perf_counter() - start
            summary = json.loads((Path(tmp) / str(len(out)) / "summary.json").read_text())
            batches = summary["epochs_completed"] * (60000 // 32)  # hets-ep train's defaults: all of MNIST, batch 32
            steps = summary["stability"]["relaxation_steps"] / batches
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
    """The GPU section: for workload 1 at batch 128 and 1024 (and the ConvNet), the training step
    on the scan kernel and on the fused one (:mod:`hets_ep.fused`) — samples/s, time per batch and
    per relaxation step, compiled memory; 8 and 64 seeds of the large-step workload at batch 20
    in one program (``quick``: batch 128 and 8 seeds only). Whether XLA's command buffers (CUDA
    graphs) are on is read from ``XLA_FLAGS`` and recorded: ``scripts/gpu_bench.sh`` runs the
    section with and without them."""
    out = {"device": provenance.versions()["device"], "versions": provenance.versions(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "workloads": {}}
    names = ("mlp 784-512-10 b128",) if quick else ("mlp 784-512-10 b128", "mlp 784-512-10 b1024",
                                                    "convnet 32x32x3 b128")
    for name in names:
        workload = WORKLOADS[name]
        for backend in ("scan", "fused"):
            runner = Runner(workload, dynamics=dataclasses.replace(workload.config.dynamics, backend=backend))
            if runner.run_spec.cfg.dynamics.backend != backend:  # the fused kernel does not apply (ConvNet)
                continue
            seconds = timeit(lambda: [runner.run() for _ in range(10)], repeats) / 10
            row = {"samples_per_s": workload.batch / seconds, "batch_s": seconds,
                   "step_s": seconds / runner.steps_per_batch, "compile_s": runner.compile_s,
                   "step_memory_bytes": runner.memory_bytes}
            out["workloads"][f"{name}, {backend}"] = row
            print(f"{name + ', ' + backend:<34} {row['samples_per_s']:>12,.0f} samples/s  "
                  f"{1e6 * row['step_s']:8.2f} µs per relaxation step", flush=True)
    for k in (8,) if quick else (8, 64):
        rate = measure("large-step preset b20", k, 20)["seed_samples_per_s"]
        out["workloads"][f"large-step preset b20 × {k} seeds"] = {"seed_samples_per_s": rate}
        print(f"large-step preset b20 × {k:<3} seeds {rate:>12,.0f} seed-samples/s", flush=True)
    return out
