"""FAISS peer of bench/bench_knn.c (issue 6): exact k-NN with
faiss.IndexFlatL2 on the same vectors (x.npy, q.npy written by bench_knn
--data-dir), the same k, the same query counts and split into calls, and the
same thread count (faiss.omp_set_num_threads).  Adding the vectors to the
index (a copy) is not timed; an untimed warm-up search of a few queries
comes first, as in bench_knn.

It also compares FAISS's neighbours with the ids aesim found in its first
run (ids_nq<NQ>.npy): "same_ids" is the fraction of queries whose k ids are
identical and in the same order, "recall" the fraction of aesim's ids found
in FAISS's list (FAISS's GEMM distances are not re-scored, so near-ties may
legitimately come out in another order).

Output: JSON lines as bench/bench_common.h describes (impl "faiss").
Usage: faiss_knn.py --data-dir DIR --k 10 --nq 10000/3,100 --runs 3 --threads 2
"""
import argparse
import json
import os
import time

import faiss
import numpy as np

# Queries in the untimed warm-up search (as WARMUP_QUERIES in bench_knn.c).
WARMUP_QUERIES = 8


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nq", default="100", help="comma-separated NQ or NQ/CALLS, as bench_knn --nq")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    faiss.omp_set_num_threads(args.threads)
    x = np.load(os.path.join(args.data_dir, "x.npy"), mmap_mode="r")
    q = np.load(os.path.join(args.data_dir, "q.npy"))
    n, d = x.shape
    index = faiss.IndexFlatL2(d)
    t0 = time.perf_counter()
    index.add(np.ascontiguousarray(x))
    del x
    print(f"# faiss add N={n} d={d}: {time.perf_counter() - t0:.1f} s", flush=True)
    emit({"kind": "info", "faiss_version": faiss.__version__, "faiss_threads": args.threads})

    for entry in args.nq.split(","):
        nq, _, c = entry.partition("/")
        nq, calls = int(nq), int(c or 1)
        per = nq // calls
        nrun = calls if calls > 1 else args.runs
        index.search(q[:min(nq, WARMUP_QUERIES)], args.k)
        seconds, ids0 = [], None
        for r in range(nrun):
            qr = q[r * per:(r + 1) * per] if calls > 1 else q[:per]
            t0 = time.perf_counter()
            _, ids = index.search(qr, args.k)
            seconds.append(time.perf_counter() - t0)
            print(f"# faiss N={n} d={d} nq={per} run {r + 1}: {seconds[-1]:.3f} s "
                  f"({per / seconds[-1]:.1f} queries/s)", flush=True)
            if r == 0:
                ids0 = ids
        extra = {}
        ref_path = os.path.join(args.data_dir, f"ids_nq{nq}.npy")
        if os.path.exists(ref_path):
            ref = np.load(ref_path)
            extra["same_ids"] = float(np.mean(np.all(ref == ids0, axis=1)))
            extra["recall"] = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ref, ids0)]))
        variant = f"{args.threads} threads" + (f", {calls} calls x {per} queries" if calls > 1 else "")
        emit({"kind": "result", "workload": f"knn N={n} d={d} k={args.k} nq={nq}", "impl": "faiss",
              "variant": variant, "seconds": seconds, "items": per, "flop_item": 2.0 * n * d,
              "bytes_run": 4.0 * n * d, "threads": args.threads, "chunks": calls, **extra})


if __name__ == "__main__":
    main()
