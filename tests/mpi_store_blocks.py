#!/usr/bin/python3
"""aesim-pack stores keep a CRC-32 per block of records, checked when the
records are read (issue 18, item 1; include/data/sample_store.h).

References outside aesim: numpy writes the source npz and reads the store
back (numpy.load), zlib.crc32 of the records' bytes gives every block's CRC,
Python's zipfile tests every member's CRC as any zip tool would.
- the store's block_crc member holds zlib.crc32 of each block of
  R = max(1, 4096 // image_bytes) records (meta.json crc_block = R), for a
  1x28x28 (R = 5, last block shorter) and a 3x32x32 store (R = 1);
- training and index on an intact store do not read the whole store before
  the first step (no whole-member check in the log) and train as with
  ?verify=1 (the same loss);
- one byte flipped in one record: aesim-train with 2 ranks stops with one
  error naming the file, the records of the block and the CRC zlib computes
  for the damaged block, exit non-zero, no checkpoint; aesim-search index
  refuses it and leaves no database; ?verify=1 refuses it at open (whole
  member).
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import zipfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("AESIM_BUILD", "build"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2"]
STORE_DATA_ALIGN = 4096


def run(cmd, timeout=300):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


class StoreBlocks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mpi_store_blocks.", dir=os.environ.get("AESIM_TEST_TMP"))
        rng = np.random.default_rng(1818)
        cls.stores = {}
        for name, shape in (("gray", (503, 28, 28)), ("rgb", (130, 3, 32, 32))):
            src = os.path.join(cls.tmp, name + ".npz")
            np.savez(src, images=rng.integers(0, 256, shape, dtype=np.uint8),
                     labels=rng.integers(0, 10, shape[0]))
            out = os.path.join(cls.tmp, name + "_store.npz")
            r = run(MPIRUN + [os.path.join(BUILD, "aesim-pack"), "--out", out, src])
            assert r.returncode == 0, r.stdout + r.stderr
            cls.stores[name] = out

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def damaged(self, name, record, byte=7):
        """A copy of store `name` with one bit flipped in `record`."""
        good = self.stores[name]
        img = np.load(good)["images"]
        rec_bytes = int(np.prod(img.shape[1:]))
        bad = os.path.join(self.tmp, "%s_bad%d.npz" % (name, record))
        shutil.copy(good, bad)
        with open(bad, "r+b") as f:
            f.seek(STORE_DATA_ALIGN + record * rec_bytes + byte)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x20]))
        R = max(1, 4096 // rec_bytes)
        blk = record // R
        flat = img.reshape(len(img), -1).copy()
        flat[record, byte] ^= 0x20
        crc = zlib.crc32(flat[blk * R:(blk + 1) * R].tobytes())
        return bad, blk, R, crc, len(img)

    def test_block_crcs_are_zlib_crc32_of_the_records(self):
        for name, store in self.stores.items():
            z = np.load(store)
            img, crcs = z["images"], z["block_crc"]
            rec_bytes = int(np.prod(img.shape[1:]))
            R = max(1, 4096 // rec_bytes)
            meta = json.loads(bytes(zipfile.ZipFile(store).read("meta.json")))
            self.assertEqual(meta["crc_block"], R)
            self.assertEqual(meta["version"], 2)
            self.assertEqual(crcs.dtype, np.uint32)
            n_blocks = (len(img) + R - 1) // R
            self.assertEqual(crcs.shape, (n_blocks,))
            flat = img.reshape(len(img), -1)
            want = [zlib.crc32(flat[b * R:(b + 1) * R].tobytes()) for b in range(n_blocks)]
            self.assertEqual([int(c) for c in crcs], want)
            self.assertIsNone(zipfile.ZipFile(store).testzip())
        self.assertEqual(max(1, 4096 // 784), 5)  # gray: blocks of 5, the last of 3 (503 = 100 * 5 + 3)

    def train(self, data, out, extra=()):
        return run(MPIRUN + [os.path.join(BUILD, "aesim-train"), "--data", data, "--arch", "c4 p | u c1",
                             "--epochs", "1", "--batch-size", "16", "--grid", "0", "--threads", "1", "--out", out,
                             "--overwrite", "--seed", "3"] + list(extra))

    def test_intact_store_is_not_read_whole_before_training(self):
        store = self.stores["gray"]
        a = self.train(store, os.path.join(self.tmp, "ok_blocks"))
        self.assertEqual(a.returncode, 0, a.stdout + a.stderr)
        self.assertNotIn("stored member(s) checked", a.stdout + a.stderr)
        b = self.train(store + "?verify=1", os.path.join(self.tmp, "ok_whole"))
        self.assertEqual(b.returncode, 0, b.stdout + b.stderr)
        loss = lambda r: re.search(r"train loss ([0-9.]+)", r.stdout + r.stderr).group(1)
        self.assertEqual(loss(a), loss(b))

    def test_damaged_block_stops_training_on_every_rank(self):
        bad, blk, R, crc, n = self.damaged("gray", 251)
        out = os.path.join(self.tmp, "bad_run")
        r = self.train(bad, out)
        text = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, text)
        first, last = blk * R, min(n, (blk + 1) * R) - 1
        msg = re.findall(r".*CRC block.*", text)
        self.assertEqual(len(msg), 1, text)
        self.assertIn(bad, msg[0])
        self.assertIn("images %d..%d (CRC block %d of %d)" % (first, last, blk, (n + R - 1) // R), msg[0])
        self.assertIn("CRC-32 %08x" % crc, msg[0])
        self.assertFalse(os.path.exists(os.path.join(out, "checkpoint.npz")), os.listdir(out) if os.path.isdir(out) else "")

    def test_damaged_block_refused_by_index_and_by_a_whole_check(self):
        bad, blk, R, crc, n = self.damaged("rgb", 77, byte=1000)
        model = os.path.join(self.tmp, "rgb_model")
        r = run(MPIRUN + [os.path.join(BUILD, "aesim-train"), "--data", self.stores["rgb"], "--arch", "c4 p | u c3",
                          "--max-steps", "2", "--batch-size", "16", "--grid", "0", "--threads", "1", "--out", model,
                          "--overwrite"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        db = os.path.join(self.tmp, "bad_db")
        r = run(MPIRUN + [os.path.join(BUILD, "aesim-search"), "index", "--model", os.path.join(model, "checkpoint.npz"),
                          "--data", bad, "--db", db])
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("images 77..77 (CRC block 77 of %d): CRC-32 %08x" % (n, crc), r.stdout + r.stderr)
        self.assertFalse(os.path.exists(db))
        r = self.train(bad + "?verify=1", os.path.join(self.tmp, "bad_whole"))
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("member 'images.npy'", r.stdout + r.stderr)
        self.assertNotIn("CRC block", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
