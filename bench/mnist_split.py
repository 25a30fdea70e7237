#!/usr/bin/python3
"""mnist_split.py - the MNIST rows of README "Search quality".

The shared MNIST copy (../shared/data/mnist) has no training images, so the
README splits t10k: the first 8,000 images train the encoder and are the
database, the last 2,000 are the queries.

    bench/mnist_split.py split OUT_DIR
        writes OUT_DIR/train.npz and OUT_DIR/test.npz (images uint8
        [N][28][28], labels int32 [N]), which aesim-train --data,
        aesim-search index --data and eval --queries read.
    bench/mnist_split.py paired CKPT OUT_DIR
        precision@10 per query of the checkpoint's bottleneck codes (the
        PyTorch twin, tests/aesim_torch.py; cosine, without and with alpha
        query expansion n 5, alpha 3, as eval) and of the raw pixels, and
        the mean paired difference with a 95% bootstrap interval (2,000
        resamples of the 2,000 queries, seed 0).
Labels are used only to score.  Run with Debian's /usr/bin/python3 (numpy,
torch).  A decision aid: it asserts nothing.
"""
import gzip
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "..", "..", "shared", "data", "mnist")


def idx(name, offset):
    with gzip.open(os.path.join(MNIST, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def split(out):
    x = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int32)
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "train.npz"), images=x[:8000], labels=y[:8000])
    np.savez(os.path.join(out, "test.npz"), images=x[8000:], labels=y[8000:])


def per_query(db, q, yd, yq, qe, k=10):
    db = db / np.linalg.norm(db, axis=1, keepdims=True).clip(1e-12)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    s = q @ db.T
    if qe:
        nn_ = np.argsort(-s, axis=1)[:, :qe]
        w = np.take_along_axis(s, nn_, 1).clip(0) ** 3
        q = q + (w[:, :, None] * db[nn_]).sum(1)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        s = q @ db.T
    nn_ = np.argpartition(-s, k, axis=1)[:, :k]
    return (yd[nn_] == yq[:, None]).mean(1)


def paired(ckpt, out):
    import torch
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import aesim_torch
    ck = np.load(ckpt)
    model = aesim_torch.build(bytes(ck["meta.arch"]).decode(), 1)
    aesim_torch.load_npz(model, ck)
    d, t = np.load(os.path.join(out, "train.npz")), np.load(os.path.join(out, "test.npz"))
    xd = d["images"].astype(np.float32).reshape(-1, 1, 28, 28) / 255
    xq = t["images"].astype(np.float32).reshape(-1, 1, 28, 28) / 255
    with torch.no_grad():
        cd = model.encoder(torch.from_numpy(xd)).flatten(1).double().numpy()
        cq = model.encoder(torch.from_numpy(xq)).flatten(1).double().numpy()
    rng = np.random.default_rng(0)
    for qe in (0, 5):
        a = per_query(cd, cq, d["labels"], t["labels"], qe)
        b = per_query(xd.reshape(len(xd), -1).astype(np.float64), xq.reshape(len(xq), -1).astype(np.float64),
                      d["labels"], t["labels"], qe)
        diff = a - b
        boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        print(f"qe {qe}: codes p@10 {a.mean():.4f}, pixels {b.mean():.4f}, difference {diff.mean():+.4f} "
              f"(95% interval {lo:+.4f} to {hi:+.4f}, {len(diff)} queries)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "split":
        split(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "paired":
        paired(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
