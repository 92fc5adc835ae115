"""Study 6's planned analysis (docs/study6/PLAN.md), from the run folders of its blocks.

A: per dataset, P − S, P − P′, F − F′ on the four stability endpoints (max drawdown and jitter as
geometric-mean ratios, paired t on the logs with a floor of 1e-4; the across-seed SD of late
accuracy by Brown–Forsythe; collapses by exact McNemar): 24 tests, Holm over the 24; and late
accuracy (paired difference, bootstrap CI, TOST ±0.5 points, Holm over the 6). S: late accuracy,
skewed − symmetric (4 pairs, paired t, Holm over 4). N′: late accuracy, mean-matched HTS − scalar
dt 0.80 at each edge level (2, Holm), and the shares trained at 16%, 40% and 55% side by side.
Every statistic comes from hets_ep.report.inference (scipy and statsmodels).

    python scripts/study6_family.py RUNS_DIR > docs/study6/family.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hets_ep.report import inference
from hets_ep.report.runs import find_runs, group, trained

FLOOR = 1e-4       # drawdown and jitter floored before their logarithm (0.01 points)
MARGIN = 0.5       # TOST margin, points


def per_seed(path: Path) -> pd.DataFrame:
    """One row per finished run: its condition keys, seed and endpoints."""
    grouping = group(find_runs([path]), 0.8)
    rows = []
    for cond in grouping.conditions:
        config = cond.runs[0].config
        for _, r in cond.finished.iterrows():
            rows.append({"dist": config["dt.dist"], "mean": config["dt.mean"], "cv": config["dt.cv"],
                         "match": config["dt.match"], "integrator": config["dynamics.integrator"],
                         "noise": config["dynamics.noise"], "beta": config["ep.beta"], **r.to_dict()})
    return pd.DataFrame(rows)


def pick(frame: pd.DataFrame, **keys) -> pd.DataFrame:
    chosen = frame
    for key, value in keys.items():
        chosen = chosen[np.isclose(chosen[key], value)] if isinstance(value, float) else chosen[chosen[key] == value]
    return chosen.set_index("seed").sort_index()


def realised(frame: pd.DataFrame) -> str:
    return (f"μ {frame['dt_mean'].mean():.3f}, hmean {frame['dt_hmean'].mean():.3f}, "
            f"cv {frame['dt_cv'].mean():.2f}")


def block_a(runs: Path) -> None:
    print("## A — the authors' setting: stability (24 tests, Holm over the 24) and accuracy (TOST ±0.5, Holm over 6)\n")
    stability_rows, accuracy_rows, condition_rows = [], [], []
    for data, folder in (("Fashion-MNIST", "A_fashion"), ("MNIST", "A_mnist")):
        path = runs / folder
        if not path.is_dir():
            print(f"{data}: no runs ({path})\n")
            continue
        frame = per_seed(path)
        arms = {"S": pick(frame, dist="scalar", mean=1.0, integrator="euler"),
                "P": pick(frame, dist="gamma", integrator="euler"),
                "P′": pick(frame, dist="scalar", mean=0.79, integrator="euler"),
                "F": pick(frame, dist="gamma", integrator="exact"),
                "F′": pick(frame, dist="scalar", integrator="exact")}
        for name, arm in arms.items():
            late = arm["late"] * 100
            condition_rows.append([data, name, realised(arm), str(len(arm)), f"{late.mean():.2f} ± {late.std():.2f}",
                                   f"{100 * arm['max_drawdown'].mean():.2f}", f"{100 * arm['jitter'].mean():.2f}",
                                   f"{int(arm['collapse'].sum())}/{len(arm)}",
                                   " ".join(f"{v:.1f}" for v in late)])
        for cond, base in (("P", "S"), ("P", "P′"), ("F", "F′")):
            a, b = arms[cond], arms[base]
            seeds = sorted(set(a.index) & set(b.index))
            a, b = a.loc[seeds], b.loc[seeds]
            for endpoint in ("max_drawdown", "jitter"):
                stats = inference.log_ratio(a[endpoint] + FLOOR, b[endpoint] + FLOOR)
                stability_rows.append((data, f"{cond} − {base}", endpoint, len(seeds),
                                       f"{np.exp(stats.mean_diff):.2f}× [{np.exp(stats.ci_low):.2f}, "
                                       f"{np.exp(stats.ci_high):.2f}]" if inference.finite(stats.ci_low) else "–",
                                       stats.p_t))
            sd_a, sd_b = 100 * a["late"].std(), 100 * b["late"].std()
            stability_rows.append((data, f"{cond} − {base}", "SD of late", len(seeds),
                                   f"{sd_a:.2f} / {sd_b:.2f} ({sd_a / max(sd_b, 1e-9):.2f}×)",
                                   inference.brown_forsythe(a["late"], b["late"])))
            stability_rows.append((data, f"{cond} − {base}", "collapse", len(seeds),
                                   f"{int(a['collapse'].sum())} / {int(b['collapse'].sum())} of {len(seeds)}",
                                   inference.mcnemar_exact(a["collapse"].astype(bool), b["collapse"].astype(bool))))
            diff = (a["late"] - b["late"]) * 100
            comp = inference.compare(diff.to_numpy())
            accuracy_rows.append((data, f"{cond} − {base}", len(seeds),
                                  f"{comp.mean_diff:+.2f} [{comp.ci_low:+.2f}, {comp.ci_high:+.2f}]", comp.p_t,
                                  inference.tost_paired(a["late"] * 100, b["late"] * 100, MARGIN)))
    print("| dataset | condition | realised dt (mean over seeds) | seeds | late % (mean ± SD) | max drawdown (points) | "
          "jitter (points) | collapsed | late per seed |\n|---|---|---|---|---|---|---|---|---|")
    for row in condition_rows:
        print("| " + " | ".join(row) + " |")
    holm = inference.holm([r[-1] for r in stability_rows])
    print("\n| dataset | comparison | endpoint | seeds | condition / baseline | p | p (Holm over "
          f"{len(stability_rows)}) |\n|---|---|---|---|---|---|---|")
    for r, h in zip(stability_rows, holm):
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {_p(r[5])} | {_p(h)} |")
    tost_holm = inference.holm([r[-1] for r in accuracy_rows])
    print("\n| dataset | comparison | seeds | Δ late, points [95% CI] | p (t) | p (TOST ±0.5) | p (TOST, Holm over "
          f"{len(accuracy_rows)}) |\n|---|---|---|---|---|---|---|")
    for r, h in zip(accuracy_rows, tost_holm):
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {_p(r[4])} | {_p(r[5])} | {_p(h)} |")
    print()


def block_s(runs: Path) -> None:
    path = runs / "S"
    if not path.is_dir():
        print("## S — not run\n")
        return
    print("## S — skewed against symmetric heterogeneity (Fashion-MNIST, τ-matched, exact, cv 0.3; Holm over 4)\n")
    frame = per_seed(path)
    arms = {d: pick(frame, dist=d) for d in ("gamma", "lognormal", "uniform", "normal")}
    print("| condition | realised dt | seeds | late % (mean ± SD) | max drawdown | jitter |\n|---|---|---|---|---|---|")
    for name, arm in arms.items():
        print(f"| {name} | {realised(arm)} | {len(arm)} | {100 * arm['late'].mean():.2f} ± {100 * arm['late'].std():.2f}"
              f" | {100 * arm['max_drawdown'].mean():.2f} | {100 * arm['jitter'].mean():.2f} |")
    rows = []
    for skewed in ("gamma", "lognormal"):
        for symmetric in ("uniform", "normal"):
            a, b = arms[skewed], arms[symmetric]
            seeds = sorted(set(a.index) & set(b.index))
            comp = inference.compare(((a.loc[seeds, "late"] - b.loc[seeds, "late"]) * 100).to_numpy())
            rows.append((f"{skewed} − {symmetric}", len(seeds), comp))
    holm = inference.holm([c.p_t for *_, c in rows])
    print("\n| comparison | seeds | Δ late, points [95% CI] | p (t) | p (Holm over 4) |\n|---|---|---|---|---|")
    for (name, n, c), h in zip(rows, holm):
        print(f"| {name} | {n} | {c.mean_diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}] | {_p(c.p_t)} | {_p(h)} |")
    print()


def block_n(runs: Path) -> None:
    levels = sorted(runs.glob("N_prime_*"))
    if not levels:
        print("## N′ — not run\n")
        return
    print("## N′ — the noise-dose control for Study 4 (Holm over the 2 primary comparisons)\n")
    primary, rows, shares = [], [], []
    for path in levels:
        frame = per_seed(path)
        level = f"σ {frame['noise'].iloc[0]:g}, β {frame['beta'].iloc[0]:g}"
        arms = {"scalar τ = Δt": pick(frame, dist="scalar", mean=1.0),
                "scalar dt 0.80": pick(frame, dist="scalar", mean=0.8),
                "lognormal, mean-matched": pick(frame, dist="lognormal")}
        for name, arm in arms.items():
            chance = arm["chance"]
            cells = []
            for fraction in (0.0667, 0.3333, 0.5):  # trained at 16%, 40%, 55% with 10 classes
                outcome = [trained(s, late, c, ch, fraction)
                           for s, late, c, ch in zip(arm["status"], arm["late"], arm["collapse_count"], chance)]
                cells.append(f"{sum(bool(o) for o in outcome)}/{len(outcome)}")
            shares.append((level, name, realised(arm), f"{100 * arm['late'].mean():.1f} ± {100 * arm['late'].std():.1f}",
                           *cells))
        for cond, base, is_primary in (("lognormal, mean-matched", "scalar dt 0.80", True),
                                       ("scalar dt 0.80", "scalar τ = Δt", False),
                                       ("lognormal, mean-matched", "scalar τ = Δt", False)):
            a, b = arms[cond], arms[base]
            seeds = sorted(set(a.index) & set(b.index))
            comp = inference.compare(((a.loc[seeds, "late"] - b.loc[seeds, "late"]) * 100).to_numpy())
            (primary if is_primary else rows).append((level, f"{cond} − {base}", len(seeds), comp))
    print("| level | condition | realised dt | late % (mean ± SD) | trained ≥ 16% | ≥ 40% | ≥ 55% |\n"
          "|---|---|---|---|---|---|---|")
    for r in shares:
        print("| " + " | ".join(r) + " |")
    holm = inference.holm([c.p_t for *_, c in primary])
    print("\n| level | comparison | seeds | Δ late, points [95% CI] | p (t) | p (Holm over 2) |\n|---|---|---|---|---|---|")
    for (level, name, n, c), h in zip(primary, holm):
        print(f"| {level} | {name} (primary) | {n} | {c.mean_diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}] | "
              f"{_p(c.p_t)} | {_p(h)} |")
    for level, name, n, c in rows:
        print(f"| {level} | {name} (secondary) | {n} | {c.mean_diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}] | "
              f"{_p(c.p_t)} | – |")
    print()


def _p(p) -> str:
    if not inference.finite(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def main(runs: str) -> None:
    root = Path(runs)
    print("# Study 6: the planned tests\n\nFrom `python scripts/study6_family.py RUNS` (docs/study6/PLAN.md). "
          "Accuracies in percent, differences in points, condition − baseline paired by seed.\n")
    block_a(root)
    block_n(root)
    block_s(root)


if __name__ == "__main__":
    main(sys.argv[1])
