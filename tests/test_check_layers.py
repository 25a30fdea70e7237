#!/usr/bin/python3
"""test_check_layers.py - tests/check_layers.py (make check-layers) on this
tree and on copies of it with one violation each: every rule must catch its
violation and name the file and line."""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
CHECK = os.path.join(HERE, "check_layers.py")
failures = 0
passes = 0


def run(root):
    p = subprocess.run([sys.executable, CHECK, root], capture_output=True, text=True)
    return p.returncode, p.stdout


def check(cond, what):
    global failures, passes
    print(("ok    " if cond else "FAIL  ") + what)
    if cond:
        passes += 1
    else:
        failures += 1


def with_violation(rel, line, want, whole_file=False):
    """Copy src/ and include/, append `line` to file rel, expect `want` in the report."""
    with tempfile.TemporaryDirectory() as d:
        for top in ("src", "include"):
            shutil.copytree(os.path.join(ROOT, top), os.path.join(d, top))
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
        rc, out = run(d)
        n = sum(1 for _ in open(path))
        where = f"{rel}: " if whole_file else f"{rel}:{n}: "
        check(rc == 1 and where + "" in out and want in out, f"{rel} + {line!r}: {want!r} reported at {where.strip()}")


rc, out = run(ROOT)
check(rc == 0, "this tree keeps the layer rules: " + out.strip().splitlines()[-1])

with_violation("src/nn/conv2d.c", '#include "train/train.h"', "above or beside it")      # upward
with_violation("src/base/timer.c", '#include "par/par.h"', "above or beside it")         # base -> par
with_violation("src/search/knn.c", '#include "train/train_setup.h"', "above or beside it")  # beside
with_violation("src/model/model.c", '#include "search/knn.h"', "above or beside it")
with_violation("src/nn/gemm.c", '#include "data/npy.h"', "kernels never touch data or file code")
with_violation("src/nn/gemm.c", '#include "base/fileio.h"', "kernels never touch data or file code")
with_violation("include/nn/gemm.h", "#include <stdio.h>", "kernels do no file I/O")
with_violation("src/search/knn.c", "#include <mpi.h>", "mpi.h outside src/par/")
with_violation("src/train/train.c", '#  include "mpi.h"', "mpi.h outside src/par/")
with_violation("src/data/npy.c", '#include "err.h"', "names no layer")
with_violation("src/data/npy.c", '#include "data/nonexistent.h"', "does not exist")
with_violation("src/stray.c", "int x;", "not in a layer folder", whole_file=True)

print(f"{passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
