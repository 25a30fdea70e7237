"""Near-duplicate queries for the ImageNet sample (issue 17's ImageNet row).

The sample (../shared/data/imagenet-sample) holds one photo per class, so
precision@k by label is 0 for every method; what it can score is whether a
search finds the same photo again after the edits a copy goes through.
Writes two npz files in the downsampled-ImageNet layout (data: uint8
[N][3*32*32], R plane then G then B; labels: int):
  DIR/db.npz       the sample's 32x32 rows, labels = 1 + row index
  DIR/queries.npz  for each row, its 64x64 original cropped to a random
                   square of 80-95% of the side at a random place, resized
                   to 32x32 with PIL's BOX filter (as the sample was made)
                   and its brightness scaled by U(0.8, 1.2); labels = the
                   row it came from
With one relevant row per query, eval's 1-NN accuracy is recall@1, its
precision@10 is recall@10 / 10 and its mAP@10 the mean reciprocal rank.
Usage (Debian's python3, numpy and PIL):
  /usr/bin/python3 bench/imagenet_near_duplicates.py --out-dir DIR [--seed 0]
"""
import argparse
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "..", "shared", "data", "imagenet-sample")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--sample-dir", default=SAMPLE)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    z32 = np.load(os.path.join(a.sample_dir, "sample32_data_batch.npz"))
    z64 = np.load(os.path.join(a.sample_dir, "sample64_data_batch.npz"))
    # row i of both files must be the same photo (same class label)
    assert (z32["labels"] == z64["labels"]).all(), "sample32 and sample64 rows differ"
    d32, d64 = z32["data"], z64["data"]
    n = len(d32)
    ids = np.arange(1, n + 1)
    q = np.empty_like(d32)
    for i in range(n):
        im = d64[i].reshape(3, 64, 64).transpose(1, 2, 0)
        s = int(round(64 * rng.uniform(0.80, 0.95)))
        y0, x0 = rng.integers(0, 64 - s + 1, 2)
        crop = Image.fromarray(im[y0:y0 + s, x0:x0 + s]).resize((32, 32), Image.BOX)
        v = np.clip(np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2), 0, 255).round().astype(np.uint8)
        q[i] = v.transpose(2, 0, 1).reshape(-1)
    os.makedirs(a.out_dir, exist_ok=True)
    np.savez(os.path.join(a.out_dir, "db.npz"), data=d32, labels=ids)
    np.savez(os.path.join(a.out_dir, "queries.npz"), data=q, labels=ids)
    print(f"{a.out_dir}/db.npz: {n} rows; {a.out_dir}/queries.npz: {n} near-duplicate queries")


if __name__ == "__main__":
    main()
