#!/usr/bin/env bash
# The README's main job, with 2 MPI ranks on Fashion-MNIST (Debian's
# dataset-fashion-mnist: 60,000 train images, 10,000 test images):
#   1. aesim-train: a conv autoencoder with a 16x7x7 (D = 784) bottleneck
#      (ARCH, README "Search quality"), validated on the test images;
#   2. aesim-search index --recipe retrieval: the 60,000 training images -> a
#      sharded vector DB of whitened codes of 10 views per image (flips and
#      1-pixel shifts), searched by cosine with alpha query expansion;
#   3. aesim-search query: 8 test images -> their 8 nearest neighbours, as TSV
#      and a contact sheet;
#   4. aesim-search eval: precision@10 by label, aesim encoder vs raw pixels vs
#      PCA of the same dimension (first EVAL_QUERIES test images);
#   5. the loss curve as a PNG.
# Outputs in runs/fashion-mnist/ (OUT=dir to change).  EPOCHS=n trains longer;
# run again, it continues the run in OUT (to EPOCHS epochs in all) and keeps
# OUT/db when the model did not change (else moves it to OUT/db.replaced-DATE).
# Extra arguments go to aesim-train.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/fashion-mnist}
data=/usr/share/datasets/fashion-mnist
mpi() { launch/mpi.sh 2 "$@"; }
make -s all
# A second `make run` continues the run already in $out (to EPOCHS epochs in
# all; nothing to train if it is there) instead of overwriting it.
resume=()
[ -e "$out/checkpoint.npz" ] && resume=(--resume "$out")
# The encoder of README "Search quality" (the `mnist` preset, D = 392, reaches
# precision@10 0.848 with the same search recipe; this one 0.856).
arch=${ARCH:-"c32 p c64 p c16 | c32 u c32 u c1"}
ckpt_before=
[ -e "$out/checkpoint.npz" ] && ckpt_before=$(cksum < "$out/checkpoint.npz")
launch/train.sh 2 --data "$data" --epochs "${EPOCHS:-3}" --arch "$arch" --out "$out" "${resume[@]}" "$@"
# The database of an earlier run: kept as it is when training changed nothing
# (it may hold images added since through `serve`, POST /images); set aside,
# never deleted, when the model changed (its codes are the old encoder's).
keep_db=0
if [ -e "$out/db/manifest.json" ]; then
  if [ "$(cksum < "$out/checkpoint.npz")" = "$ckpt_before" ]; then
    keep_db=1
    echo "quickstart: the model did not change (EPOCHS=n make run trains to n epochs in all):" \
         "keeping $out/db as it is (delete it to re-encode)"
  else
    old_db="$out/db.replaced-$(date +%Y%m%d-%H%M%S)"
    mv "$out/db" "$old_db"
    echo "quickstart: the model changed: the earlier database is now $old_db (its codes are the old encoder's)"
  fi
else
  rm -rf "$out/db"   # an unfinished index (no manifest): nothing to keep
fi
# --recipe retrieval = --whiten --metric cosine --tta flip,shift:1 --qe 5: PCA-whitened,
# L2-normalised means of the codes of 10 views per image, alpha query expansion; the best
# measured search setting (README "Search quality"); eval whitens and expands the baselines alike
[ "$keep_db" = 1 ] ||
  mpi build/aesim-search index --model "$out/checkpoint.npz" --data "$data/train-images-idx3-ubyte.gz" --db "$out/db" \
    --recipe retrieval
# --overwrite: these results describe the model and database of this run.
mpi build/aesim-search query --model "$out/checkpoint.npz" --db "$out/db" --k 8 --overwrite \
    --data "$data/t10k-images-idx3-ubyte.gz" --ids 0-7 --out "$out/neighbours.tsv" --sheet "$out/neighbours.png"
mpi build/aesim-search eval --model "$out/checkpoint.npz" --db "$out/db" -k 10 --overwrite \
    --queries "$data/t10k-images-idx3-ubyte.gz" --max-queries "${EVAL_QUERIES:-2000}" \
    --baseline pixels,pca --out "$out/precision_at_10.txt"
cat "$out/precision_at_10.txt"
launch/plot_loss.sh "$out/metrics.csv" "$out/loss.png"
cat <<MSG

Outputs in $out/:
  checkpoint.npz         weights + optimizer state (numpy.load-able; resume with --resume $out/checkpoint.npz)
  metrics.csv            step, epoch, train/val loss, val PSNR (dB), images/s, seconds,
                         exposed allreduce ms, MPI ms during backward, overlap
  recon_epoch*.png       validation images (top row) over their reconstructions
  loss.png               loss curve
  db/                    vector database: manifest.json + shard-*.{vectors,ids,labels}.npy,
                         shard-*.names.txt, whiten.npz (the PCA-whitening transform)
  neighbours.tsv/.png    8 test images and their 8 nearest training images (contact sheet)
  precision_at_10.txt    precision@10 by label, mAP@10, 1-NN accuracy: aesim encoder vs raw
                         pixels vs PCA (all whitened, cosine: index --recipe retrieval)
MSG
