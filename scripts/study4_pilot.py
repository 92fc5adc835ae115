"""Study 4's pilot (docs/study4/PLAN.md): does any condition of block N fail by construction?

Every condition's free phase at seed 0's initial weights on the first 256 MNIST images, noise off
(the deterministic relaxation the noise sits on), as Study 3's pilot measures it
(scripts/study3_pilot.py): the fixed-point residual after T1, the steps to a residual of 1e-3,
the spectral radius of the step there, the share of Euler steps that overshoot, the realised
statistics of the draw. Then the nudged phase: its residual after T2 steps of β 0.1 from the
free fixed point.

    python scripts/study4_pilot.py > docs/study4/pilot.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from study3_pilot import pilot  # noqa: E402

from hets_ep import seeding  # noqa: E402
from hets_ep.config import compose  # noqa: E402
from hets_ep.data import load_dataset  # noqa: E402
from hets_ep.dynamics import relax  # noqa: E402
from hets_ep.timeconstants import sample_dt  # noqa: E402

BASE = ["experiment=study4_noise"]
CONDITIONS = {
    "scalar τ = Δt, exact": ["dt=scalar", "dynamics.integrator=exact"],
    "lognormal τ-matched, exact": ["dt=lognormal", "dt.match=tau", "dynamics.integrator=exact"],
    "lognormal mean-matched, exact": ["dt=lognormal", "dt.match=mean", "dynamics.integrator=exact"],
    "scalar dt 1, Euler (published)": ["dt=scalar", "dynamics.integrator=euler"],
}


def nudged_residual(overrides: list[str], x, y, beta: float) -> float:
    """The largest fixed-point residual after the nudged phase (T2 steps of +β from the free
    fixed point), noise off."""
    cfg = compose(overrides)
    net = cfg.model.build(10)
    params = net.init(seeding.key(0, "init"), x.shape[1:])
    dt = tuple(map(jnp.asarray, sample_dt(0, cfg.dt, net.state_shapes(x.shape[1:]))[0]))
    quiet = dataclasses.replace(cfg.dynamics, noise=0.0)
    drive = net.drive(params, x)
    s0 = tuple(jnp.zeros((x.shape[0], *d.shape)) for d in dt)
    free = relax(net, params, drive, s0, dt, cfg.ep.T1, quiet, window=1)
    nudged = relax(net, params, drive, free.state, dt, cfg.ep.T2, quiet, jnp.float32(beta), y, window=1)
    return float(jnp.max(nudged.fp_residual))


def main() -> None:
    data = load_dataset("mnist", subset=256, test_subset=1)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    print("| condition | T1 | free fixed-point residual after T1: mean / max | unconverged (> 1e-2) | steps to 1e-3 "
          "| spectral radius (max) | Euler dt > 1 / ≥ 2 | dt mean / geomean / hmean / cv / max | nudged residual "
          "after T2 (β 0.1 / 0.05) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, overrides in CONDITIONS.items():
        r = pilot([*BASE, *overrides], x)
        nudged = [nudged_residual([*BASE, *overrides], x, y, b) for b in (0.1, 0.05)]
        steps = f"{r['steps_to_1e-3']}" if r["reached"] else "> 3000"
        print(f"| {name} | {r['T1']} | {r['fp_mean']:.1e} / {r['fp_max']:.1e} | {100 * r['unconverged']:.0f}% | "
              f"{steps} | {r['radius_max']:.3f} | {100 * r['overshoot']:.0f}% / {100 * r['unsettled']:.0f}% | "
              f"{r['mean']:.3f} / {r['geomean']:.3f} / {r['hmean']:.3f} / {r['cv']:.2f} / {r['max_dt']:.2f} | "
              f"{nudged[0]:.1e} / {nudged[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
