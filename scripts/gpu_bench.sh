#!/usr/bin/env bash
# The GPU benchmark in one call (docs/benchmarks.md, "GPU"): the training step of workload 1 at
# batch 128 and 1024 and of the ConvNet, on the scan kernel and on the fused one (a phase per
# kernel launch, hets_ep/fused.py), each with and without XLA's command buffers (CUDA graphs);
# 8 and 64 seeds of the large-step workload in one program; Study 3's block F as stacked programs
# and a stacked sweep against the default one (scripts/sweep_bench.sh). Writes docs/bench-gpu*.json.
# It first checks the fused kernel against the scan kernel (scripts/fused_check.py) and stops if they differ.
#   pip install -e ".[cuda13]" && bash scripts/gpu_bench.sh
# On a machine that installs nothing from a registry (the lent GPU image has jax with CUDA but
# not Hydra): build the wheels where a registry is reachable, carry the folder, and pass it:
#   pip wheel --no-deps -w wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3 \
#       hydra-joblib-launcher hydra-submitit-launcher submitit
#   WHEELS=wheels bash scripts/gpu_bench.sh
# Goals (docs/benchmarks.md): ≥ 1,000,000 samples/s for workload 1 at batch 128 on one H100/H200;
# Study 3's block F (120 runs) in ≤ 2 minutes as stacked programs.
set -euo pipefail
if [[ -n "${WHEELS:-}" ]]; then
  pip install -q --no-index --no-deps "$WHEELS"/*.whl && pip install -q --no-deps -e .
fi
python -c "import jax, sys; d = jax.devices()[0]; sys.exit(0 if d.platform == 'gpu' else \
'gpu_bench.sh: JAX sees no GPU (' + d.platform + '); install the CUDA build: pip install -e \".[cuda13]\"')"
# Correctness first: the fused kernel against the scan kernel on this device (states and BPTT
# gradients); nothing is timed if it is wrong.
python "$(dirname "$0")/fused_check.py"
XLA_FLAGS="--xla_gpu_enable_command_buffer=" hets-ep bench --gpu --out docs/bench-gpu-no-command-buffers.json
hets-ep bench --gpu --out docs/bench-gpu.json
bash "$(dirname "$0")/sweep_bench.sh" docs/bench-gpu-sweep.json
