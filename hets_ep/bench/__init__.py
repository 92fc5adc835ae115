"""``hets-ep bench``: throughput of the training step and of whole studies, every ratio between
figures measured in the same run on the same device.

**Kernel** (always): one-sided EP, β = 0.1, T1 = 30, T2 = 10 (the MNIST check of Laborieux et
al.) on MLP 784-512-10 at batch 128 and 1024, MLP 784-512-512-10 and the ConvNet on 32×32×3
(random inputs: throughput does not depend on pixel values). For each: training samples/s
(median over repeats, after compilation), compile time, compiled-step memory, matmul FLOPs per
sample, achieved GFLOP/s against the measured matmul peak, and two baselines: a *naive* one
(the drive recomputed at every step, one Python iteration per step, as the PyTorch reference
code does) and a *plain* one (an 80-line ``jit`` + ``lax.scan`` of the same update with scalar
dt, hand-written fields and no diagnostics): :mod:`hets_ep.bench.baselines`. Also K = 8 seeds
in one program, and the memory of EP and BPTT as T1 grows. Every workload is a run config
composed from the presets (:mod:`hets_ep.bench.workloads`), built by ``build_run``; the
relaxation steps of a batch are those the kernel counts.

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
import json
import os
from pathlib import Path

from hets_ep import atomic
from hets_ep.bench import sections
from hets_ep.bench.render import markdown


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
        print(json.dumps(sections.measure(workload, int(members), int(batches), int(devices))))
        return
    if args.per_step:
        if hasattr(os, "sched_setaffinity"):  # before XLA starts its threads, which inherit it
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(sections.per_step(args.per_step)))
        return
    if args.gpu:
        results = sections.gpu(args.repeats, args.quick)
        atomic.write_json(args.out, results)
        print(f"figures written to {args.out}")
        return
    results = {"kernel": sections.kernel(repeats=args.repeats, quick=args.quick)}
    if args.study:
        results["study"] = sections.study(batches=40 if args.quick else 200, quick=args.quick)
    if args.relax:
        results["relax"] = sections.relaxation(args.repeats)
    if args.speed:
        results["speed"] = sections.speed()
    if args.sweep:
        results["sweep"] = sections.sweep(args.sweep)
    atomic.write_json(args.out, results)
    print()
    print(markdown(results))
    print(f"figures written to {args.out}")
