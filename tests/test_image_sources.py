#!/usr/bin/python3
"""test_image_sources.py - PNG/JPEG decoding (image_decode.c), compositing,
channel conversion, crop and area resize (image_convert.c), image folders and
list files (image_folder.c) against references nobody here wrote.

References:
  * PngSuite's decoded-pixel JSON oracles (/work/shared/data/pngsuite, see its
    SOURCE.txt): every valid PNG must decode to the oracle's RGBA (16-bit
    files: the "_to8" oracle, within 1 for the 16->8 rounding); all 14 corrupt
    files must be refused with a message naming the file.
  * Pillow (python3-pil) writes PNGs of every mode it has and JPEGs (grey,
    RGB, CMYK); it decodes them for the expected pixels (JPEG: the same
    libjpeg-turbo, so exactly equal).
  * numpy implements the documented pipeline independently: composite
    (c*a + bg*(255-a) + 127) // 255, ITU-R 601-2 luma as Pillow's
    convert("L"), the centre-crop rule, and area resizing from dense
    interval-overlap weight matrices (float64, exact for these sizes).
    Pillow's Image.BOX cross-checks the area filter for whole-number
    reduction factors (within 1: Pillow rounds between its two passes).
tests/tool_dataset_dump writes what dataset_open loaded.

Environment: AESIM_BUILD (build folder), AESIM_TEST_TMP (scratch folder).
"""
import atexit
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("AESIM_BUILD", "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
DUMP = os.path.join(BUILD, "tests", "tool_dataset_dump")
DECODE = os.path.join(BUILD, "tests", "tool_image_decode")
TMP_ROOT = os.environ.get("AESIM_TEST_TMP")
if not TMP_ROOT:
    TMP_ROOT = tempfile.mkdtemp(prefix="aesim_test_images_")
    atexit.register(shutil.rmtree, TMP_ROOT, ignore_errors=True)
DATA = os.path.join(ROOT, "..", "shared", "data")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data"
PNGSUITE = os.path.join(DATA, "pngsuite")

AE_EIO, AE_EFORMAT, AE_ESHAPE, AE_EARG = 1, 2, 3, 4


# ---- the documented pipeline, in numpy ------------------------------------

def composite_rgb(rgba, bg):
    """rgba uint8 [h][w][4] -> RGB int [3][h][w] over bg (r, g, b)."""
    c = rgba[..., :3].astype(np.int64)
    a = rgba[..., 3:4].astype(np.int64)
    out = (c * a + np.array(bg, np.int64) * (255 - a) + 127) // 255
    return out.transpose(2, 0, 1)


def luma(rgb):
    r, g, b = (rgb[i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16)[None]


def fit_region(w, h, W, H, fit):
    if fit == "squash" or w * H == W * h:
        return 0, 0, w, h
    if w * H > W * h:
        cw = min(max((h * W * 2 + H) // (2 * H), 1), w)
        return (w - cw) // 2, 0, cw, h
    ch = min(max((w * H * 2 + W) // (2 * W), 1), h)
    return 0, (h - ch) // 2, w, ch


def overlap_matrix(n, N):
    """[N][n] weights: output cell j = [j*n, (j+1)*n), pixel k = [k*N, (k+1)*N)."""
    m = np.zeros((N, n))
    for j in range(N):
        for k in range(n):
            m[j, k] = max(0, min((j + 1) * n, (k + 1) * N) - max(j * n, k * N))
    return m


def area_resize(planes, W, H):
    """planes [C][h][w] -> [C][H][W], area weights, round half up."""
    C, h, w = planes.shape
    wx, wy = overlap_matrix(w, W), overlap_matrix(h, H)
    out = np.einsum("yk,ckx,jx->cyj", wy, planes.astype(np.float64), wx)
    return np.floor(out / (w * h) + 0.5).astype(np.uint8)


def expected(pil_img, C, H, W, bg=(255, 255, 255), fit="crop"):
    rgba = np.asarray(pil_img.convert("RGBA"))
    planes = composite_rgb(rgba, bg)
    if C == 1:
        planes = luma(planes)
    h, w = planes.shape[1:]
    x0, y0, rw, rh = fit_region(w, h, W, H, fit)
    return area_resize(planes[:, y0 : y0 + rh, x0 : x0 + rw], W, H)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class ImageSourceTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=TMP_ROOT)
        self.rng = np.random.default_rng(11)

    def path(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def dump(self, spec):
        prefix = tempfile.mkdtemp(dir=self.tmp) + "/d"
        r = subprocess.run([DUMP, spec, prefix], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "dataset_open(%s) failed: %s" % (spec, r.stderr))
        with open(prefix + ".meta") as f:
            head = [int(x) for x in f.readline().split()]
            source = f.readline().rstrip("\n")
        n, c, h, w, has_labels, _, skipped, _ = head
        out = {"shape": (n, c, h, w), "skipped": skipped, "source": source}
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
        return r.stderr

    # ---- PngSuite ------------------------------------------------------------

    def test_pngsuite_oracles(self):
        pngs = sorted(f for f in os.listdir(os.path.join(PNGSUITE, "png")) if f.endswith(".png"))
        out = tempfile.mkdtemp(dir=self.tmp)
        r = subprocess.run([DECODE, out] + [os.path.join(PNGSUITE, "png", f) for f in pngs], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = {ln.split()[1]: ln.split(maxsplit=5) for ln in r.stdout.splitlines()}
        self.assertEqual(len(lines), len(pngs))
        checked = 0
        for f in pngs:
            rec = lines[f]
            if f.startswith("x"):
                self.assertEqual(rec[0], "err", "corrupt %s was accepted" % f)
                self.assertEqual(int(rec[2]), AE_EFORMAT)
                self.assertIn(f, rec[3] + " " + rec[4] + " " + (rec[5] if len(rec) > 5 else ""))
                continue
            self.assertEqual(rec[0], "ok", "valid %s refused: %s" % (f, " ".join(rec[2:])))
            w, h, ch = int(rec[2]), int(rec[3]), int(rec[4])
            got = np.fromfile(os.path.join(out, f + ".raw"), np.uint8).reshape(h, w, ch)
            rgba = np.empty((h, w, 4), np.int64)
            rgba[..., :3] = got[..., :1] if ch <= 2 else got[..., :3]
            rgba[..., 3] = got[..., -1] if ch in (2, 4) else 255
            base = os.path.join(PNGSUITE, "json", f[:-4])
            to8 = base + "_to8.json"
            with open(to8 if os.path.exists(to8) else base + ".json") as jf:
                want = np.array(json.load(jf), np.int64).reshape(h, w, 4)
            sixteen = f[:-4].endswith("16")
            if sixteen and not os.path.exists(to8):  # 16-bit oracle without an 8-bit twin
                want = (want * 255 + 32767) // 65535
            tol = 1 if sixteen else 0
            err = np.abs(rgba - want)
            self.assertLessEqual(err.max(), tol, "%s: max error %d at %s" % (f, err.max(), np.unravel_index(err.argmax(), err.shape)))
            checked += 1
        self.assertEqual(checked, 161)

    # ---- Pillow-written folders ----------------------------------------------

    def pil_images(self):
        """(relative name, PIL image) of every mode Pillow writes, odd sizes."""
        rng = self.rng
        rgba = rng.integers(0, 256, (23, 31, 4), dtype=np.uint8)
        rgba[:3, :, 3] = 0  # fully transparent rows
        out = [
            ("a/rgb.png", Image.fromarray(rng.integers(0, 256, (17, 29, 3), dtype=np.uint8))),
            ("a/rgba.png", Image.fromarray(rgba, "RGBA")),
            ("a/grey.png", Image.fromarray(rng.integers(0, 256, (40, 12), dtype=np.uint8))),
            ("b/la.png", Image.fromarray(rng.integers(0, 256, (15, 15, 2), dtype=np.uint8), "LA")),
            ("b/bits.png", Image.fromarray(rng.integers(0, 2, (9, 33), dtype=np.uint8).astype(bool))),
            ("b/tiny.png", Image.fromarray(np.array([[200]], np.uint8))),
        ]
        pal = Image.fromarray(rng.integers(0, 16, (21, 19), dtype=np.uint8), "P")
        pal.putpalette(list(rng.integers(0, 256, 48)))
        pal.info["transparency"] = 3
        out.append(("b/palette_trns.png", pal))
        out.append(("c/photo.jpg", Image.fromarray(rng.integers(0, 256, (26, 34, 3), dtype=np.uint8))))
        out.append(("c/grey.jpeg", Image.fromarray(rng.integers(0, 256, (16, 24), dtype=np.uint8))))
        out.append(("c/cmyk.JPG", Image.fromarray(rng.integers(0, 256, (12, 20, 4), dtype=np.uint8), "CMYK")))
        out.append(("root.png", Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))))
        return out

    def write_folder(self, images):
        root = self.path("imgs", "x").rsplit("/", 1)[0]
        for name, im in images:
            p = self.path("imgs", name)
            if name.lower().endswith((".jpg", ".jpeg")):
                im.save(p, quality=90)
            else:
                im.save(p)
        return root

    def test_folder_pipeline(self):
        images = self.pil_images()
        root = self.write_folder(images)
        with open(os.path.join(root, "README.txt"), "w") as f:
            f.write("not an image\n")
        os.makedirs(os.path.join(root, ".hidden"))
        Image.new("RGB", (5, 5)).save(os.path.join(root, ".hidden", "skip.png"))
        order = sorted(images, key=lambda t: t[0].encode())
        classes = sorted({n.split("/")[0] for n, _ in images if "/" in n})
        for C, (H, W), fit, bg in ((3, (10, 14), "crop", (255, 255, 255)), (1, (12, 12), "squash", (0, 0, 0)),
                                   (3, (37, 45), "crop", (16, 128, 255))):
            spec = "folder:%s?size=%dx%d&channels=%d&fit=%s&bg=%02x%02x%02x" % ((root, H, W, C, fit) + bg)
            got = self.dump(spec)
            self.assertEqual(got["shape"], (len(images), C, H, W))
            self.assertEqual(got["names"], [n for n, _ in order])
            want_lab = [classes.index(n.split("/")[0]) if "/" in n else -1 for n, _ in order]
            self.assertEqual(list(got["labels"]), want_lab)
            for i, (name, _) in enumerate(order):
                want = expected(Image.open(os.path.join(root, name)), C, H, W, bg, fit)
                self.assertTrue(np.array_equal(got["pixels"][i], want),
                                "%s %s: max diff %d" % (spec, name, np.abs(got["pixels"][i].astype(int) - want).max()))

    def test_folder_default_size_and_list_file(self):
        rng = self.rng
        ims = [Image.fromarray(rng.integers(0, 256, (8 + i, 12, 3), dtype=np.uint8)) for i in range(4)]
        for i, im in enumerate(ims):
            im.save(self.path("l", "img %d.png" % i))
        lst = self.path("l", "list.txt")
        with open(lst, "w") as f:
            f.write("# comment\n\nimg 2.png 7\r\n%s -3\nimg 0.png\t12\n" % os.path.join(self.tmp, "l", "img 1.png"))
        got = self.dump(lst)  # .txt: a list file; size from the first image (10x12)
        self.assertEqual(got["shape"], (3, 3, 10, 12))
        self.assertEqual(list(got["labels"]), [7, -3, 12])
        self.assertEqual(got["names"][0], "img 2.png")
        for i, k in enumerate((2, 1, 0)):
            self.assertTrue(np.array_equal(got["pixels"][i], expected(ims[k], 3, 10, 12)))
        # A folder without sub-folders: no labels; the first image's size.
        got = self.dump("folder:" + os.path.join(self.tmp, "l") + "?channels=1")
        self.assertIsNone(got["labels"])
        self.assertEqual(got["shape"], (4, 1, 8, 12))

    def test_area_filter_matches_pillow_box(self):
        for (h, w), (H, W) in (((32, 48), (8, 12)), ((30, 30), (10, 10)), ((64, 64), (16, 16))):
            a = self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).save(self.path("box", "%dx%d.png" % (h, w)))
            got = self.dump("folder:%s?size=%dx%d&fit=squash" % (self.path("box", "%dx%d.png" % (h, w)).rsplit("/", 1)[0], H, W))
            box = np.asarray(Image.fromarray(a).resize((W, H), Image.BOX)).transpose(2, 0, 1)
            self.assertLessEqual(np.abs(got["pixels"][0].astype(int) - box).max(), 1)
            os.remove(self.path("box", "%dx%d.png" % (h, w)))

    # ---- bad files in folders --------------------------------------------------

    def test_bad_files_in_folders(self):
        rng = self.rng
        root = self.path("bad", "x").rsplit("/", 1)[0]
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(self.path("bad", "k", "%d.png" % i))
        raw = bytearray(read_bytes(self.path("bad", "k", "1.png")))
        at = raw.find(b"IDAT")
        raw[at + 4 + struct.unpack(">I", raw[at - 4 : at])[0]] ^= 0xFF  # IDAT's CRC field
        crc = self.path("bad", "k", "crc.png")
        with open(crc, "wb") as f:
            f.write(bytes(raw))
        self.refused("folder:" + root, AE_EFORMAT, crc, "CRC")
        got = self.dump("folder:%s?skip_bad=1" % root)
        self.assertEqual(got["shape"][0], 3)
        self.assertEqual(got["skipped"], 1)
        self.assertIn("crc.png", got["source"])
        self.assertNotIn("k/crc.png", got["names"])
        # Truncated JPEG (libjpeg only warns: refused here).
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(self.path("jb", "t.jpg"))
        full = read_bytes(self.path("jb", "t.jpg"))
        write_bytes(self.path("jb", "t.jpg"), full[: len(full) // 2])
        self.refused("folder:" + self.path("jb", "t.jpg").rsplit("/", 1)[0], AE_EFORMAT, "t.jpg")
        # Unreadable file: a dangling symlink named like an image.
        d = self.path("dang", "x").rsplit("/", 1)[0]
        Image.new("RGB", (4, 4)).save(os.path.join(d, "ok.png"))
        os.symlink(os.path.join(d, "missing"), os.path.join(d, "gone.png"))
        self.refused("folder:" + d, AE_EIO, "gone.png")
        self.assertEqual(self.dump("folder:%s?skip_bad=1" % d)["skipped"], 1)
        # Empty folder; a folder whose only image is bad even with skip_bad.
        e = self.path("empty", "x").rsplit("/", 1)[0]
        self.refused("folder:" + e, AE_EIO, e)
        self.refused(e, AE_EIO, e)
        only = self.path("only", "a.png")
        write_bytes(only, b"\x89PNG\r\n\x1a\n")
        self.refused("folder:%s?skip_bad=1" % os.path.dirname(only), AE_EFORMAT)
        # 0x1 and 1x0 images (IHDR with a valid CRC): smaller than 1x1.
        for w, h in ((0, 1), (1, 0)):
            ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
            data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0\0")) + \
                png_chunk(b"IEND", b"")
            p = self.path("zero%d" % w, "z.png")
            write_bytes(p, data)
            self.refused("folder:" + os.path.dirname(p), AE_EFORMAT, p)
        # Decompression bomb guard: more pixels than max_pixels.
        big = self.path("big", "b.png")
        Image.new("L", (300, 200)).save(big)
        err = self.refused("folder:%s?max_pixels=50000" % os.path.dirname(big), AE_EFORMAT, big, "max_pixels")
        self.assertIn("PNG too large: 300x200 pixels", err)
        self.assertIn("decompression bombs", err)
        self.assertNotIn("damaged", err)
        bigj = self.path("bigj", "b.jpg")
        Image.new("RGB", (300, 200)).save(bigj, "JPEG")
        err = self.refused("folder:%s?max_pixels=50000" % os.path.dirname(bigj), AE_EFORMAT, bigj)
        self.assertIn("JPEG too large: 300x200 pixels", err)
        self.assertNotIn("damaged", err)
        # A side over libpng's limit (65,535), declared by the IHDR alone.
        ihdr = struct.pack(">IIBBBBB", 70000, 1, 8, 0, 0, 0, 0)
        wide = self.path("wide", "w.png")
        write_bytes(wide, b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b""))
        err = self.refused("folder:" + os.path.dirname(wide), AE_EFORMAT, wide, "PNG too large")
        self.assertNotIn("damaged", err)
        # Bad options.
        self.refused("folder:%s?size=0x4" % d, AE_EARG, "size")
        self.refused("folder:%s?bogus=1" % d, AE_EARG, "bogus")
        self.refused("nosuchkind:%s" % d, AE_EARG, "nosuchkind")
        lst = self.path("lists", "bad.txt")
        write_bytes(lst, "a.png 99999999999\n")
        self.refused(lst, AE_EFORMAT, lst)
        write_bytes(lst, "# only comments\n\n")
        self.refused(lst, AE_EFORMAT, lst)


if __name__ == "__main__":
    unittest.main()
