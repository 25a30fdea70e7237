#!/usr/bin/python3
"""FAISS peer of bench/bench_ivf.c (issue 15): faiss.IndexIVFFlat with the
same nlist on the same vectors (DIR/db/shard-00000.vectors.npy and DIR/q.npy
written by bench_ivf), the same thread count, k and nprobe sweep: the time of
train() (k-means; FAISS subsamples to 256 x nlist itself) and of train() + add()
(aesim's train-ivf also assigns every vector to its list), then per nprobe one
call of NQ queries and NQ1 calls of one query, with recall@k against the exact
ids aesim wrote (DIR/exact_ids.npy).
Output: JSON lines of kind "ivf" as bench_ivf.c describes (impl "faiss").
Usage: faiss_ivf.py --data-dir DIR --nlist 1024 --k 10 --nq-one 200 --nq-many 1000
       --nprobe 1,2,4,8,16,32,64 --threads 2
"""
import argparse
import json
import os
import time

import faiss
import numpy as np


def emit(obj):
    print(json.dumps(obj), flush=True)


def recall(ids, exact):
    k = exact.shape[1]
    return float(np.mean([len(set(ids[i]) & set(exact[i])) / k for i in range(len(exact))]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nq-one", type=int, default=200)
    ap.add_argument("--nq-many", type=int, default=1000)
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    x = np.load(os.path.join(a.data_dir, "db", "shard-00000.vectors.npy"), mmap_mode="r")
    q = np.load(os.path.join(a.data_dir, "q.npy"))
    exact = np.load(os.path.join(a.data_dir, "exact_ids.npy"))
    n, d = x.shape
    x = np.ascontiguousarray(x)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, a.nlist)
    t0 = time.perf_counter()
    index.train(x)
    sec = time.perf_counter() - t0
    base = {"kind": "ivf", "impl": "faiss", "N": n, "d": d, "nlist": a.nlist, "threads": a.threads}
    emit(dict(base, what="train", nprobe=0, nq=0, items=1, seconds=sec, recall=0))
    t0 = time.perf_counter()
    index.add(x)
    # train + add: what aesim's train-ivf does (k-means, then every vector to its list)
    emit(dict(base, what="train+add", nprobe=0, nq=0, items=1, seconds=sec + time.perf_counter() - t0, recall=0))
    del x
    for p in [int(v) for v in a.nprobe.split(",")]:
        index.nprobe = min(p, a.nlist)
        t0 = time.perf_counter()
        _, ids = index.search(q[:a.nq_many], a.k)
        sec = time.perf_counter() - t0
        rec = recall(ids, exact[:a.nq_many])
        common = dict(base, what="search", nprobe=index.nprobe, recall=round(rec, 4))
        emit(dict(common, nq=a.nq_many, items=a.nq_many, seconds=sec))
        t0 = time.perf_counter()
        for i in range(a.nq_one):
            index.search(q[i:i + 1], a.k)
        sec = time.perf_counter() - t0
        emit(dict(common, nq=1, items=a.nq_one, seconds=sec))
        print(f"# faiss ivf nprobe {index.nprobe}: recall@{a.k} {rec:.4f}", flush=True)


if __name__ == "__main__":
    main()
