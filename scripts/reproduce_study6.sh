#!/usr/bin/env bash
# Study 6 (docs/study6/PLAN.md): A (the authors' standard-EP setting, Fashion-MNIST then MNIST),
# N′ (the noise-dose control for Study 4), S (skewed against symmetric heterogeneity), D (depth,
# Study 5's prepared block), in that order.
#   bash scripts/reproduce_study6.sh [train|report|all] [OUT]
# A stopped run continues with the same command (each sweep resumes its own folder).
set -euo pipefail
phase=${1:-all}; out=${2:-outputs/study6}
here=$(cd "$(dirname "$0")" && pwd); docs=$here/../docs/study6
. "$here/study_sweep.sh"
fashion=(dataset=npz "dataset.path=$(cd "$here/../../shared/data/fashion_mnist" && pwd)/fashion_mnist.npz"
         dataset.normalize=standard)
s=$(seeds 0 7)
block_a() {  # OUT DATASET_OVERRIDES…: S and P′ (scalar, Euler), F′ (scalar, exact), P, F
  local dir=$1; shift
  extra=(experiment=kubo2026 train.progress=false "$@")
  sweep "$dir/scalar_euler" seed=$s dt=scalar dt.mean=1.0,0.79
  sweep "$dir/scalar_exact" seed=$s dt=scalar dynamics.integrator=exact
  sweep "$dir/P" seed=$s dt=gamma dt.cv=0.4 dt.dt_max=1.8
  sweep "$dir/F" seed=$s dt=gamma dt.cv=0.4 dt.match=tau dt.dt_max=8 dynamics.integrator=exact
}
if [[ $phase == train || $phase == all ]]; then
  block_a "$out/A_fashion" "${fashion[@]}"
  extra=(experiment=study4_noise train.progress=false dynamics.integrator=exact)
  for level in "dynamics.noise=0.02 ep.beta=0.1" "dynamics.noise=0.04 ep.beta=0.2"; do
    name=N_prime_$(echo "$level" | tr ' =' '__')
    # shellcheck disable=SC2086  # the level's two overrides
    sweep "$out/$name/scalar" seed=$(seeds 0 11) dt=scalar dt.mean=1.0,0.8 $level
    # shellcheck disable=SC2086
    sweep "$out/$name/mean_matched" seed=$(seeds 0 11) dt=lognormal dt.dt_max=8 $level
  done
  block_a "$out/A_mnist" dataset=mnist
  extra=(experiment=kubo2026 train.progress=false "${fashion[@]}" dynamics.integrator=exact dt.match=tau dt.dt_max=8)
  sweep "$out/S" seed=$s dt=gamma,lognormal,uniform,normal dt.cv=0.3
  bash "$here/reproduce_study5.sh" train_depth "$out/D"
fi
if [[ $phase == report || $phase == all ]]; then
  for data in fashion mnist; do
    hets-ep report "$out/A_$data" --baseline dt.dist=scalar --equivalence 0.5 --out "$docs/A_$data" \
      --family "A ($data): HTS against scalar dt"
  done
  hets-ep report "$out/N_prime_dynamics.noise_0.02_ep.beta_0.1" --out "$docs/N_prime_sigma"
  hets-ep report "$out/N_prime_dynamics.noise_0.04_ep.beta_0.2" --out "$docs/N_prime_beta"
  hets-ep report "$out/S" --out "$docs/S"
  python "$here/study6_family.py" "$out" > "$docs/family.md"
  hets-ep report "$out/D/D" --boundary model.hidden --boundary-scale linear --train-fraction 0.8,0.5,0.2 \
    --out "$docs/D" --family "D (secondary): late accuracy per depth, HTS − scalar"
  hets-ep report "$out/D/D_skip" --boundary model.hidden --boundary-scale linear --train-fraction 0.8,0.5,0.2 \
    --out "$docs/D_skip" --family "D with skips (secondary): late accuracy per depth, HTS − scalar"
fi
