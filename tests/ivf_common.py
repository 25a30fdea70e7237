"""Helpers of the IVF tests (tests/mpi_ivf.py, tests/test_ivf_faiss.py).

write_db writes an aesim vector database (format version 1, include/search/vecdb.h)
of given vectors with numpy only, so the IVF can be tested on any vectors
(Fashion-MNIST pixels, synthetic clusters) without an encoder; queries then
go in as --queries FILE.npy.  ivf_reference is the IVF search written
independently in numpy (float64): the nprobe nearest centroids of each
query, then the exact k nearest of the rows of those lists.
"""
import gzip
import json
import os
import subprocess

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
FASHION = os.environ.get("AESIM_FASHION", "/usr/share/datasets/fashion-mnist")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
TIMEOUT = 600


def run(np_, *args, check=True, threads=1):
    """aesim-search with np_ ranks (0: no mpirun, an MPI singleton)."""
    cmd = [SEARCH, *args, "--threads", str(threads)]
    if np_:
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_)] + cmd
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def fashion(kind="train"):
    """Fashion-MNIST images (Debian's dataset-fashion-mnist) as float32 [N][784] pixels 0..255, and labels."""
    with gzip.open(os.path.join(FASHION, f"{kind}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32)
    with gzip.open(os.path.join(FASHION, f"{kind}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int32)
    return x, y


def clustered(n, d, n_clusters, seed, spread=1.0, centre_seed=0):
    """Gaussian blobs (standard deviation `spread`) around N(0, 1) centres drawn
    from centre_seed (the synthetic data of faiss's own benchmarks); points
    from `seed`.  A spread of 1 makes the blobs overlap, so recall grows with
    nprobe instead of being 1 at nprobe = 1."""
    centres = np.random.default_rng(centre_seed).standard_normal((n_clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, n_clusters, n)
    return (centres[which] + spread * rng.standard_normal((n, d))).astype(np.float32)


def write_db(d, x, labels=None, shards=1, metric="l2"):
    """A version-1 database of vectors x[n][D] in `shards` shards (vecdb.h layout),
    searched by `metric` ("l2" or "cosine") unless a command says otherwise."""
    os.makedirs(d, exist_ok=True)
    n, dim = x.shape
    if labels is None:
        labels = -np.ones(n, np.int32)
    bounds = [n * s // shards for s in range(shards + 1)]
    sh = []
    for s in range(shards):
        lo, hi = bounds[s], bounds[s + 1]
        np.save(f"{d}/shard-{s:05d}.vectors.npy", np.ascontiguousarray(x[lo:hi], np.float32))
        np.save(f"{d}/shard-{s:05d}.ids.npy", np.arange(lo, hi, dtype=np.int64))
        np.save(f"{d}/shard-{s:05d}.labels.npy", np.asarray(labels[lo:hi], np.int32))
        with open(f"{d}/shard-{s:05d}.names.txt", "w") as f:
            f.writelines(f"vectors#{i}\n" for i in range(lo, hi))
        sh.append({"shard": s, "count": hi - lo, "first_id": lo, "last_id": hi - 1})
    man = {"format": "aesim-vecdb", "version": 1,
           "model": {"crc32": "00000000", "arch": "none", "input_shape": [1, 1, dim], "checkpoint": "none"},
           "dim": dim, "count": n, "metric": metric,
           "sources": [{"spec": "vectors", "first_id": 0, "count": n,
                        "items": [{"path": "/vectors", "count": n}]}],
           "shards": sh}
    with open(f"{d}/manifest.json", "w") as f:
        json.dump(man, f, indent=2)


def read_ivf(d):
    """(manifest, centroids [nlist][D], per shard (lims, rows)) as numpy reads them."""
    with open(f"{d}/manifest.json") as f:
        man = json.load(f)
    crc = man["ivf"]["crc32"]
    cent = np.load(f"{d}/{man['ivf']['centroids']}")
    nlist = man["ivf"]["nlist"]
    lists = []
    for s in man["shards"]:
        a = np.load(f"{d}/shard-{s['shard']:05d}.ivf-{crc}.lists.npy")
        lists.append((a[:nlist + 1], a[nlist + 1:]))
    return man, cent, lists


def list_of_rows(d):
    """The list number of every database id, from the lists files."""
    man, cent, lists = read_ivf(d)
    out = np.full(man["count"], -1, np.int64)
    for s, (lims, rows) in zip(man["shards"], lists):
        for li in range(len(lims) - 1):
            out[s["first_id"] + rows[lims[li]:lims[li + 1]]] = li
    return out


def unit(a):
    """Rows of a scaled to unit L2 norm (float64 norms), as float64."""
    a = a.astype(np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def sqdist(a, b):
    """float64 squared distances [len(a)][len(b)]."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]


def ivf_reference(x, q, cent, assign, nprobe, k, eligible=None):
    """numpy IVF search: ids [Q][k] and distances of the exact k nearest among
    the rows of the nprobe lists nearest to each query (ties: smaller id)."""
    probe = np.argsort(sqdist(q, cent), axis=1, kind="stable")[:, :nprobe]
    ids = np.full((len(q), k), -1, np.int64)
    dist = np.full((len(q), k), np.inf)
    for i in range(len(q)):
        cand = np.nonzero(np.isin(assign, probe[i]) & (True if eligible is None else eligible))[0]
        dd = ((x[cand].astype(np.float64) - q[i].astype(np.float64)) ** 2).sum(1)
        o = np.lexsort((cand, dd))[:k]
        ids[i, :len(o)] = cand[o]
        dist[i, :len(o)] = dd[o]
    return ids, dist


def parse_tsv(text, Q, k):
    """query TSV (query rank id distance label source) -> ids, dist [Q][k] (padded -1 / inf)."""
    ids = np.full((Q, k), -1, np.int64)
    dist = np.full((Q, k), np.inf)
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        qi, r = int(f[0]), int(f[1]) - 1
        ids[qi, r] = int(f[2])
        dist[qi, r] = float(f[3])
    return ids, dist
