"""IVF index of aesim-search against FAISS IndexIVFFlat (Debian's python3-faiss)
at equal nlist and nprobe: recall@10 (share of the exact 10 nearest found,
faiss's "10-recall@10", ground truth from faiss.IndexFlatL2) on
- the 60,000 Fashion-MNIST training images as 784 pixel values (Debian's
  dataset-fashion-mnist), 500 test images as queries, nlist = 64;
- the same images as the encoder's codes (D = 392) of a checkpoint trained
  here for 60 steps, indexed by aesim-search index, 500 test images' codes as
  queries, nlist = 64;
- clustered synthetic vectors (overlapping Gaussian blobs, as faiss's own
  benchmarks use), N = 50,000, D = 64, nlist = 100;
- cosine (a database indexed with --metric cosine), 20,000 Fashion-MNIST
  pixel vectors, nlist = 64, against FAISS's convention: IndexIVFFlat with
  METRIC_INNER_PRODUCT (spherical k-means) on L2-normalised vectors, ground
  truth IndexFlatIP;
- cosine made exact: FAISS given aesim's centroids (an IndexFlatIP quantizer
  holding them) must put every vector in aesim's list and answer the same
  top 10 at nprobe 1, 2, 4, 8 (only near ties may differ, scoring alike).
Both sides run k-means (10 iterations, a sample of 256 x nlist vectors) from
their own random start, and the start alone moves the recall: FAISS with
seeds 1234 (its default), 1, 2, 3 gave 0.939-0.966 at nprobe = 2 on the
synthetic set.  So the test compares with FAISS's mean over those FAISS_SEEDS:
aesim's recall must be at least that mean minus 0.01 (the issue's tolerance)
and at most FAISS's best plus 0.02 (more would mean more rows scanned than
the nprobe lists hold, which tests/mpi_ivf.py checks exactly).  Our recall is
read from eval --recall and cross-checked against the ids of query --nprobe.
One process (an MPI singleton), so it also runs in MPI=0 builds; under the
sanitizers (make check-asan, AESIM_SAN=1) the encoder-codes case is skipped.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivf_common import (BUILD, ENV, FASHION, ROOT, clustered, fashion, list_of_rows, parse_tsv,  # noqa: E402
                        read_ivf, run, write_db)

TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "test_ivf_faiss")
K = 10
TOL = 0.01        # aesim may trail FAISS's mean recall by at most this
TOL_ABOVE = 0.02  # and lead FAISS's best by at most this
FAISS_SEEDS = (1234, 1, 2, 3)  # 1234 = faiss ClusteringParameters' default seed


def normalised(a):
    """float32 copy of a with unit rows (faiss.normalize_L2)."""
    a = np.array(a, np.float32)
    faiss.normalize_L2(a)
    return a


def faiss_recalls(x, q, nlist, probes, metric="l2"):
    """{nprobe: [recall for each of FAISS_SEEDS]}, and the exact ids.  Cosine:
    FAISS's convention, IndexIVFFlat with METRIC_INNER_PRODUCT (spherical
    k-means) on L2-normalised vectors and queries."""
    d = x.shape[1]
    if metric == "cosine":
        x, q = normalised(x), normalised(q)
    gt = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    gt.add(x)
    _, exact = gt.search(q, K)
    out = {p: [] for p in probes}
    for seed in FAISS_SEEDS:
        if metric == "cosine":
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            assert ivf.cp.spherical
        else:
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        ivf.cp.seed = seed
        ivf.train(x)
        ivf.add(x)
        for p in probes:
            ivf.nprobe = p
            _, ids = ivf.search(q, K)
            out[p].append(np.mean([len(set(ids[i]) & set(exact[i])) / K for i in range(len(q))]))
    return out, exact


def aesim_recalls(name, x, q, nlist, shards, metric="l2"):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    write_db(d, x, shards=shards, metric=metric)
    qpath = os.path.join(WORK, name + "_q.npy")
    np.save(qpath, q)
    run(0, "train-ivf", "--db", d, "--nlist", str(nlist), threads=2)
    out = run(0, "eval", "--recall", "--db", d, "--queries", qpath, "-k", str(K), threads=2).stdout
    rec = {}
    for line in out.splitlines()[2:]:
        f = line.split("\t")
        rec[int(f[0])] = float(f[1])
    return rec, d, qpath


class IvfFaissTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        faiss.omp_set_num_threads(2)

    def compare(self, name, x, q, nlist, probes, shards, metric="l2"):
        ours, d, qpath = aesim_recalls(name, x, q, nlist, shards, metric)
        theirs, exact = faiss_recalls(x, q, nlist, probes, metric)
        for p in probes:
            t = theirs[p]
            msg = (f"{name} nprobe {p}: recall@{K} aesim {ours[p]:.4f}, faiss mean {np.mean(t):.4f} "
                   f"(seeds {FAISS_SEEDS}: {' '.join(f'{v:.4f}' for v in t)})")
            print(msg, file=sys.stderr)
            self.assertGreaterEqual(ours[p], np.mean(t) - TOL, msg)
            self.assertLessEqual(ours[p], max(t) + TOL_ABOVE, msg)
        self.assertEqual(ours[nlist], 1.0)
        # the table's recall is that of the ids query prints
        p = probes[1]
        out = run(0, "query", "--db", d, "--queries", qpath, "--k", str(K), "--nprobe", str(p), threads=2).stdout
        ids, _ = parse_tsv(out, len(q), K)
        mine = np.mean([len(set(ids[i]) & set(exact[i])) / K for i in range(len(q))])
        self.assertAlmostEqual(mine, ours[p], places=3)
        return d, qpath

    def test_fashion_pixels(self):
        x, _ = fashion("train")
        q, _ = fashion("t10k")
        self.compare("fashion", x, q[:500], 64, [1, 2, 4, 8, 16], shards=3)

    @unittest.skipIf(os.environ.get("AESIM_SAN") == "1",
                     "plain build only: under ASan its 60-step training and two 60,000/10,000-image index runs "
                     "take ~40 s and reach no code the other two cases and the ASan training/index tests miss")
    def test_fashion_encoder_codes(self):
        # the encoder's codes (D = 392) of a small checkpoint trained here on the
        # Fashion-MNIST training images, indexed by aesim-search itself
        ck = os.path.join(WORK, "run")
        shutil.rmtree(ck, ignore_errors=True)
        train = os.path.join(FASHION, "train-images-idx3-ubyte.gz")
        p = subprocess.run([TRAIN, "--data", train, "--max-steps", "60", "--batch-size", "64", "--seed", "3",
                            "--threads", "2", "--out", ck, "--grid", "0"], env=ENV, capture_output=True, text=True,
                           timeout=600)
        self.assertEqual(p.returncode, 0, p.stderr)
        vecs = []
        for name, src in (("codes_db", train), ("codes_q", os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))):
            d = os.path.join(WORK, name)
            shutil.rmtree(d, ignore_errors=True)
            run(0, "index", "--model", os.path.join(ck, "checkpoint.npz"), "--data", src, "--db", d, threads=2)
            vecs.append(np.load(os.path.join(d, "shard-00000.vectors.npy")))
        x, q = vecs
        self.assertEqual(x.shape, (60000, 392))
        self.compare("codes", x, q[:500], 64, [1, 2, 4, 8, 16], shards=3)

    def test_cosine_fashion_pixels(self):
        # the recall of aesim's cosine IVF against FAISS's (both train their own
        # k-means); before the fix aesim's was 0.005 here at nprobe 1 (FAISS 0.75)
        x, _ = fashion("train")
        q, _ = fashion("t10k")
        self.compare("fashion_cos", x[:20000], q[:500], 64, [1, 2, 4, 8, 16], shards=3, metric="cosine")

    def test_cosine_same_lists_and_answers_as_faiss(self):
        """FAISS given aesim's centroids (IndexFlatIP quantizer holding them,
        IndexIVFFlat METRIC_INNER_PRODUCT, normalised vectors and queries) puts
        every vector in the same list and answers the same top 10 at nprobe 1, 2,
        4, 8.  Only near ties may differ (FAISS scores in float sgemm, aesim
        re-scores exactly): there, the two choices must score alike."""
        x, _ = fashion("train")
        x = x[:20000]
        q = fashion("t10k")[0][:300]
        nlist = 32
        d = os.path.join(WORK, "cos_inject")
        shutil.rmtree(d, ignore_errors=True)
        write_db(d, x, shards=3, metric="cosine")
        run(0, "train-ivf", "--db", d, "--nlist", str(nlist), threads=2)
        man, cent, _ = read_ivf(d)
        self.assertIs(man["ivf"]["normalized"], True)
        # spherical k-means, as FAISS trains an inner-product IVF (cp.spherical)
        np.testing.assert_allclose(np.linalg.norm(cent.astype(np.float64), axis=1), 1, atol=1e-6)
        dim = x.shape[1]
        quant = faiss.IndexFlatIP(dim)
        quant.add(cent)
        ivf = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.assertTrue(ivf.is_trained)
        xn = normalised(x)
        ivf.add(xn)
        # list assignment: FAISS's quantizer (what IndexIVFFlat.add used) against aesim's lists files
        _, fl = quant.search(xn, 1)
        ours = list_of_rows(d)
        ip = xn.astype(np.float64) @ cent.astype(np.float64).T
        diff = np.nonzero(ours != fl[:, 0])[0]
        print(f"\ncosine, FAISS with aesim's centroids: {len(diff)} of {len(x)} vectors in another list",
              file=sys.stderr)
        self.assertLessEqual(len(diff), len(x) // 1000)
        np.testing.assert_allclose(ip[diff, ours[diff]], ip[diff, fl[diff, 0]], atol=1e-6)
        np.testing.assert_allclose(ip[np.arange(len(x)), ours], ip.max(1), atol=1e-6)
        qpath = os.path.join(WORK, "cos_inject_q.npy")
        np.save(qpath, q)  # raw: aesim normalises cosine queries itself
        qn = normalised(q)
        for p in (1, 2, 4, 8):
            ivf.nprobe = p
            fd, fi = ivf.search(qn, K)
            ids, dist = parse_tsv(run(0, "query", "--db", d, "--queries", qpath, "--k", str(K), "--nprobe", str(p),
                                      threads=2).stdout, len(q), K)
            same = (ids == fi).all(1)
            print(f"nprobe {p}: {int(same.sum())} of {len(q)} queries with FAISS's top {K} ids", file=sys.stderr)
            self.assertGreaterEqual(same.mean(), 0.99, f"nprobe {p}")
            # aesim prints 1 - cosine; FAISS the inner product of the normalised vectors
            np.testing.assert_allclose(dist, 1 - fd, atol=1e-5, err_msg=f"nprobe {p}")

    def test_clustered_synthetic(self):
        x = clustered(50000, 64, 200, seed=11)
        q = clustered(500, 64, 200, seed=12)
        self.compare("clustered", x, q, 100, [1, 2, 4, 8], shards=2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
