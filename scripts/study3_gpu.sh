#!/usr/bin/env bash
# Study 3 on a GPU (docs/study3/PLAN.md, "A GPU version"): the holomorphic ConvNet, symmetric vs
# holomorphic EP × scalar vs lognormal dt (mean 0.5, cv 0.5), reduced to a few minutes on one GPU
# (10k training images, 2k test images, 3 epochs, 2 seeds in one program per condition), then its
# report.   bash scripts/study3_gpu.sh [OUT] [CIFAR_DIR]
# CIFAR_DIR holds cifar-10-binary.tar.gz (where the machine cannot download it). Without CIFAR-10
# (no CIFAR_DIR and no copy in the cache) the same grid runs on MNIST, the shipped dataset, with
# the ConvNet's two-layer MNIST shape, and the script says so.
set -euo pipefail
out=${1:-outputs/study3_gpu}
cache=${HETS_EP_CACHE:-$HOME/.cache/hets-ep}
if [ -n "${2:-}" ]; then
  data=(dataset.root="$2")
elif [ -f "$cache/cifar10/cifar-10-binary.tar.gz" ]; then
  data=()
else
  echo "study3_gpu.sh: no CIFAR-10 files (pass CIFAR_DIR): running the grid on MNIST instead" >&2
  data=(dataset=mnist model.channels=[32,64] model.kernel=5 model.padding=0 "optimizer.lr=[0.1,0.05,0.05]")
fi
# shellcheck disable=SC2086  # HETS_EP_ARGS: more overrides, e.g. for a dry run on a CPU
hets-ep train -m train.progress=false hydra/launcher=basic "hydra.sweep.dir=$out/runs" \
  experiment=study3_gpu_cifar10 "${data[@]}" ep=symmetric,holomorphic dt=scalar,lognormal dt.mean=0.5 \
  dataset.subset=10000 dataset.test_subset=2000 train.epochs=3 train.parallel_seeds=2 ${HETS_EP_ARGS:-}
hets-ep report "$out/runs" --out "$out/report" --metric late --match ep.estimator \
  --family "GPU: HTS − scalar per estimator (reduced)"
