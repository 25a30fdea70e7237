"""MPI tests of aesim-search (index / query / eval) on real MNIST images.

A small checkpoint is trained here (aesim-train, 30 steps on
../shared/data/mnist/t10k-images-idx3-ubyte.gz), 2000 of those images are
indexed with P = 2 ranks, and the database is checked against references
nobody here wrote:
- the shards load with numpy.load; ids are 0..1999 split in two; labels are
  the MNIST labels; the manifest is valid JSON and its crc32 is zlib.crc32 of
  the checkpoint's parameter bytes;
- the stored vectors equal the PyTorch twin of the encoder (tests/aesim_torch.py)
  within 1e-4 relative;
- queries with P = 1, 2, 3 give identical results, equal to a float64 numpy
  brute force on the shard vectors and to faiss.IndexFlatL2 / IndexFlatIP
  (cosine: on faiss.normalize_L2 vectors), ids equal except among equal
  distances; --label and --ids-from equal brute force restricted to those rows;
  --radius equals the numpy range set; k > count returns everything in order;
- --image PNG queries (grey and RGB files written by PIL) equal --data --ids
  queries of the same images; the contact sheet's tiles are the query and
  neighbour images (PIL);
- --append (P = 3) adds shards without touching the old files; appended
  duplicates of images tie with the originals and come after them (smaller
  id first); an empty shard and a rank without a shard work;
- eval: precision@k of aesim and of the pixels baseline equal a numpy
  leave-one-out computation, PCA within 0.02 of numpy's eigh-based PCA;
- bad input (missing database, damaged or missing shard, manifest D that
  differs from the model, another model, k = 0, unknown option, NaN/Inf
  vectors, indexing over an existing database) ends every rank with a clear
  message and a non-zero exit, never a hang (timeouts).
"""
import gzip
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
SHARED = os.path.join(ROOT, "..", "shared", "data")
MNIST = os.path.join(SHARED, "mnist", "t10k-images-idx3-ubyte.gz")
MNIST_LABELS = os.path.join(SHARED, "mnist", "t10k-labels-idx1-ubyte.gz")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "mpi_search")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
N_DB = 2000
N_APPEND = 300
TIMEOUT = 120


def mpirun(np_, binary, *args, check=True, timeout=TIMEOUT):
    """np_ = 0 runs the binary without mpirun (an MPI singleton: one rank,
    and no ~2 s mpirun tear-down after a non-zero exit)."""
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), binary, *args] if np_ else [binary, *args]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def search(np_, *args, **kw):
    return mpirun(np_, SEARCH, *args, "--threads", "1", **kw)


def write_idx(prefix, images, labels):
    """MNIST-layout IDX pair: PREFIX-images-idx3-ubyte and PREFIX-labels-idx1-ubyte."""
    n = len(images)
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.astype(np.uint8).tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())
    return prefix + "-images-idx3-ubyte"


def load_mnist():
    raw = gzip.open(MNIST).read()
    lab = gzip.open(MNIST_LABELS).read()
    n = struct.unpack(">I", raw[4:8])[0]
    return (np.frombuffer(raw[16:], np.uint8).reshape(n, 28, 28),
            np.frombuffer(lab[8:], np.uint8).astype(np.int32))


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_db(db):
    man = read_json(os.path.join(db, "manifest.json"))
    xs, ids, labels, names = [], [], [], []
    for s in man["shards"]:
        stem = os.path.join(db, "shard-%05d" % s["shard"])
        xs.append(np.load(stem + ".vectors.npy"))
        ids.append(np.load(stem + ".ids.npy"))
        labels.append(np.load(stem + ".labels.npy"))
        names += read_bytes(stem + ".names.txt").decode().splitlines()
    return man, np.concatenate(xs), np.concatenate(ids), np.concatenate(labels), names


def run_json(np_, *args):
    p = search(np_, "query", "--json", *args)
    return json.loads(p.stdout)


def lists(res):
    """[(ids, distances)] per query from a --json result."""
    return [([r["id"] for r in q["results"]], [r["distance"] for r in q["results"]]) for q in res["queries"]]


def brute(q, x, metric="l2", eligible=None):
    """float64 reference distances [Q][M] (cosine: 1 - similarity of normalised rows).
    L2 as |q|^2 + |x|^2 - 2 q.x in float64: its rounding error (~1e-13 of the
    norms) is far below the 1e-6 tolerance the results are compared with."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "l2":
        d = (q64 ** 2).sum(1)[:, None] + (x64 ** 2).sum(1)[None, :] - 2.0 * (q64 @ x64.T)
        d = np.maximum(d, 0.0)
    else:
        qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        d = 1.0 - qn @ xn.T
    if eligible is not None:
        d[:, ~eligible] = np.inf
    return d


class Search(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        cls.images, cls.labels = load_mnist()
        cls.src = write_idx(os.path.join(WORK, "m2000"), cls.images[:N_DB], cls.labels[:N_DB])
        # Appended images: copies of the first N_APPEND (exact duplicate vectors).
        cls.src_app = write_idx(os.path.join(WORK, "dup"), cls.images[:N_APPEND], cls.labels[:N_APPEND])
        cls.ckpt_dir = os.path.join(WORK, "run")
        mpirun(2, TRAIN, "--data", MNIST, "--max-steps", "30", "--batch-size", "64", "--seed", "3", "--threads", "1",
               "--out", cls.ckpt_dir, "--grid", "0")
        cls.ckpt = os.path.join(cls.ckpt_dir, "checkpoint.npz")
        cls.db = os.path.join(WORK, "db")
        shutil.rmtree(cls.db, ignore_errors=True)
        cls.index = search(2, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.db)
        cls.man, cls.x, cls.ids, cls.dblabels, cls.names = load_db(cls.db)
        rng = np.random.default_rng(5)
        # Queries: mixtures of two database vectors plus noise, and 3 exact rows.
        a, b = rng.integers(0, N_DB, 13), rng.integers(0, N_DB, 13)
        t = rng.uniform(0.2, 0.8, (13, 1)).astype(np.float32)
        q = t * cls.x[a] + (1 - t) * cls.x[b] + rng.normal(0, 0.05, (13, cls.x.shape[1])).astype(np.float32)
        cls.q = np.concatenate([q, cls.x[[0, 999, 1000]]]).astype(np.float32)
        cls.qfile = os.path.join(WORK, "queries.npy")
        np.save(cls.qfile, cls.q)

    # ------------------------------------------------------------ database

    def test_manifest(self):
        m = self.man
        self.assertEqual((m["format"], m["version"], m["dim"], m["count"], m["metric"]), ("aesim-vecdb", 1, 392, N_DB, "l2"))
        self.assertEqual(m["model"]["input_shape"], [1, 28, 28])
        self.assertEqual([(s["shard"], s["count"], s["first_id"], s["last_id"]) for s in m["shards"]],
                         [(0, 1000, 0, 999), (1, 1000, 1000, 1999)])
        self.assertEqual(m["sources"][0]["count"], N_DB)
        ck = np.load(self.ckpt)
        nconv = len([k for k in ck.files if k.startswith("conv") and k.endswith(".weight")])
        params = b"".join(ck[f"conv{j}.{t}"].astype("<f4").tobytes() for j in range(nconv) for t in ("weight", "bias"))
        self.assertEqual(m["model"]["crc32"], "%08x" % zlib.crc32(params))
        self.assertFalse([f for f in os.listdir(self.db) if ".tmp" in f], "temporary files left behind")

    def test_shards_readable_with_numpy(self):
        self.assertEqual(self.x.shape, (N_DB, 392))
        self.assertEqual(self.x.dtype, np.float32)
        np.testing.assert_array_equal(self.ids, np.arange(N_DB))
        np.testing.assert_array_equal(self.dblabels, self.labels[:N_DB])
        self.assertEqual(self.names[0], "m2000-images-idx3-ubyte#0")
        self.assertEqual(self.names[1234], "m2000-images-idx3-ubyte#1234")
        self.assertTrue(np.all(np.isfinite(self.x)))

    def test_vectors_equal_pytorch_encoder(self):
        import torch
        import aesim_torch
        ck = np.load(self.ckpt)
        model = aesim_torch.build(bytes(ck["meta.arch"]).decode(), 1)
        aesim_torch.load_npz(model, ck)
        pick = [0, 1, 999, 1000, 1500, 1999]
        x = torch.from_numpy((self.images[pick].astype(np.float32) / np.float32(255))[:, None])
        with torch.no_grad():
            ref = model.encoder(x).reshape(len(pick), -1).numpy()
        got = self.x[pick]
        err = np.abs(got - ref) / (np.abs(ref).max() + 1e-12)
        self.assertLess(err.max(), 1e-4, f"max relative error {err.max()}")

    # ---------------------------------------------------------------- query

    def check_ranking(self, ids, dist, ref_d, k, rtol):
        """ids/dist of one query vs reference distances ref_d[M] (inf = ineligible)."""
        order = np.lexsort((np.arange(len(ref_d)), ref_d))
        n = min(k, int(np.isfinite(ref_d).sum()))
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), n, "duplicate ids")
        ref_sorted = ref_d[order[:n]]
        np.testing.assert_allclose(dist, ref_sorted, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(ref_d[ids], dist, rtol=rtol, atol=rtol)  # each id carries its own distance
        for j in range(1, n):
            self.assertLessEqual(dist[j - 1], dist[j])
            if dist[j - 1] == dist[j]:
                self.assertLess(ids[j - 1], ids[j], "tie not broken by smaller id")

    def test_same_results_for_any_P_and_bruteforce(self):
        res = [lists(run_json(p, "--db", self.db, "--queries", self.qfile, "--k", "10")) for p in (1, 2, 3)]
        self.assertEqual(res[0], res[1])
        self.assertEqual(res[0], res[2])
        d = brute(self.q, self.x)
        for i, (ids, dist) in enumerate(res[0]):
            self.check_ranking(ids, dist, d[i], 10, 1e-6)
        self.assertEqual(res[0][13][0][0], 0)
        self.assertEqual(res[0][13][1][0], 0.0)

    def test_faiss_l2_and_ip(self):
        import faiss
        faiss.omp_set_num_threads(1)
        for metric in ("l2", "cosine"):
            got = lists(run_json(3, "--db", self.db, "--queries", self.qfile, "--k", "8", "--metric", metric))
            if metric == "l2":
                index = faiss.IndexFlatL2(392)
                index.add(self.x)
                D, I = index.search(self.q, 8)
            else:
                xn, qn = self.x.copy(), self.q.copy()
                faiss.normalize_L2(xn)
                faiss.normalize_L2(qn)
                index = faiss.IndexFlatIP(392)
                index.add(xn)
                S, I = index.search(qn, 8)
                D = 1.0 - S
            for i, (ids, dist) in enumerate(got):
                np.testing.assert_allclose(dist, D[i], rtol=1e-4, atol=1e-5, err_msg=f"{metric} query {i}")
                for j, (a, b) in enumerate(zip(ids, I[i])):
                    if a != b:  # only allowed among (near-)equal distances
                        self.assertAlmostEqual(dist[j], D[i][list(I[i]).index(a)] if a in I[i] else D[i][j],
                                               delta=1e-4 * max(1.0, abs(dist[j])), msg=f"{metric} q{i} rank {j}")

    def test_cosine_matches_bruteforce(self):
        got = lists(run_json(2, "--db", self.db, "--queries", self.qfile, "--k", "6", "--metric", "cosine"))
        d = brute(self.q, self.x, "cosine")
        for i, (ids, dist) in enumerate(got):
            self.check_ranking(ids, dist, d[i], 6, 1e-6)

    def test_image_queries_by_data_ids_equal_vector_queries(self):
        by_img = lists(run_json(2, "--db", self.db, "--model", self.ckpt, "--data", self.src, "--ids", "0,999-1000",
                                "--k", "10"))
        by_vec = lists(run_json(1, "--db", self.db, "--queries", self.qfile, "--k", "10"))
        self.assertEqual(by_img, by_vec[13:16])

    def test_label_filter(self):
        got = lists(run_json(3, "--db", self.db, "--queries", self.qfile, "--k", "7", "--label", "3"))
        res = run_json(2, "--db", self.db, "--queries", self.qfile, "--k", "7", "--label", "3,8")
        for q in res["queries"]:
            self.assertTrue(all(r["label"] in (3, 8) for r in q["results"]))
        d = brute(self.q, self.x, eligible=self.dblabels == 3)
        for i, (ids, dist) in enumerate(got):
            self.assertTrue(np.all(self.dblabels[ids] == 3))
            self.check_ranking(ids, dist, d[i], 7, 1e-6)
        # the log counts the eligible rows over every rank's shards (numpy's count)
        p = search(3, "query", "--json", "--db", self.db, "--queries", self.qfile, "--k", "7", "--label", "3,8")
        want = int(np.isin(self.dblabels, [3, 8]).sum())
        self.assertIn(f"the filter leaves {want} of {N_DB} vectors eligible", p.stderr)
        # a label absent from the database: empty lists, exit 0, and a warning saying so
        absent = int(self.dblabels.max()) + 1
        p = search(2, "query", "--json", "--db", self.db, "--queries", self.qfile, "--k", "7", "--label", str(absent))
        self.assertTrue(all(q["results"] == [] for q in json.loads(p.stdout)["queries"]))
        self.assertIn(f"warning: the filter (--label) matches none of the {N_DB} vectors", p.stderr)

    def test_ids_from_filter(self):
        rng = np.random.default_rng(9)
        allowed = np.sort(rng.choice(N_DB, 40, replace=False))
        path = os.path.join(WORK, "allowed.txt")
        with open(path, "w") as f:
            f.write("\n".join(", ".join(map(str, allowed[i:i + 7])) for i in range(0, 40, 7)) + "\n")
        got = lists(run_json(2, "--db", self.db, "--queries", self.qfile, "--k", "5", "--ids-from", path))
        mask = np.zeros(N_DB, bool)
        mask[allowed] = True
        d = brute(self.q, self.x, eligible=mask)
        for i, (ids, dist) in enumerate(got):
            self.check_ranking(ids, dist, d[i], 5, 1e-6)
        npy = os.path.join(WORK, "allowed.npy")
        np.save(npy, allowed.astype(np.int64))
        self.assertEqual(got, lists(run_json(3, "--db", self.db, "--queries", self.qfile, "--k", "5", "--ids-from", npy)))

    def test_radius(self):
        d = brute(self.q, self.x).astype(np.float32)
        radius = float(np.sort(d[0])[6])  # a float32 value: rows at exactly R are included
        res = lists(run_json(3, "--db", self.db, "--queries", self.qfile, "--radius", repr(radius)))
        for i, (ids, dist) in enumerate(res):
            want = np.flatnonzero(d[i] <= radius)
            self.assertEqual(sorted(ids), sorted(want.tolist()), f"query {i}")
            self.check_ranking(ids, dist, brute(self.q[i:i + 1], self.x)[0], len(want), 1e-6)
        self.assertEqual(len(res[0][0]), 7)
        capped = lists(run_json(2, "--db", self.db, "--queries", self.qfile, "--radius", repr(radius), "--k", "3"))
        for full, cap in zip(res, capped):
            self.assertEqual(cap[0], full[0][:3])

    def test_k_larger_than_database(self):
        p = search(2, "query", "--db", self.db, "--queries", self.qfile, "--k", "5000", "--out",
                   os.path.join(WORK, "all.tsv"))
        rows = [line.split("\t") for line in read_bytes(os.path.join(WORK, "all.tsv")).decode().splitlines()]
        self.assertEqual(rows[0], ["query", "rank", "id", "distance", "label", "source", "class"])
        q0 = [r for r in rows[1:] if r[0] == "0"]
        self.assertEqual(len(q0), N_DB, p.stderr)
        self.assertEqual(sorted(int(r[2]) for r in q0), list(range(N_DB)))
        self.check_ranking([int(r[2]) for r in q0], [float(r[3]) for r in q0], brute(self.q[:1], self.x)[0], 5000,
                           1e-6)
        r = q0[0]
        self.assertEqual(r[5], self.names[int(r[2])])
        self.assertEqual(int(r[4]), self.dblabels[int(r[2])])

    def test_png_image_queries_and_sheet(self):
        from PIL import Image
        grey = os.path.join(WORK, "q7.png")
        rgb = os.path.join(WORK, "q42_rgb.png")
        Image.fromarray(self.images[7]).save(grey)
        Image.fromarray(np.stack([self.images[42]] * 3, -1)).save(rgb)
        sheet = os.path.join(WORK, "sheet.png")
        got = lists(run_json(2, "--db", self.db, "--model", self.ckpt, "--image", grey, rgb, "--k", "4",
                             "--sheet", sheet))
        ref = lists(run_json(1, "--db", self.db, "--model", self.ckpt, "--data", self.src, "--ids", "7,42", "--k", "4"))
        self.assertEqual(got, ref)
        # Sheet: 2 rows x 5 tiles of 28*3 pixels, 2-pixel borders, a 20-pixel
        # caption under each tile and a 14-pixel gap after the query (sheet.h;
        # the captions are checked in test_sheet.py).
        im = np.asarray(Image.open(sheet))
        scale, pad, caption, gap = 3, 2, 20, 14
        self.assertEqual(im.shape, (pad + 2 * (28 * scale + caption + pad), pad + 5 * (28 * scale + pad) + gap))
        for r, (ids, _) in enumerate(got):
            tiles = [self.images[[7, 42][r]]] + [self.images[i] for i in ids]
            for c, tile in enumerate(tiles):
                y, x = pad + r * (28 * scale + caption + pad), pad + c * (28 * scale + pad) + (gap if c else 0)
                np.testing.assert_array_equal(im[y:y + 28 * scale:scale, x:x + 28 * scale:scale], tile,
                                              err_msg=f"tile {r},{c}")
        # Other sizes are resized with the box filter: image 7 enlarged 2x
        # (each pixel a 2x2 block) comes back exactly, so it finds what
        # --ids 7 finds; a JPEG is read too (lossy: only the run is checked).
        big = os.path.join(WORK, "q7_56.png")
        Image.fromarray(np.kron(self.images[7], np.ones((2, 2), np.uint8))).save(big)
        got = lists(run_json(2, "--db", self.db, "--model", self.ckpt, "--image", big, "--k", "4"))
        self.assertEqual(got, ref[:1])
        jpg = os.path.join(WORK, "q7.jpg")
        Image.fromarray(self.images[7]).save(jpg, quality=95)
        self.assertEqual(len(lists(run_json(1, "--db", self.db, "--model", self.ckpt, "--image", jpg, "--k", "4"))), 1)

    # ------------------------------------------------------------- append

    def test_append_and_ties(self):
        db = os.path.join(WORK, "db_append")
        shutil.rmtree(db, ignore_errors=True)
        shutil.copytree(self.db, db)
        before = {f: read_bytes(os.path.join(db, f)) for f in os.listdir(db) if f.startswith("shard-")}
        search(3, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--append")
        man, x, ids, labels, names = load_db(db)
        self.assertEqual(man["count"], N_DB + N_APPEND)
        self.assertEqual(len(man["shards"]), 5)
        self.assertEqual([s["first_id"] for s in man["shards"][2:]], [N_DB, N_DB + 100, N_DB + 200])
        self.assertEqual([s["spec"] for s in man["sources"]], [self.src, self.src_app])
        np.testing.assert_array_equal(ids, np.arange(N_DB + N_APPEND))
        for f, data in before.items():
            self.assertEqual(read_bytes(os.path.join(db, f)), data, f"{f} changed")
        # The appended images are the first N_APPEND again: identical vectors.
        np.testing.assert_array_equal(x[N_DB:], x[:N_APPEND])
        self.assertEqual(names[N_DB + 5], "dup-images-idx3-ubyte#5")
        res = lists(run_json(2, "--db", db, "--queries", self.qfile, "--k", "4"))
        self.assertEqual(res[13][0][:2], [0, N_DB])  # query = vector 0: exact tie, smaller id first
        self.assertEqual(res[13][1][:2], [0.0, 0.0])
        d = brute(self.q, x)
        for i, (ids_, dist) in enumerate(res):
            self.check_ranking(ids_, dist, d[i], 4, 1e-6)
        # Another model cannot append.
        p = search(0, "index", "--model", self.other_ckpt(), "--data", self.src_app, "--db", db, "--append",
                   check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--append refused", p.stderr)

    def test_empty_shard_and_rank_without_shard(self):
        tiny = write_idx(os.path.join(WORK, "tiny"), self.images[:2], self.labels[:2])
        db = os.path.join(WORK, "db_tiny")
        shutil.rmtree(db, ignore_errors=True)
        search(3, "index", "--model", self.ckpt, "--data", tiny, "--db", db)  # ranks get 0, 1, 1 images
        man = read_json(os.path.join(db, "manifest.json"))
        self.assertEqual([s["count"] for s in man["shards"]], [0, 1, 1])
        self.assertEqual(np.load(os.path.join(db, "shard-00000.vectors.npy")).shape, (0, 392))
        for p in (1, 2, 4):  # P = 4: rank 3 owns no shard
            res = lists(run_json(p, "--db", db, "--queries", self.qfile, "--k", "5"))
            self.assertEqual(sorted(res[13][0]), [0, 1])
            self.assertEqual(res[13][0][0], 0)

    # ---------------------------------------------------------------- eval

    def test_eval_precision(self):
        nq, k = 150, 10
        out = os.path.join(WORK, "eval.txt")
        search(2, "eval", "--db", self.db, "--model", self.ckpt, "--queries", self.src, "-k", str(k),
               "--max-queries", str(nq), "--baseline", "pixels,pca", "--out", out)
        lines = read_bytes(out).decode().splitlines()
        head = lines[1].split()
        self.assertEqual(head[:2], ["label", "queries"])
        self.assertEqual(head[2:], ["aesim(D=392)", "pixels(D=784)", "pca(D=392)"])
        mean = [l for l in lines if l.startswith("mean")][0].split()
        self.assertEqual(int(mean[1]), nq)
        got = [float(v) for v in mean[2:5]]
        pix = self.images[:N_DB].reshape(N_DB, -1).astype(np.float32) / np.float32(255)
        mu = pix.astype(np.float64).mean(0)
        cov = np.cov(pix.astype(np.float64), rowvar=False, bias=True)
        w, v = np.linalg.eigh(cov)
        proj = ((pix - mu) @ v[:, ::-1][:, :392]).astype(np.float32)

        def precision(vecs):
            d = brute(vecs[:nq], vecs)
            d[np.arange(nq), np.arange(nq)] = np.inf  # leave-one-out
            nn = np.argsort(d, axis=1, kind="stable")[:, :k]
            return float(np.mean(self.labels[:N_DB][nn] == self.labels[:nq, None]))

        self.assertAlmostEqual(got[0], precision(self.x), delta=1e-3)
        self.assertAlmostEqual(got[1], precision(pix), delta=1e-3)
        self.assertAlmostEqual(got[2], precision(proj), delta=0.02)
        per_label = [l.split() for l in lines[2:] if l.split()[0].isdigit()]
        self.assertEqual(sum(int(r[1]) for r in per_label), nq)

    def test_whiten(self):
        # index --whiten (P = 3): the stored vectors are the codes whitened
        # by the PCA of all indexed codes.  Reference independent of axis
        # signs and of rotations inside equal-variance subspaces: squared
        # distances between whitened vectors equal the Mahalanobis form
        # (x_i - x_j)^T (C + eps I)^-1 (x_i - x_j) (numpy, float64), with C
        # the covariance of the raw codes and eps = 1e-3 max eig(C).
        db = os.path.join(WORK, "db_whiten")
        shutil.rmtree(db, ignore_errors=True)
        search(3, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--whiten")
        man, y, ids, _, _ = load_db(db)
        self.assertEqual(man["transform"], "whiten")
        self.assertEqual(list(ids), list(range(N_DB)))
        x = self.x.astype(np.float64)
        cov = np.cov(x, rowvar=False, bias=True)
        eps = 1e-3 * np.linalg.eigvalsh(cov).max()
        prec = np.linalg.inv(cov + eps * np.eye(cov.shape[0]))
        rng = np.random.default_rng(11)
        i, j = rng.integers(0, N_DB, 300), rng.integers(0, N_DB, 300)
        dx = x[i] - x[j]
        ref = np.einsum("nd,de,ne->n", dx, prec, dx)
        got = ((y[i].astype(np.float64) - y[j]) ** 2).sum(1)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-3 * ref.mean())
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-3 * np.abs(y).max())
        # queries are whitened too: the query of an indexed image finds itself
        # first, and its neighbours are those of the Mahalanobis distance
        res = lists(run_json(2, "--db", db, "--model", self.ckpt, "--data", self.src, "--ids", "5,17,400", "--k", "4"))
        for qi, (rids, _) in zip((5, 17, 400), res):
            d = np.einsum("nd,de,ne->n", x - x[qi], prec, x - x[qi])
            self.assertEqual(rids[0], qi)
            self.assertEqual(sorted(rids), sorted(np.argsort(d, kind="stable")[:4].tolist()))
        # eval reads it; --append reuses the fitted transform, and refuses
        # --whiten on a database indexed without it
        out = os.path.join(WORK, "eval_whiten.json")
        nq = 80
        search(2, "eval", "--db", db, "--model", self.ckpt, "--queries", self.src, "--max-queries", str(nq), "--json",
               "--baseline", "pixels", "--out", out)
        ev = read_json(out)
        self.assertTrue(ev["whitened"])
        # the pixels baseline is whitened too: numpy whitening of the pixels
        pix = self.images[:N_DB].reshape(N_DB, -1).astype(np.float64) / 255
        c = np.cov(pix, rowvar=False, bias=True)
        w, v = np.linalg.eigh(c)
        m = v / np.sqrt(np.maximum(w, 0) + 1e-3 * w.max())
        for name, vecs, mat in (("aesim", x, prec), ("pixels", pix, None)):
            if mat is None:
                wv = (vecs - vecs.mean(0)) @ m
                d = brute(wv[:nq], wv)
            else:
                d = np.stack([np.einsum("nd,de,ne->n", vecs - vecs[i], mat, vecs - vecs[i]) for i in range(nq)])
            d[np.arange(nq), np.arange(nq)] = np.inf
            nn = np.argsort(d, axis=1, kind="stable")[:, :10]
            ref = float(np.mean(self.labels[:N_DB][nn] == self.labels[:nq, None]))
            self.assertAlmostEqual(ev["methods"][name]["precision"], ref, delta=0.02, msg=name)
        search(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--append")
        _, y2, _, _, _ = load_db(db)
        np.testing.assert_allclose(y2[N_DB:], y[:N_APPEND], rtol=1e-5, atol=1e-5)
        p = search(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", self.db, "--append", "--whiten",
                   check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("without --whiten", p.stderr)
        # older manifests (no "transform") still open: the main database
        self.assertNotIn("transform", self.man)

    def test_whiten_dim(self):
        # index --whiten-dim K (P = 2): whitening keeps the K axes of largest
        # variance and zeroes the rest.  Reference (numpy, float64,
        # independent of axis signs): squared distances between stored
        # vectors = sum over the top-K eigenvectors v_i of the codes'
        # covariance of (v_i . dx)^2 / (lambda_i + eps), eps = 1e-3 max
        # lambda (all D axes' eps, as with --whiten); the last D - K
        # coordinates are exactly 0; eval whitens the pixels baseline to K
        # directions the same way.
        K = 24
        db = os.path.join(WORK, "db_whiten_dim")
        shutil.rmtree(db, ignore_errors=True)
        search(2, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--whiten-dim", str(K))
        man, y, _, _, _ = load_db(db)
        self.assertEqual((man["transform"], man["whiten_dim"], man["dim"]), ("whiten", K, self.x.shape[1]))
        self.assertFalse(np.any(y[:, K:]))
        x = self.x.astype(np.float64)
        lam, v = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
        top = v[:, ::-1][:, :K] / np.sqrt(np.maximum(lam[::-1][:K], 0) + 1e-3 * lam.max())
        rng = np.random.default_rng(12)
        i, j = rng.integers(0, N_DB, 300), rng.integers(0, N_DB, 300)
        ref = (((x[i] - x[j]) @ top) ** 2).sum(1)
        got = ((y[i].astype(np.float64) - y[j]) ** 2).sum(1)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-3 * ref.mean())
        # eval: the codes and the pixels baseline, both whitened to K
        out = os.path.join(WORK, "eval_whiten_dim.json")
        nq = 80
        search(2, "eval", "--db", db, "--model", self.ckpt, "--queries", self.src, "--max-queries", str(nq), "--json",
               "--baseline", "pixels", "--out", out)
        ev = read_json(out)
        self.assertEqual((ev["whitened"], ev["whiten_dim"]), (True, K))
        self.assertEqual([ev["methods"][m]["whiten_dim"] for m in ("aesim", "pixels")], [K, K])
        pix = self.images[:N_DB].reshape(N_DB, -1).astype(np.float64) / 255
        pl, pv = np.linalg.eigh(np.cov(pix, rowvar=False, bias=True))
        ptop = pv[:, ::-1][:, :K] / np.sqrt(np.maximum(pl[::-1][:K], 0) + 1e-3 * pl.max())
        for name, wv in (("aesim", (x - x.mean(0)) @ top), ("pixels", (pix - pix.mean(0)) @ ptop)):
            d = brute(wv[:nq], wv)
            d[np.arange(nq), np.arange(nq)] = np.inf
            nn = np.argsort(d, axis=1, kind="stable")[:, :10]
            ref_p = float(np.mean(self.labels[:N_DB][nn] == self.labels[:nq, None]))
            self.assertAlmostEqual(ev["methods"][name]["precision"], ref_p, delta=0.02, msg=name)
        # --append keeps the transform, also with the same --whiten-dim K;
        # another K, --whiten-dim on an unwhitened database, K >= D, K = 0
        # and damaged manifests are refused with the value named
        search(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--append")
        search(2, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--append", "--whiten-dim", str(K))
        man2, y2, _, _, _ = load_db(db)
        self.assertEqual((man2["whiten_dim"], man2["count"]), (K, N_DB + 2 * N_APPEND))
        np.testing.assert_allclose(y2[N_DB:N_DB + N_APPEND], y[:N_APPEND], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y2[N_DB + N_APPEND:], y[:N_APPEND], rtol=1e-5, atol=1e-5)
        p = search(1, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--append", "--whiten-dim",
                   "8", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--append --whiten-dim 8: %s keeps %d whitened directions" % (db, K), p.stderr)
        p = search(1, "index", "--model", self.ckpt, "--data", self.src_app, "--db", self.db, "--append",
                   "--whiten-dim", str(K), check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--append --whiten-dim: %s was indexed without --whiten (hint: drop --whiten-dim" % self.db,
                      p.stderr)
        self.assertEqual(read_json(os.path.join(self.db, "manifest.json"))["count"], N_DB)
        D = self.x.shape[1]
        for bad, msg in ((str(D), "K must be below D"), ("0", "--whiten-dim: '0' is not an integer in 1..")):
            other = os.path.join(WORK, "db_whiten_dim_bad")
            shutil.rmtree(other, ignore_errors=True)
            p = search(1, "index", "--model", self.ckpt, "--data", self.src_app, "--db", other, "--whiten-dim", bad,
                       check=False)
            self.assertNotEqual(p.returncode, 0, bad)
            self.assertIn(msg, p.stderr)
            self.assertFalse(os.path.exists(os.path.join(other, "manifest.json")))
        # an earlier error (the --db holds a database) is kept, not replaced
        # by that of K >= D
        p = search(1, "index", "--model", self.ckpt, "--data", self.src_app, "--db", db, "--whiten-dim", str(D),
                   check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("already holds a database", p.stderr)
        # damaged manifests: "whiten_dim" without "transform", equal to D,
        # 0, and a string
        man_path = os.path.join(db, "manifest.json")
        good = read_bytes(man_path)
        try:
            for key, value in (("transform", None), ("whiten_dim", D), ("whiten_dim", 0), ("whiten_dim", str(K))):
                m = json.loads(good)
                if value is None:
                    del m[key]
                else:
                    m[key] = value
                with open(man_path, "w") as f:
                    json.dump(m, f)
                p = search(1, "query", "--db", db, "--model", self.ckpt, "--data", self.src, "--ids", "1", "--k", "2",
                           check=False)
                self.assertNotEqual(p.returncode, 0, (key, value))
                self.assertIn("'whiten_dim' must be an integer in 1 .. %d" % (D - 1), p.stderr, (key, value))
        finally:
            with open(man_path, "wb") as f:
                f.write(good)
        # codes wider than the pixels (D = 2 x 28 x 28 = 1,568), K = 1,000:
        # eval whitens the 784-dimensional baselines in all 784 directions
        # and says so (JSON per method, the table's header, stderr)
        wide = os.path.join(WORK, "run_wide")
        if not os.path.exists(os.path.join(wide, "checkpoint.npz")):
            mpirun(1, TRAIN, "--data", MNIST, "--arch", "c2 | c1", "--max-steps", "2", "--batch-size", "16", "--seed",
                   "7", "--threads", "1", "--out", wide, "--grid", "0")
        db = os.path.join(WORK, "db_whiten_dim_wide")
        shutil.rmtree(db, ignore_errors=True)
        wckpt = os.path.join(wide, "checkpoint.npz")
        search(2, "index", "--model", wckpt, "--data", self.src_app, "--db", db, "--whiten-dim", "1000")
        args = ("eval", "--db", db, "--model", wckpt, "--queries", self.src_app, "--max-queries", "20", "--baseline",
                "pixels,pca")
        p = search(2, *args, "--json")
        ev = json.loads(p.stdout)
        self.assertEqual(ev["whiten_dim"], 1000)
        self.assertEqual({m: (v["dim"], v["whiten_dim"]) for m, v in ev["methods"].items()},
                         {"aesim": (1568, 1000), "pixels": (784, 784), "pca": (784, 784)})
        self.assertIn("the pixels baseline has D = 784 < the database's whiten_dim 1000", p.stderr)
        p = search(2, *args)
        self.assertIn("| whitened, 1000 directions (baselines too, pixels all 784, pca all 784) |", p.stdout)

    def test_eval_map_nn1_json(self):
        # mAP@k and 1-NN accuracy (text table and --json) against numpy:
        # AP@k = sum_j rel_j * precision@j / (relevant in the top k)
        nq, k = 120, 10
        out = os.path.join(WORK, "eval.json")
        search(2, "eval", "--db", self.db, "--model", self.ckpt, "--queries", self.src, "-k", str(k),
               "--max-queries", str(nq), "--baseline", "pixels", "--json", "--out", out)
        res = read_json(out)
        self.assertEqual((res["k"], res["queries"], res["leave_one_out"]), (k, nq, True))
        pix = self.images[:N_DB].reshape(N_DB, -1).astype(np.float32) / np.float32(255)
        for name, vecs in (("aesim", self.x), ("pixels", pix)):
            d = brute(vecs[:nq], vecs)
            d[np.arange(nq), np.arange(nq)] = np.inf  # leave-one-out
            nn = np.argsort(d, axis=1, kind="stable")[:, :k]
            rel = (self.labels[:N_DB][nn] == self.labels[:nq, None]).astype(np.float64)
            prec_at = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
            hits = rel.sum(1)
            ap = np.where(hits > 0, (rel * prec_at).sum(1) / np.maximum(hits, 1), 0.0)
            m = res["methods"][name]
            self.assertAlmostEqual(m["precision"], rel.mean(), delta=1e-3, msg=name)
            self.assertAlmostEqual(m["map"], ap.mean(), delta=2e-3, msg=name)
            self.assertAlmostEqual(m["nn1_accuracy"], rel[:, 0].mean(), delta=1e-3, msg=name)
            self.assertGreater(m["map"], m["precision"] - 0.2, name)  # not a constant
            for lab, row in m["per_label"].items():
                sel = self.labels[:nq] == int(lab)
                self.assertEqual(row["queries"], int(sel.sum()))
                self.assertAlmostEqual(row["precision"], rel[sel].mean(), delta=1e-3)
        # the text table carries the same two rows
        txt = os.path.join(WORK, "eval_map.txt")
        search(2, "eval", "--db", self.db, "--model", self.ckpt, "--queries", self.src, "-k", str(k),
               "--max-queries", str(nq), "--baseline", "pixels", "--out", txt)
        lines = read_bytes(txt).decode().splitlines()
        row = [l for l in lines if l.startswith(f"mAP@{k}")][0].split()
        self.assertAlmostEqual(float(row[1]), res["methods"]["aesim"]["map"], delta=1e-4)
        row = [l for l in lines if l.startswith("1-NN accuracy")][0].split()
        self.assertAlmostEqual(float(row[2]), res["methods"]["aesim"]["nn1_accuracy"], delta=1e-4)

    # ----------------------------------------------------------- bad input

    def other_ckpt(self):
        out = os.path.join(WORK, "run_other")
        if not os.path.exists(os.path.join(out, "checkpoint.npz")):
            mpirun(1, TRAIN, "--data", MNIST, "--max-steps", "1", "--batch-size", "16", "--seed", "99", "--threads",
                   "1", "--out", out, "--grid", "0")
        return os.path.join(out, "checkpoint.npz")

    def fails(self, np_, args, *needles, code=1):
        p = search(np_, *args, check=False, timeout=60)
        self.assertEqual(p.returncode, code, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        for n in needles:
            self.assertIn(n, p.stderr, f"{args}: message lacks {n!r}:\n{p.stderr}")
        self.assertEqual(p.stderr.count("aesim-search: error:"), 1, p.stderr)
        self.assertNotIn("Segmentation", p.stderr)
        return p

    def damaged_copy(self, name):
        db = os.path.join(WORK, name)
        shutil.rmtree(db, ignore_errors=True)
        shutil.copytree(self.db, db)
        return db

    def test_missing_database(self):
        self.fails(2, ["query", "--db", os.path.join(WORK, "nope"), "--queries", self.qfile, "--k", "3"], "nope")

    def test_corrupt_and_missing_shard(self):
        db = self.damaged_copy("db_trunc")
        path = os.path.join(db, "shard-00001.vectors.npy")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
        self.fails(2, ["query", "--db", db, "--queries", self.qfile, "--k", "3"], "shard-00001.vectors.npy")
        db = self.damaged_copy("db_missing")
        os.remove(os.path.join(db, "shard-00000.ids.npy"))
        self.fails(3, ["query", "--db", db, "--queries", self.qfile, "--k", "3"], "shard-00000.ids.npy")
        db = self.damaged_copy("db_badjson")
        with open(os.path.join(db, "manifest.json"), "a") as f:
            f.write("{")
        self.fails(0, ["query", "--db", db, "--queries", self.qfile, "--k", "3"], "manifest.json")

    def test_manifest_dim_differs_from_model(self):
        db = self.damaged_copy("db_dim")
        man = read_json(os.path.join(db, "manifest.json"))
        man["dim"] = 100
        with open(os.path.join(db, "manifest.json"), "w") as f:
            json.dump(man, f)
        self.fails(2, ["query", "--db", db, "--model", self.ckpt, "--data", self.src, "--ids", "0", "--k", "3"],
                   "D = 392", "D = 100")

    def test_manifest_input_shape_differs_from_model(self):
        # A hand-edited input_shape is refused before any image is converted
        # to it (a huge one used to end serve in a failed malloc).
        db = self.damaged_copy("db_shape")
        man = read_json(os.path.join(db, "manifest.json"))
        man["model"]["input_shape"] = [3, 100000, 100000]
        with open(os.path.join(db, "manifest.json"), "w") as f:
            json.dump(man, f)
        self.fails(2, ["query", "--db", db, "--model", self.ckpt, "--data", self.src, "--ids", "0", "--k", "3"],
                   "records input images of 3x100000x100000", "takes 1x28x28")

    def test_other_model(self):
        self.fails(0, ["query", "--db", self.db, "--model", self.other_ckpt(), "--data", self.src, "--ids", "0",
                       "--k", "3"], "not the one that built the database")

    def test_usage_errors(self):
        self.fails(2, ["query", "--db", self.db, "--queries", self.qfile, "--k", "0"], "--k", code=2)
        self.fails(0, ["query", "--db", self.db, "--queries", self.qfile, "--k", "3", "--frobnicate"], "--frobnicate",
                   code=2)
        self.fails(0, ["frob"], "unknown command", code=2)
        self.fails(0, ["query", "--db", self.db, "--k", "3"], "exactly one query input", code=2)
        self.fails(0, ["index", "--db", self.db, "--model", self.ckpt, "--data", self.src, "--label", "3"],
                   "not an option of index", code=2)
        p = subprocess.run([SEARCH, "--help"], env=ENV, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0)
        for opt in ("index", "query", "eval", "--db", "--model", "--k", "--image", "--radius", "--baseline"):
            self.assertIn(opt, p.stdout)

    def test_index_refuses_existing_database_and_bad_vectors(self):
        self.fails(0, ["index", "--model", self.ckpt, "--data", self.src, "--db", self.db], "already holds a database")
        # Weights scaled by 1e30 overflow to Inf in the encoder: refused, naming the image.
        ck = dict(np.load(self.ckpt))
        for key in ck:
            if key.startswith("conv") and key.endswith("weight"):
                ck[key] = (ck[key] * np.float32(1e30)).astype(np.float32)
        if "meta.crc32" in ck:  # checkpoint format 2: per-member CRC-32 (ckpt.h), last member
            keys = [k for k in np.load(self.ckpt).files if k != "meta.crc32"]
            ck["meta.crc32"] = np.array([zlib.crc32(ck[k].tobytes()) for k in keys], np.uint32)
        bad = os.path.join(WORK, "inf_ckpt.npz")
        np.savez(bad, **ck)
        db = os.path.join(WORK, "db_inf")
        shutil.rmtree(db, ignore_errors=True)
        self.fails(2, ["index", "--model", bad, "--data", self.src, "--db", db], "NaN or Inf", "m2000-images-idx3-ubyte#0")
        self.assertFalse(os.path.exists(os.path.join(db, "manifest.json")))


if __name__ == "__main__":
    import sys
    sys.path.insert(0, HERE)
    unittest.main(verbosity=2)
