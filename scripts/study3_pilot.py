"""Study 3's pilot (docs/study3/PLAN.md): does any condition fail by construction?

For every condition of every block, at seed 0's initial weights on the first 256 MNIST training
images, with that condition's integrator, schedule and dt draw: the free phase's fixed-point
residual after its T1 steps (mean and max over samples, and the share above 1e-2), the steps
until every sample's residual is at most 1e-3 (at most 3000), the spectral radius of the
relaxation step at that fixed point (max over samples: above 1 the step oscillates or diverges),
and the draw itself (share of neurons whose Euler step overshoots, dt > 1, or never settles,
dt ≥ 2; the realised mean, geometric and harmonic means, cv).

    python scripts/study3_pilot.py > docs/study3/pilot.md
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep import seeding
from hets_ep.config import compose
from hets_ep.data import load_dataset
from hets_ep.dynamics import relax, spectral_radius
from hets_ep.timeconstants import sample_dt

DT = {"scalar": ["dt=scalar"], "lognormal": ["dt=lognormal", "dt.cv=0.5"],
      "lognormal τ-matched": ["dt=lognormal", "dt.cv=0.5", "dt.match=tau", "dt.dt_max=8"]}
# Every condition of docs/study3/PLAN.md (the estimator does not change a free phase).
BLOCKS = {
    "X": [(f"{dt} {integ}", ["experiment=study3_designed_failures", *DT[dt], f"dynamics.integrator={integ}"])
          for integ in ("euler", "exact") for dt in ("scalar", "lognormal", "lognormal τ-matched")
          if not (integ == "euler" and "τ" in dt)],
    "F": [*((f"scalar mean {m}", ["experiment=study3_best_step", "dt=scalar", f"dt.mean={m}"])
            for m in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
          *((f"lognormal mean {m}, dt ≤ 1", ["experiment=study3_best_step", *DT["lognormal"], f"dt.mean={m}",
                                            "dt.dt_max=1.0"]) for m in (0.3, 0.4, 0.5)),
          ("lognormal mean 0.8, dt ≤ 2 (Study 2's)", ["experiment=study3_best_step", *DT["lognormal"], "dt.mean=0.8"])],
    "T": [(f"{dt} {relaxation}", ["experiment=study3_convergence", *DT[dt], *extra])
          for dt in ("scalar", "lognormal")
          for relaxation, extra in (("T1 30", []), ("T1 100", ["ep.T1=100", "ep.T2=30"]),
                                    ("ep.tol 1e-3", ["ep.tol=1e-3", "ep.T1=800", "ep.T2=300"]))],
    "H": [("scalar τ = Δt, exact", ["experiment=study3_noise", "dt=scalar", "dynamics.integrator=exact"]),
          ("lognormal τ-matched, exact", ["experiment=study3_noise", *DT["lognormal τ-matched"],
                                          "dynamics.integrator=exact"]),
          ("scalar dt 1, Euler (published)", ["experiment=study3_noise", "dt=scalar"])],
    "S": [(f"{dt} {schedule}", ["experiment=study3_convergence", *DT[dt], "ep.tol=1e-3", "ep.T1=800", "ep.T2=300",
                                f"dynamics.update_order={schedule}"])
          for dt in ("scalar", "lognormal") for schedule in ("sync", "async")],
}


def pilot(overrides: list[str], x) -> dict:
    cfg = compose(overrides)
    net = cfg.model.build(10)
    params = net.init(seeding.key(0, "init"), x.shape[1:])
    dt, stats = sample_dt(0, cfg.dt, net.state_shapes(x.shape[1:]))
    dt = tuple(map(jnp.asarray, dt))
    drive = net.drive(params, x)
    s0 = tuple(jnp.zeros((x.shape[0], *d.shape)) for d in dt)
    quiet = dataclasses.replace(cfg.dynamics, noise=0.0)  # the deterministic relaxation the noise sits on
    fixed = relax(net, params, drive, s0, dt, cfg.ep.T1, quiet, window=1)
    converged = relax(net, params, drive, s0, dt, 3000, quiet, window=1, tol=1e-3, tol_every=1)
    radius = spectral_radius(net, params, drive, converged.state, dt, quiet, jax.random.key(0), 60)
    flat = np.concatenate([np.asarray(d).ravel() for d in dt])
    return {"T1": cfg.ep.T1, "fp_mean": float(jnp.mean(fixed.fp_residual)), "fp_max": float(jnp.max(fixed.fp_residual)),
            "unconverged": float(jnp.mean(fixed.fp_residual > 1e-2)), "steps_to_1e-3": int(converged.steps),
            "reached": bool(jnp.max(converged.fp_residual) <= 1e-3), "radius_max": float(jnp.max(radius)),
            "overshoot": float(np.mean(flat > 1)) if cfg.dynamics.integrator == "euler" else 0.0,
            "unsettled": float(np.mean(flat >= 2)) if cfg.dynamics.integrator == "euler" else 0.0,
            "mean": stats["mean"], "geomean": stats["geomean"], "hmean": stats["hmean"], "cv": stats["cv"],
            "max_dt": stats["max"]}


def main() -> None:
    data = load_dataset("mnist", subset=256, test_subset=1)
    x = jnp.asarray(data.x_train)
    print("| block | condition | T1 | fixed-point residual after T1: mean / max | unconverged (> 1e-2) | "
          "steps to 1e-3 | spectral radius (max) | Euler dt > 1 / ≥ 2 | dt mean / geomean / hmean / cv / max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for block, conditions in BLOCKS.items():
        for name, overrides in conditions:
            r = pilot(overrides, x)
            steps = f"{r['steps_to_1e-3']}" if r["reached"] else "> 3000"
            print(f"| {block} | {name} | {r['T1']} | {r['fp_mean']:.1e} / {r['fp_max']:.1e} | {100 * r['unconverged']:.0f}% "
                  f"| {steps} | {r['radius_max']:.3f} | {100 * r['overshoot']:.0f}% / {100 * r['unsettled']:.0f}% | "
                  f"{r['mean']:.3f} / {r['geomean']:.3f} / {r['hmean']:.3f} / {r['cv']:.2f} / {r['max_dt']:.2f} |",
                  flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
