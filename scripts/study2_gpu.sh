#!/usr/bin/env bash
# Study 2 on a GPU (docs/study2/PLAN.md, "Not run here"): the Laborieux et al. 2021 ConvNet on
# CIFAR-10, one-sided vs symmetric EP × scalar vs lognormal dt, reduced to fit a few minutes on
# one GPU (10k training images, 3 epochs, 2 seeds in one program per condition), then its report.
#   bash scripts/study2_gpu.sh [OUT] [CIFAR_DIR]
# CIFAR_DIR holds cifar-10-binary.tar.gz where the machine cannot download it. For the full
# experiment drop the reductions: hets-ep train -m experiment=gpu_cifar10 ep=one_sided,symmetric ...
# Not run yet: its duration on a GPU is an estimate.
set -euo pipefail
out=${1:-outputs/study2_gpu}
root=()
[ -n "${2:-}" ] && root=(dataset.root="$2")
hets-ep train -m train.progress=false hydra/launcher=basic "hydra.sweep.dir=$out/runs" "${root[@]}" \
  experiment=gpu_cifar10 ep=one_sided,symmetric dt=scalar,lognormal dt.mean=0.5 \
  dataset.subset=10000 dataset.test_subset=2000 train.epochs=3 train.parallel_seeds=2
hets-ep report "$out/runs" --out "$out/report" --metric late --match ep.estimator \
  --family "GPU: HTS − scalar per estimator (reduced CIFAR-10)"
