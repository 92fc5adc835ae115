"""Study 5's pilot (docs/study5/PLAN.md): does any depth condition fail by construction?

For 1 to 5 hidden layers of 256, with and without skip connections (model.skip=2, from 2 hidden
layers on), scalar τ = Δt against HTS matched by mean τ (exact integration): the free phase at
seed 0's initial weights on 256 MNIST images, as Study 3's pilot measures it
(scripts/study3_pilot.py) — the residual after a fixed budget of T1 = 60 steps, the steps to
1e-3, the spectral radius.

    python scripts/study5_pilot.py > docs/study5/pilot.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from study3_pilot import pilot  # noqa: E402

from hets_ep.data import load_dataset  # noqa: E402

DT = {"scalar τ = Δt": ["dt=scalar"], "lognormal τ-matched": ["dt=lognormal", "dt.match=tau"]}


def conditions():
    """``(hidden layers, skip, dt name, overrides)`` of every depth condition."""
    for depth in range(1, 6):
        for skip in (0, 2) if depth >= 2 else (0,):
            for name, dt in DT.items():
                yield depth, skip, name, ["experiment=study5_depth", "ep.T1=60", "ep.tol=null",
                                          f"model.hidden=[{','.join(['256'] * depth)}]", f"model.skip={skip}", *dt]


def main() -> None:
    x = jnp.asarray(load_dataset("mnist", subset=256, test_subset=1).x_train)
    print("| hidden layers | skip | dt | T1 | fixed-point residual after T1: mean / max | unconverged (> 1e-2) | "
          "steps to 1e-3 | spectral radius (max) |\n|---|---|---|---|---|---|---|---|", flush=True)
    for depth, skip, name, overrides in conditions():
        r = pilot(overrides, x)
        reached = f"{r['steps_to_1e-3']}" if r["reached"] else "> 3000"
        print(f"| {depth} | {skip or '–'} | {name} | {r['T1']} | {r['fp_mean']:.1e} / {r['fp_max']:.1e} | "
              f"{100 * r['unconverged']:.0f}% | {reached} | {r['radius_max']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
