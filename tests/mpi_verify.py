#!/usr/bin/python3
"""CRC-32 verification of stored npz members once per job, split over the
ranks, and remembered across jobs (issue 18, item 1; include/data/verify.h).

References outside aesim: numpy writes the npz (np.savez: stored members),
Python's zipfile gives the CRC-32 the archive records, zlib.crc32 of the
damaged member's bytes gives the CRC a correct check must compute, os.stat
gives the size and mtime the cache must record.
- P = 1 and P = 3: the log says the member was checked with each rank
  reading 1/P of it (rank 0's share in MB = its range's size);
- the cache file holds the archive's CRC, the file's size, mtime in ns and
  inode, and its real path; the log of a job that skips the check names them;
- the next job does not read it again; after the file's mtime changes it
  does; AESIM_VERIFY_CACHE=off always checks;
- a damaged copy (one bit flipped) is refused by P = 1 and P = 3 alike, the
  one error line naming file and member, the computed CRC being zlib's of
  the damaged bytes (so the ranks' CRCs were joined correctly), and nothing
  is trained.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, os.environ.get("AESIM_BUILD", "build"), "aesim-train")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")


class Verify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mpi_verify.", dir=os.environ.get("AESIM_TEST_TMP"))
        rng = np.random.default_rng(18)
        cls.npz = os.path.join(cls.tmp, "train_data_batch_1.npz")
        np.savez(cls.npz, data=rng.integers(0, 256, (3000, 3 * 16 * 16), dtype=np.uint8),
                 labels=rng.integers(1, 11, 3000))
        with zipfile.ZipFile(cls.npz) as z:
            info = z.getinfo("data.npy")
            assert info.compress_type == zipfile.ZIP_STORED
            cls.crc, cls.size = info.CRC, info.file_size
            with z.open(info) as f:
                raw = f.read()
        cls.cache = os.path.join(cls.tmp, "cache", "verified.tsv")
        # The damaged copy: one bit flipped in the middle of data.npy's bytes.
        cls.bad = os.path.join(cls.tmp, "bad.npz")
        with open(cls.npz, "rb") as f:
            blob = bytearray(f.read())
        at = blob.find(raw[:4096]) + len(raw) // 2
        blob[at] ^= 0x10
        with open(cls.bad, "wb") as f:
            f.write(blob)
        cls.bad_crc = zlib.crc32(bytes(blob[at - len(raw) // 2:at - len(raw) // 2 + len(raw)]))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def train(self, np_, data, cache=None):
        env = dict(ENV, AESIM_VERIFY_CACHE=cache or self.cache)
        out = os.path.join(self.tmp, "run%d" % np_)
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), TRAIN, "--data", data, "--arch",
               "c4 p | u c3", "--max-steps", "1", "--batch-size", "12", "--grid", "0", "--threads", "1", "--out",
               out, "--overwrite"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    def checked(self, r, np_):
        m = re.search(r"CRC-32 of (\d+) stored member\(s\) checked in [0-9.]+ s, each rank reading 1/(\d+) of it "
                      r"\(([0-9.]+) MB here\)", r.stdout + r.stderr)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertEqual((int(m.group(1)), int(m.group(2))), (1, np_))
        self.assertAlmostEqual(float(m.group(3)), (self.size // np_) / 1e6, delta=0.06)

    def test_1_split_check_cache_and_change(self):
        if os.path.exists(self.cache):
            os.remove(self.cache)
        for np_ in (1, 3):
            r = self.train(np_, self.npz)
            self.assertEqual(r.returncode, 0, r.stderr)
            if np_ == 1:
                self.checked(r, 1)
                with open(self.cache) as f:
                    fields = f.read().strip().split("\t")
                st = os.stat(self.npz)
                self.assertEqual(fields[0], "%08x" % self.crc)
                self.assertEqual((int(fields[1]), int(fields[2]), int(fields[3])),
                                 (st.st_size, st.st_mtime_ns, st.st_ino))
                self.assertEqual(fields[5], os.path.realpath(self.npz))
            else:
                self.assertIn("1 stored member(s) verified by an earlier job, unchanged since (same path, size, "
                              "mtime in ns and inode)", r.stdout + r.stderr)
        os.utime(self.npz, ns=(os.stat(self.npz).st_atime_ns, os.stat(self.npz).st_mtime_ns + 10 ** 9))
        r = self.train(3, self.npz)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.checked(r, 3)
        r = self.train(2, self.npz, cache="off")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.checked(r, 2)

    def test_2_damaged_member_refused(self):
        for np_ in (1, 3):
            r = self.train(np_, self.bad)
            self.assertNotEqual(r.returncode, 0)
            err = [l for l in r.stderr.splitlines() if "error" in l]
            self.assertEqual(len(err), 1, r.stderr)
            self.assertIn("bad.npz member 'data.npy': CRC-32 of its %d bytes is %08x but the archive records %08x"
                          % (self.size, self.bad_crc, self.crc), err[0])
            self.assertNotIn("step 1", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
