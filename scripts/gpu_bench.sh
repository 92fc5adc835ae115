#!/usr/bin/env bash
# The GPU benchmark (docs/benchmarks.md, "GPU"): workload 1 at batch 128 and 1024, 8 and 64 seeds
# of the large-step workload at batch 20, the ConvNet on 32×32×3, in a few minutes on one GPU.
#   pip install -e ".[cuda12]" && bash scripts/gpu_bench.sh
# Writes docs/bench-gpu.json. The goal: ≥ 400,000 samples/s for workload 1 at batch 128 on an H100.
set -euo pipefail
python -c "import jax, sys; d = jax.devices()[0]; sys.exit(0 if d.platform == 'gpu' else \
'gpu_bench.sh: JAX sees no GPU (' + d.platform + '); install the CUDA build: pip install -e \".[cuda12]\"')"
hets-ep bench --gpu --out docs/bench-gpu.json
