#!/usr/bin/env bash
# The HTS-vs-scalar study (README, "Results"): three regimes, 8 paired seeds each, then reports.
#   bash scripts/reproduce_hts.sh [OUT]      (default OUT=outputs/study; about 70 minutes on 2 CPU cores)
# Extra Hydra arguments can be given in HETS_EP_ARGS, e.g. HETS_EP_ARGS="hydra/launcher=joblib".
set -euo pipefail
out=${1:-outputs/study}
seeds=0,1,2,3,4,5,6,7
extra=(train.progress=false ${HETS_EP_ARGS:-})
sweep() {  # sweep DIR ARGS...: one Hydra multirun into DIR
  local dir=$1; shift
  hets-ep train -m "${extra[@]}" "hydra.sweep.dir=$dir" "seed=$seeds" "$@"
}

# 1. Default network, symmetric EP, mean dt 0.5 (scalar also at dt 1, the discrete update).
sweep "$out/default/scalar" experiment=study_default dt=scalar dt.mean=0.5,1.0
sweep "$out/default/hts" experiment=study_default dt=uniform,normal,lognormal,gamma dt.cv=0.25,0.5

# 2. Continuous-time EP (Ernoult et al. 2019), mean dt 0.2.
sweep "$out/ernoult/scalar" experiment=study_ernoult dt=scalar
sweep "$out/ernoult/hts" experiment=study_ernoult dt=uniform,normal,lognormal,gamma dt.cv=0.25,0.5

# 3. Large steps: a mean dt × cv grid per distribution, scalar dt at each mean as the paired baseline.
sweep "$out/large_step/scalar" experiment=study_large_step dt=scalar dt.mean=0.6,0.8,1.0
sweep "$out/large_step/hts" experiment=study_large_step dt=lognormal dt.mean=0.6,0.8,1.0 dt.cv=0.25,0.5
sweep "$out/large_step/others" experiment=study_large_step dt=gamma,uniform,normal dt.mean=0.6,0.8,1.0 dt.cv=0.25,0.5

hets-ep report "$out/default" --out "$out/default/report" --baseline dt.dist=scalar,dt.mean=0.5
hets-ep report "$out/ernoult" --out "$out/ernoult/report"
hets-ep report "$out/large_step" --out "$out/large_step/report" --match dt.mean --grid dt.mean,dt.cv
