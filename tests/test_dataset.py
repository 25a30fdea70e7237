#!/usr/bin/python3
"""test_dataset.py - dataset.h (src/data/dataset.c, idx.c, npy.c) against numpy.

References: numpy writes the inputs (downsampled-ImageNet-style npz with
numpy.savez / savez_compressed, MNIST IDX files with struct + gzip, exactly as
the format page describes them) and computes the expected NCHW arrays with its
own reshape; real files are parsed independently here (numpy.load for the
ImageNet samples, gzip + numpy.frombuffer for MNIST / Fashion-MNIST).
tests/tool_dataset_dump writes what dataset_open loaded (pixels, labels, and
dataset_get_batch_f32 of a few images) and the comparison is exact.  Also
checked: comma-separated concatenation, shape-mismatch refusal naming both
files, dataset_split sizes / disjointness / order / reproducibility, and that
malformed inputs give a non-zero exit (the AE_* code) and a message naming
the file.

Environment: AESIM_BUILD (build folder, default "build"), AESIM_TEST_TMP
(scratch folder, default a fresh temporary folder).
"""
import atexit
import gzip
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("AESIM_BUILD", "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
TOOL = os.path.join(BUILD, "tests", "tool_dataset_dump")
TMP_ROOT = os.environ.get("AESIM_TEST_TMP")
if not TMP_ROOT:
    TMP_ROOT = tempfile.mkdtemp(prefix="aesim_test_dataset_")
    atexit.register(shutil.rmtree, TMP_ROOT, ignore_errors=True)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
IMAGENET = os.path.join(DATA, "imagenet-sample")
MNIST = os.path.join(DATA, "mnist")
FASHION = "/usr/share/datasets/fashion-mnist"

# Status codes of include/base/err.h.
AE_EIO, AE_EFORMAT, AE_ESHAPE, AE_EARG = 1, 2, 3, 4


def idx_bytes(a, type_byte=0x08):
    """IDX file contents: magic 0 0 type ndim, big-endian uint32 dims, data."""
    return struct.pack(">BBBB", 0, 0, type_byte, a.ndim) + struct.pack(">%dI" % a.ndim, *a.shape) + a.tobytes()


def write_file(path, data, gz=False):
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def parse_idx(path):
    """Independent IDX reader (gzip or plain) for the real files."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, typ, nd = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and typ == 0x08
    dims = struct.unpack(">%dI" % nd, raw[4 : 4 + 4 * nd])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


class DatasetTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=TMP_ROOT)
        self.rng = np.random.default_rng(7)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run_tool(self, *args):
        return subprocess.run([TOOL] + [str(a) for a in args], capture_output=True, text=True, timeout=60)

    def load(self, prefix):
        """Reads what the tool dumped under prefix."""
        with open(prefix + ".meta") as f:
            head = f.readline().split()
            source = f.readline().rstrip("\n")
        n, c, h, w, has_labels, nf = (int(x) for x in head[:6])
        out = {"source": source, "shape": (n, c, h, w)}
        out["pixels"] = np.fromfile(prefix + ".u8", dtype=np.uint8).reshape(n, c, h, w)
        out["labels"] = np.fromfile(prefix + ".i32", dtype="<i4") if has_labels else None
        out["idx"] = np.fromfile(prefix + ".idx", dtype="<i8")
        out["f32"] = np.fromfile(prefix + ".f32", dtype="<f4").reshape(nf, c, h, w)
        return out

    def open(self, spec):
        prefix = tempfile.mkdtemp(dir=self.tmp) + "/d"
        r = self.run_tool(spec, prefix)
        self.assertEqual(r.returncode, 0, "dataset_open(%s) failed: %s" % (spec, r.stderr))
        return self.load(prefix)

    def assert_dataset(self, got, pixels, labels):
        """pixels: expected uint8 NCHW; labels: expected ints or None."""
        self.assertEqual(got["shape"], pixels.shape)
        self.assertTrue(np.array_equal(got["pixels"], pixels), "pixels differ")
        if labels is None:
            self.assertIsNone(got["labels"])
        else:
            self.assertIsNotNone(got["labels"], "labels missing")
            self.assertTrue(np.array_equal(got["labels"], np.asarray(labels).astype(np.int64)), "labels differ")
        n = pixels.shape[0]
        nf = min(n, 32)
        self.assertTrue(np.array_equal(got["idx"], np.arange(nf) * n // nf))
        want = pixels[got["idx"]].astype(np.float32) / np.float32(255)
        self.assertTrue(np.array_equal(got["f32"], want), "dataset_get_batch_f32 differs from pixels / 255")

    def refused(self, spec, code, *must_name):
        r = self.run_tool(spec, self.path("never"))
        self.assertNotEqual(r.returncode, 0, "accepted %s" % spec)
        self.assertEqual(r.returncode, code, "wrong status for %s: %s" % (spec, r.stderr))
        for s in must_name:
            self.assertIn(s, r.stderr)
        self.assertIn("hint", r.stderr)
        return r.stderr

    def imagenet_npz(self, name, n, s, labels=True, label_dtype=np.int64, compressed=False, extra=True):
        data = self.rng.integers(0, 256, size=(n, 3 * s * s), dtype=np.uint8)
        members = {"data": data}
        lab = None
        if labels:
            lab = self.rng.integers(1, 1001, size=n).astype(label_dtype)
            members["labels"] = lab
        if extra:
            members["mean"] = data.mean(axis=0)
        p = self.path(name)
        (np.savez_compressed if compressed else np.savez)(p, **members)
        # numpy's own reshape gives NCHW: each row is the R, G, B planes of SxS.
        return p, data.reshape(n, 3, s, s), lab

    def mnist_files(self, folder, n, h, w, gz, labels=True, prefix="train"):
        os.makedirs(folder, exist_ok=True)
        img = self.rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        ext = ".gz" if gz else ""
        ip = write_file(os.path.join(folder, prefix + "-images-idx3-ubyte" + ext), idx_bytes(img), gz)
        lab = None
        if labels:
            lab = self.rng.integers(0, 10, size=n, dtype=np.uint8)
            write_file(os.path.join(folder, prefix + "-labels-idx1-ubyte" + ext), idx_bytes(lab), gz)
        return ip, img[:, None, :, :], lab

    # ---- synthetic files --------------------------------------------------

    def test_imagenet_npz_synthetic(self):
        for compressed in (False, True):
            for label_dtype in (np.int64, np.int32, np.uint16, np.uint8):
                p, want, lab = self.imagenet_npz("in_%d.npz" % compressed, 13, 6, label_dtype=label_dtype,
                                                 compressed=compressed)
                self.assert_dataset(self.open(p), want, lab)
        p, want, _ = self.imagenet_npz("nolab.npz", 3, 4, labels=False, extra=False)
        got = self.open(p)
        self.assert_dataset(got, want, None)
        self.assertIn(p, got["source"])
        self.assertIn("3 images", got["source"])

    def test_idx_plain_gzip_and_folder(self):
        for gz in (False, True):
            folder = self.path("mnist_%d" % gz)
            ip, want, lab = self.mnist_files(folder, 37, 9, 7, gz)
            self.assert_dataset(self.open(ip), want, lab)
            self.assert_dataset(self.open(folder), want, lab)  # folder layout
        # No labels file next to it: images only.
        ip, want, _ = self.mnist_files(self.path("nolab"), 5, 4, 4, gz=True, labels=False)
        self.assert_dataset(self.open(ip), want, None)
        # A file name without "images-idx3": no labels looked for.
        p = write_file(self.path("pics.idx"), idx_bytes(want[:, 0]))
        self.assert_dataset(self.open(p), want, None)

    # ---- real files -------------------------------------------------------

    def test_real_imagenet_samples(self):
        for s in (32, 64):
            p = os.path.join(IMAGENET, "sample%d_data_batch.npz" % s)
            with np.load(p) as z:
                data, labels = z["data"], z["labels"]
            self.assertEqual(data.shape, (800, 3 * s * s))
            self.assert_dataset(self.open(p), data.reshape(800, 3, s, s), labels)

    def test_real_mnist_t10k(self):
        p = os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")
        img = parse_idx(p)
        lab = parse_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))
        self.assertEqual(img.shape, (10000, 28, 28))
        self.assertEqual(list(lab[:10]), [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])  # SOURCE.txt
        self.assert_dataset(self.open(p), img[:, None], lab)

    @unittest.skipUnless(os.path.isdir(FASHION), "Fashion-MNIST not installed")
    def test_real_fashion_mnist_folder(self):
        img = parse_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
        lab = parse_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"))
        self.assertEqual(img.shape, (60000, 28, 28))
        self.assert_dataset(self.open(FASHION), img[:, None], lab)

    # ---- several sources --------------------------------------------------

    def test_concat(self):
        a, wa, la = self.imagenet_npz("a.npz", 5, 4)
        b, wb, lb = self.imagenet_npz("b.npz", 8, 4, compressed=True)
        got = self.open(a + "," + b)
        self.assert_dataset(got, np.concatenate([wa, wb]), np.concatenate([la, lb]))
        self.assertIn(a, got["source"])
        self.assertIn(b, got["source"])
        # One source without labels: the concatenation has none.
        c, wc, _ = self.imagenet_npz("c.npz", 2, 4, labels=False)
        self.assert_dataset(self.open(",".join([a, c, b])), np.concatenate([wa, wc, wb]), None)
        # IDX + IDX (plain and gzip).
        i1, w1, l1 = self.mnist_files(self.path("m1"), 6, 5, 5, gz=False)
        i2, w2, l2 = self.mnist_files(self.path("m2"), 4, 5, 5, gz=True, prefix="t10k")
        self.assert_dataset(self.open(i1 + "," + i2), np.concatenate([w1, w2]), np.concatenate([l1, l2]))

    def test_concat_shape_mismatch_refused(self):
        a, _, _ = self.imagenet_npz("s4.npz", 3, 4)
        b, _, _ = self.imagenet_npz("s5.npz", 3, 5)
        self.refused(a + "," + b, AE_ESHAPE, a, b)
        i, _, _ = self.mnist_files(self.path("m"), 3, 4, 4, gz=False)
        self.refused(i + "," + a, AE_ESHAPE, i, a)  # 1 channel vs 3
        self.refused(a + ",", AE_EARG, a)
        self.refused(a + ",," + a, AE_EARG, a)

    # ---- split --------------------------------------------------------------

    def split(self, spec, frac, seed):
        prefix = tempfile.mkdtemp(dir=self.tmp) + "/s"
        r = self.run_tool("--split", frac, seed, spec, prefix)
        self.assertEqual(r.returncode, 0, r.stderr)
        return self.load(prefix + ".train"), self.load(prefix + ".val")

    def test_split(self):
        n = 50
        data = self.rng.integers(0, 256, size=(n, 3 * 4 * 4), dtype=np.uint8)
        data[:, 0] = np.arange(n)  # image i is recognisable by its first byte
        labels = np.arange(n) + 100
        p = self.path("split.npz")
        np.savez(p, data=data, labels=labels)
        full = data.reshape(n, 3, 4, 4)
        train, val = self.split(p, 0.3, 7)
        self.assertEqual(val["shape"][0], 15)  # round(0.3 * 50)
        self.assertEqual(train["shape"][0], 35)
        ti, vi = train["pixels"][:, 0, 0, 0].astype(int), val["pixels"][:, 0, 0, 0].astype(int)
        self.assertEqual(len(set(ti) & set(vi)), 0, "train and val overlap")
        self.assertEqual(sorted(set(ti) | set(vi)), list(range(n)), "images lost")
        self.assertTrue(np.all(np.diff(ti) > 0) and np.all(np.diff(vi) > 0), "original order not kept")
        for part, ids in ((train, ti), (val, vi)):
            self.assertTrue(np.array_equal(part["pixels"], full[ids]))
            self.assertTrue(np.array_equal(part["labels"], labels[ids]))
        # Same seed: same split; another seed: another split.
        train2, val2 = self.split(p, 0.3, 7)
        self.assertTrue(np.array_equal(val2["pixels"], val["pixels"]))
        _, val3 = self.split(p, 0.3, 8)
        self.assertFalse(np.array_equal(val3["pixels"], val["pixels"]))
        # A tiny fraction still gives one validation image.
        train4, val4 = self.split(p, 0.001, 1)
        self.assertEqual((train4["shape"][0], val4["shape"][0]), (49, 1))
        for frac in ("0", "1", "1.5", "-0.2", "nan", "0.999"):
            r = self.run_tool("--split", frac, 1, p, self.path("bad"))
            self.assertEqual(r.returncode, AE_EARG, "frac %s: %s" % (frac, r.stderr))
            self.assertIn(p, r.stderr)

    # ---- bad inputs -----------------------------------------------------------

    def test_bad_inputs(self):
        missing = self.path("missing.npz")
        self.refused(missing, AE_EIO, missing)
        self.refused(self.tmp, AE_EIO, self.tmp)  # folder without train-images-idx3-ubyte
        img = self.rng.integers(0, 256, size=(10, 6, 6), dtype=np.uint8)
        good = idx_bytes(img)
        for gz in (False, True):
            sfx = ".gz" if gz else ""
            p = write_file(self.path("cut-images-idx3-ubyte" + sfx), good[:-7], gz)
            self.refused(p, AE_EFORMAT, p)
            p = write_file(self.path("cuthead-images-idx3-ubyte" + sfx), good[:10], gz)
            self.refused(p, AE_EFORMAT, p)
            p = write_file(self.path("long-images-idx3-ubyte" + sfx), good + b"\0\0", gz)
            self.refused(p, AE_EFORMAT, p)
            p = write_file(self.path("magic-images-idx3-ubyte" + sfx), idx_bytes(img, type_byte=0x09), gz)
            self.refused(p, AE_EFORMAT, p, "magic")
            # Header claims 2^32-1 x 2^32-1 x 2^32-1 bytes: no allocation, no crash.
            huge = struct.pack(">BBBB3I", 0, 0, 8, 3, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + img.tobytes()
            p = write_file(self.path("huge-images-idx3-ubyte" + sfx), huge, gz)
            self.refused(p, AE_EFORMAT, p)
            # 2^62 bytes fits int64: must be refused from the file size, not by a failed allocation.
            huge2 = struct.pack(">BBBB3I", 0, 0, 8, 3, 1 << 31, 1 << 31, 1) + img.tobytes()
            p = write_file(self.path("huge2-images-idx3-ubyte" + sfx), huge2, gz)
            self.refused(p, AE_EFORMAT, p)
            big = struct.pack(">BBBB3I", 0, 0, 8, 3, 1000, 1000, 1000) + img.tobytes()
            p = write_file(self.path("big-images-idx3-ubyte" + sfx), big, gz)
            self.refused(p, AE_EFORMAT, p)
            # A labels file is not an images file.
            p = write_file(self.path("lab-idx1-ubyte" + sfx), idx_bytes(np.zeros(10, np.uint8)), gz)
            self.refused(p, AE_EFORMAT, p)
        # A damaged gzip stream.
        raw = bytearray(gzip.compress(good))
        raw[len(raw) // 2] ^= 0xFF
        p = write_file(self.path("crc-images-idx3-ubyte.gz"), bytes(raw))
        self.refused(p, AE_EFORMAT, p)
        # Labels file next to the images with the wrong count.
        d = self.path("badlab")
        ip, _, _ = self.mnist_files(d, 10, 6, 6, gz=False, labels=False)
        lp = write_file(os.path.join(d, "train-labels-idx1-ubyte"), idx_bytes(np.zeros(9, np.uint8)))
        self.refused(ip, AE_EFORMAT, lp)
        self.refused(d, AE_EFORMAT, lp)
        # npz problems.
        data = self.rng.integers(0, 256, size=(4, 3 * 5 * 5), dtype=np.uint8)
        cases = {
            "nodata.npz": {"labels": np.arange(4)},
            "notsquare.npz": {"data": data[:, :-3]},  # 3*S*S - 3 values
            "notthree.npz": {"data": data[:, :-1]},  # not a multiple of 3
            "float.npz": {"data": data.astype(np.float32)},
            "nolen.npz": {"data": np.zeros((4, 0), np.uint8)},
            "noimages.npz": {"data": np.zeros((0, 12), np.uint8)},
            "labellen.npz": {"data": data, "labels": np.arange(5)},
            "labelfloat.npz": {"data": data, "labels": np.arange(4.0)},
            "labelrange.npz": {"data": data, "labels": np.array([0, 1, 2, 2**40])},
        }
        for name, members in cases.items():
            p = self.path(name)
            np.savez(p, **members)
            self.refused(p, AE_EFORMAT, p)
        # A 4-D uint8 'data' member is a plain (N, C, H, W) image array.
        p = self.path("fourd.npz")
        np.savez(p, data=data.reshape(4, 3, 5, 5))
        self.assert_dataset(self.open(p), data.reshape(4, 3, 5, 5), None)
        p = write_file(self.path("text.bin"), b"hello, world\n")
        self.refused(p, AE_EFORMAT, p)
        p = write_file(self.path("zip.npz"), b"PK\x03\x04 truncated")
        self.refused(p, AE_EFORMAT, p)
        self.refused("", AE_EARG)


if __name__ == "__main__":
    unittest.main()
