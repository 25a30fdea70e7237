"""Gradient buckets (grad_sync.h) against PyTorch DDP's own bucket assignment.

PyTorch's DistributedDataParallel packs gradients into buckets with
torch.distributed._compute_bucket_assignment_by_size (C++ reducer.cpp
compute_bucket_assignment_by_size; Debian python3-torch): given tensors in the
order their gradients become ready and a size limit in bytes, it closes a
bucket as soon as it holds >= the limit and never splits a tensor.  Our
grad_buckets_partition must give the same buckets for float32 layer slices
and a limit of 4 * cap_floats bytes.  tests/tool_grad_buckets prints ours
(offset, count); the torch index lists are turned into the same (offset,
count) here: slice k in completion order ends where slice k-1 begins, the
first one at the total.

Cases: the layer slices of the three presets (from the tool, i.e. model_tensor)
at 1, 4, 16, 64 and 256 KiB, and 150 random size lists and caps (including
caps below every slice, equal to a prefix sum, and above the total).  Cap 0 is ours alone (one
bucket; torch would give one bucket per tensor) and is checked directly.
Runs in about a second.  Exit code 0 = pass.
"""
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_grad_buckets")
FLOAT_BYTES = 4
PRESETS = [("mnist", 1, 28, 28), ("imagenet32", 3, 32, 32), ("imagenet64", 3, 64, 64)]
KIBS = [1, 4, 16, 64, 256]
RANDOM_CASES = 150

failures = []


def check(cond, what):
    if not cond:
        print("FAIL  " + what)
        failures.append(what)


def parse_buckets(lines):
    return [tuple(int(v) for v in ln.split()) for ln in lines if ln.strip()]


def ours(cap, sizes):
    r = subprocess.run([TOOL, str(cap), *map(str, sizes)], capture_output=True, text=True, check=True)
    return parse_buckets(r.stdout.splitlines())


def torch_buckets(cap_floats, sizes):
    """DDP's buckets as (offset, count) in our layout."""
    tensors = [torch.empty(n, dtype=torch.float32) for n in sizes]
    groups, _ = dist._compute_bucket_assignment_by_size(tensors, [cap_floats * FLOAT_BYTES])
    ends = np.sum(sizes) - np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where slice k ends
    out = []
    for g in groups:
        count = int(sum(sizes[i] for i in g))
        out.append((int(ends[max(g)]) - int(sizes[max(g)]), count))
    return out


def main():
    if not os.access(TOOL, os.X_OK):
        print(f"FAIL  {TOOL} not built (run make test)")
        return 1
    n_checked = 0
    for name, c, h, w in PRESETS:
        for kib in KIBS:
            r = subprocess.run([TOOL, "--arch", name, str(c), str(h), str(w), str(kib)], capture_output=True,
                               text=True, check=True)
            lines = r.stdout.splitlines()
            sizes = [int(v) for v in lines[0].split()]
            got, want = parse_buckets(lines[1:]), torch_buckets(kib * 1024 // FLOAT_BYTES, sizes)
            check(got == want, f"{name} {kib} KiB: grad_sync_init {got} != torch {want}")
            n_checked += 1
        r = subprocess.run([TOOL, "--arch", name, str(c), str(h), str(w), "0"], capture_output=True, text=True,
                           check=True)
        sizes = [int(v) for v in r.stdout.splitlines()[0].split()]
        check(parse_buckets(r.stdout.splitlines()[1:]) == [(0, sum(sizes))], f"{name} 0 KiB: one bucket")
    rng = np.random.default_rng(20240612)
    for case in range(RANDOM_CASES):
        n = int(rng.integers(1, 20))
        sizes = [int(v) for v in rng.integers(1, 10000, size=n)]
        # Caps: below every slice, random, exactly a prefix sum (the >= rule), above the total.
        prefix = int(np.sum(sizes[:int(rng.integers(1, n + 1))]))
        cap = int(rng.choice([1, int(rng.integers(1, 20000)), int(rng.integers(1, 200000)), prefix, sum(sizes) + 1]))
        got, want = ours(cap, sizes), torch_buckets(cap, sizes)
        check(got == want, f"sizes {sizes} cap {cap}: ours {got} != torch {want}")
        n_checked += 1
        if case % 10 == 0:
            check(ours(0, sizes) == [(0, sum(sizes))], f"sizes {sizes} cap 0: one bucket")
    print(f"{n_checked} bucket assignments compared with torch (torch {torch.__version__}), "
          f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
