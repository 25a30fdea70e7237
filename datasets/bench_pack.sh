#!/usr/bin/env bash
# bench_pack.sh - packing and reading speed of the data layer (not a test).
#   bash datasets/bench_pack.sh [BUILD] [N_JPEG] [RANKS]
# Writes N_JPEG synthetic 320x240 JPEGs (Pillow) in 10 class folders and a
# 64 px downsampled-ImageNet-style npz (stored and deflated), packs them with
# aesim-pack at 64x64 (images/s of decoding), then reads random batches of
# 128 from the store, the stored npz (mapped) and the deflated npz (in
# memory) the way the trainer does (images/s).  Compare with the images/s
# aesim-train prints for the same shape.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; N=${2:-2000}; RANKS=${3:-2}
PY=${PYTHON:-/usr/bin/python3}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$PY" - "$TMP" "$N" <<'PYEOF'
import os, sys
import numpy as np
from PIL import Image
root, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
for i in range(n):
    d = os.path.join(root, "jpg", "c%d" % (i % 10)); os.makedirs(d, exist_ok=True)
    Image.fromarray(np.roll(base, i, axis=1)).save(os.path.join(d, "%05d.jpg" % i), quality=90)
data = rng.integers(0, 256, (20000, 3 * 64 * 64), dtype=np.uint8)
np.savez(os.path.join(root, "stored.npz"), data=data, labels=np.arange(20000) % 1000 + 1)
np.savez_compressed(os.path.join(root, "deflated.npz"), data=data, labels=np.arange(20000) % 1000 + 1)
PYEOF
for np in 1 $RANKS; do
    OMP_NUM_THREADS=$((2 / np > 0 ? 2 / np : 1)) mpirun -np $np --oversubscribe "$BUILD/aesim-pack" \
        --size 64x64 --out "$TMP/jpg$np.npz" "$TMP/jpg" | tail -n 1
done
mpirun -np 1 "$BUILD/aesim-pack" --out "$TMP/in64.npz" "$TMP/deflated.npz" | tail -n 1
for spec in "$TMP/jpg1.npz" "$TMP/in64.npz" "$TMP/stored.npz?verify=0" "$TMP/deflated.npz"; do
    OMP_NUM_THREADS=1 "$BUILD/tests/tool_dataset_read_bench" "$spec" 128 200 1
done
