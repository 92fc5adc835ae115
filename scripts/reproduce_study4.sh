#!/usr/bin/env bash
# Study 4 (docs/study4/PLAN.md): block N (the noise collapse: stability boundaries of one-sided
# EP along σ and β, scalar against HTS) and block R (references at the collapse point).
#   bash scripts/reproduce_study4.sh [train|report|all|search] [OUT]
# search: N's σ axis re-found by the adaptive search (hydra/sweeper=boundary) with half its runs
# (docs/benchmarks.md, "The adaptive boundary search against a grid").
# A stopped run continues with the same command (each sweep resumes its own folder).
set -euo pipefail
phase=${1:-all}; out=${2:-outputs/study4}
here=$(cd "$(dirname "$0")" && pwd); docs=$here/../docs/study4
. "$here/study_sweep.sh"
extra=(experiment=study4_noise train.progress=false)
s=$(seeds 0 11)
conditions="dt=scalar,lognormal"
if [[ $phase == train || $phase == all ]]; then
  # N, σ axis (β 0.1): scalar τ = Δt and HTS matched by mean τ, then HTS matched by the mean of dt.
  sweep "$out/N_sigma" seed=$s dynamics.integrator=exact dynamics.noise=0,0.01,0.02,0.04,0.08 $conditions dt.match=tau
  sweep "$out/N_sigma_mean" seed=$s dynamics.integrator=exact dynamics.noise=0,0.01,0.02,0.04,0.08 dt=lognormal
  # N, β axis (σ 0.04).
  sweep "$out/N_beta" seed=$s dynamics.integrator=exact ep.beta=0.05,0.1,0.2,0.4,0.8 $conditions dt.match=tau
  sweep "$out/N_beta_mean" seed=$s dynamics.integrator=exact ep.beta=0.05,0.1,0.2,0.4,0.8 dt=lognormal
  # R: the rescues and the published update at the collapse point. R's one-sided cells are N_beta's
  # cells at β 0.1 (the same configuration and seeds; RESULTS.md, Deviations).
  sweep "$out/R" seed=$s dynamics.integrator=exact ep=symmetric,holomorphic $conditions dt.match=tau
  sweep "$out/R_published" seed=$s dynamics.integrator=euler dt=scalar
fi
if [[ $phase == search ]]; then
  hets-ep train -m hydra/sweeper=boundary hydra.sweeper.axis=dynamics.noise hydra.sweeper.low=0 \
    hydra.sweeper.high=0.08 hydra.sweeper.budget=60 hydra.sweeper.seeds_per_round=6 hydra.sweeper.train_fraction=0.5 \
    "seed=range(12)" "${extra[@]}" dynamics.integrator=exact dt=scalar,lognormal dt.match=tau \
    train.stop_on_collapse=true train.collapse_patience=1 "hydra.sweep.dir=$out/N_sigma_search"
  hets-ep report "$out/N_sigma_search" --boundary dynamics.noise --train-fraction 0.5 --out "$docs/N_sigma_search"
fi
if [[ $phase == report || $phase == all ]]; then
  r=(hets-ep report --train-fraction 0.5)
  "${r[@]}" "$out/N_sigma" "$out/N_sigma_mean" --boundary dynamics.noise --out "$docs/N_sigma" \
    --family "N, σ axis: boundary shift HTS − scalar (and per-level accuracy)"
  "${r[@]}" "$out/N_beta" "$out/N_beta_mean" --boundary ep.beta --out "$docs/N_beta" \
    --family "N, β axis: boundary shift HTS − scalar (and per-level accuracy)"
  one_sided=$(grep -l -x -- "- ep.beta=0.1" "$out"/N_beta/*/.hydra/overrides.yaml | xargs -n1 dirname | xargs -n1 dirname)
  # shellcheck disable=SC2086  # one folder per word
  "${r[@]}" "$out/R" "$out/R_published" $one_sided --out "$docs/R" --baseline dt.dist=scalar \
    --family "R: HTS − scalar per estimator at the collapse point"
  python "$here/study4_family.py" "$docs/N_sigma" "$docs/N_beta" "$docs/R" > "$docs/family.md"
fi
