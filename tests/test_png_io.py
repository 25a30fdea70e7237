#!/usr/bin/python3
"""test_png_io.py - PNG writing (src/data/png_io.c) checked with PIL and numpy.

build/tests/tool_png_write writes seeded pseudo-random images as PNGs and
dumps its input pixels raw.  PIL (an independent PNG decoder) reads the PNGs
back; the expected pixels are built here with numpy from the raw dump:
CHW -> HWC transposition, clamping/rounding floor(clip(x,0,1)*255 + 0.5)
(NaN -> 0), integer nearest upscaling, grid placement and grey padding.
Error cases: unwritable outputs give a non-zero exit, a message naming the
file, and leave neither the file nor a temporary behind.
Runs in well under a second.  Exit code 0 = pass.
"""
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_png_write")
PAD_GREY = 128  # PNG_GRID_PAD_GREY in include/data/png_io.h

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def run_tool(*args, **kw):
    return subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True, **kw)


def read_png(path):
    with Image.open(path) as im:
        im.load()
        return im.mode, np.array(im)


def test_chw(tmp, C, H, W, seed):
    out, raw = os.path.join(tmp, f"chw{C}.png"), os.path.join(tmp, f"chw{C}.raw")
    r = run_tool("chw", out, C, H, W, seed, raw)
    check(r.returncode == 0, f"chw C={C}: tool exit 0 ({r.stderr.strip()})")
    if r.returncode:
        return
    pix = np.fromfile(raw, dtype=np.uint8).reshape(C, H, W)
    mode, got = read_png(out)
    want_mode = "L" if C == 1 else "RGB"
    check(mode == want_mode, f"chw C={C}: PIL mode {mode} == {want_mode}")
    want = pix[0] if C == 1 else pix.transpose(1, 2, 0)
    check(got.shape == want.shape, f"chw C={C}: shape {got.shape} == {want.shape}")
    check(got.shape == want.shape and np.array_equal(got, want), f"chw C={C}: pixels equal the CHW dump")


def expected_grid(img, rows, cols, scale, pad):
    """Reference: nearest upscaling by np.repeat, placed per the documented layout."""
    n, C, H, W = img.shape
    x = img.astype(np.float64)
    u8 = np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5)
    u8 = np.where(np.isnan(x), 0.0, u8).astype(np.uint8)
    gh, gw = pad + rows * (H * scale + pad), pad + cols * (W * scale + pad)
    grid = np.full((gh, gw, C), PAD_GREY, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y0, x0 = pad + r * (H * scale + pad), pad + c * (W * scale + pad)
        tile = np.repeat(np.repeat(u8[i].transpose(1, 2, 0), scale, axis=0), scale, axis=1)
        grid[y0:y0 + H * scale, x0:x0 + W * scale, :] = tile
    return grid[:, :, 0] if C == 1 else grid


def test_grid(tmp, name, N, rows, cols, C, H, W, scale, pad, seed):
    out, raw = os.path.join(tmp, f"{name}.png"), os.path.join(tmp, f"{name}.raw")
    r = run_tool("grid", out, N, rows, cols, C, H, W, scale, pad, seed, raw)
    check(r.returncode == 0, f"grid {name}: tool exit 0 ({r.stderr.strip()})")
    if r.returncode:
        return
    img = np.fromfile(raw, dtype=np.float32).reshape(N, C, H, W)
    mode, got = read_png(out)
    want = expected_grid(img, rows, cols, scale, pad)
    check(mode == ("L" if C == 1 else "RGB"), f"grid {name}: PIL mode {mode}")
    check(got.shape == want.shape, f"grid {name}: size {got.shape} == {want.shape}")
    if got.shape == want.shape:
        bad = np.argwhere(got != want)
        check(bad.size == 0, f"grid {name}: pixels equal the numpy reference"
              + (f" (first mismatch at {tuple(bad[0])}: got {got[tuple(bad[0])]}, "
                 f"want {want[tuple(bad[0])]}; {len(bad)} mismatches)" if bad.size else ""))
    # The data must actually exercise clamping and rounding.
    check(np.any(img > 1) and np.any(img < 0) and np.any(np.isnan(img)),
          f"grid {name}: input covers out-of-range and NaN values")


def leftovers(folder, stem):
    return [f for f in os.listdir(folder) if f.startswith(stem)]


def expect_failure(tmp, what, out, folder, run=None, **kw):
    r = run(out) if run else run_tool("chw", out, 3, 8, 8, 1, "-", **kw)
    check(r.returncode != 0, f"{what}: non-zero exit ({r.returncode})")
    check(out in r.stderr, f"{what}: message names {out}: {r.stderr.strip()!r}")
    if os.path.isdir(folder):
        left = leftovers(folder, os.path.basename(out))
        check(not left, f"{what}: no file or temporary left behind {left}")


def test_errors(tmp):
    # Folder does not exist.
    missing = os.path.join(tmp, "no_such_dir")
    expect_failure(tmp, "missing folder", os.path.join(missing, "x.png"), missing)
    check(not os.path.exists(missing), "missing folder: not created")

    # A path component is a regular file.
    afile = os.path.join(tmp, "plainfile")
    open(afile, "w").close()
    expect_failure(tmp, "parent is a file", os.path.join(afile, "x.png"), tmp)

    # Read-only folder.  root ignores permission bits, so as root the tool runs
    # as user nobody (setpriv, util-linux) in a world-readable scratch folder.
    ro = tempfile.mkdtemp(prefix="aesim_png_ro_")
    try:
        os.chmod(ro, 0o555)
        out = os.path.join(ro, "x.png")
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            check(setpriv is not None, "read-only folder: setpriv available to drop root")
            tool = os.path.abspath(TOOL)
            if setpriv:
                runner = lambda o: subprocess.run(
                    [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", tool, "chw", o,
                     "1", "4", "4", "1", "-"], capture_output=True, text=True)
                expect_failure(tmp, "read-only folder", out, ro, run=runner)
        else:
            expect_failure(tmp, "read-only folder", out, ro)
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(ro)

    # The write itself fails part-way (file size limit -> EFBIG): exercises
    # the libpng error / flush error path, not just the open.
    def limit_fsize():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    out = os.path.join(tmp, "toobig.png")
    expect_failure(tmp, "write fails part-way (EFBIG)", out, tmp,
                   run=lambda o: run_tool("grid", o, 4, 2, 2, 3, 28, 28, 4, 2, 9, "-", preexec_fn=limit_fsize))

    # Bad channel count: AE_EARG, no file.
    out = os.path.join(tmp, "c2.png")
    r = run_tool("chw", out, 2, 4, 4, 1, "-")
    check(r.returncode != 0 and "channels" in r.stderr and not os.path.exists(out),
          f"C=2 rejected with a message: {r.stderr.strip()!r}")
    # Too many images for the grid.
    out = os.path.join(tmp, "over.png")
    r = run_tool("grid", out, 7, 2, 3, 1, 4, 4, 1, 1, 1, "-")
    check(r.returncode != 0 and "grid" in r.stderr and not os.path.exists(out),
          f"7 images in a 2x3 grid rejected: {r.stderr.strip()!r}")


def test_overwrite(tmp):
    out = os.path.join(tmp, "over_write.png")
    with open(out, "w") as f:
        f.write("old contents")
    r = run_tool("chw", out, 1, 3, 2, 5, "-")
    check(r.returncode == 0, "overwrite: tool exit 0")
    mode, got = read_png(out)
    check(got.shape == (3, 2), "overwrite: existing file replaced by the PNG")
    check(not [f for f in leftovers(tmp, "over_write.png") if f != "over_write.png"],
          "overwrite: no temporary left")


def main():
    if not os.access(TOOL, os.X_OK):
        print(f"FAIL  {TOOL} not built (run make test)")
        return 1
    base = os.environ.get("AESIM_TEST_TMP") or tempfile.gettempdir()
    tmp = tempfile.mkdtemp(prefix="png_io_", dir=base)
    try:
        test_chw(tmp, 1, 7, 5, 11)
        test_chw(tmp, 3, 6, 11, 12)
        test_grid(tmp, "grey_partial", 5, 2, 3, 1, 4, 3, 3, 2, 21)
        test_grid(tmp, "rgb", 4, 2, 2, 3, 5, 4, 2, 1, 22)
        test_grid(tmp, "rgb_nopad_noscale", 6, 3, 2, 3, 3, 5, 1, 0, 23)
        test_grid(tmp, "fashion_like", 16, 2, 8, 1, 28, 28, 4, 2, 24)
        test_errors(tmp)
        test_overwrite(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
