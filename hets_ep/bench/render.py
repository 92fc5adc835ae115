"""The benchmark's figures as the markdown tables of ``docs/benchmarks.md``."""

from __future__ import annotations


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
                     f"{w['multirun_s']:.0f} s as one `hets-ep train -m`: {w['speedup']:.2f}×. With 2 dt "
                     f"conditions ({2 * w['seeds']} jobs): {w['two_conditions_parallel_s']:.0f} s as the default "
                     f"parallel sweep, {w['two_conditions_fused_s']:.0f} s stacked into one program "
                     f"(`hydra/launcher=stacked`): {w['fused_speedup']:.2f}×."]
    return "\n".join(rows) + "\n"
