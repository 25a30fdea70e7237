"""test_png_read.py - src/png_read.c (png_read_chw) on the PngSuite images.

Runs build/tests/tool_png_read (AESIM_BUILD names the build folder) on every
file of /work/shared/data/pngsuite/png (see SOURCE.txt there) and compares
with references nobody here wrote:
  * RGB (C = 3) of every valid file equals the RGB of its decoded-pixel JSON
    oracle (json/NAME.json: flat [r,g,b,a,...], grey and palette expanded,
    samples as stored, alpha dropped since aesim does not composite); for
    the 16-bit files the oracle holds 16-bit values and the expected 8-bit
    sample is round(v * 255 / 65535) (what png_set_scale_16 computes);
  * grey (C = 1) of every grey file equals the oracle's first channel; of a
    colour file, it is the BT.709 luma 0.2126 R + 0.7152 G + 0.0722 B of the
    oracle's samples rounded to the nearest level (within 0.5 + 0.03: the
    integer weights of png_read.h differ from BT.709 by < 1e-4 each);
  * the 14 deliberately corrupt x*.png files are refused (exit 1, AE_EFORMAT
    naming the file), never crash; a size other than H x W is refused with
    AE_ESHAPE and "does not resize".
Exit code 0 = pass.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_png_read")
SUITE = "/work/shared/data/pngsuite"
AE_EFORMAT, AE_ESHAPE = 2, 3
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def ihdr(path):
    with open(path, "rb") as f:
        head = f.read(29)
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def run(path, C, H, W, out):
    p = subprocess.run([TOOL, path, str(C), str(H), str(W), out], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr


def main():
    tmp = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
    out = os.path.join(tmp, "png_read.raw")
    names = sorted(f[:-4] for f in os.listdir(os.path.join(SUITE, "png")) if f.endswith(".png"))
    checked = 0
    for name in names:
        path = os.path.join(SUITE, "png", name + ".png")
        if name.startswith("x"):
            rc, err = run(path, 3, 32, 32, out)
            check(rc == 1 and err.startswith(f"code {AE_EFORMAT} ") and path in err, f"{name}: not refused: {rc} {err}")
            continue
        w, h, depth, ctype = ihdr(path)
        with open(os.path.join(SUITE, "json", name + ".json")) as f:
            ref = np.array(json.load(f), dtype=np.int64).reshape(h, w, 4)
        if depth == 16:
            ref = (ref * 255 + 32767) // 65535  # round(v * 255 / 65535), exact in integers
        rgb = ref[:, :, :3].transpose(2, 0, 1)
        rc, err = run(path, 3, h, w, out)
        check(rc == 0, f"{name}: C=3 failed: {err}")
        if rc == 0:
            got = np.fromfile(out, np.uint8).reshape(3, h, w)
            bad = np.abs(got.astype(np.int64) - rgb)
            check(bad.max() == 0, f"{name}: RGB differs from the oracle at {np.argwhere(bad)[:3].tolist()} (max {bad.max()})")
        rc, err = run(path, 1, h, w, out)
        check(rc == 0, f"{name}: C=1 failed: {err}")
        if rc == 0:
            got = np.fromfile(out, np.uint8).reshape(h, w).astype(np.int64)
            if ctype in (0, 4):
                check(np.array_equal(got, rgb[0]), f"{name}: grey differs from the oracle")
            else:
                luma = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
                check(np.abs(got - luma).max() <= 0.53, f"{name}: grey differs from BT.709 luma by "
                      f"{np.abs(got - luma).max():.2f}")
        checked += 1
    # A valid file of another size than asked.
    rc, err = run(os.path.join(SUITE, "png", "basn0g08.png"), 1, 28, 28, out)
    check(rc == 1 and err.startswith(f"code {AE_ESHAPE} ") and "does not resize" in err, f"size: {rc} {err}")
    rc, err = run(os.path.join(tmp, "does-not-exist.png"), 1, 28, 28, out)
    check(rc == 1 and "does-not-exist.png" in err, f"missing file: {rc} {err}")
    check(checked == 161, f"checked {checked} valid files, expected 161")
    for f in failures:
        print("FAIL", f)
    print(f"test_png_read: {checked} files, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
