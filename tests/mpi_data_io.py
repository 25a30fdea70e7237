#!/usr/bin/python3
"""What a training step reads from storage (issue 18, item 2).

A stored npz of 6,000 random 64x64 RGB images (numpy) is evicted from the
page cache (posix_fadvise DONTNEED: no root needed), then 2 ranks train 6
steps of global batch 64 on it, mapped.  The program's "disk:" line (read
from /proc/self/io) must show at most 3x the bytes of the images the steps
and the validation pass used (4 KiB pages around 12 KiB images, labels,
headers), where default readahead reads whole windows around every random
image (the control: the same run with readahead, `?map=0` reading
the whole file, reports at least the file's size, which also shows that
this storage counts reads at all; on a RAM file system it does not, and
the test says so and passes).  The trained weights are bit-identical to
the run that reads the file into memory (the per-rank parameter checksums),
so prefetching and MADV_RANDOM change no result.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, os.environ.get("AESIM_BUILD", "build"), "aesim-train")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           AESIM_VERIFY_CACHE="off")
N, STEPS, BATCH, VAL = 6000, 6, 64, 64
IMG = 3 * 64 * 64


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def train(tmp, data, tag):
    out = os.path.join(tmp, tag)
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", TRAIN, "--data", data, "--val-limit",
           str(VAL), "--arch", "c8 p | u c3", "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--grid", "0",
           "--threads", "1", "--out", out]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"FAIL  {' '.join(cmd)}:\n{p.stdout}\n{p.stderr}")
    m = re.search(r"disk: at end [^:]*: ([0-9.]+) MB read from storage in all", p.stdout + p.stderr)
    sums = sorted(re.findall(r"parameter checksum crc32 ([0-9a-f]+)", p.stderr))
    return (float(m.group(1)) * 1e6 if m else None), sums


def main():
    tmp = tempfile.mkdtemp(prefix="mpi_data_io.", dir=os.environ.get("AESIM_TEST_TMP"))
    failures = 0
    try:
        rng = np.random.default_rng(18)
        data = os.path.join(tmp, "train_data_batch_1.npz")
        np.savez(data, data=rng.integers(0, 256, (N, IMG), dtype=np.uint8), labels=rng.integers(1, 11, N))
        size = os.path.getsize(data)
        evict(data)
        whole, ref = train(tmp, data + "?map=0&verify=0", "inmem")
        evict(data)
        got, sums = train(tmp, data + "?verify=0", "mapped")
        used = (STEPS * BATCH + VAL) * IMG
        print(f"read with map=0: {whole / 1e6:.1f} MB (file {size / 1e6:.1f} MB); mapped: {got / 1e6:.1f} MB for "
              f"{used / 1e6:.1f} MB of images used")
        if whole < size / 2:
            print("ok    this storage does not count reads (RAM file system?): nothing to measure")
        elif got <= 3 * used:
            print(f"ok    mapped training read {got / used:.2f}x the bytes of the images it used (<= 3x)")
        else:
            print(f"FAIL  mapped training read {got / used:.2f}x the bytes of the images it used (> 3x)")
            failures += 1
        if sums == ref and len(sums) == 2:
            print("ok    same weights as the in-memory run (checksums " + ", ".join(sums) + ")")
        else:
            print(f"FAIL  weights differ: mapped {sums} vs in memory {ref}")
            failures += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
