#!/usr/bin/python3
"""serve_bench.py - `make bench` rows for aesim-search serve (issue 14):
HTTP load against `aesim-search query`'s batch throughput on the same
vectors, N database vectors of d = 512, P ranks.

Steps (all in --work, removed at the end):
1. a 1-step checkpoint whose encoder gives D = 512 (input 1 x 32 x 32,
   "c8 p c8 p": 8 x 8 x 8), and a 4-image `aesim-search index` run to get a
   valid manifest for it;
2. the database is replaced by N random float32 vectors (numpy, seed 0) in
   P shards, the manifest updated (one synthetic source: GET /images is not
   benchmarked);
3. `query` timings (--queries of NQ vectors, k = 10): t_small = 1 query
   against a 1-vector database with the same model (start-up: MPI, model,
   mapping), t_1 = 1 query, t_nq = NQ queries on the big one.  Batch
   queries/s = NQ / (t_nq - t_small); one-query scan = t_1 - t_small;
4. `serve` on P ranks; bench/serve_load.py with 1, 8 and 64 clients
   (--requests per level, --seconds limit) on the same NQ vectors, each
   answer checked against query's JSON.
Prints JSON lines (tag "serve") and a markdown table with the issue's two
targets: 64 clients >= 80% of the batch queries/s; 1 client p50 <= 1.3 x the
one-query scan time.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
ARCH = "c8 p c8 p | c8 u c8 u c1"  # 1 x 32 x 32 -> D = 8 * 8 * 8 = 512


def mpirun(np_, *args, threads):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), *args, "--threads", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=3600)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p, dt


def make_db(build, work, n, ranks, threads, rng):
    imgs = rng.integers(0, 256, (64, 32, 32), dtype=np.uint8)
    np.save(os.path.join(work, "imgs.npy"), imgs)
    np.save(os.path.join(work, "four.npy"), imgs[:4])
    mpirun(1, os.path.join(build, "aesim-train"), "--data", os.path.join(work, "imgs.npy"), "--arch", ARCH,
           "--max-steps", "1", "--batch-size", "16", "--out", os.path.join(work, "run"), "--grid", "0",
           threads=threads)
    ckpt = os.path.join(work, "run", "checkpoint.npz")
    small = os.path.join(work, "small")
    mpirun(1, os.path.join(build, "aesim-search"), "index", "--model", ckpt, "--data", os.path.join(work, "four.npy"),
           "--db", small, threads=threads)
    with open(os.path.join(small, "manifest.json")) as f:
        man = json.load(f)
    assert man["dim"] == 512, man["dim"]
    big = os.path.join(work, "big")
    os.makedirs(big)
    shards, first = [], 0
    for s in range(ranks):
        cnt = n * (s + 1) // ranks - n * s // ranks
        stem = os.path.join(big, "shard-%05d" % s)
        np.save(stem + ".vectors.npy", rng.standard_normal((cnt, 512), dtype=np.float32))
        np.save(stem + ".ids.npy", np.arange(first, first + cnt, dtype=np.int64))
        np.save(stem + ".labels.npy", np.zeros(cnt, np.int32))
        with open(stem + ".names.txt", "w") as f:
            f.writelines(f"random#{i}\n" for i in range(first, first + cnt))
        shards.append({"shard": s, "count": cnt, "first_id": first, "last_id": first + cnt - 1})
        first += cnt
    man.update(count=n, shards=shards,
               sources=[{"spec": "random", "first_id": 0, "count": n, "items": [{"path": "/dev/null", "count": n}]}])
    with open(os.path.join(big, "manifest.json"), "w") as f:
        json.dump(man, f)
    return ckpt, small, big


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--nq", type=int, default=200, help="query vectors (batch for query; cycled by the clients)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    ap.add_argument("--requests", type=int, default=400, help="requests per client level (upper bound)")
    ap.add_argument("--seconds", type=float, default=60, help="time limit per client level")
    ap.add_argument("--work", default=None)
    ap.add_argument("--jsonl", help="append the JSON lines to this file instead of printing them")
    a = ap.parse_args()
    work = tempfile.mkdtemp(dir=a.work)
    try:
        rng = np.random.default_rng(0)
        ckpt, small, big = make_db(a.build, work, a.n, a.ranks, a.threads, rng)
        q = rng.standard_normal((a.nq, 512), dtype=np.float32)
        qf, q1 = os.path.join(work, "q.npy"), os.path.join(work, "q1.npy")
        np.save(qf, q)
        np.save(q1, q[:1])
        search = os.path.join(a.build, "aesim-search")
        _, t_small = mpirun(a.ranks, search, "query", "--db", small, "--queries", q1, "--k", "10", threads=a.threads)
        _, t_1 = mpirun(a.ranks, search, "query", "--db", big, "--queries", q1, "--k", "10", threads=a.threads)
        p, t_nq = mpirun(a.ranks, search, "query", "--json", "--db", big, "--queries", qf, "--k", "10",
                         threads=a.threads)
        expect = os.path.join(work, "expect.json")
        with open(expect, "w") as f:
            f.write(p.stdout)
        batch_qps = a.nq / max(t_nq - t_small, 1e-9)
        scan_ms = max(t_1 - t_small, 0.0) * 1e3
        scan_from = "query wall time minus start-up"
        knn_mpi = os.path.join(a.build, "bench", "bench_knn_mpi")
        if os.path.exists(knn_mpi):
            p1, _ = mpirun(a.ranks, knn_mpi, "--n", str(a.n), "--d", "512", "--k", "10", "--nq", "1", "--runs", "5",
                           threads=a.threads)
            m = re.search(r"median ([0-9.]+) s", p1.stdout)
            if m:
                scan_ms = float(m.group(1)) * 1e3
                scan_from = "bench_knn_mpi nq=1, warm, median of 5"

        err = open(os.path.join(work, "serve.err"), "w")
        srv = subprocess.Popen(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(a.ranks), search,
                                "serve", "--db", big, "--model", ckpt, "--listen", "127.0.0.1:0", "--threads",
                                str(a.threads)], env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        url, t0 = None, time.time()
        while url is None and time.time() - t0 < 600 and srv.poll() is None:
            with open(err.name) as f:
                m = re.search(r"listening on (http://[0-9.]+:\d+)", f.read())
            url = m.group(1) if m else None
            time.sleep(0.1)
        if url is None:
            srv.kill()
            raise SystemExit("serve did not start:\n" + open(err.name).read())
        try:
            lg = subprocess.run([sys.executable, os.path.join(HERE, "serve_load.py"), "--url", url, "--queries", qf,
                                 "--k", "10", "--clients", "1,8,64", "--requests", str(a.requests), "--seconds",
                                 str(a.seconds), "--expect", expect, "--tag", "serve"],
                                capture_output=True, text=True, timeout=3 * a.seconds + 600)
        finally:
            srv.send_signal(2)
            try:
                srv.wait(60)
            except subprocess.TimeoutExpired:
                srv.kill()
            err.close()
        rows = [json.loads(line) for line in lg.stdout.splitlines()]
        base = {"workload": "serve", "n": a.n, "d": 512, "ranks": a.ranks, "threads": a.threads, "nq": a.nq,
                "query_batch_qps": round(batch_qps, 2), "one_scan_ms": round(scan_ms, 2), "one_scan_from": scan_from,
                "query_t_small_s": round(t_small, 3), "query_t1_s": round(t_1, 3), "query_tnq_s": round(t_nq, 3)}
        lines = [json.dumps({**base, **r}) for r in rows]
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write("".join(line + "\n" for line in lines))
        else:
            print("\n".join(lines))
        by = {r["clients"]: r for r in rows}
        print(f"\n## aesim-search serve: N = {a.n:,}, d = 512, k = 10, {a.ranks} rank(s) x {a.threads} thread(s), "
              f"loopback HTTP\n")
        print(f"query (batch of {a.nq} on the same vectors): {batch_qps:.1f} queries/s (wall {t_nq:.2f} s minus "
              f"the {t_small:.2f} s start-up of a 1-vector database); one-query scan {scan_ms:.1f} ms ({scan_from})\n")
        print("| clients | requests | queries/s | p50 ms | p99 ms | vs batch queries/s | checked |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for c, r in sorted(by.items()):
            print(f"| {c} | {r['sent']} | {r['qps']:.1f} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['qps'] / batch_qps:.2f} | {'all equal query' if not r['mismatches'] and not r['bad_status'] else 'FAILED'} |")
        if 64 in by and 1 in by and by[1]["p50_ms"]:
            ok64 = by[64]["qps"] >= 0.8 * batch_qps
            ok1 = scan_ms > 0 and by[1]["p50_ms"] <= 1.3 * scan_ms
            print(f"\nTargets: 64 clients >= 80% of batch queries/s: {'met' if ok64 else 'NOT met'} "
                  f"({by[64]['qps'] / batch_qps:.0%}); 1 client p50 <= 1.3 x one-query scan: "
                  f"{'met' if ok1 else 'NOT met'} ({by[1]['p50_ms'] / scan_ms if scan_ms else float('nan'):.2f}x)")
        return 0 if lg.returncode == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
