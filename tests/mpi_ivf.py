"""MPI tests of the IVF index of aesim-search (train-ivf, --nprobe, --exact,
eval --recall, --append), on Fashion-MNIST training images as pixel vectors
(scaled to [0, 1])
(Debian's dataset-fashion-mnist), written as a database with numpy
(tests/ivf_common.py), checked against references nobody here wrote:
- k-means: the centroids and lists files are the same bytes whether P = 1 or
  P = 3 ranks (one with 2 shards) trained them; every vector's list is the
  nearest centroid by a float64 numpy computation; every row is in exactly
  one list; the centroids file's zlib.crc32 is the manifest's;
- search: --nprobe N with P = 1, 2, 3 gives the same TSV, equal to a numpy
  IVF search (nprobe nearest centroids, then float64 exact distances over
  those lists' rows; ids equal, distances within 1e-5 relative); --nprobe
  NLIST gives exactly the --exact answer (L2 and cosine); --label and --radius with the IVF
  equal the numpy search restricted to those rows / within that radius;
- index --ivf 16 (P = 2) on encoder codes of a small checkpoint trained here,
  then --append (P = 3): every vector, old and new, is in its nearest list
  (numpy); queries of encoded images equal the numpy IVF search;
- eval --recall: recall@10 at each nprobe equals numpy's recall of the IVF
  ids against exact ids, and is 1 at nprobe = NLIST;
- cosine databases (IvfCosineTest, and index --metric cosine --ivf / --append
  in IvfEncoderTest): unit centroids, every vector in the list of the largest
  inner product of its normalised self (numpy), the same files for P = 2 and
  3, recall@10 at nprobe NLIST/2 >= 0.9 and within 0.05 of the l2 index's,
  every stored vector found by itself at nprobe 1, --nprobe answers equal to
  a numpy search of the normalised space (for --metric cosine and l2), and a
  cosine manifest without ivf.normalized (an index from before the fix)
  refused with the train-ivf --overwrite hint, which repairs it;
- eval --recall --model on a whitened cosine database: its recall@10 equals
  that of query's --nprobe ids against query's --exact ids (its queries are
  whitened as query's);
- bad input: --nprobe on a database without IVF, a damaged centroids file
  (CRC), a truncated or altered lists file, a missing lists file, a manifest
  whose ivf.nlist disagrees with the files: every rank ends with a message
  naming the file and the reason, non-zero exit; a version-1 database still
  answers exactly.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivf_common import (ENV, FASHION as FASHION_DIR, ROOT, BUILD, fashion, ivf_reference, list_of_rows, parse_tsv, read_ivf, run, sqdist,  # noqa: E402
                        unit, write_db)

TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "mpi_ivf")
N = 4000
NLIST = 24
NQ = 40
K = 10


class IvfMpiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(WORK, ignore_errors=True)
        os.makedirs(WORK)
        x, y = fashion("train")
        # pixels / 255: non-integer values, so float sums depend on their order
        # (integer pixels sum exactly in float and could not show it)
        cls.x, cls.y = (x[:N] / 255).astype(np.float32), y[:N]
        q, _ = fashion("t10k")
        cls.q = (q[:NQ] / 255).astype(np.float32)
        cls.qpath = os.path.join(WORK, "q.npy")
        np.save(cls.qpath, cls.q)
        # Two copies of a 4-shard database; P = 3 gives rank 0 two shards.
        cls.db1 = os.path.join(WORK, "db1")
        cls.db3 = os.path.join(WORK, "db3")
        for d in (cls.db1, cls.db3):
            write_db(d, cls.x, cls.y, shards=4)
        cls.exact_v1 = run(2, "query", "--db", cls.db1, "--queries", cls.qpath, "--k", str(K)).stdout
        run(1, "train-ivf", "--db", cls.db1, "--nlist", str(NLIST))
        run(3, "train-ivf", "--db", cls.db3, "--nlist", str(NLIST))
        cls.man, cls.cent, cls.lists = read_ivf(cls.db1)
        cls.assign = list_of_rows(cls.db1)

    def test_same_index_for_any_p(self):
        names = sorted(f for f in os.listdir(self.db1) if "ivf" in f)
        self.assertEqual(names, sorted(f for f in os.listdir(self.db3) if "ivf" in f))
        self.assertEqual(len(names), 5)
        for f in names:
            with open(os.path.join(self.db1, f), "rb") as a, open(os.path.join(self.db3, f), "rb") as b:
                self.assertEqual(a.read(), b.read(), f)
        with open(os.path.join(self.db3, "manifest.json")) as f:
            self.assertEqual(json.load(f)["ivf"], self.man["ivf"])

    def test_manifest_and_lists(self):
        self.assertEqual(self.man["version"], 2)
        self.assertEqual(self.man["ivf"]["nlist"], NLIST)
        self.assertEqual(self.cent.shape, (NLIST, 784))
        self.assertEqual(self.cent.dtype, np.float32)
        self.assertEqual(int(self.man["ivf"]["crc32"], 16), zlib.crc32(self.cent.tobytes()))
        self.assertTrue((self.assign >= 0).all())
        for (lims, rows), s in zip(self.lists, self.man["shards"]):
            self.assertEqual(sorted(rows.tolist()), list(range(s["count"])))
        # every vector in the list of its nearest centroid (float64)
        dd = sqdist(self.x, self.cent)
        best = dd.min(1)
        got = dd[np.arange(N), self.assign]
        np.testing.assert_allclose(got, best, rtol=1e-6)
        self.assertGreater(len(np.unique(self.assign)), NLIST // 2)
        # the centroids are the k-means of the data: each is near the mean of its list
        for li in range(NLIST):
            members = self.x[self.assign == li]
            if len(members) > 20:
                gap = np.linalg.norm(members.mean(0) - self.cent[li]) / np.linalg.norm(self.cent[li])
                self.assertLess(gap, 0.1, f"list {li}")

    def test_nprobe_matches_numpy_for_any_p(self):
        nprobe = 3
        outs = [run(p, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--nprobe",
                    str(nprobe)).stdout for p in (1, 2, 3)]
        self.assertEqual(outs[0], outs[1])
        self.assertEqual(outs[0], outs[2])
        ids, dist = parse_tsv(outs[0], NQ, K)
        rids, rdist = ivf_reference(self.x, self.q, self.cent, self.assign, nprobe, K)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(dist, rdist, rtol=1e-5)
        # one query on 2 threads (its probes dealt over the threads) and 2 ranks: the same answer
        for i in (0, 7):
            one = os.path.join(WORK, f"one{i}.npy")
            np.save(one, self.q[i:i + 1])
            out = run(2, "query", "--db", self.db1, "--queries", one, "--k", str(K), "--nprobe", str(nprobe),
                      threads=2).stdout
            oids, odist = parse_tsv(out, 1, K)
            np.testing.assert_array_equal(oids[0], rids[i])
            np.testing.assert_allclose(odist[0], rdist[i], rtol=1e-5)
        # IVF really is approximate here: some answer differs from the exact one
        eids, _ = parse_tsv(self.exact_v1, NQ, K)
        self.assertTrue((ids != eids).any())

    def test_nprobe_nlist_is_exact(self):
        full = run(3, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--nprobe",
                   str(NLIST)).stdout
        exact = run(2, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--exact").stdout
        self.assertEqual(full, exact)
        self.assertEqual(exact, self.exact_v1)
        one = os.path.join(WORK, "q1.npy")
        np.save(one, self.q[:1])
        a = run(1, "query", "--db", self.db1, "--queries", one, "--k", "7", "--nprobe", str(NLIST), threads=2).stdout
        b = run(1, "query", "--db", self.db1, "--queries", one, "--k", "7", "--exact").stdout
        self.assertEqual(a, b)

    def test_cosine_queries_on_an_l2_index(self):
        # An l2 index's lists hold raw vectors around raw centroids, which a
        # normalised (cosine) query cannot probe (recall@10 was 0.03 at
        # nprobe 1): without --nprobe, the exact cosine scan with a note;
        # with --nprobe, or eval --recall, a refusal naming the way out.
        p = run(3, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--metric", "cosine")
        self.assertIn("has an l2 IVF index, which cosine queries cannot probe: scanning every vector", p.stderr)
        b = run(2, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--metric", "cosine",
                "--exact").stdout
        self.assertEqual(p.stdout, b)
        ids, dist = parse_tsv(p.stdout, NQ, K)
        xn = self.x / np.linalg.norm(self.x.astype(np.float64), axis=1, keepdims=True)
        qn = self.q / np.linalg.norm(self.q.astype(np.float64), axis=1, keepdims=True)
        for i in range(NQ):
            np.testing.assert_allclose(dist[i], 1 - xn[ids[i]] @ qn[i], atol=1e-5)
            self.assertTrue((np.diff(dist[i]) >= -1e-7).all())
        for cmd in (["query", "--k", str(K), "--nprobe", "4"], ["eval", "--recall", "-k", str(K)]):
            p = run(2, cmd[0], "--db", self.db1, "--queries", self.qpath, "--metric", "cosine", *cmd[1:],
                    check=False)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("was built for l2 (lists of raw vectors), which normalised queries cannot probe",
                          p.stderr)

    def test_filters_and_radius(self):
        nprobe = 4
        out = run(3, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--nprobe", str(nprobe),
                  "--label", "2,7").stdout
        ids, dist = parse_tsv(out, NQ, K)
        rids, rdist = ivf_reference(self.x, self.q, self.cent, self.assign, nprobe, K,
                                    eligible=np.isin(self.y, [2, 7]))
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(dist, rdist, rtol=1e-5)
        # One label at nprobe 1: queries whose probed list holds fewer than K
        # such vectors get fewer results, and the log counts them.
        p = run(2, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--nprobe", "1",
                "--label", "2")
        rids, _ = ivf_reference(self.x, self.q, self.cent, self.assign, 1, K, eligible=self.y == 2)
        short = int(((rids >= 0).sum(1) < K).sum())
        self.assertGreater(short, 0)
        self.assertIn(f"warning: {short} of {NQ} queries got fewer than {K} results", p.stderr)
        p = run(2, "query", "--db", self.db1, "--queries", self.qpath, "--k", str(K), "--exact", "--label", "2")
        self.assertNotIn("fewer than", p.stderr)
        # radius: every probed row within R, R = the 5th exact distance of query 0
        _, rd = ivf_reference(self.x, self.q, self.cent, self.assign, nprobe, 50)
        radius = float(rd[0, 20])
        out = run(2, "query", "--db", self.db1, "--queries", self.qpath, "--radius", repr(radius), "--nprobe",
                  str(nprobe)).stdout
        got = {}
        for line in out.splitlines()[1:]:
            f = line.split("\t")
            got.setdefault(int(f[0]), []).append(int(f[2]))
        probe = np.argsort(sqdist(self.q, self.cent), axis=1, kind="stable")[:, :nprobe]
        d = sqdist(self.q, self.x)
        for i in range(NQ):
            want = np.nonzero(np.isin(self.assign, probe[i]) & (d[i] <= radius * (1 - 1e-6)))[0]
            maybe = np.nonzero(np.isin(self.assign, probe[i]) & (d[i] <= radius * (1 + 1e-6)))[0]
            g = set(got.get(i, []))
            self.assertTrue(set(want.tolist()) <= g <= set(maybe.tolist()), f"query {i}")
        self.assertGreaterEqual(len(got.get(0, [])), 21)

    def test_recall_table(self):
        out = run(2, "eval", "--recall", "--db", self.db1, "--queries", self.qpath, "-k", str(K)).stdout
        rows = [line.split("\t") for line in out.splitlines()[1:]]
        self.assertEqual(rows[0][0], "exact")
        probes = [int(r[0]) for r in rows[1:]]
        self.assertEqual(probes, [1, 2, 4, 8, 16, NLIST])
        eids, _ = parse_tsv(self.exact_v1, NQ, K)
        for r in rows[1:]:
            p = int(r[0])
            ids, _ = ivf_reference(self.x, self.q, self.cent, self.assign, p, K)
            want = np.mean([len(set(ids[i]) & set(eids[i])) / K for i in range(NQ)])
            self.assertAlmostEqual(float(r[1]), want, places=4, msg=f"nprobe {p}")
            self.assertGreater(float(r[2]), 0)
        self.assertEqual(rows[-1][1], "1.0000")
        self.assertLess(float(rows[1][1]), 0.99)

    def test_shard_without_lists_refused(self):
        d = os.path.join(WORK, "dbnolists")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.db1, d)
        # a shard added behind aesim's back (no lists file): refused, file named
        extra = fashion("t10k")[0][100:400]
        man = load_json(os.path.join(d, "manifest.json"))
        s = len(man["shards"])
        first = man["count"]
        np.save(f"{d}/shard-{s:05d}.vectors.npy", extra)
        np.save(f"{d}/shard-{s:05d}.ids.npy", np.arange(first, first + len(extra), dtype=np.int64))
        np.save(f"{d}/shard-{s:05d}.labels.npy", -np.ones(len(extra), np.int32))
        with open(f"{d}/shard-{s:05d}.names.txt", "w") as f:
            f.writelines(f"extra#{i}\n" for i in range(len(extra)))
        man["shards"].append({"shard": s, "count": len(extra), "first_id": first, "last_id": first + len(extra) - 1})
        man["count"] += len(extra)
        man["sources"].append({"spec": "extra", "first_id": first, "count": len(extra),
                               "items": [{"path": "/extra", "count": len(extra)}]})
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(man, f)
        p = run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(f"shard-{s:05d}.ivf-", p.stderr)


def cosine_reference(x, q, cent, assign, nprobe, k, metric="cosine"):
    """numpy IVF search of a cosine index (faiss IndexIVFFlat, METRIC_INNER_PRODUCT,
    on normalised vectors): the nprobe lists whose centroids have the largest inner
    product with the normalised query (ties: smaller list), then the exact k best of
    their rows by `metric` (cosine: 1 - cosine similarity; l2: squared distance of
    the raw vectors), float64, ties to the smaller id."""
    xu, qu = unit(x), unit(q)
    probe = np.argsort(-(qu @ cent.astype(np.float64).T), axis=1, kind="stable")[:, :nprobe]
    ids = np.full((len(q), k), -1, np.int64)
    dist = np.full((len(q), k), np.inf)
    for i in range(len(q)):
        cand = np.nonzero(np.isin(assign, probe[i]))[0]
        if metric == "cosine":
            dd = 1 - xu[cand] @ qu[i]
        else:
            dd = ((x[cand].astype(np.float64) - q[i].astype(np.float64)) ** 2).sum(1)
        o = np.lexsort((cand, dd))[:k]
        ids[i, :len(o)] = cand[o]
        dist[i, :len(o)] = dd[o]
    return ids, dist


def recall_rows(out):
    """eval --recall's TSV -> {nprobe: recall}."""
    return {int(r.split("\t")[0]): float(r.split("\t")[1]) for r in out.splitlines()[2:]}


class IvfCosineTest(unittest.TestCase):
    """A cosine database's IVF index lives in the space of the normalised vectors,
    as faiss's IndexIVFFlat with METRIC_INNER_PRODUCT on normalised vectors:
    spherical k-means, every vector in the list of its largest inner product,
    queries probing by the largest inner product of the normalised query.  Before,
    the centroids and lists were of the raw vectors (norms 5-20 here) but the
    normalised query probed them: recall@10 0.03 at nprobe 1 and 0.50 at nprobe
    12 of 24 (l2: 0.81 and 1.00)."""

    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        x, _ = fashion("train")
        cls.x = (x[:N] / 255).astype(np.float32)
        q, _ = fashion("t10k")
        cls.q = (q[:200] / 255).astype(np.float32)
        cls.qpath = os.path.join(WORK, "cos_q.npy")
        np.save(cls.qpath, cls.q)
        cls.db = os.path.join(WORK, "cosdb")
        cls.db3 = os.path.join(WORK, "cosdb3")
        cls.l2 = os.path.join(WORK, "cosdb_l2")
        for d, metric in ((cls.db, "cosine"), (cls.db3, "cosine"), (cls.l2, "l2")):
            shutil.rmtree(d, ignore_errors=True)
            write_db(d, cls.x, shards=4, metric=metric)
        run(2, "train-ivf", "--db", cls.db, "--nlist", str(NLIST))
        run(3, "train-ivf", "--db", cls.db3, "--nlist", str(NLIST))
        run(2, "train-ivf", "--db", cls.l2, "--nlist", str(NLIST))
        cls.man, cls.cent, _ = read_ivf(cls.db)
        cls.assign = list_of_rows(cls.db)

    def test_index_of_normalised_vectors(self):
        self.assertIs(self.man["ivf"]["normalized"], True)
        self.assertNotIn("normalized", load_json(os.path.join(self.l2, "manifest.json"))["ivf"])
        # spherical k-means: unit centroids
        np.testing.assert_allclose(np.linalg.norm(self.cent.astype(np.float64), axis=1), 1, atol=1e-6)
        # every vector in the list of the largest inner product with its normalised self
        ip = unit(self.x) @ self.cent.astype(np.float64).T
        np.testing.assert_allclose(ip[np.arange(N), self.assign], ip.max(1), atol=1e-6)
        self.assertGreater(len(np.unique(self.assign)), NLIST // 2)
        # each centroid is the direction of the mean of its list's normalised vectors
        for li in range(NLIST):
            members = unit(self.x[self.assign == li])
            if len(members) > 20:
                m = members.mean(0)
                self.assertGreater(float(m @ self.cent[li]) / np.linalg.norm(m), 0.99, f"list {li}")
        # the same files for P = 2 and P = 3
        names = sorted(f for f in os.listdir(self.db) if "ivf" in f)
        self.assertEqual(names, sorted(f for f in os.listdir(self.db3) if "ivf" in f))
        for f in names:
            with open(os.path.join(self.db, f), "rb") as a, open(os.path.join(self.db3, f), "rb") as b:
                self.assertEqual(a.read(), b.read(), f)

    def test_recall_close_to_l2(self):
        half = NLIST // 2
        cos = recall_rows(run(2, "eval", "--recall", "--db", self.db, "--queries", self.qpath, "-k", str(K),
                              "--nprobe", str(half)).stdout)
        l2 = recall_rows(run(2, "eval", "--recall", "--db", self.l2, "--queries", self.qpath, "-k", str(K),
                             "--nprobe", str(half)).stdout)
        print(f"\nrecall@{K} cosine {cos}\nrecall@{K} l2     {l2}", file=sys.stderr)
        self.assertGreaterEqual(cos[half], 0.9)
        self.assertGreaterEqual(cos[half], l2[half] - 0.05)
        self.assertGreaterEqual(cos[1], l2[1] - 0.15)
        self.assertEqual(cos[NLIST], 1.0)

    def test_vector_finds_itself_at_nprobe_1(self):
        allq = os.path.join(WORK, "cos_all.npy")
        np.save(allq, self.x)
        ids, dist = parse_tsv(run(2, "query", "--db", self.db, "--queries", allq, "--k", "1", "--nprobe",
                                  "1").stdout, N, 1)
        eids, _ = parse_tsv(run(2, "query", "--db", self.db, "--queries", allq, "--k", "1", "--exact").stdout, N, 1)
        np.testing.assert_array_equal(ids, eids)
        self.assertLess(float(dist.max()), 1e-6)
        self.assertGreater(int((ids[:, 0] == np.arange(N)).sum()), N - 50)  # else an identical earlier image

    def test_probes_match_numpy(self):
        nprobe = 3
        out = run(3, "query", "--db", self.db, "--queries", self.qpath, "--k", str(K), "--nprobe", str(nprobe)).stdout
        self.assertEqual(out, run(1, "query", "--db", self.db, "--queries", self.qpath, "--k", str(K), "--nprobe",
                                  str(nprobe), threads=2).stdout)
        ids, dist = parse_tsv(out, len(self.q), K)
        rids, rdist = cosine_reference(self.x, self.q, self.cent, self.assign, nprobe, K)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(dist, rdist, atol=1e-5)
        # --metric l2 on the cosine index: the same lists (normalised query), scored by L2
        ids, dist = parse_tsv(run(2, "query", "--db", self.db, "--queries", self.qpath, "--k", str(K), "--nprobe",
                                  str(nprobe), "--metric", "l2").stdout, len(self.q), K)
        rids, rdist = cosine_reference(self.x, self.q, self.cent, self.assign, nprobe, K, metric="l2")
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(dist, rdist, rtol=1e-5)

    def test_index_from_before_the_fix_refused(self):
        # a cosine manifest without ivf.normalized: an index of the raw vectors
        d = os.path.join(WORK, "cos_old")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.db, d)
        man = load_json(os.path.join(d, "manifest.json"))
        del man["ivf"]["normalized"]
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(man, f)
        p = run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3", check=False)
        self.assertNotEqual(p.returncode, 0)
        for w in ("older aesim-search", f"train-ivf --db {d} --nlist {NLIST} --overwrite", "--exact"):
            self.assertIn(w, p.stderr)
        run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3", "--exact")
        run(2, "train-ivf", "--db", d, "--nlist", str(NLIST), "--overwrite")
        self.assertIs(load_json(os.path.join(d, "manifest.json"))["ivf"]["normalized"], True)
        self.assertEqual(run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3").stdout,
                         run(2, "query", "--db", self.db, "--queries", self.qpath, "--k", "3").stdout)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_idx(prefix, images, labels):
    """MNIST-layout IDX pair: PREFIX-images-idx3-ubyte and PREFIX-labels-idx1-ubyte."""
    n = len(images)
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.astype(np.uint8).tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())
    return prefix + "-images-idx3-ubyte"


class IvfEncoderTest(unittest.TestCase):
    """index --ivf and --append on encoder codes of a small trained checkpoint."""

    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        x, y = fashion("train")
        cls.src = write_idx(os.path.join(WORK, "f3000"), x[:3000], y[:3000])
        cls.src_app = write_idx(os.path.join(WORK, "f500"), x[3000:3500], y[3000:3500])
        ck = os.path.join(WORK, "run")
        train = [TRAIN, "--data", os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"), "--max-steps", "30",
                 "--batch-size", "64", "--seed", "3", "--threads", "1", "--out", ck, "--grid", "0"]
        p = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2"] + train, env=ENV,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        cls.ckpt = os.path.join(ck, "checkpoint.npz")
        cls.db = os.path.join(WORK, "encdb")
        shutil.rmtree(cls.db, ignore_errors=True)
        run(2, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.db, "--ivf", "16")
        cls.man1 = load_json(os.path.join(cls.db, "manifest.json"))
        run(3, "index", "--model", cls.ckpt, "--data", cls.src_app, "--db", cls.db, "--append")
        cls.man2 = load_json(os.path.join(cls.db, "manifest.json"))
        # the same with --metric cosine: index --ivf and --append in the normalised space
        cls.cosdb = os.path.join(WORK, "encdb_cos")
        shutil.rmtree(cls.cosdb, ignore_errors=True)
        run(2, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.cosdb, "--ivf", "16", "--metric", "cosine")
        run(3, "index", "--model", cls.ckpt, "--data", cls.src_app, "--db", cls.cosdb, "--append")

    def vectors(self):
        return np.concatenate([np.load(f"{self.db}/shard-{s['shard']:05d}.vectors.npy") for s in self.man2["shards"]])

    def test_index_ivf_and_append(self):
        self.assertEqual(self.man1["version"], 2)
        self.assertEqual(self.man1["ivf"]["nlist"], 16)
        self.assertEqual(self.man2["ivf"], self.man1["ivf"])
        self.assertEqual(self.man2["count"], 3500)
        self.assertEqual(len(self.man2["shards"]), 5)
        _, cent, _ = read_ivf(self.db)
        x = self.vectors()
        assign = list_of_rows(self.db)
        self.assertTrue((assign >= 0).all())
        dd = sqdist(x, cent)
        np.testing.assert_allclose(dd[np.arange(len(x)), assign], dd.min(1), rtol=1e-6)

    def test_index_ivf_more_lists_than_images_refused_before_any_work(self):
        """index --ivf N with N above the vectors to come is refused before
        encoding: no database is left (it used to commit the database, then
        fail in train-ivf, so the same command was refused as 'already holds
        a database')."""
        db = os.path.join(WORK, "too-many-lists", "db")
        p = run(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--ivf", "501", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("--ivf 501:", p.stderr)
        self.assertIn("would hold 500 vectors; nlist must be in 1..500", p.stderr)
        self.assertNotIn("index: done", p.stderr)
        self.assertFalse(os.path.exists(os.path.dirname(db)))
        run(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--ivf", "4")
        self.assertEqual(load_json(os.path.join(db, "manifest.json"))["ivf"]["nlist"], 4)

    def test_cosine_index_ivf_and_append(self):
        man, cent, _ = read_ivf(self.cosdb)
        self.assertEqual((man["metric"], man["count"], man["ivf"]["nlist"], man["ivf"]["normalized"]),
                         ("cosine", 3500, 16, True))
        x = np.concatenate([np.load(f"{self.cosdb}/shard-{s['shard']:05d}.vectors.npy") for s in man["shards"]])
        np.testing.assert_array_equal(x, self.vectors())  # stored as indexed, not normalised
        assign = list_of_rows(self.cosdb)
        ip = unit(x) @ cent.astype(np.float64).T
        np.testing.assert_allclose(ip[np.arange(len(x)), assign], ip.max(1), atol=1e-6)
        # old and appended vectors searched with themselves: found at nprobe 1
        qpath = os.path.join(WORK, "enc_cos_q.npy")
        np.save(qpath, x[2800:3200])
        ids, dist = parse_tsv(run(2, "query", "--db", self.cosdb, "--queries", qpath, "--k", "1", "--nprobe",
                                  "1").stdout, 400, 1)
        eids, _ = parse_tsv(run(2, "query", "--db", self.cosdb, "--queries", qpath, "--k", "1", "--exact").stdout,
                            400, 1)
        np.testing.assert_array_equal(ids, eids)
        self.assertLess(float(dist.max()), 1e-6)

    def test_recall_of_whitened_cosine_index(self):
        # eval --recall --model whitens the encoded queries as query does: its
        # recall@10 is that of query's IVF ids against query's exact ids (before,
        # its queries stayed unwhitened, in another space than the database's)
        db = os.path.join(WORK, "encdb_wcos")
        shutil.rmtree(db, ignore_errors=True)
        run(2, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--whiten", "--metric", "cosine",
            "--ivf", "16")
        rec = recall_rows(run(2, "eval", "--recall", "--db", db, "--model", self.ckpt, "--queries", self.src_app,
                              "-k", "10", "--nprobe", "2").stdout)
        base = ("query", "--db", db, "--model", self.ckpt, "--data", self.src_app, "--ids", "0-499", "--k", "10")
        ids, _ = parse_tsv(run(2, *base, "--nprobe", "2").stdout, 500, 10)
        eids, _ = parse_tsv(run(2, *base, "--exact").stdout, 500, 10)
        want = np.mean([len(set(ids[i]) & set(eids[i])) / 10 for i in range(500)])
        self.assertAlmostEqual(rec[2], want, places=4)
        self.assertLess(rec[1], 1.0)
        # query vectors given with --model read as images, which they are
        # not: the refusal says to drop --model
        vec = os.path.join(WORK, "wcos-query-vectors.npy")
        np.save(vec, np.load(os.path.join(db, "shard-00000.vectors.npy"))[:20])
        p = run(2, "eval", "--recall", "--db", db, "--model", self.ckpt, "--queries", vec, "-k", "10", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"(and if {vec} holds query vectors (Q, ", p.stderr)
        self.assertIn("drop --model: --model encodes images)", p.stderr)
        # rows that make square images of another size: the same hint
        np.save(vec, np.random.default_rng(3).random((20, 100), dtype=np.float32))
        p = run(2, "eval", "--recall", "--db", db, "--model", self.ckpt, "--queries", vec, "-k", "10", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("has 1x10x10 images (CxHxW) but the model takes", p.stderr)
        self.assertIn(f"(and if {vec} holds query vectors (Q, ", p.stderr)

    def test_query_encoded_images(self):
        _, cent, _ = read_ivf(self.db)
        x = self.vectors()
        assign = list_of_rows(self.db)
        out = run(2, "query", "--model", self.ckpt, "--db", self.db, "--data", self.src_app, "--ids", "0-19",
                  "--k", "5", "--nprobe", "2").stdout
        ids, dist = parse_tsv(out, 20, 5)
        q = x[3000:3020]
        rids, rdist = ivf_reference(x, q, cent, assign, 2, 5)
        np.testing.assert_array_equal(ids[:, 0], np.arange(3000, 3020))
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(dist, rdist, rtol=1e-5, atol=1e-6)


class IvfBadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        x, _ = fashion("train")
        cls.x = x[:1500]
        cls.good = os.path.join(WORK, "bad_base")
        shutil.rmtree(cls.good, ignore_errors=True)
        write_db(cls.good, cls.x, shards=2)
        cls.qpath = os.path.join(WORK, "qbad.npy")
        np.save(cls.qpath, cls.x[:3])
        p = run(2, "query", "--db", cls.good, "--queries", cls.qpath, "--k", "3", "--nprobe", "2", check=False)
        cls.no_ivf = p
        run(2, "train-ivf", "--db", cls.good, "--nlist", "8")

    def copy(self, name):
        d = os.path.join(WORK, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.good, d)
        return d, load_json(os.path.join(d, "manifest.json"))

    def refused(self, d, *words):
        p = run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3", check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        for w in words:
            self.assertIn(w, p.stderr)
        self.assertNotIn("Segmentation", p.stderr)
        return p.stderr

    def test_nprobe_without_ivf(self):
        self.assertNotEqual(self.no_ivf.returncode, 0)
        self.assertIn("no IVF index", self.no_ivf.stderr)
        self.assertIn("train-ivf", self.no_ivf.stderr)

    def test_damaged_centroids(self):
        d, man = self.copy("bad_cent")
        path = os.path.join(d, man["ivf"]["centroids"])
        c = np.load(path)
        c[3, 5] += 1.0
        np.save(path, c)
        self.refused(d, man["ivf"]["centroids"], "CRC-32")

    def test_truncated_centroids(self):
        d, man = self.copy("trunc_cent")
        path = os.path.join(d, man["ivf"]["centroids"])
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
        self.refused(d, man["ivf"]["centroids"])

    def test_lists_altered(self):
        d, man = self.copy("bad_lists")
        path = os.path.join(d, f"shard-00001.ivf-{man['ivf']['crc32']}.lists.npy")
        a = np.load(path)
        a[-1] = a[-2]  # a row twice
        np.save(path, a)
        self.refused(d, path, "repeated")

    def test_lists_offset_beyond_rows(self):
        d, man = self.copy("bad_offset")
        path = os.path.join(d, f"shard-00000.ivf-{man['ivf']['crc32']}.lists.npy")
        a = np.load(path)
        a[3] = 10 ** 12
        np.save(path, a)
        self.refused(d, path, "offset of list 3")

    def test_retrain_replaces_files(self):
        d, man = self.copy("retrain")
        run(2, "train-ivf", "--db", d, "--nlist", "5", "--overwrite")
        new = load_json(os.path.join(d, "manifest.json"))
        self.assertEqual(new["ivf"]["nlist"], 5)
        self.assertEqual(sorted(f for f in os.listdir(d) if "ivf" in f),
                         sorted([new["ivf"]["centroids"]] +
                                [f"shard-{s:05d}.ivf-{new['ivf']['crc32']}.lists.npy" for s in range(2)]))
        run(2, "query", "--db", d, "--queries", self.qpath, "--k", "3")

    def test_lists_truncated(self):
        d, man = self.copy("trunc_lists")
        path = os.path.join(d, f"shard-00000.ivf-{man['ivf']['crc32']}.lists.npy")
        a = np.load(path)
        np.save(path, a[:-5])
        self.refused(d, path, "expected int64")

    def test_lists_missing(self):
        d, man = self.copy("miss_lists")
        path = os.path.join(d, f"shard-00001.ivf-{man['ivf']['crc32']}.lists.npy")
        os.remove(path)
        self.refused(d, path)

    def test_nlist_mismatch(self):
        d, man = self.copy("nlist_mismatch")
        man["ivf"]["nlist"] = 9
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(man, f)
        self.refused(d, man["ivf"]["centroids"], "[9][784]")

    def test_bad_nlist(self):
        d, _ = self.copy("nlist_big")
        p = run(2, "train-ivf", "--db", d, "--nlist", "2000", "--overwrite", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--nlist 2000", p.stderr)
        p = run(0, "train-ivf", "--db", d, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--nlist", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
