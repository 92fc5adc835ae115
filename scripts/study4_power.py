"""Study 4's power analysis (docs/study4/PLAN.md): how many seeds does block N need?

The pilot's runs (scalar dt, exact, seeds 100–101, every level of both stress axes) give P(train)
per level; a logistic fit gives the slope of the transition. Simulated studies then draw, per
seed and level, whether a run trains for two conditions whose boundaries differ by a factor of 2
(the smallest shift worth reporting: one step of the β grid, or a doubling of σ), and test the
shift as the report does (the paired bootstrap of boundaries, Holm over the family of 4). Power
is the share of simulated studies in which the shift is found.

    python scripts/study4_power.py PILOT_SIGMA_DIR PILOT_BETA_DIR > docs/study4/power.md
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from hets_ep.report import inference
from hets_ep.report.runs import find_runs, group

SIGMAS = (0.0, 0.01, 0.02, 0.04, 0.08)
BETAS = (0.05, 0.1, 0.2, 0.4, 0.8)  # 0.8 added after the pilot (docs/study4/PLAN.md)
FAMILY = 4           # boundary shifts: 2 HTS families × 2 axes, Holm
SIMULATIONS, RESAMPLES = 60, 150


def pilot(path: str, key: str) -> pd.DataFrame:
    """The pilot's runs: seed, stress, trained (the plan's rule: late ≥ chance + 0.5 (1 − chance))."""
    conditions = group(find_runs([path]), 0.5).conditions
    rows = [(r["seed"], float(c.values[key]), bool(r["trained"])) for c in conditions
            for _, r in c.finished.iterrows()]
    return pd.DataFrame(rows, columns=["seed", "stress", "trained"])


def simulate(levels, intercept: float, slope: float, log: bool, shift: float, seeds: int,
             rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two conditions' runs: the pilot's curve, and the same curve with its boundary moved by
    ``shift`` (a factor on the stress)."""
    x = np.log(np.maximum(levels, 1e-12)) if log else np.asarray(levels, float)
    moved = np.log(shift) if log else None

    def draw(offset):
        rows = []
        for seed in range(seeds):
            for level, xi in zip(levels, x):
                z = intercept + slope * (xi - offset)
                rows.append((seed, level, rng.random() < 1 / (1 + np.exp(-z))))
        return pd.DataFrame(rows, columns=["seed", "stress", "trained"])

    base = draw(0.0)
    if log:
        return base, draw(moved)
    boundary = -intercept / slope
    return base, draw(boundary * (shift - 1))


def power(data: pd.DataFrame, levels, log: bool, seeds: int, rng: np.random.Generator) -> float:
    fit = inference.fit_boundary(data["stress"], data["trained"], log)
    found = 0
    for _ in range(SIMULATIONS):
        a, b = simulate(levels, fit.intercept, fit.slope, log, 2.0, seeds, rng)
        p = inference.boundary_difference(b, a, log, int(rng.integers(1 << 30)), RESAMPLES)["p"]
        found += p is not None and p < 0.05 / FAMILY  # the strictest Holm step
    return found / SIMULATIONS


def main(sigma_dir: str, beta_dir: str) -> None:
    rng = np.random.default_rng(0)
    print("| axis | pilot: trained share by level | fitted boundary (pilot) | slope | "
          + " | ".join(f"power, {n} seeds" for n in (8, 12, 16)) + " |")
    print("|---|---|---|---|" + "---|" * 3)
    for name, path, key, levels, log in (("σ at β 0.1", sigma_dir, "dynamics.noise", SIGMAS, False),
                                         ("β at σ 0.04", beta_dir, "ep.beta", BETAS, True)):
        data = pilot(path, key)
        if name.startswith("β"):  # the collapse point (β 0.1, σ 0.04) is the σ axis's level 0.04
            shared = pilot(sigma_dir, "dynamics.noise")
            data = pd.concat([data, shared[shared["stress"] == 0.04].assign(stress=0.1)])
        fit = inference.fit_boundary(data["stress"], data["trained"], log)
        shares = data.groupby("stress")["trained"].mean()
        powers = [power(data, levels, log, n, rng) for n in (8, 12, 16)]
        print(f"| {name} | {' '.join(f'{s:g}:{100 * m:.0f}%' for s, m in shares.items())} | "
              f"{'–' if fit.boundary is None else f'{fit.boundary:.3g}'} | "
              f"{'–' if fit.slope is None else f'{fit.slope:.3g}'} | " + " | ".join(f"{100 * p:.0f}%" for p in powers)
              + " |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
