#!/usr/bin/env bash
# The offline stand-in for the paper's CIFAR-10 ResNet-18 experiment: ResNet-18 on Fashion-MNIST
# padded to 32x32, float32 SGLD vs SGLDLP-F vs VC SGLDLP-L in 8-bit BFP (weights, gradients,
# activations and backward errors), bit-exact datapath on the GPU. Labelled as the stand-in:
# no package ships CIFAR-10, and the GPU machine has no network.
#
#   bash scripts/resnet_standin.sh prepare     # here: copy the IDX files (30 MB) to data/fashion-mnist
#   bash scripts/resnet_standin.sh run [lpsgld train options, e.g. --epochs 4]
#                                              # on the GPU machine, in the repository root
#
# `run` needs python3 with torch (CUDA), numpy and matplotlib (the GPU image has them; no venv,
# no install): it sets PYTHONPATH to the checkout and LPSGLD_FASHION_MNIST to data/fashion-mnist
# (the copy that travels with the working tree), and writes to $OUT/resnet18-standin (or
# results/resnet18-standin). With the device tool:
#   run(command="bash scripts/resnet_standin.sh run --epochs 4", carry=["data/fashion-mnist"])
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    src="${LPSGLD_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
    mkdir -p data/fashion-mnist
    cp "$src"/*-ubyte* data/fashion-mnist/  # gzipped or plain IDX files
    ls -l data/fashion-mnist
    ;;
  run)
    shift
    py="${PYTHON:-python3}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export LPSGLD_FASHION_MNIST="${LPSGLD_FASHION_MNIST:-$PWD/data/fashion-mnist}"
    out="${OUT:-results}/resnet18-standin"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
               torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
    "$py" -m emulator.cli train --preset resnet18-standin --out "$out" "$@"
    ;;
  *)
    echo "usage: bash scripts/resnet_standin.sh prepare | run [lpsgld train options]" >&2
    exit 2
    ;;
esac
