"""``hets-ep gradcheck``: EP's gradient estimates against BPTT on one batch of the dataset, and
with ``gradcheck.gdu=true`` the step-by-step check of the nudged phase (:mod:`hets_ep.gdu`)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hets_ep import atomic, ep, gdu, record, seeding, steps
from hets_ep.build import build_run
from hets_ep.config import Config, EPConfig
from hets_ep.models import ACTIVATIONS


# EP's estimate equals BPTT's gradient as β → 0 with converged phases; beyond these it need not.
CONVERGED = 1e-4
# An estimator is accurate at its |β| when refining the nudge hardly moves its estimate: β halved,
# or for holomorphic EP two more points on the circle (which agree once the nudged fixed point is
# analytic on the whole circle).
REFINED = 0.01


def refined(phases: EPConfig) -> EPConfig:
    """The same estimator with a finer nudge: N + 2 points (holomorphic), else β / 2."""
    if phases.estimator == "holomorphic":
        return dataclasses.replace(phases, N=phases.N + 2)
    return dataclasses.replace(phases, beta=phases.beta / 2)


def refinement(net, params, x, y, dt, cfg: Config, key) -> dict[str, float]:
    """Per estimator, ``‖ĝ − ĝ′‖ / ‖ĝ′‖`` over every tensor, ``ĝ′`` the estimate with a finer
    nudge (:func:`refined`): how far the estimate still moves with the nudge."""
    out = {}
    for name in cfg.gradcheck.estimators:
        phases = dataclasses.replace(cfg.ep, estimator=name)
        a, b = (jax.jit(functools.partial(ep.ep_estimate, net, phases=p, dynamics=cfg.dynamics))(
            params, x, y, dt, key=key).grads for p in (phases, refined(phases)))
        diff = sum(float(jnp.sum((u - v) ** 2)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        norm = sum(float(jnp.sum(v ** 2)) for v in jax.tree.leaves(b))
        out[name] = float(np.sqrt(diff / max(norm, 1e-30)))
    return out


def _why_not_exact(cfg: Config, report: dict) -> list[str]:
    """What, in this check's settings, keeps EP from agreeing with BPTT (nothing: an empty list)."""
    reasons = []
    unsettled = max(report["free_fp_residual"], *report["nudged_fp_residual"].values())
    if unsettled > CONVERGED:
        reasons.append(f"a phase ends {unsettled:.1e} from its fixed point (above {CONVERGED:g}): raise ep.T1/ep.T2 "
                       "or set ep.tol")
    for name, moved in report["refinement"].items():
        if moved > REFINED:
            finer = f"N={cfg.ep.N + 2} points" if name == "holomorphic" else f"β={cfg.ep.beta / 2:g}"
            reasons.append(f"warning: |β| = {cfg.ep.beta:g} is outside the region where {name} EP is accurate: its "
                           f"estimate moves by {100 * moved:.1f}% with {finer}; lower ep.beta until it does not")
    if not ACTIVATIONS[cfg.model.activation].holomorphic:
        reasons.append(f"{cfg.model.activation} has kinks where the nudge moves states across them: prefer "
                       "model.activation=steep_sigmoid")
    return reasons


def gradcheck(cfg: Config, run_dir: Path, dts: list | None = None) -> dict:
    """Cosine similarity and norm ratio per weight tensor, for each estimator, at initial weights;
    writes ``gradcheck.json`` (and ``gdu.json`` with ``gdu/`` figures) into ``run_dir``.

    Uses the first ``gradcheck.batch_size`` training examples and the run's model, dt draw,
    dynamics and phases (``ep.T1``, ``ep.T2``, ``ep.beta``, ``ep.N``, ``ep.tol``; BPTT always
    runs exactly ``ep.T1`` steps). Agreement needs converged phases and a small β: the report
    includes the free phase's residuals. Prints a table and returns the report. ``dts``: the
    job's dt draw per seed, made by the command line's checks (else drawn here).
    """
    run = build_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, parallel_seeds=1)),
                    dts=dts[:1] if dts else None)
    cfg = run.cfg  # its relaxation backend resolved
    net, params, dt = run.net, steps.member(run.state.params, 0), steps.member(run.state.dt, 0)
    n = cfg.gradcheck.batch_size
    x, y = jnp.asarray(run.data.x_train[:n]), jnp.asarray(run.data.y_train[:n])
    compare = ep.make_comparator(net, cfg.ep, cfg.dynamics, tuple(cfg.gradcheck.estimators))
    report = compare(params, x, y, dt, seeding.key(cfg.seed, "estimator"))
    report["refinement"] = refinement(net, params, x, y, dt, cfg, seeding.key(cfg.seed, "estimator"))
    report.update(beta=cfg.ep.beta, T1=cfg.ep.T1, T2=cfg.ep.T2, N=cfg.ep.N, batch_size=len(x), dt=run.dts[0][1])
    print(f"BPTT's free phase after T1={cfg.ep.T1} steps: fixed-point residual {report['free_fp_residual']:.2e}, "
          f"step residual {report['free_step_residual']:.2e} (β={cfg.ep.beta}, T2={cfg.ep.T2})")
    print(f"{'estimator':<12} {'tensor':<20} {'cosine':>8} {'norm ratio':>11}   nudged phases' residual   "
          "moves with a finer nudge")
    for name, tensors in report["estimators"].items():
        for tensor, v in tensors.items():
            print(f"{name:<12} {tensor:<20} {v['cosine']:>8.4f} {v['norm_ratio']:>11.4f}   "
                  f"{report['nudged_fp_residual'][name]:.2e}                  {100 * report['refinement'][name]:.2f}%")
    for why in _why_not_exact(cfg, report):
        print(why if why.startswith("warning:") else f"note: {why}")
    atomic.write_json(run_dir / record.GRADCHECK, report)
    print(f"gradcheck written to {run_dir / record.GRADCHECK}")
    if cfg.gradcheck.gdu:
        checked = gdu.check(net, params, x, y, dt, cfg.ep, cfg.dynamics, cfg.ep.T2, plots=run_dir / "gdu")
        print(f"GDU over the first {cfg.ep.T2} nudged steps (β={cfg.ep.beta}): {checked['compares']}")
        print(f"{'tensor':<20} {'relative RMSE':>14} {'signs':>8} {'at a bound':>11}")
        for name, v in checked["tensors"].items():
            signs = "–" if v["sign_agreement"] is None else f"{100 * v['sign_agreement']:.1f}%"
            bound = f"{100 * v['at_bound']:.1f}%" if "at_bound" in v else ""
            print(f"{name:<20} {v['relative_rmse']:>14.4f} {signs:>8} {bound:>11}")
        if "note" in checked:
            print(f"note: {checked['note']}")
        atomic.write_json(run_dir / "gdu.json", checked)
        print(f"GDU check written to {run_dir / 'gdu.json'}, figures in {run_dir / 'gdu'}")
        report["gdu"] = checked
    return report
