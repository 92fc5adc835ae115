"""Study 6's pilot (docs/study6/PLAN.md): does any condition fail by construction?

Every condition of blocks A, S and N′ at initial weights (seeds 0–7 for the draws' statistics;
seed 0's weights for the relaxation) on the first 256 training images of its dataset, with noise
off: the free phase after its T1 steps and, from that state, the nudged phases at +β and −β after
T2 steps (fixed-point residual mean / max, the share of samples above 1e-2), the steps to a
residual of 1e-3 (at most 3000), the spectral radius of the step at that fixed point, the share of
neurons whose Euler step overshoots (dt > 1), and the realised dt statistics over seeds 0–7
(mean, harmonic mean, cv; whether every seed's draw is reachable).

    python scripts/study6_pilot.py > docs/study6/pilot.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from study3_pilot import pilot  # noqa: E402

from hets_ep import seeding  # noqa: E402
from hets_ep.config import compose  # noqa: E402
from hets_ep.data import load_dataset  # noqa: E402
from hets_ep.dynamics import relax  # noqa: E402
from hets_ep.errors import ConfigError  # noqa: E402
from hets_ep.timeconstants import sample_dt  # noqa: E402

FASHION = str((Path(__file__).parent / ".." / ".." / "shared" / "data" / "fashion_mnist" / "fashion_mnist.npz").resolve())
DATASETS = {"MNIST": ["dataset=mnist"],
            "Fashion-MNIST": ["dataset=npz", f"dataset.path={FASHION}", "dataset.normalize=standard"]}
# Every condition of docs/study6/PLAN.md, and the variants the pilot rejected (marked).
A = {"S: scalar dt 1, Euler (published)": ["dt=scalar"],
     "P: gamma cv 0.4, mean dt 1, Euler, dt ≤ 1.8": ["dt=gamma", "dt.cv=0.4", "dt.dt_max=1.8"],
     "P′: scalar dt 0.79, Euler": ["dt=scalar", "dt.mean=0.79"],
     "F: gamma cv 0.4, τ-matched, exact": ["dt=gamma", "dt.cv=0.4", "dt.match=tau", "dt.dt_max=8",
                                           "dynamics.integrator=exact"],
     "F′: scalar τ = Δt, exact": ["dt=scalar", "dynamics.integrator=exact"],
     "(rejected) P at gamma cv 0.5, dt ≤ 2": ["dt=gamma", "dt.cv=0.5", "dt.dt_max=2.0"]}
S = {f"{'(rejected) ' if cv == 0.5 else ''}{family} cv {cv}, τ-matched, exact":
     [f"dt={family}", f"dt.cv={cv}", "dt.match=tau", "dt.dt_max=8", "dynamics.integrator=exact"]
     for cv in (0.3, 0.5) for family in ("gamma", "lognormal", "uniform", "normal")}
N = {f"{name}, exact, σ {sigma}, β {beta}": ["experiment=study4_noise", *dt, "dynamics.integrator=exact",
                                            f"dynamics.noise={sigma}", f"ep.beta={beta}"]
     for sigma, beta in ((0.02, 0.1), (0.04, 0.2))
     for name, dt in (("scalar dt 0.80", ["dt=scalar", "dt.mean=0.8"]), ("scalar τ = Δt", ["dt=scalar"]),
                      ("lognormal cv 0.5, mean dt 1", ["dt=lognormal", "dt.dt_max=8"]))}
SEEDS = range(8)


def draws(overrides: list[str], shapes) -> str:
    """The realised mean, harmonic mean and cv of the draws of seeds 0–7 (ranges), or which seeds
    cannot be drawn."""
    cfg = compose(overrides)
    stats, failed = [], []
    for seed in SEEDS if "experiment=study4_noise" not in overrides else range(12):
        try:
            stats.append(sample_dt(seed, cfg.dt, shapes)[1])
        except ConfigError:
            failed.append(seed)
    if failed:
        return f"seeds {failed} unreachable"

    def span(key):
        values = [s[key] for s in stats]
        return f"{min(values):.3f}" if max(values) - min(values) < 5e-4 else f"{min(values):.3f}–{max(values):.3f}"

    return f"{span('mean')} / {span('hmean')} / {span('cv')}"


def nudged(overrides: list[str], x, y) -> tuple[float, float, float]:
    """After the free phase (T1 steps), T2 steps at +β and at −β: the larger mean and max
    fixed-point residual of the two, and the share of samples above 1e-2 in either."""
    cfg = compose(overrides)
    net = cfg.model.build(10)
    params = net.init(seeding.key(0, "init"), x.shape[1:])
    dt = tuple(map(jnp.asarray, sample_dt(0, cfg.dt, net.state_shapes(x.shape[1:]))[0]))
    quiet = dataclasses.replace(cfg.dynamics, noise=0.0)
    drive = net.drive(params, x)
    s0 = tuple(jnp.zeros((x.shape[0], *d.shape)) for d in dt)
    free = relax(net, params, drive, s0, dt, cfg.ep.T1, quiet, window=1)
    runs = [relax(net, params, drive, free.state, dt, cfg.ep.T2, quiet, jnp.asarray(sign * cfg.ep.beta), y, window=1)
            for sign in (1.0, -1.0)]
    fp = jnp.maximum(runs[0].fp_residual, runs[1].fp_residual)
    return float(jnp.mean(fp)), float(jnp.max(fp)), float(jnp.mean(fp > 1e-2))


def main() -> None:
    print("| block | dataset | condition | free: residual after T1 mean / max, unconverged | nudged ±β: residual after "
          "T2 mean / max, unconverged | steps to 1e-3 | spectral radius (max) | Euler dt > 1 | dt mean / hmean / cv "
          "(seeds 0–7) |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for block, conditions, datasets in (("A", A, DATASETS), ("S", S, {"Fashion-MNIST": DATASETS["Fashion-MNIST"]}),
                                        ("N′", N, {"MNIST": DATASETS["MNIST"]})):
        for data_name, data_overrides in datasets.items():
            cfg = compose(data_overrides)
            data = load_dataset(cfg.dataset.name, path=cfg.dataset.path, subset=256, test_subset=1,
                                normalize=cfg.dataset.normalize)
            x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
            for name, dt_overrides in conditions.items():
                base = [] if block == "N′" else ["experiment=kubo2026"]
                overrides = [*base, *data_overrides, *dt_overrides]
                r = pilot(overrides, x)
                n_mean, n_max, n_unconverged = nudged(overrides, x, y)
                shapes = compose(overrides).model.build(10).state_shapes(x.shape[1:])
                steps = f"{r['steps_to_1e-3']}" if r["reached"] else "> 3000"
                print(f"| {block} | {data_name} | {name} | {r['fp_mean']:.1e} / {r['fp_max']:.1e}, "
                      f"{100 * r['unconverged']:.0f}% | {n_mean:.1e} / {n_max:.1e}, {100 * n_unconverged:.0f}% | {steps} | "
                      f"{r['radius_max']:.3f} | {100 * r['overshoot']:.0f}% | {draws(overrides, shapes)} |", flush=True)
    jax.clear_caches()


if __name__ == "__main__":
    main()
