#!/usr/bin/python3
"""test_sheet.py - the contact sheet of `aesim-search query --sheet` (issue 13,
item 18): a gap between the query and its neighbours, each neighbour's
distance and label under it, Fashion-MNIST's class names.

Set-up: a model trained for one step on 200 Fashion-MNIST test images
(Debian's dataset-fashion-mnist), a database of those images, 3 queries, k=4.
Checks against references outside aesim:
- every neighbour tile is the database image of the id the TSV names, as
  numpy reads it from the IDX file, scaled by pixel replication;
- the TSV's labels are those of the labels file read here with gzip, and the
  caption names them with Zalando's class names (the Fashion-MNIST README);
- the caption pixels are the text "d=<distance, 3 significant digits>" and
  the class name drawn with the 5x7 font of src/sheet.c (parsed from the
  source), at the documented place;
- between the query tile and the first neighbour there is a band of at least
  12 pixels with no image pixels (white, and a grey rule).
"""
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
FASHION = "/usr/share/datasets/fashion-mnist"
IMAGES = os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")
LABELS = os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")
# Zalando's README (github.com/zalandoresearch/fashion-mnist), labels 0..9.
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Layout constants of include/sheet.h and src/search.c (SHEET_TILE_PX 64: 28x28 tiles scale x3).
PAD, GLYPH_H, ADV, GAP, SCALE = 2, 7, 6, 14, 3
CAPTION_H = 2 * (GLYPH_H + 2) + 2
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
N, Q, K = 200, 3, 4

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def font():
    """{char: 7 row bitmasks} parsed from src/sheet.c."""
    with open(os.path.join(ROOT, "src", "data", "sheet.c")) as f:
        src = f.read()
    glyphs = {}
    for ch, rows in re.findall(r"\{ '(.|\\\\)', \{ ([^}]*) \} \}", src):
        glyphs[ch] = [int(v, 0) for v in rows.split(",")]
    return glyphs


def render(text, width, glyphs):
    """The caption line as the sheet draws it: 7 x width, 0 = ink, 255 = paper."""
    out = np.full((GLYPH_H, width), 255, np.uint8)
    most = width // ADV
    for i, ch in enumerate(text[:most]):
        if i == most - 1 and len(text) > most:
            ch = "+"
        rows = glyphs.get(ch, glyphs["?"])
        for r in range(GLYPH_H):
            for b in range(5):
                if rows[r] & (0x10 >> b):
                    out[r, i * ADV + b] = 0
    return out


def run(*cmd):
    p = subprocess.run(list(cmd), env=ENV, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"FAIL  {' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def main():
    if not os.path.exists(IMAGES):
        print(f"FAIL  {IMAGES} missing (Debian package dataset-fashion-mnist)")
        return 1
    tmp = tempfile.mkdtemp(prefix="sheet_", dir=os.environ.get("AESIM_TEST_TMP") or None)
    try:
        with gzip.open(IMAGES) as f:
            imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:N]
        with gzip.open(LABELS) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)[:N]
        data = os.path.join(tmp, "fashion-mnist-images-idx3-ubyte")
        with open(data, "wb") as f:
            f.write(np.array([0x803, N, 28, 28], ">u4").tobytes() + imgs.tobytes())
        with open(os.path.join(tmp, "fashion-mnist-labels-idx1-ubyte"), "wb") as f:
            f.write(np.array([0x801, N], ">u4").tobytes() + labels.tobytes())
        run(TRAIN, "--data", data, "--val", data, "--val-limit", "20", "--max-steps", "1", "--batch-size", "32",
            "--grid", "0", "--out", os.path.join(tmp, "run"), "--threads", "1")
        ck = os.path.join(tmp, "run", "checkpoint.npz")
        db = os.path.join(tmp, "db")
        run(SEARCH, "index", "--model", ck, "--data", data, "--db", db, "--threads", "1")
        sheet = os.path.join(tmp, "sheet.png")
        tsv = run(SEARCH, "query", "--model", ck, "--db", db, "--k", str(K), "--data", data, "--ids",
                  f"0-{Q - 1}", "--sheet", sheet, "--threads", "1").stdout
        rows = [l.split("\t") for l in tsv.splitlines()[1:]]
        check(len(rows) == Q * K, f"{Q * K} results ({len(rows)})")
        im = np.asarray(Image.open(sheet).convert("L"))
        tile = 28 * SCALE
        width = PAD + (1 + K) * (tile + PAD) + GAP
        height = PAD + Q * (tile + CAPTION_H + PAD)
        check(im.shape == (height, width), f"sheet size {im.shape} == {(height, width)}")
        if im.shape != (height, width):
            return 1
        glyphs = font()
        check(len(glyphs) >= 66, f"font parsed ({len(glyphs)} glyphs)")
        # Lower case has its own shapes (class names are drawn as written):
        # 26 glyphs, none equal to its capital, and d is not D.
        lower = [c for c in "abcdefghijklmnopqrstuvwxyz" if c in glyphs]
        check(len(lower) == 26 and all(glyphs[c] != glyphs[c.upper()] for c in lower), "a-z glyphs of their own")
        for r in rows:
            q, rank, idx, dist, label = int(r[0]), int(r[1]), int(r[2]), float(r[3]), int(r[4])
            check(label == labels[idx], f"query {q} rank {rank}: TSV label {label} == labels file {labels[idx]}")
            y = PAD + q * (tile + CAPTION_H + PAD)
            x = PAD + rank * (tile + PAD) + GAP
            want = np.kron(imgs[idx], np.ones((SCALE, SCALE), np.uint8))
            check(np.array_equal(im[y:y + tile, x:x + tile], want), f"query {q} rank {rank}: tile is image {idx}")
            for line, text in enumerate((f"d={dist:.3g}", NAMES[label])):
                ty = y + tile + PAD + 1 + line * (GLYPH_H + 2)
                got = im[ty:ty + GLYPH_H, x:x + tile]
                check(np.array_equal(got, render(text, tile, glyphs)), f"query {q} rank {rank}: caption {text!r}")
        # The gap: from the query's frame to the first neighbour's frame, no image pixel.
        for q in range(Q):
            y = PAD + q * (tile + CAPTION_H + PAD)
            band = im[y:y + tile, PAD + tile + PAD:PAD + tile + PAD + GAP - PAD]
            check(band.shape[1] >= 12 and set(np.unique(band)) <= {128, 255},
                  f"query {q}: a gap of {band.shape[1]} px of paper and rule before the neighbours")
            want = np.kron(imgs[q], np.ones((SCALE, SCALE), np.uint8))
            check(np.array_equal(im[y:y + tile, PAD:PAD + tile], want), f"query {q}: query tile is image {q}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
