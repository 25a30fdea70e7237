#!/usr/bin/python3
"""test_array_sources.py - NumPy, CIFAR and IDX array sources, options,
wildcards, the sample store (aesim-pack) and damaged archives, against numpy.

numpy writes every input (np.save with format versions 1.0/2.0/3.0,
big-endian and fortran-order arrays, savez / savez_compressed, CIFAR records
with tobytes) and computes the expected uint8 NCHW images itself (transpose,
round(v*255/range), Pillow-style luma); zipfile and numpy.load read the
stores aesim-pack writes.  Damaged archives are made by editing bytes of
numpy-written files (truncation, CRC, a deflated member claiming a huge
size, a central directory pointing past the end).  tests/tool_dataset_dump
reports what dataset_open loaded.

Environment: AESIM_BUILD (build folder), AESIM_TEST_TMP (scratch folder).
"""
import atexit
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("AESIM_BUILD", "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
DUMP = os.path.join(BUILD, "tests", "tool_dataset_dump")
PACK = os.path.join(BUILD, "aesim-pack")
TMP_ROOT = os.environ.get("AESIM_TEST_TMP")
if not TMP_ROOT:
    TMP_ROOT = tempfile.mkdtemp(prefix="aesim_test_arrays_")
    atexit.register(shutil.rmtree, TMP_ROOT, ignore_errors=True)
DATA = os.path.join(ROOT, "..", "shared", "data")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data"

AE_EIO, AE_EFORMAT, AE_ESHAPE, AE_EARG = 1, 2, 3, 4
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def luma(x):
    """x int [N][3][H][W] -> [N][1][H][W], Pillow's convert('L')."""
    x = x.astype(np.int64)
    return ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 32768) >> 16)[:, None].astype(np.uint8)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class ArraySourceTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=TMP_ROOT)
        self.rng = np.random.default_rng(5)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def dump(self, spec):
        prefix = tempfile.mkdtemp(dir=self.tmp) + "/d"
        r = subprocess.run([DUMP, spec, prefix], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "dataset_open(%s) failed: %s" % (spec, r.stderr))
        with open(prefix + ".meta") as f:
            n, c, h, w, has_labels, _, skipped, contiguous = (int(x) for x in f.readline().split())
            source = f.readline().rstrip("\n")
        out = {"shape": (n, c, h, w), "source": source, "contiguous": contiguous}
        out["pixels"] = np.fromfile(prefix + ".u8", np.uint8).reshape(n, c, h, w)
        out["labels"] = np.fromfile(prefix + ".i32", "<i4") if has_labels else None
        out["names"] = None
        if os.path.exists(prefix + ".names"):
            with open(prefix + ".names") as f:
                out["names"] = f.read().splitlines()
        return out

    def refused(self, spec, code, *must):
        r = subprocess.run([DUMP, spec, self.path("never")], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, code, "wrong status for %s: %s" % (spec, r.stderr))
        for s in must:
            self.assertIn(s, r.stderr)
        self.assertIn("hint", r.stderr)

    def check(self, spec, pixels, labels=None):
        got = self.dump(spec)
        self.assertEqual(got["shape"], pixels.shape, spec)
        self.assertTrue(np.array_equal(got["pixels"], pixels), spec)
        if labels is None:
            self.assertIsNone(got["labels"])
        else:
            self.assertTrue(np.array_equal(got["labels"], labels), spec)
        return got

    # ---- .npy / .npz variants ----------------------------------------------------

    def test_npy_variants(self):
        nchw = self.rng.integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
        nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
        for ver in ((1, 0), (2, 0), (3, 0)):
            p = self.path("v%d.npy" % ver[0])
            with open(p, "wb") as f:
                np.lib.format.write_array(f, nhwc, version=ver)
            got = self.check(p, nchw)  # layout guessed: last dim is 3
            self.assertIn("5 images 3x6x7", got["source"])
        p = self.path("nchw.npy")
        np.save(p, nchw)
        self.assertIn("mapped", self.check(p, nchw)["source"])
        self.assertEqual(self.dump(p)["contiguous"], 1)
        self.check(p + "?map=0", nchw)
        grey = nchw[:, :1]
        np.save(self.path("grey.npy"), grey[:, 0])
        self.check(self.path("grey.npy"), grey)
        self.check(self.path("grey.npy") + "?channels=3", np.repeat(grey, 3, axis=1))
        self.check(p + "?channels=1", luma(nchw))
        # Floats: 0..1 by default, 0..255 with range=255, big-endian swapped.
        f = nchw.astype(np.float32) / np.float32(255)
        np.save(self.path("f.npy"), f)
        self.check(self.path("f.npy"), nchw)
        np.save(self.path("f255.npy"), nhwc.astype(">f4"))
        self.check(self.path("f255.npy") + "?range=255", nchw)
        np.save(self.path("f64.npy"), f.astype(np.float64))
        self.check(self.path("f64.npy"), nchw)
        self.refused(self.path("f255.npy"), AE_EFORMAT, "range=255")
        self.refused(self.path("f.npy") + "?map=1", AE_EARG, "map=1")
        bad = f.copy()
        bad[2, 1, 3, 3] = np.nan
        np.save(self.path("nan.npy"), bad)
        self.refused(self.path("nan.npy"), AE_EFORMAT, "image 2")
        # Ambiguous (N,3,H,3) needs layout=; fortran order refused; int16 refused.
        amb = self.rng.integers(0, 256, (2, 3, 5, 3), dtype=np.uint8)
        np.save(self.path("amb.npy"), amb)
        self.refused(self.path("amb.npy"), AE_EFORMAT, "layout=")
        self.check(self.path("amb.npy") + "?layout=nhwc", np.ascontiguousarray(amb.transpose(0, 3, 1, 2)))
        self.check(self.path("amb.npy") + "?layout=nchw", amb)
        np.save(self.path("fortran.npy"), np.asfortranarray(nchw))
        self.refused(self.path("fortran.npy"), AE_EFORMAT, "fortran")
        np.save(self.path("i16.npy"), nchw.astype(np.int16))
        self.refused(self.path("i16.npy"), AE_EFORMAT, "<i2")
        # Resizing an array source: 6x7 -> 3x3 centre crop of 6x6 = 2x2 means.
        got = self.dump(p + "?size=3x3")
        crop = nchw[:, :, :, 0:6].astype(np.float64)
        want = np.floor(crop.reshape(5, 3, 3, 2, 3, 2).mean(axis=(3, 5)) + 0.5).astype(np.uint8)
        self.assertTrue(np.array_equal(got["pixels"], want))

    def test_npz_members_and_imagenet(self):
        x = self.rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
        y = self.rng.integers(0, 10, 6).astype(np.int64)
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        for saver in (np.savez, np.savez_compressed):
            saver(self.path("xy.npz"), x_train=x, y_train=y)
            self.check(self.path("xy.npz"), nchw, y)
            saver(self.path("arr.npz"), x, y)
            self.check(self.path("arr.npz"), nchw, y)
            saver(self.path("named.npz"), pics=x, cls=y.reshape(6, 1))
            self.check(self.path("named.npz") + "?images=pics&labels=cls", nchw, y)
            self.refused(self.path("named.npz"), AE_EFORMAT, "images=")
        np.savez_compressed(self.path("c.npz"), x_train=x)
        self.refused(self.path("c.npz") + "?map=1", AE_EARG, "map=1")
        # Several downsampled-ImageNet batches: a folder, a wildcard (natural order).
        d = os.path.join(self.tmp, "in32")
        os.makedirs(d)
        parts, labs = [], []
        for k in (1, 2, 10):
            data = self.rng.integers(0, 256, (3 + k, 3 * 4 * 4), dtype=np.uint8)
            lab = self.rng.integers(1, 1001, 3 + k)
            np.savez(os.path.join(d, "train_data_batch_%d.npz" % k), data=data, labels=lab, mean=data.mean(0))
            parts.append(data.reshape(-1, 3, 4, 4))
            labs.append(lab)
        want, wl = np.concatenate(parts), np.concatenate(labs)
        # 3..9 are missing: a gap in a numbered set is refused, naming them
        # (issue 13), unless allow_gaps=1 takes the others.
        self.refused(d, AE_EIO, "train_data_batch_3.npz")
        self.refused(os.path.join(d, "train_data_batch_*.npz"), AE_EIO, "allow-gaps")
        got = self.check(d + "?allow_gaps=1", want, wl)
        self.assertEqual(got["contiguous"], 0)  # three mapped segments
        self.check(os.path.join(d, "train_data_batch_*.npz") + "?allow_gaps=1", want, wl)
        self.refused(os.path.join(d, "nothing_*.npz"), AE_EIO, "nothing_")

    def test_cifar_and_idx(self):
        imgs = self.rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
        lab = self.rng.integers(0, 10, 7).astype(np.uint8)
        rec = np.concatenate([lab[:, None], imgs.reshape(7, -1)], axis=1)
        d = os.path.join(self.tmp, "cifar-10-batches-bin")
        os.makedirs(d)
        write_bytes(os.path.join(d, "data_batch_1.bin"), rec[:4].tobytes())
        write_bytes(os.path.join(d, "data_batch_2.bin"), rec[4:].tobytes())
        self.check(d, imgs, lab)
        self.check(os.path.join(d, "data_batch_2.bin"), imgs[4:], lab[4:])
        grey = luma(imgs[:4]).reshape(4, 1, 16, 2, 16, 2).astype(float).mean(axis=(3, 5))
        self.check("cifar10:" + os.path.join(d, "data_batch_1.bin") + "?size=16x16&channels=1",
                   np.floor(grey + 0.5).astype(np.uint8), lab[:4])
        write_bytes(self.path("cut.bin"), rec.tobytes()[:-5])
        self.refused("cifar10:" + self.path("cut.bin"), AE_EFORMAT, "cut.bin")
        coarse = self.rng.integers(0, 20, 7).astype(np.uint8)
        fine = self.rng.integers(0, 100, 7).astype(np.uint8)
        r100 = np.concatenate([coarse[:, None], fine[:, None], imgs.reshape(7, -1)], axis=1)
        d100 = os.path.join(self.tmp, "cifar-100-binary")
        os.makedirs(d100)
        write_bytes(os.path.join(d100, "train.bin"), r100.tobytes())
        self.check(d100, imgs, fine)
        self.check("cifar100:" + os.path.join(d100, "train.bin") + "?coarse=1", imgs, coarse)
        self.refused("cifar10:" + os.path.join(d100, "train.bin"), AE_EFORMAT, "train.bin")
        # IDX: plain files are mapped, gzip ones streamed; resize works on both.
        mn = os.path.join(DATA, "mnist", "t10k-images-idx3-ubyte.gz")
        got = self.dump(mn + "?size=14x14")
        self.assertEqual(got["shape"], (10000, 1, 14, 14))
        import gzip
        raw = np.frombuffer(gzip.decompress(read_bytes(mn)), np.uint8, offset=16).reshape(10000, 1, 28, 28)
        want = np.floor(raw[:50].reshape(50, 1, 14, 2, 14, 2).astype(float).mean(axis=(3, 5)) + 0.5).astype(np.uint8)
        self.assertTrue(np.array_equal(got["pixels"][:50], want))
        plain = self.path("p-images-idx3-ubyte")
        write_bytes(plain, gzip.decompress(read_bytes(mn))[: 16 + 28 * 28 * 10000])
        self.assertIn("mapped", self.check(plain, raw)["source"])

    # ---- the sample store -----------------------------------------------------------

    def pack(self, out, spec, *opts, np_=1):
        cmd = [PACK, "--out", out] + list(opts) + [spec]
        if np_ > 1:
            cmd = ["mpirun", "-np", str(np_), "--oversubscribe"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)

    def test_pack_store(self):
        from PIL import Image
        d = os.path.join(self.tmp, "folder")
        for i in range(9):
            os.makedirs(os.path.join(d, "c%d" % (i % 3)), exist_ok=True)
            Image.fromarray(self.rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(
                os.path.join(d, "c%d" % (i % 3), "%d.png" % i))
        write_bytes(os.path.join(d, "c1", "zz_bad.png"), b"\x89PNG\r\n\x1a\n\0\0")
        spec = "folder:%s?size=8x8&skip_bad=1" % d
        ref = self.dump(spec)
        out = self.path("s.npz")
        r = self.pack(out, spec)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("skipped 1", r.stdout)
        with zipfile.ZipFile(out) as z:
            self.assertIsNone(z.testzip())  # every CRC right
            self.assertEqual(z.comment, b"aesim-store 1")
        with np.load(out) as z:
            self.assertTrue(np.array_equal(z["images"], ref["pixels"]))
            self.assertTrue(np.array_equal(z["labels"], ref["labels"]))
            names = bytes(z["names"])
            off = z["name_offsets"]
            self.assertEqual([names[off[i]:off[i + 1]].decode() for i in range(9)], ref["names"])
        got = self.check(out, ref["pixels"], ref["labels"])
        self.assertIn("mapped", got["source"])
        self.assertEqual(got["names"], ref["names"])
        # Without skip_bad: every rank exits non-zero naming the file, no store left.
        bad = self.path("bad.npz")
        r = self.pack(bad, "folder:%s?size=8x8" % d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("zz_bad.png", r.stderr)
        self.assertFalse(any(f.startswith("bad.npz") for f in os.listdir(self.tmp)))
        # A deflated npz streams into the store; store of a store is identical data.
        x = self.rng.integers(0, 256, (40, 1, 5, 5), dtype=np.uint8)
        np.savez_compressed(self.path("x.npz"), images=x, labels=np.arange(40))
        r = self.pack(self.path("s2.npz"), self.path("x.npz"), "--window", "7")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check(self.path("s2.npz"), x, np.arange(40))

    # ---- damaged archives -------------------------------------------------------------

    def test_damaged_npz(self):
        data = self.rng.integers(0, 256, (20, 3 * 8 * 8), dtype=np.uint8)
        good = self.path("good.npz")
        np.savez(good, data=data, labels=np.arange(20))
        raw = read_bytes(good)
        cases = {}
        cases["trunc.npz"] = raw[: len(raw) // 2]
        cases["trunc_end.npz"] = raw[:-10]
        flip = bytearray(raw)
        flip[raw.find(b"data.npy") + 300] ^= 0x55  # inside the stored pixels: CRC error
        cases["crc.npz"] = bytes(flip)
        cd = bytearray(raw)
        eocd = raw.rfind(b"PK\x05\x06")
        struct.pack_into("<I", cd, eocd + 16, len(raw) + 1000)  # directory offset past the end
        cases["cdoff.npz"] = bytes(cd)
        for name, content in cases.items():
            write_bytes(self.path(name), content)
            self.refused(self.path(name), AE_EFORMAT, name)
        # A zip bomb: a deflated member that claims 2^40 bytes.
        bomb = self.path("bomb.npz")
        np.savez_compressed(bomb, data=data)
        b = bytearray(read_bytes(bomb))
        c = b.find(b"PK\x01\x02")
        nlen, xlen = struct.unpack_from("<HH", b, c + 28)
        x = c + 46 + nlen
        while x < c + 46 + nlen + xlen:  # the zip64 extra holds the sizes
            hid, hl = struct.unpack_from("<HH", b, x)
            if hid == 1:
                struct.pack_into("<Q", b, x + 4, 1 << 40)
                break
            x += 4 + hl
        else:
            struct.pack_into("<I", b, c + 24, 0xFFFFFFF0)
        write_bytes(bomb, bytes(b))
        self.refused(bomb, AE_EFORMAT, "bomb.npz")
        # The .npy header lies: more data than the member holds.
        p = self.path("lie.npy")
        np.save(p, data.reshape(20, 3, 8, 8))
        r = bytearray(read_bytes(p))
        i = r.find(b"(20,")
        r[i + 1 : i + 3] = b"99"
        write_bytes(p, bytes(r))
        self.refused(p, AE_EFORMAT, "lie.npy")
        write_bytes(self.path("empty.npz"), b"")
        self.refused(self.path("empty.npz"), AE_EFORMAT, "empty.npz")


if __name__ == "__main__":
    unittest.main()
