"""Study 6's power analysis (docs/study6/PLAN.md): how many seeds does block A need?

The nearest setting run so far is Study 5's E (784-512-10, hard sigmoid, symmetric EP, scalar dt
against τ-matched HTS, 8 seeds; docs/study5/E/seeds.csv). Its paired differences HTS − scalar give
the spread of each primary endpoint: late accuracy (points), and on the log scale max drawdown
and jitter (floored at 0.01 points). For each endpoint and a number of seeds: the power of a paired t-test (two-sided,
α 0.05 / 24, the Holm family's smallest threshold, and α 0.05, its largest) to detect a ratio
of 2 (drawdown, jitter), and the power of TOST ±0.5 points on late accuracy when the true
difference is 0 or −0.2; and the Brown–Forsythe test's power, by simulation, to detect a ratio of
3 in the across-seed SD of late accuracy.

    python scripts/study6_power.py > docs/study6/power.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

E = Path(__file__).parent.parent / "docs" / "study5" / "E" / "seeds.csv"
SEEDS = (6, 8, 10, 12, 16)
FAMILY = 24
MARGIN = 0.5
JITTER_FLOOR = 1e-4   # 0.01 points: a jitter of exactly 0 (identical late epochs) has no logarithm


def paired(runs: pd.DataFrame, column: str, log: bool) -> np.ndarray:
    wide = runs.pivot(index="seed", columns="dt.dist", values=column)
    values = np.log(wide + JITTER_FLOOR) if log else wide * 100
    return (values["lognormal"] - values["scalar"]).to_numpy()


def tost_power(sd: float, n: int, true: float, rng: np.random.Generator, sims: int = 20000) -> float:
    """Share of simulated paired studies in which both one-sided t-tests reject at 0.05."""
    d = rng.normal(true, sd, (sims, n))
    m, se = d.mean(1), d.std(1, ddof=1) / np.sqrt(n)
    t = stats.t.ppf(0.95, n - 1)
    return float(np.mean((m - t * se > -MARGIN) & (m + t * se < MARGIN)))


def t_power(effect: float, sd: float, n: int, alpha: float, rng: np.random.Generator, sims: int = 20000) -> float:
    """Share of simulated paired studies (differences N(effect, sd²)) in which the two-sided
    paired t-test rejects at ``alpha``."""
    d = rng.normal(effect, sd, (sims, n))
    return float(np.mean(stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha))


def bf_power(n: int, ratio: float, rng: np.random.Generator, sims: int = 4000) -> float:
    """Brown–Forsythe (Levene, median-centred) power for an SD ratio between two conditions."""
    hits = sum(stats.levene(rng.normal(0, 1, n), rng.normal(0, ratio, n), center="median").pvalue < 0.05
               for _ in range(sims))
    return hits / sims


def main() -> None:
    runs = pd.read_csv(E)
    rng = np.random.default_rng(0)
    sds = {"late (points)": paired(runs, "late", False).std(ddof=1),
           "log max drawdown": paired(runs, "max_drawdown", True).std(ddof=1),
           "log jitter": paired(runs, "jitter", True).std(ddof=1)}
    print("Paired SDs in Study 5 E (HTS − scalar, 8 seeds): " +
          ", ".join(f"{k} {v:.3f}" for k, v in sds.items()) + ".\n")
    print("| seeds | TOST ±0.5, true 0 | TOST ±0.5, true −0.2 | drawdown ×2, α 0.05/24 | drawdown ×2, α 0.05 | "
          "jitter ×2, α 0.05/24 | jitter ×2, α 0.05 | Brown–Forsythe, SD ×3 |\n|---|---|---|---|---|---|---|---|")
    for n in SEEDS:
        cells = [tost_power(max(sds["late (points)"], 0.3), n, 0.0, rng),
                 tost_power(max(sds["late (points)"], 0.3), n, -0.2, rng)]
        for key in ("log max drawdown", "log jitter"):
            cells += [t_power(np.log(2), sds[key], n, 0.05 / FAMILY, rng), t_power(np.log(2), sds[key], n, 0.05, rng)]
        cells.append(bf_power(n, 3.0, rng))
        print(f"| {n} | " + " | ".join(f"{100 * c:.0f}%" for c in cells) + " |")


if __name__ == "__main__":
    main()
