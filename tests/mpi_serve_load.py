"""Load test of aesim-search serve (P = 2, small MNIST database as in
tests/mpi_serve.py) with the bounded load generator bench/serve_load.py:
1, 8 and 64 concurrent keep-alive clients, 1,000 requests each (and a 60 s
limit), 5% of them malformed.

- every good answer equals `aesim-search query --json` on the same vectors
  (ids and distances, bit for bit), itself checked against a float64 numpy
  brute force here;
- every malformed request gets its 4xx JSON error, and the server's
  /metrics error counter grows by exactly their number;
- nothing crashes (the server still answers /healthz afterwards) and rank
  0's resident memory stays flat: after a warm-up level it grows by less
  than RSS_SLACK_MIB over the 3,000 requests.
"""
import json
import os
import subprocess
import sys
import unittest

import numpy as np

import mpi_serve as ms

LOADGEN = os.path.join(ms.ROOT, "bench", "serve_load.py")
N_REQ = 1000
MALFORMED = 0.05
# Allowed growth of rank 0's VmRSS after warm-up: glibc keeps freed memory in
# per-thread arenas, so a few MiB move; a leak of one answer (~2 KiB) per
# request would add 6 MiB here.
RSS_SLACK_MIB = 4


class Load(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ms.Serve.setUpClass.__func__(cls)

    @classmethod
    def tearDownClass(cls):
        if cls.srv.proc.poll() is None:
            cls.srv.kill()

    def loadgen(self, clients, requests, queries, expect=None, malformed=0.0):
        rank0 = ms.rank_pids(self.srv.proc.pid)[0]
        cmd = [sys.executable, LOADGEN, "--url", self.srv.url, "--queries", queries, "--k", "10", "--clients",
               clients, "--requests", str(requests), "--seconds", "60", "--malformed", str(malformed),
               "--rss-pid", str(rank0)]
        if expect:
            cmd += ["--expect", expect]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        rows = [json.loads(line) for line in p.stdout.splitlines()]
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return rows

    def test_load_with_malformed_requests(self):
        rng = np.random.default_rng(11)
        a, b = rng.integers(0, ms.N_DB, 50), rng.integers(0, ms.N_DB, 50)
        q = (0.6 * self.x[a] + 0.4 * self.x[b] + rng.normal(0, 0.05, (50, self.x.shape[1]))).astype(np.float32)
        qfile = os.path.join(ms.WORK, "load_q.npy")
        np.save(qfile, q)
        p = ms.mpirun(2, ms.SEARCH, "query", "--json", "--db", self.db, "--queries", qfile, "--k", "10", "--threads",
                      "1")
        expect = os.path.join(ms.WORK, "load_expect.json")
        with open(expect, "w") as f:
            f.write(p.stdout)
        # The reference itself against numpy (float64 brute force).
        doc = json.loads(p.stdout)
        x64 = self.x.astype(np.float64)
        for i in (0, 17, 49):
            d = ((x64 - q[i].astype(np.float64)) ** 2).sum(1)
            got = doc["queries"][i]["results"]
            np.testing.assert_allclose([r["distance"] for r in got], np.sort(d)[:10], rtol=1e-5, atol=1e-5)

        errors_before = self.metric('aesim_http_errors_total{endpoint="search"}') + \
            self.metric('aesim_http_errors_total{endpoint="other"}')
        warm = self.loadgen("64", 300, qfile, expect)
        rows = self.loadgen("1,8,64", N_REQ, qfile, expect, MALFORMED)
        for r in rows:
            self.assertEqual(r["sent"], N_REQ, r)
            self.assertEqual(r["good"] + r["malformed"], N_REQ, r)
            self.assertEqual(r["malformed"], sum((i * 7919) % 1000 < 1000 * MALFORMED for i in range(N_REQ)))
            self.assertEqual((r["bad_status"], r["mismatches"]), (0, 0), r)
        errors_after = self.metric('aesim_http_errors_total{endpoint="search"}') + \
            self.metric('aesim_http_errors_total{endpoint="other"}')
        self.assertEqual(errors_after - errors_before, sum(r["malformed"] for r in rows))
        growth_mib = (rows[-1]["rss_kib_after"] - warm[-1]["rss_kib_after"]) / 1024
        print(f"\nload: {[(r['clients'], r['qps'], r['p50_ms'], r['p99_ms']) for r in rows]}, rank 0 RSS "
              f"{warm[-1]['rss_kib_after'] / 1024:.1f} -> {rows[-1]['rss_kib_after'] / 1024:.1f} MiB", file=sys.stderr)
        self.assertLess(growth_mib, RSS_SLACK_MIB, rows)
        # 64 clients share micro-batches: some batch held more than one request.
        self.assertGreater(self.metric("aesim_batch_size_count") - self.metric('aesim_batch_size_bucket{le="1"}'), 0)
        st, _, data = ms.request(f"{self.srv.url}/healthz")
        self.assertEqual((st, json.loads(data)["status"]), (200, "ok"))
        self.assertIsNone(self.srv.proc.poll())

    def metric(self, key):
        st, _, data = ms.request(f"{self.srv.url}/metrics")
        for line in data.decode().splitlines():
            if line.startswith(key + " "):
                return float(line.split()[1])
        return 0.0


if __name__ == "__main__":
    unittest.main(verbosity=2)
