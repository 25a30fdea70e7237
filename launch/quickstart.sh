#!/usr/bin/env bash
# The README's main job: trains the mnist-preset autoencoder on Fashion-MNIST
# (Debian's dataset-fashion-mnist: 60,000 train images, 10,000 test images
# used for validation) with 2 MPI ranks, then plots the loss curve.
# Outputs in runs/fashion-mnist/.  Extra arguments go to aesim-train.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/fashion-mnist}
make -s
launch/train.sh 2 --data /usr/share/datasets/fashion-mnist --epochs "${EPOCHS:-3}" --out "$out" "$@"
launch/plot_loss.sh "$out/metrics.csv" "$out/loss.png"
cat <<MSG

Outputs in $out/:
  checkpoint.npz       weights + optimizer state (numpy.load-able; resume with --resume $out/checkpoint.npz)
  metrics.csv          step, epoch, train/val loss, val PSNR (dB), images/s, seconds
  recon_epoch*.png     validation images (top row) over their reconstructions
  loss.png             loss curve
MSG
