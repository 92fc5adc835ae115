"""The README's figure (docs/results.png), from Study 4's committed reports: the share of runs of
one-sided EP that train under state noise, against the noise σ (β 0.1) and against |β| (σ 0.04),
per dt condition, with 95% Wilson intervals (statsmodels) and the fitted logistic curves.

    python scripts/results_figure.py docs/study4 docs/results.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from hets_ep import plotting

AXES = (("N_sigma", "dynamics.noise", "noise σ per step (β 0.1)"), ("N_beta", "ep.beta", "|β| (noise σ 0.04)"))
STYLE = {"scalar": ("black", "o", "-"), "tau": ("tab:blue", "s", "--"), "mean": ("tab:orange", "^", ":")}
LABELS = {STYLE["scalar"]: "scalar τ = Δt", STYLE["tau"]: "HTS, mean τ = Δt", STYLE["mean"]: "HTS, mean dt = 1"}


def style(condition: str):
    return STYLE["scalar"] if condition.startswith("scalar") else STYLE["tau" if "match=tau" in condition else "mean"]


def main(study: str, out: str) -> None:
    plt = plotting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (report, key, xlabel) in zip(axes, AXES):
        seeds = pd.read_csv(Path(study) / report / "seeds.csv")
        fits = pd.read_csv(Path(study) / report / "boundaries.csv").set_index("condition")
        log = fits["scale"].iloc[0] == "log"
        seeds["curve"] = [c.rsplit(f" {key.rsplit('.', 1)[-1]}=", 1)[0] for c in seeds["condition"]]
        for name, runs in seeds.groupby("curve"):
            colour, marker, line = style(name)
            levels = runs.groupby(key)["trained"].agg(["sum", "size"])
            low, high = proportion_confint(levels["sum"], levels["size"], method="wilson")
            share = levels["sum"] / levels["size"]
            ax.errorbar(levels.index, share, yerr=[np.maximum(share - low, 0), np.maximum(high - share, 0)], fmt=marker,
                        color=colour, ms=5, capsize=2, alpha=0.8)
            if name in fits.index and np.isfinite(fits.loc[name, "slope"]):
                grid = np.geomspace(levels.index.min(), levels.index.max(), 200) if log else \
                    np.linspace(levels.index.min(), levels.index.max(), 200)
                x = np.log(grid) if log else grid
                fit = fits.loc[name]
                ax.plot(grid, 1 / (1 + np.exp(-(fit["intercept"] + fit["slope"] * x))), line, color=colour,
                        label=f"{LABELS[style(name)]}: boundary {fit['boundary']:.3g} "
                              f"[{fit['ci_low']:.3g}, {fit['ci_high']:.3g}]")
        if log:
            ax.set_xscale("log")
            grid_levels = sorted(seeds[key].unique())
            ax.set_xticks(grid_levels, [f"{v:g}" for v in grid_levels])
            ax.minorticks_off()
        ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax.set(xlabel=xlabel, ylabel="share of runs that train", ylim=(-0.05, 1.05))
        ax.legend(fontsize=8, loc="upper left" if key == "ep.beta" else "upper right")
        ax.grid(alpha=0.3)
    fig.suptitle("Where one-sided EP stops training under noise: scalar dt against heterogeneous time steps "
                 "(Study 4, 12 seeds per point)", fontsize=10)
    fig.tight_layout()
    plotting.save(fig, Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
