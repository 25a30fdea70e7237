"""MPI tests of aesim-search's test-time augmentation (index --tta) and alpha
query expansion (--qe), on real MNIST images, against references nobody
here wrote:
- --tta flip,shift:1: the stored vectors equal the mean over the 10 views
  (numpy mirror and zero-filled 1-pixel shifts) of the PyTorch twin's codes
  (tests/aesim_torch.py), within 1e-4 relative; the manifest records it; a
  query image is encoded the same way (its own database row at distance 0);
- --qe: query results equal a float64 numpy alpha-QE (Radenovic et al.,
  TPAMI 2019: q' = normalise(q + sum_j max(0, cos)^alpha x_j) over the n
  nearest normalised rows, then a second search) for P = 1, 2, 3 ranks,
  with the manifest's default and with --qe / --qe-alpha given; --qe 0 is
  the plain cosine search; eval's precision@k with query expansion equals a
  numpy leave-one-out computation for the pixels baseline;
- bad options and damaged manifest keys end with a clear message and a
  non-zero exit; --append with another --tta leaves the database as it was.
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpi_search import MNIST, SEARCH, TRAIN, WORK, load_db, load_mnist, mpirun, read_bytes, search, write_idx  # noqa: E402

N = 600


def views(img, flip, shift):
    """The views of aesim's VecDbTta (vecdb.h) of images [n][H][W] in [0, 1]:
    (image, mirror) x (no shift, +S in x, -S in x, +S in y, -S in y), zero fill."""
    out = []
    for m in ([img, img[:, :, ::-1]] if flip else [img]):
        out.append(m)
        if shift:
            for dx, dy in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
                v = np.zeros_like(m)
                H, W = m.shape[1:]
                v[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
                    m[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
                out.append(v)
    return out


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def qe_search(q, x, k, n, alpha):
    """float64 alpha-QE then cosine top-k: (ids [Q][k], distances 1 - cos)."""
    xn, qn = unit(x.astype(np.float64)), unit(q.astype(np.float64))
    if n > 0:
        s = qn @ xn.T
        first = np.argsort(-s, axis=1, kind="stable")[:, :n]
        w = np.maximum(np.take_along_axis(s, first, 1), 0.0) ** alpha
        qn = unit(qn + (w[:, :, None] * xn[first]).sum(1))
    d = 1.0 - qn @ xn.T
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, 1)


def query(np_, db, *args):
    p = search(np_, "query", "--json", "--db", db, *args)
    return [([r["id"] for r in q["results"]], [r["distance"] for r in q["results"]])
            for q in json.loads(p.stdout)["queries"]]


class QeTta(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        images, labels = load_mnist()
        cls.images, cls.labels = images[:N], labels[:N]
        cls.src = write_idx(os.path.join(WORK, "qe600"), cls.images, cls.labels)
        cls.ckpt_dir = os.path.join(WORK, "qe_run")
        mpirun(2, TRAIN, "--data", MNIST, "--max-steps", "20", "--batch-size", "64", "--seed", "4", "--threads", "1",
               "--out", cls.ckpt_dir, "--grid", "0", "--overwrite")
        cls.ckpt = os.path.join(cls.ckpt_dir, "checkpoint.npz")
        cls.db_tta = os.path.join(WORK, "db_tta")
        cls.db_qe = os.path.join(WORK, "db_qe")
        for d in (cls.db_tta, cls.db_qe):
            shutil.rmtree(d, ignore_errors=True)
        search(2, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.db_tta, "--tta", "flip,shift:1",
               "--metric", "cosine")
        search(2, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.db_qe, "--metric", "cosine",
               "--qe", "4", "--qe-alpha", "2")
        _, cls.x, *_ = load_db(cls.db_qe)
        rng = np.random.default_rng(11)
        a, b = rng.integers(0, N, 9), rng.integers(0, N, 9)
        q = 0.5 * cls.x[a] + 0.5 * cls.x[b] + rng.normal(0, 0.05, (9, cls.x.shape[1])).astype(np.float32)
        cls.q = q.astype(np.float32)
        cls.qfile = os.path.join(WORK, "qe_queries.npy")
        np.save(cls.qfile, cls.q)

    # ------------------------------------------------------------ --tta

    def test_tta_vectors_equal_pytorch_views(self):
        import torch
        import aesim_torch
        man, x, *_ = load_db(self.db_tta)
        self.assertEqual(man["tta"], "flip,shift:1")
        self.assertNotIn("query_expansion", man)
        ck = np.load(self.ckpt)
        model = aesim_torch.build(bytes(ck["meta.arch"]).decode(), 1)
        aesim_torch.load_npz(model, ck)
        pick = [0, 1, 299, 300, 599]
        img = self.images[pick].astype(np.float32) / np.float32(255)
        vs = views(img, 1, 1)
        self.assertEqual(len(vs), 10)
        with torch.no_grad():
            codes = [model.encoder(torch.from_numpy(np.ascontiguousarray(v)[:, None])).reshape(len(pick), -1).numpy()
                     for v in vs]
        ref = np.mean(codes, axis=0)
        err = np.abs(x[pick] - ref).max() / np.abs(ref).max()
        self.assertLess(err, 1e-4)
        # and differs from the plain code (the views did something)
        self.assertGreater(np.abs(x[pick] - codes[0]).max() / np.abs(ref).max(), 1e-3)

    def test_tta_query_image_encoded_alike(self):
        got = query(2, self.db_tta, "--model", self.ckpt, "--data", self.src, "--ids", "5,421", "--k", "1")
        self.assertEqual([g[0][0] for g in got], [5, 421])
        self.assertLess(max(g[1][0] for g in got), 1e-5)

    # ------------------------------------------------------------- --qe

    def test_qe_manifest_default_equals_numpy_any_P(self):
        man = json.loads(read_bytes(os.path.join(self.db_qe, "manifest.json")))
        self.assertEqual(man["query_expansion"], {"n": 4, "alpha": 2})
        ref_ids, ref_d = qe_search(self.q, self.x, 8, 4, 2.0)
        outs = [query(p, self.db_qe, "--queries", self.qfile, "--k", "8") for p in (1, 2, 3)]
        self.assertEqual(outs[0], outs[1])
        self.assertEqual(outs[0], outs[2])
        for i, (ids, d) in enumerate(outs[0]):
            np.testing.assert_allclose(d, ref_d[i], atol=1e-5)
            self.assertEqual(ids, list(ref_ids[i]))

    def test_qe_options_override(self):
        ref_ids, ref_d = qe_search(self.q, self.x, 6, 7, 0.5)
        got = query(2, self.db_qe, "--queries", self.qfile, "--k", "6", "--qe", "7", "--qe-alpha", "0.5")
        for i, (ids, d) in enumerate(got):
            np.testing.assert_allclose(d, ref_d[i], atol=1e-5)
            self.assertEqual(ids, list(ref_ids[i]))
        plain_ids, plain_d = qe_search(self.q, self.x, 6, 0, 0.0)
        off = query(2, self.db_qe, "--queries", self.qfile, "--k", "6", "--qe", "0")
        for i, (ids, d) in enumerate(off):
            np.testing.assert_allclose(d, plain_d[i], atol=1e-5)
        self.assertNotEqual([d for _, d in off], [d for _, d in got])

    def test_eval_pixels_with_qe_equals_numpy(self):
        k, nq = 5, 60
        p = search(2, "eval", "--db", self.db_qe, "--model", self.ckpt, "--queries", self.src, "-k", str(k),
                   "--max-queries", str(nq), "--baseline", "pixels", "--json")
        self.assertIn("alpha query expansion, n = 4, alpha = 2", p.stderr)
        doc = json.loads(p.stdout)
        self.assertEqual((doc["tta"], doc["query_expansion"]), ("none", {"n": 4, "alpha": 2}))
        got = doc["methods"]["pixels"]["precision"]
        x = self.images.reshape(N, -1).astype(np.float64) / 255.0
        q = x[:nq]
        # leave-one-out: eval searches k + 1 (the query's own image is in the database)
        # with the expansion over max(k + 1, n) first-round neighbours, the own image included
        ids, _ = qe_search(q, x, k + 1, 4, 2.0)
        prec = [np.mean([self.labels[j] == self.labels[i] for j in row if j != i][:k]) for i, row in enumerate(ids)]
        self.assertAlmostEqual(got, float(np.mean(prec)), places=6)

    # ----------------------------------------------------------- errors

    def run_fail(self, *args, code=None):
        p = subprocess.run([SEARCH, *args], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.assertNotEqual(p.returncode, 0, p.stderr)
        if code is not None:
            self.assertEqual(p.returncode, code, p.stderr)
        return p.stderr

    def test_bad_options(self):
        db = os.path.join(WORK, "db_bad")
        shutil.rmtree(db, ignore_errors=True)
        base = ("index", "--model", self.ckpt, "--data", self.src, "--db", db)
        self.assertIn("cosine", self.run_fail(*base, "--qe", "3"))
        self.assertFalse(os.path.exists(os.path.join(db, "manifest.json")))
        for opt, val in (("--qe", "101"), ("--qe", "-1"), ("--qe", "x"), ("--qe-alpha", "x"), ("--qe-alpha", "-2"),
                         ("--tta", "bogus"), ("--tta", "shift:9"), ("--tta", "flip,")):
            self.assertIn(opt, self.run_fail(*base, "--metric", "cosine", opt, val, code=2))
        self.assertIn("--qe-alpha", self.run_fail(*base, "--metric", "cosine", "--qe-alpha", "2"))
        self.assertIn("--qe-alpha", self.run_fail("query", "--db", self.db_tta, "--queries", self.qfile, "--k", "3",
                                                  "--qe-alpha", "2"))
        self.assertIn("not an option of train-ivf", self.run_fail("train-ivf", "--db", db, "--nlist", "2", "--qe", "2",
                                                                  code=2))
        self.assertIn("cosine", self.run_fail("query", "--db", self.db_qe, "--queries", self.qfile, "--k", "3",
                                              "--metric", "l2"))

    def test_append_with_other_tta_refused(self):
        db = os.path.join(WORK, "db_app")
        shutil.rmtree(db, ignore_errors=True)
        search(1, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--tta", "shift:1")
        # (the writers' lock file, which --append creates, holds no data)
        files = lambda: sorted(f for f in os.listdir(db) if f != ".aesim-db.lock")
        before = files(), read_bytes(os.path.join(db, "manifest.json"))
        err = self.run_fail("index", "--model", self.ckpt, "--data", self.src, "--db", db, "--append", "--tta", "none")
        self.assertIn("--tta shift:1", err)
        self.assertEqual((files(), read_bytes(os.path.join(db, "manifest.json"))), before)
        # without --tta the new images are encoded as the database's were
        search(1, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--append")
        _, x, *_ = load_db(db)
        np.testing.assert_array_equal(x[:N], x[N:])

    def test_damaged_manifest_keys(self):
        for key, val in (("tta", "rotate"), ("tta", 3), ("query_expansion", {"n": 0, "alpha": 3}),
                         ("query_expansion", {"n": 2})):
            db = os.path.join(WORK, "db_dmg")
            shutil.rmtree(db, ignore_errors=True)
            shutil.copytree(self.db_qe, db)
            path = os.path.join(db, "manifest.json")
            man = json.loads(read_bytes(path))
            man[key] = val
            with open(path, "w") as f:
                json.dump(man, f)
            err = self.run_fail("query", "--db", db, "--queries", self.qfile, "--k", "3")
            self.assertIn("manifest.json", err)
            self.assertIn(key, err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
