#!/usr/bin/env bash
# Stacked sweeps end to end (docs/benchmarks.md, "GPU"; run by scripts/gpu_bench.sh): Study 3's
# block F (120 runs of its large-step preset) as stacked programs — the goal is at most 2 minutes
# on one GPU — and its 12-run cell at dt mean 0.8 fused against the same jobs as the default
# sweep runs them, with the ratio. Writes OUT (default docs/bench-gpu-sweep.json).
#   bash scripts/sweep_bench.sh [OUT]
# HETS_EP_ARGS adds overrides to every run (a shrunken check on a CPU:
#   HETS_EP_ARGS="dataset.subset=2200 dataset.test_subset=200 train.epochs=1" bash scripts/sweep_bench.sh /tmp/x.json)
set -euo pipefail
out=${1:-docs/bench-gpu-sweep.json}
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { python3 -c 'import time; print(time.time())'; }
cell=(experiment=study3_best_step "seed=$(seq -s, 0 11)" dt=lognormal dt.mean=0.8 train.progress=false
      hydra.callbacks.sweep_end.report=false ${HETS_EP_ARGS:-})
t0=$(now)
HETS_EP_ARGS="hydra/launcher=stacked ${HETS_EP_ARGS:-}" bash "$here/reproduce_study3.sh" "$work/F" F >/dev/null
t1=$(now)
hets-ep train -m "${cell[@]}" hydra/launcher=stacked "hydra.sweep.dir=$work/fused" >/dev/null
t2=$(now)
hets-ep train -m "${cell[@]}" "hydra.sweep.dir=$work/default" >/dev/null
t3=$(now)
python3 - "$out" "$work" "$t0" "$t1" "$t2" "$t3" "${HETS_EP_ARGS:-}" <<'EOF'
import json
import sys
from pathlib import Path

from hets_ep import atomic, provenance, record

out, work, (t0, t1, t2, t3), extra = sys.argv[1], Path(sys.argv[2]), map(float, sys.argv[3:7]), sys.argv[7]
runs = sorted(p.parent for p in (work / "F").rglob(record.SUMMARY))
completed = sum(record.read_summary(p).status == "completed" for p in runs)
result = {"versions": provenance.versions(), "overrides": extra, "block_f_runs": len(runs),
          "block_f_completed": completed, "block_f_fused_s": t1 - t0, "cell_jobs": 12,
          "cell_fused_s": t2 - t1, "cell_default_sweep_s": t3 - t2, "cell_fused_speedup": (t3 - t2) / (t2 - t1)}
atomic.write_text(Path(out), json.dumps(result, indent=1) + "\n")
print(f"Study 3 block F ({completed}/{len(runs)} runs completed) as stacked programs: {t1 - t0:.0f} s; its 12-run "
      f"cell: {t2 - t1:.0f} s fused, {t3 - t2:.0f} s as the default sweep: {(t3 - t2) / (t2 - t1):.2f}x")
EOF
