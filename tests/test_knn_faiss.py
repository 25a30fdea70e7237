"""test_knn_faiss.py - exact k-NN / range search of src/search/knn.c against FAISS.

Runs build/tests/tool_knn (AESIM_BUILD names the build folder) on random
vectors and on the real SIFT vectors in ../shared/data/siftsmall
(siftmicro_base.fvecs = the first 100 siftsmall base vectors,
siftsmall_query.fvecs; see SOURCE.txt there), and compares with
faiss.IndexFlatL2 / IndexFlatIP (Debian python3-faiss):
  * distances within 1e-4 relative;
  * ids equal, except where FAISS and we order an exact/near tie
    differently: there the two ids must have the same distance;
  * our distance for each returned id equals the float64 numpy distance of
    that id (so ids and distances belong together).
On SIFT (integer components: every float32 distance is exact) it also
checks the ground-truth file: gt[q] restricted to ids < 100 must be the
start of our ranking, and a known exact tie (query 51: ids 3 and 59, both
153786) must come out in id order.  Range search is compared with
IndexFlat.range_search as sets (faiss keeps d < radius, we keep d <= radius,
so rows on the radius may differ; on SIFT the exact set is checked too).
Cosine = IP after knn_normalize vs faiss.normalize_L2.
Everything runs once per kNN GEMM kernel (issue 16), forced with
AESIM_KNN_GEMM=blas and =avx512 (the latter where the CPU has AVX-512F);
with AESIM_KNN_GEMM already set, only that one.
Exit code 0 = pass.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

try:
    import faiss
except ImportError:  # python3-faiss is a required test dependency here
    print("test_knn_faiss: cannot import faiss (install python3-faiss)", file=sys.stderr)
    sys.exit(1)

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_knn")
SIFT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "siftsmall")
RTOL = 1e-4
faiss.omp_set_num_threads(1)


def write_fvecs(path, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    rec = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    rec[:, 0] = np.array([x.shape[1]], dtype=np.int32).view(np.float32)[0]
    rec[:, 1:] = x
    rec.tofile(path)


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    rows = raw.reshape(-1, d + 1)
    assert np.all(rows[:, 0] == d), path
    return np.ascontiguousarray(rows[:, 1:]).view(dtype)


def run_knn(tmp, base, query, metric, k, *opts):
    bp, qp, op = (os.path.join(tmp, n) for n in ("b.fvecs", "q.fvecs", "out.bin"))
    write_fvecs(bp, base)
    write_fvecs(qp, query)
    subprocess.run([TOOL, "knn", metric, str(k), bp, qp, op, *opts], check=True)
    raw = open(op, "rb").read()
    Q, kk = np.frombuffer(raw[:16], dtype=np.int64)
    dist = np.frombuffer(raw[16:16 + 4 * Q * kk], dtype=np.float32).reshape(Q, kk)
    ids = np.frombuffer(raw[16 + 4 * Q * kk:], dtype=np.int64).reshape(Q, kk)
    return dist, ids


def run_range(tmp, base, query, metric, radius):
    bp, qp, op = (os.path.join(tmp, n) for n in ("b.fvecs", "q.fvecs", "out.bin"))
    write_fvecs(bp, base)
    write_fvecs(qp, query)
    subprocess.run([TOOL, "range", metric, repr(float(radius)), bp, qp, op], check=True)
    raw = open(op, "rb").read()
    Q, total = np.frombuffer(raw[:16], dtype=np.int64)
    off = 16
    lims = np.frombuffer(raw[off:off + 8 * (Q + 1)], dtype=np.int64)
    off += 8 * (Q + 1)
    ids = np.frombuffer(raw[off:off + 8 * total], dtype=np.int64)
    off += 8 * total
    dist = np.frombuffer(raw[off:off + 4 * total], dtype=np.float32)
    return lims, ids, dist


def exact(base, query, metric):
    """float64 distances [Q][M] (squared L2 or inner product)."""
    b = base.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "ip":
        return q @ b.T
    return ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def close(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(b), 1e-3)  # IP scores can be near 0
    return np.abs(a - b) <= RTOL * scale


def faiss_search(base, query, metric, k):
    index = faiss.IndexFlatIP(base.shape[1]) if metric == "ip" else faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index.search(np.ascontiguousarray(query, dtype=np.float32), k)


def compare(name, base, query, metric, k, dist, ids):
    fd, fi = faiss_search(base, query, metric, k)
    ex = exact(base, query, metric)
    Q = query.shape[0]
    nreal = min(k, base.shape[0])
    fails = []
    assert dist.shape == (Q, k) and ids.shape == (Q, k)
    if not close(dist[:, :nreal], fd[:, :nreal]).all():
        worst = np.max(np.abs(dist[:, :nreal] - fd[:, :nreal]) / np.maximum(np.abs(fd[:, :nreal]), 1e-3))
        fails.append(f"distances differ from faiss: max rel err {worst:.3e}")
    # padding when k > M, as faiss
    if nreal < k:
        pad = -np.inf if metric == "ip" else np.inf
        if not (np.all(ids[:, nreal:] == -1) and np.all(dist[:, nreal:] == pad)):
            fails.append("padding is not (-1, inf)")
        if not np.all(fi[:, nreal:] == -1):
            fails.append("faiss padding unexpected")
    ties = 0
    for i in range(Q):
        # our distances are those of our ids (float64 numpy)
        if not close(dist[i, :nreal], ex[i, ids[i, :nreal]]).all():
            fails.append(f"query {i}: returned distances are not the ids' distances")
        if len(set(ids[i, :nreal].tolist())) != nreal:
            fails.append(f"query {i}: duplicate ids")
        for j in np.nonzero(ids[i, :nreal] != fi[i, :nreal])[0]:
            # a different id is allowed only among equal distances (a tie)
            if not close(ex[i, ids[i, j]], ex[i, fi[i, j]]):
                fails.append(f"query {i} rank {j}: id {ids[i, j]} (d {ex[i, ids[i, j]]:.9g}) vs "
                             f"faiss {fi[i, j]} (d {ex[i, fi[i, j]]:.9g})")
            ties += 1
    print(f"{name}: Q={Q} M={base.shape[0]} D={base.shape[1]} k={k} {metric}: "
          f"{ties} tie-order differences from faiss, {len(fails)} failures")
    return fails


def compare_range(name, base, query, metric, radius, lims, ids, dist, exact_data=False):
    index = faiss.IndexFlatIP(base.shape[1]) if metric == "ip" else faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    flims, fdist, fids = index.range_search(query, radius)
    ex = exact(base, query, metric)
    fails = []
    for i in range(query.shape[0]):
        ours = ids[lims[i]:lims[i + 1]]
        od = dist[lims[i]:lims[i + 1]]
        theirs = fids[flims[i]:flims[i + 1]]
        # ours: sorted best first, ties by id
        key = [(-d if metric == "ip" else d, int(t)) for d, t in zip(od.tolist(), ours.tolist())]
        if key != sorted(key):
            fails.append(f"query {i}: range result not sorted")
        for t in set(ours.tolist()) ^ set(theirs.tolist()):
            # only rows on the radius (within float rounding) may differ
            if not close(ex[i, t], radius):
                fails.append(f"query {i}: id {t} (d {ex[i, t]:.9g}) differs from faiss, radius {radius}")
        if exact_data:
            # integer data: float32 distances are exact, so the set is known
            # exactly, including rows ON the radius (ours: <=; faiss: <)
            want = np.nonzero(ex[i] >= radius if metric == "ip" else ex[i] <= radius)[0]
            if sorted(ours.tolist()) != want.tolist():
                fails.append(f"query {i}: range set differs from the exact set")
    print(f"{name}: range {metric} radius {radius:.6g}: {len(ids)} results, faiss {len(fids)}, "
          f"{len(fails)} failures")
    return fails


def gemm_kernels():
    """The kNN GEMM kernels this CPU runs (knn_gemm.h): blas, and avx512 with AVX-512F."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        flags = ""
    return ["blas", "avx512"] if " avx512f" in flags else ["blas"]


def main():
    if "AESIM_KNN_GEMM" not in os.environ:
        rc = 0
        for kern in gemm_kernels():
            print(f"test_knn_faiss: AESIM_KNN_GEMM={kern}", flush=True)
            env = dict(os.environ, AESIM_KNN_GEMM=kern)
            rc |= subprocess.run([sys.executable, os.path.abspath(__file__)], env=env).returncode
        return rc
    if not os.access(TOOL, os.X_OK):
        print(f"test_knn_faiss: {TOOL} not built (make BUILD={BUILD} test builds it)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(1234)
    fails = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("AESIM_TEST_TMP")) as tmp:
        # random data: GEMM path, several tiles, 1 and 3 shards, both metrics
        base = rng.standard_normal((3000, 48)).astype(np.float32)
        query = rng.standard_normal((40, 48)).astype(np.float32)
        for metric in ("l2", "ip"):
            for opts in ((), ("--shards", "3", "--threads", "2")):
                d, i = run_knn(tmp, base, query, metric, 12, *opts)
                fails += compare(f"random {' '.join(opts) or 'one shard'}", base, query, metric, 12, d, i)
        # k > M: all rows then padding; a single query (direct path)
        small = base[:7]
        d, i = run_knn(tmp, small, query, "l2", 10)
        fails += compare("random k>M", small, query, "l2", 10, d, i)
        d, i = run_knn(tmp, base, query[:1], "ip", 5)
        fails += compare("random Q=1", base, query[:1], "ip", 5, d, i)
        # cosine: knn_normalize + IP vs faiss.normalize_L2 + IndexFlatIP
        nb, nq = base.copy(), query.copy()
        faiss.normalize_L2(nb)
        faiss.normalize_L2(nq)
        d, i = run_knn(tmp, base, query, "ip", 8, "--normalize")
        fails += compare("cosine", nb, nq, "ip", 8, d, i)
        # range search on random data
        r = float(np.sort(exact(base, query[:1], "l2")[0])[30])
        lims, ri, rd = run_range(tmp, base, query, "l2", r)
        fails += compare_range("random", base, query, "l2", r, lims, ri, rd)
        lims, ri, rd = run_range(tmp, base, query, "ip", 12.0)
        fails += compare_range("random", base, query, "ip", 12.0, lims, ri, rd)

        # real SIFT vectors (integers: exact float32 distances, real ties)
        sb = read_vecs(os.path.join(SIFT, "siftmicro_base.fvecs"), np.float32)
        sq = read_vecs(os.path.join(SIFT, "siftsmall_query.fvecs"), np.float32)
        gt = read_vecs(os.path.join(SIFT, "siftsmall_groundtruth.ivecs"), np.int32)
        assert sb.shape == (100, 128) and sq.shape == (100, 128) and gt.shape == (100, 100)
        for metric in ("l2", "ip"):
            for k in (10, 100):
                d, i = run_knn(tmp, sb, sq, metric, k)
                fails += compare("sift", sb, sq, metric, k, d, i)
        d, i = run_knn(tmp, sb, sq, "l2", 100, "--shards", "4")
        fails += compare("sift 4 shards", sb, sq, "l2", 100, d, i)
        ex = exact(sb, sq, "l2")
        if not np.array_equal(d.astype(np.float64), np.take_along_axis(ex, i, 1)):
            fails.append("sift: L2 distances are not the exact integers")
        # ground truth (ids into the 10k base) restricted to our first 100
        checked = 0
        for qi in range(100):
            g = [int(t) for t in gt[qi] if t < 100]
            if list(i[qi, :len(g)]) != g:
                fails.append(f"sift query {qi}: {list(i[qi, :len(g)])} != ground truth {g}")
            checked += len(g)
        print(f"sift ground truth: {checked} (query, id) entries checked")
        # known exact tie: query 51, ids 3 and 59, both 153786: id order
        pos = {int(t): j for j, t in enumerate(i[51])}
        if not (ex[51, 3] == ex[51, 59] == 153786 and pos[3] + 1 == pos[59]):
            fails.append(f"sift query 51 tie: ids 3/59 at ranks {pos.get(3)}/{pos.get(59)}")
        r = float(np.sort(ex[0])[20])  # an exact distance: rows on the radius are included
        lims, ri, rd = run_range(tmp, sb, sq, "l2", r)
        fails += compare_range("sift", sb, sq, "l2", r, lims, ri, rd, exact_data=True)

    for f in fails[:20]:
        print("FAIL:", f)
    print("test_knn_faiss:", "ok" if not fails else f"{len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
