#!/usr/bin/python3
"""test_metrics.py - the metrics CSV (src/train/metrics.c), PSNR, and launch/plot_loss.sh.

build/tests/tool_metrics writes rows given on stdin through metrics_open /
metrics_append; Python's csv module (an independent parser) reads them back:
exact header, values equal to Python's own "%.9g" rendering of the inputs,
NaN -> empty field, inf -> "inf", '\n' line ends.  Resuming drops rows with
step > resume_step and a torn last line and keeps older rows byte for byte; a
file with the 7-column header of before issue 6 is resumed with its rows
padded by empty fields; a foreign header is refused.  PSNR is compared with numpy's
10*log10(1/mse) on real image pairs.  plot_loss.sh must produce a PNG that
PIL verifies, of the requested size, and fail clearly on a missing CSV, a CSV
without rows, or a missing gnuplot (a declared dependency: gnuplot-nox).
Runs in about a second.  Exit code 0 = pass.
"""
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_metrics")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT = os.path.join(ROOT, "launch", "plot_loss.sh")
HEADER = ["step", "epoch", "train_loss", "val_loss", "val_psnr_db", "images_per_s", "seconds",
          "allreduce_ms", "comm_ms", "overlap"]
# The header before issue 6 added the communication columns.
HEADER_V1 = HEADER[:7]

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def write(path, rows, resume=0, resume_step=0):
    """rows: tuples (step, 9 floats); floats passed with repr() (exact)."""
    text = "".join(" ".join([str(r[0])] + [repr(float(v)) for v in r[1:]]) + "\n" for r in rows)
    return subprocess.run([TOOL, "write", path, str(resume), str(resume_step)], input=text,
                          capture_output=True, text=True)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def field(v):
    """What a row field must read for the input v: empty for NaN, else %.9g."""
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "%.9g" % v


def check_rows(got_rows, want_rows, what):
    ok = len(got_rows) == len(want_rows)
    detail = f"{len(got_rows)} rows, want {len(want_rows)}"
    for g, w in zip(got_rows, want_rows):
        want = [str(w[0])] + [field(float(v)) for v in w[1:]]
        if g != want:
            ok, detail = False, f"row {g} != {want}"
            break
        # Numeric round trip of the non-empty fields (9 significant digits).
        for s, v in zip(g[1:], w[1:]):
            if s and not math.isinf(v) and abs(float(s) - v) > 5e-9 * abs(v):
                ok, detail = False, f"field {s} vs {v}"
    check(ok, f"{what}: rows round-trip ({detail})")


def rng_rows(rng, steps, val_every):
    rows = []
    for s in steps:
        val = s % val_every == 0
        mse = float(rng.uniform(1e-4, 0.1))
        exposed, comm = float(rng.uniform(0.1, 5)), float(rng.uniform(5, 10))
        rows.append((s, s / 37.0, float(rng.uniform(1e-4, 0.1)) * 1.0000001, mse if val else math.nan,
                     10 * math.log10(1 / mse) if val else math.nan, float(rng.uniform(100, 5000)),
                     s * 0.123456789, exposed, comm, 1 - exposed / comm))
    return rows


def test_roundtrip(tmp, rng):
    path = os.path.join(tmp, "m.csv")
    rows = rng_rows(rng, range(1, 8), 3)
    rows.append((8, 8 / 37.0, 1e-30, 0.0, math.inf, 1e6, 1e-300, math.nan, math.nan, math.nan))  # extremes, perfect PSNR
    r = write(path, rows)
    check(r.returncode == 0, f"write: exit 0 ({r.stderr.strip()})")
    raw = open(path, "rb").read()
    check(b"\r" not in raw and raw.endswith(b"\n"), "write: '\\n' line ends, file ends with a newline")
    data = read_csv(path)
    check(data[0] == HEADER, f"write: header exactly {','.join(HEADER)} (got {data[0]})")
    check(all(len(row) == 10 for row in data), "write: every row has 10 fields")
    check_rows(data[1:], rows, "write")
    check(data[2][3] == "" and data[2][4] == "" and data[3][3] != "", "write: NaN -> empty field only where NaN")
    check(data[8][4] == "inf" and float(data[8][4]) == math.inf, "write: +inf PSNR written as inf")
    return path, rows


def test_resume(tmp, rng, path, rows):
    before = open(path, "rb").read().split(b"\n")
    new = rng_rows(rng, range(4, 10), 2)  # steps 4.. again, with other values
    r = write(path, new, resume=1, resume_step=3)
    check(r.returncode == 0, f"resume: exit 0 ({r.stderr.strip()})")
    data = read_csv(path)
    steps = [int(row[0]) for row in data[1:]]
    check(steps == list(range(1, 10)), f"resume: steps 1..9 once each (got {steps})")
    check(data[0] == HEADER, "resume: header kept")
    check_rows(data[1:], rows[:3] + new, "resume")
    after = open(path, "rb").read().split(b"\n")
    check(after[:4] == before[:4], "resume: kept rows unchanged byte for byte")

    # A crash mid-row leaves a torn last line; resuming drops it.
    with open(path, "a") as f:
        f.write("10,0.27,0.0")
    extra = rng_rows(rng, [10], 5)
    r = write(path, extra, resume=1, resume_step=100)
    data = read_csv(path)
    check(r.returncode == 0 and [int(x[0]) for x in data[1:]] == list(range(1, 11)),
          "resume: torn last line dropped, new row appended cleanly")
    check_rows(data[-1:], extra, "resume after torn line")

    # Resume at an earlier checkpoint than everything: only the header remains.
    r = write(path, [], resume=1, resume_step=0)
    check(r.returncode == 0 and read_csv(path) == [HEADER], "resume at step 0: header only")

    # Resume when the file does not exist: a new file.
    fresh = os.path.join(tmp, "fresh.csv")
    r = write(fresh, rows[:2], resume=1, resume_step=50)
    check(r.returncode == 0 and read_csv(fresh)[0] == HEADER and len(read_csv(fresh)) == 3,
          "resume without a file: created with header")

    # Not resuming replaces an existing file.
    r = write(fresh, rows[2:3])
    data = read_csv(fresh)
    check(r.returncode == 0 and len(data) == 2 and data[1][0] == str(rows[2][0]),
          "no resume: existing file replaced")

    # A file of before issue 6 (7 columns): resumed, kept rows padded with
    # empty fields for the 3 new columns, new rows complete.
    old = os.path.join(tmp, "old.csv")
    with open(old, "w") as f:
        f.write(",".join(HEADER_V1) + "\n1,0.1,0.05,,,900,1.5\n2,0.2,0.04,0.03,15.2,950,3\n3,0.3,0.03,,,960,4.5\n")
    new_rows = rng_rows(rng, [3, 4], 2)
    r = write(old, new_rows, resume=1, resume_step=2)
    data = read_csv(old)
    check(r.returncode == 0 and data[0] == HEADER, f"resume on a 7-column file: new header ({r.stderr.strip()!r})")
    check(data[1:3] == [["1", "0.1", "0.05", "", "", "900", "1.5", "", "", ""],
                        ["2", "0.2", "0.04", "0.03", "15.2", "950", "3", "", "", ""]],
          f"resume on a 7-column file: kept rows padded with 3 empty fields ({data[1:3]})")
    check_rows(data[3:], new_rows, "resume on a 7-column file")

    # A foreign file is refused and left alone.
    foreign = os.path.join(tmp, "foreign.csv")
    with open(foreign, "w") as f:
        f.write("a,b,c\n1,2,3\n")
    r = write(foreign, rows[:1], resume=1, resume_step=5)
    check(r.returncode != 0 and foreign in r.stderr and "header" in r.stderr,
          f"resume on a foreign file: refused naming it ({r.stderr.strip()!r})")
    check(open(foreign).read() == "a,b,c\n1,2,3\n", "resume on a foreign file: file untouched")
    check(not [f for f in os.listdir(tmp) if ".tmp." in f], "no temporary files left")

    # Missing folder.
    bad = os.path.join(tmp, "nope", "m.csv")
    r = write(bad, rows[:1])
    check(r.returncode != 0 and bad in r.stderr, f"missing folder: error names the file ({r.stderr.strip()!r})")


def test_psnr(rng):
    a = rng.uniform(0, 1, size=(4, 1, 28, 28))
    mses = [float(np.mean((a[i] - np.clip(a[i] + rng.normal(0, s, a[i].shape), 0, 1)) ** 2))
            for i, s in enumerate([0.3, 0.1, 0.01, 0.001])]
    mses += [1.0, 0.5, 1e-12]
    r = subprocess.run([TOOL, "psnr", *[repr(m) for m in mses], "0", "-1", "nan"], capture_output=True, text=True)
    got = [float(x) for x in r.stdout.split()]
    want = [float(10 * np.log10(1.0 / m)) for m in mses]
    err = max(abs(g - w) / max(abs(w), 1e-300) for g, w in zip(got, want)) if len(got) >= len(want) else math.inf
    check(r.returncode == 0 and err < 1e-12, f"psnr matches numpy 10*log10(1/mse) (max rel err {err:.2e})")
    check(len(got) == len(mses) + 3 and got[-3] == math.inf and math.isnan(got[-2]) and math.isnan(got[-1]),
          "psnr: mse 0 -> inf, negative or NaN mse -> nan")


def test_plot(tmp, rng):
    gnuplot = shutil.which("gnuplot")
    check(gnuplot is not None, "gnuplot installed (declared dependency: apt-get install gnuplot-nox)")
    path = os.path.join(tmp, "plot.csv")
    write(path, rng_rows(rng, range(1, 121), 10))
    outdir = os.path.join(tmp, "plots")
    os.mkdir(outdir)
    out = os.path.join(outdir, "loss.png")
    r = subprocess.run(["bash", PLOT, path, out, "640x400"], capture_output=True, text=True)
    check(r.returncode == 0, f"plot: exit 0 ({r.stderr.strip()})")
    if r.returncode == 0:
        with Image.open(out) as im:
            im.verify()
        with Image.open(out) as im:
            im.load()
            check(im.format == "PNG" and im.size == (640, 400), f"plot: valid PNG of 640x400 ({im.format} {im.size})")
            px = np.asarray(im.convert("L"))
            check(px.min() < 128 and px.max() > 200, "plot: image is not blank")
    check(os.listdir(outdir) == ["loss.png"], f"plot: no temporary left ({os.listdir(outdir)})")

    def fails(args, what, words, env=None):
        res = subprocess.run(["bash", PLOT, *args], capture_output=True, text=True, env=env)
        ok = res.returncode != 0 and all(w in res.stderr for w in words)
        check(ok, f"plot {what}: non-zero exit and clear message ({res.stderr.strip()!r})")

    missing = os.path.join(tmp, "missing.csv")
    fails([missing, os.path.join(outdir, "m.png")], "missing CSV", [missing, "no such file"])
    empty = os.path.join(tmp, "empty.csv")
    write(empty, [])
    fails([empty, os.path.join(outdir, "e.png")], "CSV without rows", [empty, "no rows"])
    env = dict(os.environ, GNUPLOT="/nonexistent/gnuplot")
    fails([path, os.path.join(outdir, "g.png")], "without gnuplot", ["gnuplot", "apt-get install gnuplot-nox"], env)
    check(os.listdir(outdir) == ["loss.png"], "plot failures: nothing written")


def test_plot_epochs(tmp, rng):
    """Issue 13: the title says what the CSV covers (not a row count), each
    epoch end (a row with val_loss) gets a labelled dashed line at its step."""
    rows = rng_rows(rng, range(1, 91), 1000)   # step rows, no val
    ends = {30: 1.0, 60: 2.0, 90: 3.0}
    # a run stopped at step 25 (--max-steps) and resumed also wrote a
    # validation row at epoch 0.8333: a point, not an "epoch end" line
    for s, e in list(ends.items()) + [(25, 25 / 30)]:  # an epoch row after the step row of its step
        i = [r[0] for r in rows].index(s)
        rows.insert(i + 1, (s, e, 0.5, 0.01, 20.0, 1000.0, s * 0.1, 1.0, 2.0, 0.5))
    path = os.path.join(tmp, "epochs.csv")
    write(path, rows)
    script = os.path.join(tmp, "plot.gp")
    env = dict(os.environ, PLOT_LOSS_SCRIPT=script)
    r = subprocess.run(["bash", PLOT, path, os.path.join(tmp, "epochs.png")], capture_output=True, text=True,
                       env=env)
    check(r.returncode == 0 and os.path.exists(script), f"plot epochs: exit 0 and script saved ({r.stderr.strip()})")
    if r.returncode != 0:
        return
    with open(script) as f:
        gp = f.read()
    title = re.search(r"set title '([^']*)'", gp)
    check(title is not None and "rows" not in title.group(1) and "90 steps, 3 epoch(s)" in title.group(1),
          f"plot epochs: title says steps and epochs ({title.group(1) if title else None!r})")
    xs = [int(x) for x in re.findall(r"set arrow from (\d+), graph 0 to \1, graph 1", gp)]
    check(xs == sorted(ends), f"plot epochs: a line at each epoch end ({xs} vs {sorted(ends)})")
    labels = re.findall(r"set label 'epoch (\d+)' at (\d+),", gp)
    check(labels == [(str(int(e)), str(s)) for s, e in sorted(ends.items())], f"plot epochs: labels {labels}")
    train_file = re.search(r"plot '([^']*train\.dat)'", gp)
    check(train_file is not None, "plot epochs: train curve plotted")


def main():
    if not os.access(TOOL, os.X_OK):
        print(f"FAIL  {TOOL} not built (run make test)")
        return 1
    rng = np.random.default_rng(20240611)
    base = os.environ.get("AESIM_TEST_TMP") or tempfile.gettempdir()
    tmp = tempfile.mkdtemp(prefix="metrics_", dir=base)
    try:
        path, rows = test_roundtrip(tmp, rng)
        test_resume(tmp, rng, path, rows)
        test_psnr(rng)
        test_plot(tmp, rng)
        test_plot_epochs(tmp, rng)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
