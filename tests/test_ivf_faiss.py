"""IVF index of aesim-search against FAISS IndexIVFFlat (Debian's python3-faiss)
at equal nlist and nprobe: recall@10 (share of the exact 10 nearest found,
faiss's "10-recall@10", ground truth from faiss.IndexFlatL2) on
- the 60,000 Fashion-MNIST training images as 784 pixel values (Debian's
  dataset-fashion-mnist), 500 test images as queries, nlist = 64;
- the same images as the encoder's codes (D = 392) of a checkpoint trained
  here for 60 steps, indexed by aesim-search index, 500 test images' codes as
  queries, nlist = 64;
- clustered synthetic vectors (overlapping Gaussian blobs, as faiss's own
  benchmarks use), N = 50,000, D = 64, nlist = 100.
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
from ivf_common import (BUILD, ENV, FASHION, ROOT, clustered, fashion, parse_tsv, run,  # noqa: E402
                        write_db)

TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "test_ivf_faiss")
K = 10
TOL = 0.01        # aesim may trail FAISS's mean recall by at most this
TOL_ABOVE = 0.02  # and lead FAISS's best by at most this
FAISS_SEEDS = (1234, 1, 2, 3)  # 1234 = faiss ClusteringParameters' default seed


def faiss_recalls(x, q, nlist, probes):
    """{nprobe: [recall for each of FAISS_SEEDS]}, and the exact ids."""
    gt = faiss.IndexFlatL2(x.shape[1])
    gt.add(x)
    _, exact = gt.search(q, K)
    out = {p: [] for p in probes}
    for seed in FAISS_SEEDS:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
        ivf.cp.seed = seed
        ivf.train(x)
        ivf.add(x)
        for p in probes:
            ivf.nprobe = p
            _, ids = ivf.search(q, K)
            out[p].append(np.mean([len(set(ids[i]) & set(exact[i])) / K for i in range(len(q))]))
    return out, exact


def aesim_recalls(name, x, q, nlist, shards):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    write_db(d, x, shards=shards)
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

    def compare(self, name, x, q, nlist, probes, shards):
        ours, d, qpath = aesim_recalls(name, x, q, nlist, shards)
        theirs, exact = faiss_recalls(x, q, nlist, probes)
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

    def test_clustered_synthetic(self):
        x = clustered(50000, 64, 200, seed=11)
        q = clustered(500, 64, 200, seed=12)
        self.compare("clustered", x, q, 100, [1, 2, 4, 8], shards=2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
