#!/usr/bin/python3
"""serve_load.py - bounded loopback load generator for aesim-search serve.

For each concurrency level C (--clients 1,8,64), C threads, each with its own
keep-alive HTTP/1.1 connection (http.client), send POST /search?k=K
{"vector": ...} requests with the rows of --queries (a float32 .npy [Q][D]),
request i using row i % Q, until --requests requests were sent in all or
--seconds passed, whichever comes first (both bounds always apply).  With
--malformed F, a deterministic fraction F of the requests is malformed
(truncated JSON, a vector of the wrong length, an undecodable PNG, k = 0, an
unknown path, a wrong method) and must get a 4xx JSON error.  With --expect
(the JSON of `aesim-search query --json --queries` on the same rows), every
good answer must have exactly the expected ids and distances.  With
--rss-pid, the resident memory (VmRSS) of that process is sampled before and
after each level.

Prints one JSON line per level:
  {"clients", "sent", "good", "malformed", "bad_status", "mismatches",
   "seconds", "qps", "p50_ms", "p99_ms", "rss_kib_before", "rss_kib_after"}
latency = request sent to answer read, good requests only; qps counts good
requests.  Exit status 1 if any good request failed or mismatched, or a
malformed one did not get a 4xx.  Python standard library + numpy only.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

import numpy as np

# Malformed requests, cycled: (method, path suffix after /search or full path, body, accepted statuses).
MALFORMED = [
    ("POST", "/search?k=10", b'{"vector": [1.0, 2', (400,)),
    ("POST", "/search?k=10", b'{"vector": [1.0, 2.0, 3.0]}', (400,)),
    ("POST", "/search?k=10", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, (400,)),
    ("POST", "/search?k=0", None, (400,)),
    ("POST", "/nowhere", b"{}", (404,)),
    ("GET", "/search", None, (405,)),
]
# Every (1 / MALFORMED_PERIOD_PRIME)-th index pattern: request i is malformed
# when (i * PRIME) % 1000 < 1000 * fraction (spread evenly, deterministic).
PRIME = 7919


def rss_kib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def run_level(url, clients, queries, bodies, expect, k, total, seconds, malformed, rss_pid):
    host = urllib.parse.urlparse(url)
    lock = threading.Lock()
    state = {"next": 0, "good": 0, "bad_status": 0, "mismatches": 0, "malformed": 0, "lat": [], "first_error": None}
    deadline = time.monotonic() + seconds

    def take():
        with lock:
            if state["next"] >= total or time.monotonic() > deadline:
                return -1
            i = state["next"]
            state["next"] += 1
            return i

    def note(key, msg=None):
        with lock:
            state[key] += 1
            if msg and state["first_error"] is None:
                state["first_error"] = msg

    def client():
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=max(30.0, seconds))
        while True:
            i = take()
            if i < 0:
                break
            bad = (i * PRIME) % 1000 < 1000 * malformed
            if bad:
                method, path, body, ok = MALFORMED[i % len(MALFORMED)]
                if path.endswith("k=0"):
                    body = bodies[i % len(bodies)]
            else:
                method, path, body = "POST", f"/search?k={k}", bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=max(30.0, seconds))
                note("bad_status", f"request {i}: {e!r}")
                continue
            dt = time.perf_counter() - t0
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=max(30.0, seconds))
            if bad:
                try:
                    doc = json.loads(data)
                    fine = status in ok and doc.get("status") == status and doc.get("error")
                except ValueError:
                    fine = False
                if fine:
                    note("malformed")
                else:
                    note("bad_status", f"malformed request {i} ({method} {path}) got {status}: {data[:200]!r}")
                continue
            if status != 200:
                note("bad_status", f"request {i} got {status}: {data[:200]!r}")
                continue
            if expect is not None:
                got = [(r["id"], r["distance"]) for r in json.loads(data)["results"]]
                if got != expect[i % len(expect)]:
                    note("mismatches", f"request {i}: {got[:3]} != {expect[i % len(expect)][:3]}")
                    continue
            with lock:
                state["good"] += 1
                state["lat"].append(dt)
        conn.close()

    before = rss_kib(rss_pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    after = rss_kib(rss_pid)
    lat = np.array(state["lat"]) * 1e3
    return {"clients": clients, "sent": state["next"], "good": state["good"], "malformed": state["malformed"],
            "bad_status": state["bad_status"], "mismatches": state["mismatches"], "seconds": round(secs, 3),
            "qps": round(state["good"] / secs, 2) if secs > 0 else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "rss_kib_before": before, "rss_kib_after": after, "first_error": state["first_error"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="http://HOST:PORT of the server")
    ap.add_argument("--queries", required=True, help="float32 .npy [Q][D] query vectors")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clients", default="1,8,64", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=1000, help="requests per level (upper bound)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit per level (upper bound)")
    ap.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed requests (0..1)")
    ap.add_argument("--expect", help="query --json output for the same rows: every good answer must equal it")
    ap.add_argument("--rss-pid", type=int, help="process whose VmRSS is sampled around each level")
    ap.add_argument("--tag", default="", help="copied into each JSON line (bench rows)")
    a = ap.parse_args()
    q = np.load(a.queries).astype(np.float32)
    bodies = [json.dumps({"vector": [float(v) for v in row]}).encode() for row in q]
    expect = None
    if a.expect:
        with open(a.expect) as f:
            expect = [[(r["id"], r["distance"]) for r in qq["results"]] for qq in json.load(f)["queries"]]
    failed = False
    for c in [int(x) for x in a.clients.split(",")]:
        res = run_level(a.url, c, q, bodies, expect, a.k, a.requests, a.seconds, a.malformed, a.rss_pid)
        if a.tag:
            res["tag"] = a.tag
        print(json.dumps(res), flush=True)
        failed |= res["bad_status"] > 0 or res["mismatches"] > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
