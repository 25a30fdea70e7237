#!/usr/bin/python3
"""Inputs a new user gives the tools, and what the tools make of them (issue
13, items 6-11 and 16), run through the programs themselves; references are
numpy (image counts, rows, pixel means, which file is missing) and Pillow
(the images written), never our own code.

  2  aesim-pack --out never replaces an existing store unless --overwrite
     is given (the file is left byte for byte as it was); the same for
     aesim-search: query --out/--sheet and eval --out files, train-ivf over
     an existing IVF index, index --append --ivf on one;
  6  a text file that is not a list, given as --data: the error says what was
     guessed (a list file), why (its name), and names the line and its text;
  7  a failed `aesim-search index` leaves nothing behind: no new --db folder
     (nor the parents it created), and an existing database unchanged;
  8  numbered batch files with one missing (train_data_batch_7.npz of 1..10)
     are refused by training, packing and indexing alike, naming the file;
     --allow-gaps takes the others with a warning (counts from numpy);
  9  the `source` column names the real file and row
     (train_data_batch_7.npz#1) for a folder of batches or a wildcard, and
     FOLDER/REL/NAME.png for image folders;
 10  index --data and query --image convert images of another size and
     channel count by the same rule: each indexed image queried with --image
     finds itself at distance exactly 0; both report how many were resized;
 11  query images of the opposite polarity (255 - x) get a warning, the
     originals do not; the manifest's pixel_mean is numpy's mean;
 16  --help texts: the kinds of --data in aesim-search and aesim-pack, the
     allreduce wording of aesim-train, aesim-pack without arguments.
"""
import csv
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("AESIM_BUILD", "build"))
TRAIN = os.path.join(BUILD, "aesim-train")
SEARCH = os.path.join(BUILD, "aesim-search")
PACK = os.path.join(BUILD, "aesim-pack")
FMNIST = "/usr/share/datasets/fashion-mnist"
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
for k in list(ENV):  # one process, no mpirun: no MPI environment leaks in
    if k.startswith(("OMPI_COMM_WORLD", "PMIX_RANK")):
        del ENV[k]
TIMEOUT = 300


def run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)


def read_idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4:4 + 4 * ndim], ">u4")
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(tuple(int(d) for d in dims))


def tree(path):
    """Every file and folder under path (relative), with file sizes; not the
    writers' lock files (.aesim-db.lock, .aesim-train.lock: empty of data,
    they name the last holder and stay, as flock(2) locks must)."""
    out = {}
    for base, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), path)] = "dir"
        for f in files:
            if f in (".aesim-db.lock", ".aesim-train.lock"):
                continue
            p = os.path.join(base, f)
            out[os.path.relpath(p, path)] = os.path.getsize(p)
    return out


class Inputs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_inputs.", dir=os.environ.get("AESIM_TEST_TMP"))
        x = read_idx(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"))
        cls.x, cls.y = x[:400].copy(), y[:400].astype(np.int64)
        cls.train_npz = os.path.join(cls.tmp, "fm.npz")
        np.savez(cls.train_npz, images=cls.x[:200], labels=cls.y[:200])
        # A tiny encoder of the mnist preset (28x28x1, D = 392): 2 steps.
        cls.ckpt_dir = os.path.join(cls.tmp, "run")
        r = run(TRAIN, "--data", cls.train_npz, "--val-fraction", "0.1", "--max-steps", "2", "--batch-size", "16",
                "--out", cls.ckpt_dir, "--progress", "lines")
        assert r.returncode == 0, r.stderr
        cls.ckpt = os.path.join(cls.ckpt_dir, "checkpoint.npz")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def batches(self, folder, numbers, per=6):
        """train_data_batch_K.npz files (downsampled-ImageNet layout, grey
        28x28 rows) holding consecutive test images; returns {K: (x, y)}."""
        os.makedirs(folder, exist_ok=True)
        out = {}
        for i, k in enumerate(numbers):
            xs, ys = self.x[200 + i * per:200 + (i + 1) * per], self.y[200 + i * per:200 + (i + 1) * per]
            np.savez(os.path.join(folder, "train_data_batch_%d.npz" % k), data=xs.reshape(per, -1), labels=ys)
            out[k] = (xs, ys)
        return out

    # ---- 6 ----------------------------------------------------------------
    def test_text_file_is_not_silently_a_list(self):
        notes = self.path("notes.txt")
        lines = ["# my notes", "", "Training ran fine on 2 nodes", "see the log"]
        with open(notes, "w") as f:
            f.write("\n".join(lines) + "\n")
        first = next(i for i, l in enumerate(lines, 1) if l.strip() and not l.startswith("#"))
        for cmd in ([TRAIN, "--data", notes, "--max-steps", "1", "--out", self.path("r6")],
                    [PACK, "--out", self.path("p6.npz"), notes],
                    [SEARCH, "index", "--model", self.ckpt, "--data", notes, "--db", self.path("db6")]):
            r = run(*cmd)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("guessed to be a list file", r.stderr)
            self.assertIn("name ends in .txt", r.stderr)
            self.assertIn("line %d ('%s')" % (first, lines[first - 1]), r.stderr)
            self.assertIn("npz:PATH", r.stderr)  # how to say what it is
            self.assertEqual(r.stderr.count("error"), 1, r.stderr)
        self.assertFalse(os.path.exists(self.path("p6.npz")))

    # ---- 7 ----------------------------------------------------------------
    def test_failed_index_leaves_nothing(self):
        top = self.path("new7")
        db = os.path.join(top, "sub", "db")
        for data in (self.path("missing.npz"), self.path("notes7.txt")):
            if data.endswith(".txt"):
                with open(data, "w") as f:
                    f.write("not an image\n")
            r = run(SEARCH, "index", "--model", self.ckpt, "--data", data, "--db", db)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertFalse(os.path.exists(top), "a failed index left %s behind" % top)
        # An existing database: a refused or failed run changes nothing.
        good = self.path("db7")
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", self.train_npz, "--db", good)
        self.assertEqual(r.returncode, 0, r.stderr)
        before = tree(good)
        for args in (["--data", self.train_npz], ["--data", self.path("missing.npz"), "--append"]):
            r = run(SEARCH, "index", "--model", self.ckpt, "--db", good, *args)
            self.assertNotEqual(r.returncode, 0)
            self.assertEqual(tree(good), before)
        # A failure after some shard files were written (the names file
        # cannot be replaced: a folder holds its name) removes them again.
        bad = self.path("db7b")
        os.makedirs(os.path.join(bad, "shard-00000.names.txt"))
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", self.train_npz, "--db", bad)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("shard-00000.names.txt", r.stderr)
        self.assertEqual(tree(bad), {"shard-00000.names.txt": "dir"})

    # ---- 8 ----------------------------------------------------------------
    def test_gap_in_numbered_batches(self):
        full = self.path("gap8")
        numbers = [k for k in range(1, 11) if k != 7]
        parts = self.batches(full, numbers)
        n_present = sum(len(parts[k][0]) for k in numbers)
        wildcard = os.path.join(full, "train_data_batch_*.npz")
        arch = ["--arch", "c4 p | u c1", "--max-steps", "1", "--batch-size", "8", "--progress", "lines"]
        for data in (full, wildcard):
            runs = {
                "train": run(TRAIN, "--data", data, "--out", self.path("r8"), *arch),
                "pack": run(PACK, "--out", self.path("p8.npz"), data),
                "index": run(SEARCH, "index", "--model", self.ckpt, "--data", data, "--db", self.path("db8")),
            }
            for what, r in runs.items():
                self.assertNotEqual(r.returncode, 0, what + ": " + r.stderr)
                self.assertIn("train_data_batch_7.npz", r.stderr, what)
                self.assertIn("missing", r.stderr, what)
                self.assertIn("--allow-gaps", r.stderr, what)
            self.assertFalse(os.path.exists(self.path("p8.npz")))
            self.assertFalse(os.path.exists(self.path("db8")))
        # --allow-gaps: the others, with a warning naming the missing file.
        r = run(PACK, "--allow-gaps", "--out", self.path("p8.npz"), full)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"warning: .*train_data_batch_7\.npz")
        store = np.load(self.path("p8.npz"))
        want = np.concatenate([parts[k][0] for k in numbers])
        self.assertEqual(store["images"].shape, (n_present, 1, 28, 28))
        self.assertTrue(np.array_equal(store["images"][:, 0], want))
        r = run(SEARCH, "index", "--allow-gaps", "--model", self.ckpt, "--data", wildcard, "--db", self.path("db8"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"warning: .*train_data_batch_7\.npz")
        with open(self.path("db8", "manifest.json")) as f:
            self.assertEqual(json.load(f)["count"], n_present)
        r = run(TRAIN, "--data", full + "?allow_gaps=1", "--out", self.path("r8b"), *arch)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr + r.stdout, r"warning: .*train_data_batch_7\.npz")
        r = run(TRAIN, "--allow-gaps", "--data", wildcard, "--out", self.path("r8c"), *arch)
        self.assertEqual(r.returncode, 0, r.stderr)
        # A set without a gap (1..3) and a lone numbered file are fine.
        ok = self.path("nogap8")
        self.batches(ok, [1, 2, 3])
        self.assertEqual(run(PACK, "--out", self.path("p8c.npz"), ok).returncode, 0)
        lone = self.path("lone8")
        self.batches(lone, [5])
        self.assertEqual(run(PACK, "--out", self.path("p8d.npz"), lone).returncode, 0)
        # A set starting above 1 lacks its first files; zero-padded numbers
        # are named as written; long digit runs (dates) are no sequence.
        late = self.path("late8")
        self.batches(late, [3, 4])
        r = run(PACK, "--out", self.path("p8e.npz"), late)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("train_data_batch_1.npz, train_data_batch_2.npz are missing", r.stderr)
        pad = self.path("pad8")
        os.makedirs(pad)
        for k in ("01", "03", "20240101", "20240301"):
            np.save(os.path.join(pad, "part_%s.npy" % k), self.x[:2])
        r = run(PACK, "--out", self.path("p8f.npz"), os.path.join(pad, "part_0*.npy"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("part_02.npy is missing", r.stderr)
        r = run(PACK, "--out", self.path("p8g.npz"), os.path.join(pad, "part_2024*.npy"))
        self.assertEqual(r.returncode, 0, r.stderr)

    # ---- 2 (the same trap in aesim-pack) ------------------------------------
    def test_pack_never_replaces_a_store_unasked(self):
        out = self.path("p2.npz")
        r = run(PACK, "--out", out, self.train_npz)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, "rb") as f:
            before = f.read()
        other = self.path("p2src.npz")
        np.savez(other, images=self.x[200:210], labels=self.y[200:210])
        r = run(PACK, "--out", out, other)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("p2.npz already exists", r.stderr)
        self.assertIn("--overwrite", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), before, "the existing store was changed")
        r = run(PACK, "--overwrite", "--out", out, other)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(np.array_equal(np.load(out)["images"][:, 0], self.x[200:210]))

    def refused(self, r, what):
        """One error line naming `what` and --overwrite, exit 1."""
        self.assertEqual(r.returncode, 1, r.stderr)
        err = r.stderr.strip().splitlines()
        self.assertEqual(len(err), 1, r.stderr)
        self.assertIn(what, err[0])
        self.assertIn("--overwrite", err[0])

    def test_search_never_replaces_outputs_unasked(self):
        db = self.path("db2")
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", self.train_npz, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        query = ["query", "--model", self.ckpt, "--db", db, "--k", "3", "--data", self.train_npz, "--ids", "0-1"]
        ref = run(SEARCH, *query)
        self.assertEqual(ref.returncode, 0, ref.stderr)
        keep = b"another run's results\n"
        out, sheet, table = self.path("q2.tsv"), self.path("q2.png"), self.path("e2.json")
        for f in (out, sheet, table):
            with open(f, "wb") as fh:
                fh.write(keep)
        evalc = ["eval", "--model", self.ckpt, "--db", db, "--queries", self.train_npz, "--max-queries", "8", "--json"]
        for args, f, opt in ((query + ["--out", out], out, "--out"), (query + ["--sheet", sheet], sheet, "--sheet"),
                             (evalc + ["--out", table], table, "--out")):
            r = run(SEARCH, *args)
            self.refused(r, "%s already exists" % os.path.basename(f))
            self.assertIn("another " + opt, r.stderr)
            with open(f, "rb") as fh:
                self.assertEqual(fh.read(), keep, "%s was changed" % f)
            r = run(SEARCH, *args, "--overwrite")
            self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as fh:
            self.assertEqual(fh.read(), ref.stdout)
        with Image.open(sheet) as im:
            self.assertEqual(im.format, "PNG")
        with open(table) as fh:
            self.assertIn("aesim", json.load(fh)["methods"])
        # --out and --sheet on one file: a usage error, before any work.
        r = run(SEARCH, *query, "--out", out, "--sheet", out, "--overwrite")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("same file", r.stderr)
        # A folder is never replaced, even with --overwrite.
        r = run(SEARCH, *query, "--out", db, "--overwrite")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("not a regular file", r.stderr)
        # train-ivf over an existing IVF index, and index --append --ivf on one.
        r = run(SEARCH, "train-ivf", "--db", db, "--nlist", "4")
        self.assertEqual(r.returncode, 0, r.stderr)
        before = tree(db)
        with open(os.path.join(db, "manifest.json")) as fh:
            manifest = fh.read()
        r = run(SEARCH, "train-ivf", "--db", db, "--nlist", "8")
        self.refused(r, "already has an IVF index (nlist 4")
        r = run(SEARCH, "index", "--model", self.ckpt, "--db", db, "--data", self.train_npz, "--append", "--ivf", "8")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("already has an IVF index (nlist 4)", r.stderr)
        self.assertIn("drop --ivf", r.stderr)
        self.assertEqual(tree(db), before)
        with open(os.path.join(db, "manifest.json")) as fh:
            self.assertEqual(fh.read(), manifest)
        r = run(SEARCH, "train-ivf", "--db", db, "--nlist", "8", "--overwrite")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(db, "manifest.json")) as fh:
            self.assertEqual(json.load(fh)["ivf"]["nlist"], 8)
        old = [f for f in before if f.startswith("ivf-") or ".ivf-" in f]
        self.assertTrue(old and not any(os.path.exists(os.path.join(db, f)) for f in old), old)

    # ---- 9 ----------------------------------------------------------------
    def query_sources(self, db, data, ids):
        out = self.path("q9_%s.tsv" % os.path.basename(db))  # one results file per database
        r = run(SEARCH, "query", "--model", self.ckpt, "--db", db, "--data", data, "--ids", ids, "--k", "1", "--out",
                out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            return [row["source"] for row in csv.DictReader(f, delimiter="\t")]

    def test_source_names_the_real_file_and_row(self):
        full = self.path("full9")
        parts = self.batches(full, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], per=3)
        # numpy reference: global index -> (file, row)
        where = [("train_data_batch_%d.npz" % k, row) for k in range(1, 11) for row in range(len(parts[k][0]))]
        for data in (full, os.path.join(full, "train_data_batch_*.npz")):
            db = self.path("db9_%d" % len(data))
            r = run(SEARCH, "index", "--model", self.ckpt, "--data", data, "--db", db)
            self.assertEqual(r.returncode, 0, r.stderr)
            names = []
            with open(os.path.join(db, "shard-00000.names.txt")) as f:
                names = f.read().splitlines()
            self.assertEqual(names, ["%s#%d" % w for w in where])
            # Each image queried by id finds itself: the source column names
            # its own file and row (train_data_batch_7.npz#1).
            ids = [19, 0, 29]
            self.assertEqual(self.query_sources(db, data, ",".join(map(str, ids))),
                             ["%s#%d" % where[i] for i in ids])
        self.assertEqual(where[19], ("train_data_batch_7.npz", 1))
        # An image folder: FOLDER/CLASS/FILE.
        photos = self.path("photos9")
        rel = []
        for cls in ("cat", "dog"):
            os.makedirs(os.path.join(photos, cls))
            for j in range(2):
                Image.fromarray(self.x[300 + len(rel)]).save(os.path.join(photos, cls, "x%d.png" % j))
                rel.append("photos9/%s/x%d.png" % (cls, j))
        db = self.path("db9_photos")
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", photos, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.query_sources(db, photos, "3,0"), [rel[3], rel[0]])

    # ---- 10 ---------------------------------------------------------------
    def test_same_resizing_rule_for_index_and_query(self):
        folder = self.path("sizes10")
        os.makedirs(folder)
        files = []
        # RGB, larger, other aspect ratios, one of the model's own size.
        for i, (w, h, mode) in enumerate([(56, 42, "RGB"), (40, 40, "L"), (28, 28, "L"), (33, 61, "RGB"),
                                          (84, 84, "RGBA")]):
            im = Image.fromarray(self.x[320 + i]).convert(mode).resize((w, h), Image.BILINEAR)
            p = os.path.join(folder, "im%d.png" % i)
            im.save(p)
            files.append(p)
        n_resized = 0
        for p in files:
            with Image.open(p) as im:
                n_resized += im.size != (28, 28)
        db = self.path("db10")
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", folder, "--db", db)
        self.assertEqual(r.returncode, 0, "index refused images of another size: " + r.stderr)
        self.assertIn("%d of %d images resized to 28x28" % (n_resized, len(files)), r.stderr)
        out = self.path("q10.tsv")
        r = run(SEARCH, "query", "--model", self.ckpt, "--db", db, "--k", "1", "--out", out, "--image", *files)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("%d of %d --image files resized to 28x28" % (n_resized, len(files)), r.stderr)
        with open(out) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        # Same conversion, same encoder: every file finds its own vector.
        self.assertEqual([int(row["id"]) for row in rows], list(range(len(files))))
        self.assertEqual([float(row["distance"]) for row in rows], [0.0] * len(files))

    # ---- 11 ---------------------------------------------------------------
    def test_polarity_warning_and_pixel_mean(self):
        db = self.path("db11")
        r = run(SEARCH, "index", "--model", self.ckpt, "--data", self.train_npz, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(db, "manifest.json")) as f:
            mean = json.load(f)["sources"][0]["pixel_mean"]
        want = (self.x[:200].astype(np.float64) / 255.0).mean()
        self.assertAlmostEqual(mean, want, delta=1e-9 + 1e-6 * want)
        normal, inverted = [], []
        for i in range(8):
            img = self.x[350 + i]
            for lst, arr, tag in ((normal, img, "n"), (inverted, 255 - img, "i")):
                p = self.path("q11_%s%d.png" % (tag, i))
                Image.fromarray(arr).save(p)
                lst.append(p)
        r = run(SEARCH, "query", "--model", self.ckpt, "--db", db, "--k", "1", "--image", *inverted)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("opposite polarity", r.stderr)
        qpix = []
        for p in inverted:
            with Image.open(p) as im:
                qpix.append(np.asarray(im, np.float64) / 255.0)
        qmean = np.mean(qpix)
        self.assertIn("%.3f" % qmean, r.stderr)
        r = run(SEARCH, "query", "--model", self.ckpt, "--db", db, "--k", "1", "--image", *normal)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("polarity", r.stderr)
        # A manifest without pixel_mean (older databases) still works.
        with open(os.path.join(db, "manifest.json")) as f:
            man = json.load(f)
        del man["sources"][0]["pixel_mean"]
        with open(os.path.join(db, "manifest.json"), "w") as f:
            json.dump(man, f)
        r = run(SEARCH, "query", "--model", self.ckpt, "--db", db, "--k", "1", "--image", *inverted)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("polarity", r.stderr)

    # ---- 16 ---------------------------------------------------------------
    def test_help_texts(self):
        with open(os.path.join(ROOT, "datasets", "README.md")) as f:
            readme = f.read()
        kinds = re.search(r"Name it when a guess is wrong:\s*`([^`]+)`", readme).group(1).split()
        self.assertIn("folder", kinds)
        for prog in ([SEARCH, "--help"], [PACK, "--help"]):
            r = run(*prog)
            self.assertEqual(r.returncode, 0)
            for k in kinds:
                self.assertRegex(r.stdout, r"\b%s\b" % k, "%s --help does not list --data kind %s" % (prog[0], k))
            self.assertIn("--allow-gaps", r.stdout)
        r = run(TRAIN, "--help")
        self.assertNotIn("averaged with MPI_Allreduce every step", r.stdout)
        self.assertIn("MPI_Iallreduce", r.stdout)
        self.assertIn("--allow-gaps", r.stdout)
        r = run(PACK)
        self.assertEqual(r.returncode, 2)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("no SOURCE given", lines[0])
        self.assertIn("--out", lines[0])
        self.assertIn("--help", lines[0])


if __name__ == "__main__":
    unittest.main()
