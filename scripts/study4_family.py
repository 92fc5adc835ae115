"""Study 4's primary family: the four boundary shifts (2 HTS families × 2 axes), Holm over all
four (statsmodels), from the two reports' boundary_tests.csv; and block R's rescues: symmetric and
holomorphic EP against one-sided EP with scalar dt at the collapse point, trained or not paired by
seed (exact McNemar, Holm over the 2), from R's seeds.csv.

    python scripts/study4_family.py docs/study4/N_sigma docs/study4/N_beta docs/study4/R > docs/study4/family.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hets_ep.report import inference


def rescues(report: Path) -> None:
    seeds = pd.read_csv(report / "seeds.csv")
    scalar = seeds[(seeds["dt.dist"] == "scalar") & (seeds["dynamics.integrator"] == "exact")]
    trained = scalar.pivot(index="seed", columns="ep.estimator", values="trained").astype(bool)
    rows = [(name, trained[name].mean(), trained["one_sided"].mean(),
             inference.mcnemar_exact(trained[name], trained["one_sided"])) for name in ("symmetric", "holomorphic")]
    holm = inference.holm([p for *_, p in rows])
    print("\n| estimator (scalar τ = Δt, exact) | trained | one-sided trained | p (exact McNemar) | p (Holm over 2) |")
    print("|---|---|---|---|---|")
    for (name, rate, base, p), adjusted in zip(rows, holm):
        print(f"| {name} | {100 * rate:.0f}% | {100 * base:.0f}% | {p:.4f} | {adjusted:.4f} |")


def main(*reports: str) -> None:
    *boundaries, references = reports
    frames = [pd.read_csv(Path(r) / "boundary_tests.csv").assign(axis=Path(r).name) for r in boundaries]
    family = pd.concat(frames, ignore_index=True)
    family["p_holm_4"] = inference.holm([p if inference.finite(p) else None for p in family["p"]])
    print("| axis | condition | baseline | seeds | shift [95% CI] | as a ratio | p (bootstrap) | p (Holm over 4) |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in family.iterrows():
        ratio = r["scale"] == "log ratio"
        shift = "–" if not inference.finite(r["difference"]) else (
            f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if inference.finite(r["ci_low"])
            else f"{r['difference']:+.3f}")
        as_ratio = f"{np.exp(r['difference']):.2f}×" if ratio and inference.finite(r["difference"]) else "–"
        holm = "–" if not inference.finite(r["p_holm_4"]) else f"{r['p_holm_4']:.4f}"
        p = "–" if not inference.finite(r["p"]) else f"{r['p']:.4f}"
        print(f"| {r['axis']} | {r['condition']} | {r['baseline']} | {r['seeds']} | {shift} | {as_ratio} | {p} "
              f"| {holm} |")
    rescues(Path(references))


if __name__ == "__main__":
    main(*sys.argv[1:])
