#!/usr/bin/python3
"""test_class_names.py - class names in query results and contact sheets
(issue 13, item 18): `aesim-search query` shows each neighbour's class name in
the `class` column (TSV and JSON) and in the sheet's caption, from
- `--class-names FILE` in the ILSVRC devkit's map_clsloc.txt form
  ("WNID LABEL NAME", labels 1-based as in the downsampled-ImageNet files),
  on the real ImageNet sample: the expected name of every result is taken from
  the sample's own names file (row i came from WNID_NAME.JPEG), independent of
  aesim; the map file is written here in shuffled order, as the devkit's is
  not sorted;
- `--class-names FILE` with one name per line (line 1 = label 0);
- an image folder's class sub-folders (recorded in the database's manifest),
  and the same folder packed with aesim-pack (the store's classes), in the
  results and in the sheet's captions;
- a damaged map file: one error line naming the file and the line, exit 1,
  no --out file written.
The sheet's caption pixels are compared with the text rendered by
test_sheet.py's reading of the 5x7 font in src/data/sheet.c.
"""
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sheet as ts  # noqa: E402  (font parsing and caption rendering)

ROOT = ts.ROOT
SAMPLE = os.path.join(os.path.dirname(ROOT), "shared", "data", "imagenet-sample")
if not os.path.isdir(SAMPLE):
    SAMPLE = "/work/shared/data/imagenet-sample"
K = 3
check = ts.check
failures = ts.failures


def run(*cmd, ok=True):
    p = subprocess.run([str(c) for c in cmd], env=ts.ENV, capture_output=True, text=True, timeout=300)
    if ok and p.returncode != 0:
        raise SystemExit(f"FAIL  {' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def train_one_step(tmp, data, name):
    out = os.path.join(tmp, name)
    run(ts.TRAIN, "--data", data, "--val", data, "--val-limit", "8", "--max-steps", "1", "--batch-size", "8",
        "--grid", "0", "--out", out, "--threads", "1")
    return os.path.join(out, "checkpoint.npz")


def tsv_rows(text):
    lines = text.splitlines()
    head = lines[0].split("\t")
    return head, [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def check_captions(sheet, rows, tile, what):
    """Each neighbour's second caption line on the sheet is its row's class,
    drawn as test_sheet.py reads src/data/sheet.c's font."""
    with Image.open(sheet) as f:
        im = np.asarray(f.convert("L"))
    glyphs = ts.font()
    for r in rows:
        q, rank = int(r["query"]), int(r["rank"])
        y = ts.PAD + q * (tile + ts.CAPTION_H + ts.PAD)
        x = ts.PAD + rank * (tile + ts.PAD) + ts.GAP
        ty = y + tile + ts.PAD + 1 + (ts.GLYPH_H + 2)
        got = im[ty:ty + ts.GLYPH_H, x:x + tile]
        check(r["class"] != "" and np.array_equal(got, ts.render(r["class"], tile, glyphs)),
              f"{what} query {q} rank {rank}: caption {r['class']!r}")


def imagenet_devkit(tmp):
    data = os.path.join(SAMPLE, "sample32_data_batch.npz")
    labels = np.load(data)["labels"]
    with open(os.path.join(SAMPLE, "sample32_names.txt")) as f:
        files = [l.strip() for l in f if l.strip()]
    # Row i came from WNID_NAME.JPEG: the name of label labels[i] is NAME.
    by_label = {}
    for lab, fn in zip(labels, files):
        wnid, name = fn.rsplit(".", 1)[0].split("_", 1)
        by_label[int(lab)] = (wnid, name)
    lines = [f"{w} {lab} {n}" for lab, (w, n) in by_label.items()]
    random.Random(7).shuffle(lines)
    mapf = os.path.join(tmp, "map_clsloc.txt")
    with open(mapf, "w") as f:
        f.write("\n".join(lines) + "\n")
    ck = train_one_step(tmp, data, "run_in")
    db = os.path.join(tmp, "db_in")
    run(ts.SEARCH, "index", "--model", ck, "--data", data, "--db", db, "--threads", "1")
    sheet = os.path.join(tmp, "in.png")
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", K, "--data", data, "--ids", "0-2", "--sheet", sheet,
            "--class-names", mapf, "--threads", "1")
    head, rows = tsv_rows(p.stdout)
    check(head[-1] == "class", f"TSV header ends with a class column ({head})")
    check(len(rows) == 3 * K, f"{3 * K} results")
    for r in rows:
        want = by_label[int(r["label"])][1]
        check(r["class"] == want, f"imagenet id {r['id']} label {r['label']}: class {r['class']!r} == {want!r}")
    # The sheet's captions: 32x32 tiles scaled x2 (64 px): at most 10 characters.
    check_captions(sheet, rows, 32 * 2, "imagenet")
    # JSON carries the same names.
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", K, "--data", data, "--ids", "0", "--json",
            "--class-names", mapf, "--threads", "1")
    res = json.loads(p.stdout)["queries"][0]["results"]
    check(all(x["class"] == by_label[x["label"]][1] for x in res), "JSON results carry the class names")
    # Without --class-names: no names for ImageNet labels (empty column, JSON null).
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", K, "--data", data, "--ids", "0", "--json",
            "--threads", "1")
    check(all(x["class"] is None for x in json.loads(p.stdout)["queries"][0]["results"]),
          "without --class-names the class is null")
    # A damaged map: line 3 is not "WNID LABEL NAME".
    bad = os.path.join(tmp, "bad_map.txt")
    with open(bad, "w") as f:
        f.write(lines[0] + "\n" + lines[1] + "\nkit fox\n")
    out = os.path.join(tmp, "bad_out.tsv")
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", K, "--data", data, "--ids", "0", "--class-names",
            bad, "--out", out, "--threads", "1", ok=False)
    err = p.stderr.strip().splitlines()
    check(p.returncode != 0 and err and "bad_map.txt line 3" in err[-1],
          f"damaged map: exit {p.returncode}, error names file and line ({err[-1] if err else ''})")
    check(not os.path.exists(out), "damaged map: no results file written")
    same = os.path.join(tmp, "twice.txt")
    with open(same, "w") as f:
        f.write(lines[0] + "\n" + lines[0] + "\n")
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", K, "--data", data, "--ids", "0", "--class-names",
            same, "--threads", "1", ok=False)
    check(p.returncode != 0 and "named twice" in p.stderr, "a label named twice is refused")


def fashion_folder(tmp):
    with gzip.open(ts.IMAGES) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:60]
    with gzip.open(ts.LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:60]
    # Folder classes: sub-folders named after two Fashion-MNIST classes, in an order
    # that differs from the label numbers, so a wrong mapping shows.
    folder = os.path.join(tmp, "folder")
    chosen = {7: "sneaker", 1: "trouser"}
    for lab, cls in chosen.items():
        os.makedirs(os.path.join(folder, cls))
        for i in np.flatnonzero(labels == lab)[:6]:
            Image.fromarray(imgs[i]).save(os.path.join(folder, cls, f"img{i:03d}.png"))
    data = os.path.join(tmp, "fm.npy")
    np.save(data, imgs[:, None])
    ck = train_one_step(tmp, data, "run_fm")
    for what, spec in (("folder", folder), ("store", os.path.join(tmp, "store.npz"))):
        if what == "store":
            run(ts.PACK, "--out", spec, "--channels", "1", folder)
        db = os.path.join(tmp, "db_" + what)
        run(ts.SEARCH, "index", "--model", ck, "--data", f"{spec}?channels=1" if what == "folder" else spec,
            "--db", db, "--threads", "1")
        sheet = os.path.join(tmp, what + ".png")
        p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", 4, "--data", data, "--ids", "0-1", "--threads",
                "1", "--sheet", sheet)
        _, rows = tsv_rows(p.stdout)
        # The source column names the file, whose folder is the class.
        ok = all(r["class"] == os.path.basename(os.path.dirname(r["source"].split("#")[0])) for r in rows)
        check(len(rows) == 8 and ok, f"{what}: class column = the image's sub-folder "
              f"({[(r['class'], r['source']) for r in rows[:2]]})")
        # 28x28 tiles scaled x3 (84 px): the sub-folder's name under each neighbour.
        check_captions(sheet, rows, 28 * 3, what)
    # One name per line: line 1 = label 0 (Fashion-MNIST's names reversed, so the order is tested).
    plain = os.path.join(tmp, "names.txt")
    rev = ts.NAMES[::-1]
    with open(plain, "w") as f:
        f.write("\n".join(rev) + "\n")
    db = os.path.join(tmp, "db_fm")
    run(ts.SEARCH, "index", "--model", ck, "--data", data, "--db", db, "--threads", "1")
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", 4, "--data", data, "--ids", "0-1", "--class-names",
            plain, "--threads", "1")
    _, rows = tsv_rows(p.stdout)
    # fm.npy has no labels: the class of a label-less image is empty.
    check(all(r["class"] == "" and r["label"] == "-1" for r in rows), "images without labels: empty class")
    lab_npz = os.path.join(tmp, "fm_lab.npz")
    np.savez(lab_npz, data=imgs.reshape(60, -1), labels=labels.astype(np.int64))
    db = os.path.join(tmp, "db_fml")
    run(ts.SEARCH, "index", "--model", ck, "--data", lab_npz + "?size=28x28", "--db", db, "--threads", "1")
    p = run(ts.SEARCH, "query", "--model", ck, "--db", db, "--k", 4, "--data", data, "--ids", "0-1", "--class-names",
            plain, "--threads", "1")
    _, rows = tsv_rows(p.stdout)
    check(len(rows) == 8 and all(r["class"] == rev[int(r["label"])] for r in rows),
          "one name per line: line i+1 names label i")


def main():
    if not os.path.exists(ts.IMAGES) or not os.path.isdir(SAMPLE):
        print("FAIL  Fashion-MNIST (dataset-fashion-mnist) or the ImageNet sample is missing")
        return 1
    ts.PACK = os.path.join(ROOT, ts.BUILD, "aesim-pack")
    tmp = tempfile.mkdtemp(prefix="classes_", dir=os.environ.get("AESIM_TEST_TMP") or None)
    try:
        imagenet_devkit(tmp)
        fashion_folder(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
