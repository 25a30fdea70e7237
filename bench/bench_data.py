#!/usr/bin/python3
"""bench_data.py - the full downsampled ImageNet on disk (issue 18, item 4;
`make bench-data`).

Generates, outside the repository, a synthetic set in the layout of the
Imagenet64 release: train_data_batch_1..10.npz (numpy savez, stored),
uint8 data (n, 12288) + labels, 1,281,167 images in all (--scale shrinks
it), built from the real photos of ../shared/data/imagenet-sample (each
image a sample photo, randomly flipped and with a little noise, so the
pixels are realistic and no two files are alike). Then runs aesim-train
with --ranks ranks on it and reports, from the program's own lines
("disk: at open / at end", /proc/self/io and /proc/self/status of every
rank) and the wall clock:
  - seconds from launch to the first step, with the one-per-job CRC check
    (cold page cache, verification cache empty) and without it (cold
    cache, files remembered as verified: a restart);
  - storage bytes read per rank at open and per step;
  - anonymous and file-backed resident memory per rank;
  - steady images/s, against the same run on one batch file held in memory
    (?map=0).
The page cache is dropped before each cold run when this process may
(root: /proc/sys/vm/drop_caches); otherwise the report says the runs were
not cold. Targets (issue 18): start-up < 10 s + one read of the data / P;
bytes per step <= 2x the step's image bytes; anonymous memory independent of
the data size; steady throughput within 5% of in-memory data.

  bench/bench_data.py [--dir DIR] [--scale 1.0] [--ranks 2] [--steps 60]
"""
import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = 1281167
FILES = 10
IMG = 64 * 64 * 3


def sample_photos():
    for base in (os.path.join(os.path.dirname(ROOT), "shared", "data"), "/work/shared/data"):
        p = os.path.join(base, "imagenet-sample", "sample64_data_batch.npz")
        if os.path.exists(p):
            z = np.load(p)
            return z["data"], z["labels"]
    raise SystemExit("bench_data: ../shared/data/imagenet-sample/sample64_data_batch.npz not found")


def generate(folder, total):
    os.makedirs(folder, exist_ok=True)
    photos, labels = sample_photos()
    per = [total // FILES + (1 if i < total % FILES else 0) for i in range(FILES)]
    rng = np.random.default_rng(2026)
    for i, n in enumerate(per, 1):
        path = os.path.join(folder, f"train_data_batch_{i}.npz")
        want = n * IMG
        if os.path.exists(path) and os.path.getsize(path) > want:
            continue
        idx = rng.integers(0, len(photos), n)
        x = photos[idx].reshape(n, 3, 64, 64)
        flip = rng.random(n) < 0.5
        x[flip] = x[flip][:, :, :, ::-1]
        x = x.reshape(n, IMG)
        x ^= rng.integers(0, 4, x.shape, dtype=np.uint8)
        tmp = path + ".tmp.npz"
        np.savez(tmp, data=x, labels=labels[idx].astype(np.int64))
        os.replace(tmp, path)
        print(f"# wrote {path}: {n} images, {os.path.getsize(path) / 1e9:.2f} GB", flush=True)
    return sum(per)


def drop_caches():
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def train(args, data, steps, cache, extra=()):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", AESIM_VERIFY_CACHE=cache)
    out = os.path.join(args.dir, "run")
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(args.ranks),
           os.path.join(ROOT, args.build, "aesim-train"), "--data", data, "--max-steps", str(steps), "--batch-size",
           str(args.batch), "--val-limit", "256", "--grid", "0", "--progress", "lines", "--threads",
           str(args.threads), "--out", out, "--overwrite", *extra]
    t0 = time.time()
    first = None
    lines = []
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        lines.append(line)
        if first is None and re.search(r"step 1/", line):
            first = time.time() - t0
    p.wait()
    text = "".join(lines)
    if p.returncode != 0:
        raise SystemExit(f"bench_data: {' '.join(cmd)} failed:\n{text}")
    r = {"first_step_s": first, "wall_s": time.time() - t0}
    for when in ("open", "end"):
        m = re.search(r"disk: at %s \(([0-9.]+) s\): ([0-9.]+) MB read from storage in all, ([0-9.]+) MB by the "
                      r"busiest of \d+ rank\(s\); resident memory per rank at most (\d+) MB anonymous, (\d+) MB of "
                      r"mapped files" % when, text)
        if m:
            r[when] = {"t": float(m.group(1)), "all_mb": float(m.group(2)), "rank_mb": float(m.group(3)),
                       "anon_mb": int(m.group(4)), "file_mb": int(m.group(5))}
    m = re.search(r"done: .* ([0-9]+) images/s", text)
    r["images_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"CRC-32 of (\d+) stored member\(s\) checked in ([0-9.]+) s", text)
    r["verify"] = (int(m.group(1)), float(m.group(2))) if m else None
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.environ.get("BENCH_DATA_DIR", "/var/tmp/aesim-bench-data"))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 1,281,167 images")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    args = ap.parse_args()
    total = max(FILES, int(FULL * args.scale))
    free = os.statvfs(os.path.dirname(os.path.abspath(args.dir)) if not os.path.exists(args.dir) else args.dir)
    need = total * IMG * 1.01
    if free.f_bavail * free.f_frsize < need and not os.path.exists(os.path.join(args.dir, "train_data_batch_10.npz")):
        raise SystemExit(f"bench_data: {args.dir} needs {need / 1e9:.1f} GB free (use --scale or BENCH_DATA_DIR)")
    t = time.time()
    n = generate(args.dir, total)
    data_bytes = n * IMG
    print(f"# data: {n} images, {data_bytes / 1e9:.2f} GB in {FILES} files under {args.dir} "
          f"(ready in {time.time() - t:.0f} s)", flush=True)
    cache = os.path.join(args.dir, "verified.tsv")
    if os.path.exists(cache):
        os.remove(cache)
    cold = drop_caches()
    a = train(args, args.dir, args.steps, cache)
    cold = drop_caches() and cold
    b = train(args, args.dir, args.steps, cache)
    mem = train(args, os.path.join(args.dir, "train_data_batch_1.npz?map=0&verify=0"), args.steps, "off")
    step_bytes = args.batch * IMG / args.ranks
    per_step = (b["end"]["rank_mb"] - b["open"]["rank_mb"]) * 1e6 / args.steps
    print(f"\n## Full downsampled ImageNet on disk: {n:,} images 64x64 ({data_bytes / 1e9:.2f} GB, {FILES} files), "
          f"{args.ranks} ranks x {args.threads} thread(s), global batch {args.batch}, {args.steps} steps; page cache "
          f"{'dropped before each run' if cold else 'NOT dropped (no permission): runs were warm'}\n")
    print("| | first run (CRC check) | restart (verified before) | one file in memory (?map=0) |")
    print("|---|---:|---:|---:|")
    for key, label in (("first_step_s", "seconds to the first step"),):
        print(f"| {label} | {a[key]:.1f} | {b[key]:.1f} | {mem[key]:.1f} |")
    print(f"| storage read at open, busiest rank (MB) | {a['open']['rank_mb']:.0f} | {b['open']['rank_mb']:.0f} | "
          f"{mem['open']['rank_mb']:.0f} |")
    print(f"| storage read per step, busiest rank (MB) | "
          f"{(a['end']['rank_mb'] - a['open']['rank_mb']) / args.steps:.2f} | {per_step / 1e6:.2f} | |")
    print(f"| resident anonymous / mapped-file memory per rank (MB) | {a['end']['anon_mb']} / {a['end']['file_mb']} | "
          f"{b['end']['anon_mb']} / {b['end']['file_mb']} | {mem['end']['anon_mb']} / {mem['end']['file_mb']} |")
    print(f"| steady images/s | {a['images_per_s']:.0f} | {b['images_per_s']:.0f} | {mem['images_per_s']:.0f} |")
    one_read = data_bytes / args.ranks
    print(f"\nTargets: start-up < 10 s + one read of the data / P: first run {a['first_step_s']:.1f} s "
          f"({'CRC ' + format(a['verify'][1], '.1f') + ' s, ' if a['verify'] else ''}each rank read "
          f"{a['open']['rank_mb'] / 1e3:.2f} GB of the {one_read / 1e9:.2f} GB share), restart {b['first_step_s']:.1f} s"
          f"; bytes per step {per_step / step_bytes:.2f}x the step's image bytes per rank ({step_bytes / 1e6:.2f} MB; "
          f"target <= 2x); images/s {b['images_per_s'] / mem['images_per_s'] * 100:.0f}% of in-memory (target >= 95%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
