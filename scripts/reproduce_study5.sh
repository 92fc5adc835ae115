#!/usr/bin/env bash
# Study 5 (docs/study5/PLAN.md): E (full scale, TOST ±0.5) then D (depth, with and without skip
# connections, relaxed to a tolerance).
#   bash scripts/reproduce_study5.sh [train|train_depth|report|all] [OUT]   (train_depth: D alone)
set -euo pipefail
phase=${1:-all}; out=${2:-outputs/study5}
here=$(cd "$(dirname "$0")" && pwd); docs=$here/../docs/study5
. "$here/study_sweep.sh"
if [[ $phase == train || $phase == all ]]; then
  extra=(experiment=study5_full train.progress=false)
  sweep "$out/E" seed=$(seeds 0 7) dt=scalar,lognormal dt.match=tau
fi
if [[ $phase == train || $phase == train_depth || $phase == all ]]; then
  extra=(experiment=study5_depth train.progress=false)
  sweep "$out/D" seed=$(seeds 0 5) dt=scalar,lognormal dt.match=tau \
    'model.hidden=[256],[256,256],[256,256,256],[256,256,256,256],[256,256,256,256,256]' model.skip=0
  sweep "$out/D_skip" seed=$(seeds 0 5) dt=scalar,lognormal dt.match=tau \
    'model.hidden=[256,256],[256,256,256],[256,256,256,256],[256,256,256,256,256]' model.skip=2
fi
if [[ $phase == report || $phase == all ]]; then
  hets-ep report "$out/E" --equivalence 0.5 --out "$docs/E" --family "E: HTS − scalar at full scale"
  hets-ep report "$out/D" "$out/D_skip" --boundary model.hidden --out "$docs/D" \
    --family "D: depth boundary shift HTS − scalar, without and with skips"
fi
