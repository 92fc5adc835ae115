"""Study 4's boundaries rebuilt with today's report (issue: the conclusion flipped with the
"trained" threshold): from the committed per-run tables (docs/study4/N_sigma/seeds.csv,
N_beta/seeds.csv), per condition and threshold — trained at 16%, 40% and 55% (F = 0.067, 0.333,
0.5 with 10 classes; 55% was the plan's), no collapse, a diverged run not trained — the
boundary (maximum likelihood, or Firth's penalised likelihood where the runs are separated: the
estimator named) with its 95% bootstrap interval over seeds, and the four shifts HTS − scalar
with the bootstrap p (ties split evenly), Holm over the four at each threshold.

    python scripts/study4_boundaries.py > docs/study4/thresholds.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hets_ep.report import inference
from hets_ep.report.runs import trained

DOCS = Path(__file__).parent.parent / "docs" / "study4"
AXES = {"N_sigma": ("dynamics.noise", False), "N_beta": ("ep.beta", True)}   # (key, fit in log stress)
FRACTIONS = {"16%": 0.0667, "40%": 1 / 3, "55% (the plan's)": 0.5}
CHANCE = 0.1


def curves(axis: str) -> dict[str, pd.DataFrame]:
    key, _ = AXES[axis]
    runs = pd.read_csv(DOCS / axis / "seeds.csv")
    runs["curve"] = runs.apply(lambda r: "scalar τ = Δt" if r["dt.dist"] == "scalar" else
                               f"lognormal cv 0.5, {'τ' if r['dt.match'] == 'tau' else 'mean'}-matched", axis=1)
    return {name: frame.assign(stress=frame[key].astype(float)) for name, frame in runs.groupby("curve")}


def outcomes(frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
    t = [trained(s, late if np.isfinite(late) else None, c, CHANCE, fraction)
         for s, late, c in zip(frame["status"], frame["late"], frame["collapse_count"])]
    data = pd.DataFrame({"seed": frame["seed"], "stress": frame["stress"], "trained": t}).dropna()
    return data.assign(trained=data["trained"].astype(bool))


def main() -> None:
    print("# Study 4's boundaries at three \"trained\" thresholds\n")
    print("From `python scripts/study4_boundaries.py` (the committed seeds.csv of N_sigma and N_beta; "
          "trained: late ≥ the threshold and no collapse). ML: maximum likelihood; Firth: Firth's penalised "
          "likelihood where the runs are separated. Bootstrap over seeds, 1000 resamples; shift p with resamples "
          "of a zero shift counted half on each side; Holm over the four shifts at each threshold.\n")
    print("| axis | condition | " + " | ".join(f"boundary, trained ≥ {f} [95% CI] (estimator)" for f in FRACTIONS) +
          " |\n|---|---|" + "---|" * len(FRACTIONS))
    tests = {f: [] for f in FRACTIONS}
    for axis, (key, log) in AXES.items():
        lines = curves(axis)
        cells = {name: [] for name in lines}
        for label, fraction in FRACTIONS.items():
            for name, frame in lines.items():
                data = outcomes(frame, fraction)
                fit = inference.fit_boundary(data["stress"], data["trained"], log)
                low, high, _ = inference.boundary_interval(data, log)
                shown = "–" if fit.boundary is None else (
                    f"{fit.boundary:.4f} [{low:.4f}, {high:.4f}]" if low is not None else f"{fit.boundary:.4f}")
                cells[name].append(f"{shown} ({'Firth' if fit.separated else 'ML'})")
            base = outcomes(lines["scalar τ = Δt"], fraction)
            for name, frame in lines.items():
                if name != "scalar τ = Δt":
                    tests[label].append((axis, name, inference.boundary_difference(outcomes(frame, fraction), base,
                                                                                   log), log))
        for name, row in cells.items():
            print(f"| {axis} ({key}) | {name} | " + " | ".join(row) + " |")
    print("\n| threshold | axis | condition − scalar τ = Δt | shift [95% CI] | p (bootstrap) | p (Holm over 4) |\n"
          "|---|---|---|---|---|---|")
    for label, rows in tests.items():
        holm = inference.holm([d["p"] if inference.finite(d["p"]) else None for *_, d, _ in rows])
        for (axis, name, d, log), h in zip(rows, holm):
            ratio = (lambda v: f"{np.exp(v):.2f}×") if log else (lambda v: f"{v:+.4f}")
            shift = "–" if not inference.finite(d["difference"]) else (
                f"{ratio(d['difference'])} [{ratio(d['ci_low'])}, {ratio(d['ci_high'])}]"
                if inference.finite(d["ci_low"]) else ratio(d["difference"]))
            p, hp = (("–" if not inference.finite(v) else "< 0.001" if v == 0 else f"{v:.4f}") for v in (d["p"], h))
            print(f"| {label} | {axis} | {name} | {shift} | {p} | {hp} |")


if __name__ == "__main__":
    main()
