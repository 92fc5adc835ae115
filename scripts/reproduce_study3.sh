#!/usr/bin/env bash
# Study 3 (docs/study3/PLAN.md): a fair test of HTS — designed-in failures removed, best against
# best, relaxation to convergence, modern estimators under noise, update order.
#   bash scripts/reproduce_study3.sh [OUT] [PHASE]
# OUT defaults to outputs/study3. PHASE: all (default) | pilot | train | report | BLOCK (X, F, T, H,
# S, D, E: one block's runs). Blocks run in the plan's priority order; an existing sweep is
# continued (resume), so the script can be stopped and started again. About 3 hours on 2 CPU cores
# for X–S. Reports land in docs/study3/<report>/ when OUT is the default.
set -euo pipefail
out=${1:-outputs/study3}
phase=${2:-all}
docs=${HETS_EP_STUDY_DOCS:-docs/study3}
extra=(train.progress=false hydra.callbacks.sweep_end.report=false ${HETS_EP_ARGS:-})
# shellcheck source=scripts/study_sweep.sh
. "$(dirname "$0")/study_sweep.sh"
tau=(dt=lognormal dt.cv=0.5 dt.match=tau dt.dt_max=8)
tol=(ep.tol=1e-3 ep.T1=800 ep.T2=300)

X() {  # the designed-in failures of Study 2's block B at mean dt 1.0, removed
  local x=(experiment=study3_designed_failures "seed=$(seeds 0 5)" ep=one_sided,symmetric)
  sweep "$out/X/euler" "${x[@]}" dt=scalar,lognormal dynamics.integrator=euler
  sweep "$out/X/exact" "${x[@]}" dt=scalar,lognormal dynamics.integrator=exact
  sweep "$out/X/tau" "${x[@]}" "${tau[@]}" dynamics.integrator=exact
}
F() {  # best against best at the large step; the best of each family chosen on validation
  local f=(experiment=study3_best_step "seed=$(seeds 0 11)")
  sweep "$out/F/scalar" "${f[@]}" dt=scalar dt.mean=0.3,0.4,0.5,0.6,0.7,0.8
  sweep "$out/F/hts" "${f[@]}" dt=lognormal dt.dt_max=1.0 dt.mean=0.3,0.4,0.5
  sweep "$out/F/study2" "${f[@]}" dt=lognormal dt.mean=0.8
}
T() {  # convergence and compute: fixed T1 30, T1 100, and relaxation to a tolerance
  local t=(experiment=study3_convergence "seed=$(seeds 0 5)" ep=one_sided,symmetric dt=scalar,lognormal)
  sweep "$out/T/T30" "${t[@]}"
  sweep "$out/T/T100" "${t[@]}" ep.T1=100 ep.T2=30
  sweep "$out/T/tol" "${t[@]}" "${tol[@]}"
}
H() {  # estimators under state noise (the holomorphic-EP setting, reduced)
  local h=(experiment=study3_noise "seed=$(seeds 0 5)")
  sweep "$out/H/noisy_scalar" "${h[@]}" ep=one_sided,negative,symmetric,holomorphic dt=scalar \
    dynamics.integrator=exact
  sweep "$out/H/noisy_lognormal" "${h[@]}" ep=one_sided,negative,symmetric,holomorphic "${tau[@]}" \
    dynamics.integrator=exact
  sweep "$out/H/quiet" "${h[@]}" ep=one_sided,holomorphic dt=scalar dynamics.integrator=exact dynamics.noise=0.0
  sweep "$out/H/published" "${h[@]}" ep=one_sided dt=scalar dynamics.integrator=euler dynamics.noise=0.0,0.04
}
S() {  # update order at convergence (the sync runs are block T's symmetric ep.tol runs)
  sweep "$out/S/async" experiment=study3_convergence "seed=$(seeds 0 5)" ep=symmetric dt=scalar,lognormal \
    "${tol[@]}" dynamics.update_order=async
}
D() {  # depth (Study 2's cut block)
  sweep "$out/D" experiment=study2_depth "seed=$(seeds 0 7)" ep=one_sided,symmetric dt=scalar,lognormal
}
E() {  # full scale: the plan's rule picks the conditions from block T (docs/study3/PLAN.md)
  sweep "$out/E" experiment=study3_convergence "seed=$(seeds 0 7)" dataset.subset=null train.epochs=20 \
    ep=symmetric dt=scalar,lognormal "${tol[@]}"
}

report() {
  local r=(hets-ep report --metric late)
  # Blocks cut for the budget have no runs and no report (docs/study3/RESULTS.md names them).
  if [ -d "$out/X" ]; then
    "${r[@]}" "$out/X" --out "$docs/X_same_integrator" --match ep.estimator,dynamics.integrator \
      --family "X1: HTS − scalar dt 1.0 with the same integrator, per estimator"
    "${r[@]}" "$out/X" --out "$docs/X_laborieux" --baseline dt.dist=scalar,dynamics.integrator=euler \
      --match ep.estimator --family "X2: HTS − Laborieux's update (scalar dt 1.0, Euler), per estimator"
  fi
  if [ -d "$out/F" ]; then
    "${r[@]}" "$out/F" --out "$docs/F" --baseline best --select val_late --equivalent dt.mean \
      --family "F: every HTS condition − the best scalar step (both chosen on the validation split)"
  fi
  if [ -d "$out/T" ]; then
    "${r[@]}" "$out/T" --out "$docs/T" --match ep.estimator --equivalence 0.5 \
      --family "T: HTS − scalar per estimator and relaxation (TOST ±0.5 points)"
  fi
  if [ -d "$out/H" ]; then
    "${r[@]}" "$out/H/noisy_scalar" "$out/H/noisy_lognormal" --out "$docs/H_hts" --match ep.estimator \
      --family "H1: HTS (τ-matched) − scalar τ = Δt under noise, per estimator"
    "${r[@]}" "$out/H" --out "$docs/H_noise" --baseline dynamics.noise=0.0 \
      --match ep.estimator,dt.dist,dynamics.integrator --family "H2: with noise − without, per estimator"
  fi
  if [ -d "$out/S" ]; then
    "${r[@]}" "$out/S" "$out/T/tol" --out "$docs/S" --baseline dynamics.update_order=sync --match dt.dist \
      --family "S: async − sync at convergence, per dt"
  fi
  if [ -d "$out/D" ]; then
    "${r[@]}" "$out/D" --out "$docs/D" --match ep.estimator --family "D: HTS − scalar per estimator, two hidden layers"
  fi
  if [ -d "$out/E" ]; then
    "${r[@]}" "$out/E" --out "$docs/E" --equivalence 0.5 --family "E: HTS − scalar at full scale"
  fi
}

case "$phase" in
  pilot) python scripts/study3_pilot.py > "$docs/pilot.md" ;;
  train) X; F; T; H; S ;;
  report) report ;;
  X|F|T|H|S|D|E) "$phase" ;;
  all) X; F; T; H; S; report ;;
  *) echo "unknown phase $phase: all | pilot | train | report | X | F | T | H | S | D | E" >&2; exit 2 ;;
esac
