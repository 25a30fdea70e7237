"""The thread plan follows the CPUs each rank may run on (issue 13, item 4).

Each launch layout is run twice: once with Python printing every rank's
affinity mask (os.sched_getaffinity: the kernel's answer, the reference) and
once with aesim-train, whose plan line must say, for rank 0, the CPUs of its
mask, the ranks whose masks overlap it, and max(1, CPUs / ranks) OpenMP
threads; a warning must appear exactly when ranks x threads exceed those
CPUs.  Layouts: mpirun's default binding (one core per rank for 2 ranks),
--bind-to none, every rank confined to CPU 0 by taskset, each rank confined
to its own CPU by taskset, and a single process under taskset.
OMP_NUM_THREADS above the share is capped with a warning; --threads is
honoured with a warning when it oversubscribes.  launch/multinode.sh on a
hostfile naming this machine binds each rank to T cores and passes only the
thread variables that are set.
"""
import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
TMP = tempfile.mkdtemp(prefix="mpi_threads.", dir=os.environ.get("AESIM_TEST_TMP") or None)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
ENV.pop("OMP_NUM_THREADS", None)
DATA = os.path.join(TMP, "tiny-images-idx3-ubyte")
NCPU = len(os.sched_getaffinity(0))
PLAN = re.compile(r"threads: (\d+) rank\(s\)/node x (\d+) OpenMP \(([^)]*)\) x 1 BLAS \| this rank may run on "
                  r"(\d+) CPU\(s\) \(affinity\), shared by (\d+) rank\(s\)")
# Writes "cpu,cpu,..." to TMP/mask.RANK for the rank it runs in (files, not
# stdout: mpirun may interleave the ranks' lines).
MASK_PY = ("import os; r = os.environ.get('OMPI_COMM_WORLD_RANK', '0'); "
           "open(os.path.join(%r, 'mask.' + r), 'w').write(','.join(map(str, sorted(os.sched_getaffinity(0)))))")
# Runs the rest of the command confined to CPU (rank % NCPU).
OWN_CPU = os.path.join(TMP, "own_cpu.sh")
# Numbers the output folders (a fresh run needs a fresh one).
RUNS = itertools.count()


def setUpModule():
    import gzip
    with gzip.open(MNIST) as f:
        raw = f.read()
    with open(DATA, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 60, 28, 28) + raw[16:16 + 60 * 784])
    with open(OWN_CPU, "w") as f:
        f.write('#!/bin/sh\nexec taskset -c $((OMPI_COMM_WORLD_RANK %% %d)) "$@"\n' % NCPU)
    os.chmod(OWN_CPU, 0o755)


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def launch(np_, mpi_args, wrap, prog, env=None):
    cmd = (["mpirun", "--oversubscribe", "-np", str(np_), *mpi_args] if np_ else []) + wrap + prog
    p = subprocess.run(cmd, env=dict(ENV, **(env or {})), capture_output=True, text=True, timeout=120, cwd=TMP)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def expected(np_, mpi_args, wrap):
    """(cpus, sharing, threads) of rank 0 from the kernel's masks."""
    for f in os.listdir(TMP):
        if f.startswith("mask."):
            os.remove(os.path.join(TMP, f))
    launch(np_, mpi_args, wrap, [sys.executable, "-c", MASK_PY % TMP])
    masks = {}
    for f in os.listdir(TMP):
        if f.startswith("mask."):
            with open(os.path.join(TMP, f)) as fh:
                masks[int(f[5:])] = set(map(int, fh.read().split(",")))
    if len(masks) != max(np_, 1):
        raise AssertionError(f"masks of {sorted(masks)}, expected {max(np_, 1)} rank(s)")
    mine = masks[0]
    sharing = sum(1 for m in masks.values() if m & mine)
    return len(mine), sharing, max(1, len(mine) // sharing)


def plan(np_, mpi_args, wrap, *args, env=None):
    out = os.path.join(TMP, "out%d" % next(RUNS))
    p = launch(np_, mpi_args, wrap, [TRAIN, "--data", DATA, "--val", DATA, "--batch-size", "20",
                                     "--max-steps", "1", "--grid", "0", "--out", out, *args], env)
    m = PLAN.search(p.stdout)
    if not m:
        raise AssertionError("no plan line:\n" + p.stdout)
    return m, p.stdout


class Plan(unittest.TestCase):
    def check(self, np_, mpi_args, wrap):
        cpus, sharing, threads = expected(np_, mpi_args, wrap)
        m, out = plan(np_, mpi_args, wrap)
        self.assertEqual((int(m.group(4)), int(m.group(5)), int(m.group(2))), (cpus, sharing, threads), out)
        self.assertEqual(m.group(3), "default")
        self.assertEqual("oversubscribed" in out, sharing * threads > cpus, out)
        return cpus, sharing, threads

    def test_default_binding(self):
        self.check(2, [], [])

    def test_bind_to_none(self):
        self.assertEqual(self.check(2, ["--bind-to", "none"], [])[1], 2)

    def test_bind_to_core(self):
        self.assertEqual(self.check(2, ["--bind-to", "core"], []), (1, 1, 1))

    def test_all_ranks_on_one_cpu_warns(self):
        cpus, sharing, threads = self.check(2, ["--bind-to", "none"], ["taskset", "-c", "0"])
        self.assertEqual((cpus, sharing, threads), (1, 2, 1))
        # the advice fits the cause: more ranks than CPUs, not the binding
        _, out = plan(2, ["--bind-to", "none"], ["taskset", "-c", "0"])
        self.assertIn("more ranks than the CPUs they share", out)
        self.assertNotIn("--bind-to none", out)

    def test_each_rank_on_its_own_cpu(self):
        if NCPU < 2:
            self.skipTest("needs 2 CPUs")
        self.assertEqual(self.check(2, ["--bind-to", "none"], [OWN_CPU]), (1, 1, 1))

    def test_single_process_under_taskset(self):
        self.assertEqual(self.check(0, [], ["taskset", "-c", "0"]), (1, 1, 1))
        if NCPU >= 2:
            self.assertEqual(self.check(0, [], ["taskset", "-c", "0,1"]), (2, 1, 2))

    def test_omp_num_threads_capped(self):
        cpus, sharing, threads = expected(2, ["--bind-to", "none"], [])
        m, out = plan(2, ["--bind-to", "none", "-x", "OMP_NUM_THREADS"], [], env={"OMP_NUM_THREADS": "64"})
        self.assertEqual((m.group(2), m.group(3)), (str(threads), "OMP_NUM_THREADS"), out)
        self.assertIn(f"OMP_NUM_THREADS=64 capped to {threads}", out)
        self.assertNotIn("oversubscribed", out)

    def test_omp_num_threads_list_gives_the_outer_level(self):
        # OpenMP's nested list "1,2": 1 thread at the outer level, the one
        # aesim's loops use (it was read as junk: "default")
        m, out = plan(0, [], [], env={"OMP_NUM_THREADS": "1,2"})
        self.assertEqual((m.group(2), m.group(3)), ("1", "OMP_NUM_THREADS"), out)

    def test_threads_option_honoured_with_warning(self):
        m, out = plan(2, ["--bind-to", "core"], [], "--threads", "2")
        self.assertEqual((m.group(2), m.group(3)), ("2", "--threads"), out)
        self.assertIn("oversubscribed: 1 rank(s) x 2 thread(s) on the 1 CPU(s)", out)



class Multinode(unittest.TestCase):
    """launch/multinode.sh on a hostfile naming this machine: ranks bound to
    T cores each (T = --threads, else 1), and OMP_NUM_THREADS /
    OPENBLAS_NUM_THREADS passed only when set (mpirun -x of an unset variable
    warns 'could not find environment variable')."""

    def run_script(self, slots, np_, *args, env=None):
        hostfile = os.path.join(TMP, "hostfile%d" % slots)
        with open(hostfile, "w") as f:
            f.write("localhost slots=%d\n" % slots)
        e = dict(ENV, **(env or {}))
        e.pop("OPENBLAS_NUM_THREADS", None)
        if env is None or "OMP_NUM_THREADS" not in env:
            e.pop("OMP_NUM_THREADS", None)
        out = os.path.join(TMP, "out%d" % next(RUNS))
        p = subprocess.run(["bash", os.path.join(ROOT, "launch", "multinode.sh"), hostfile, str(np_), "--data", DATA,
                            "--val", DATA, "--batch-size", "20", "--max-steps", "1", "--grid", "0", "--out", out,
                            *args], env=e, capture_output=True, text=True, timeout=120, cwd=ROOT)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("could not find environment variable", p.stdout + p.stderr)
        m = PLAN.search(p.stdout)
        self.assertIsNotNone(m, p.stdout)
        return m, p.stdout + p.stderr

    def test_one_core_per_rank_without_thread_variables(self):
        if NCPU < 2:
            self.skipTest("needs 2 CPUs")
        m, out = self.run_script(2, 2)
        self.assertEqual((m.group(2), m.group(4), m.group(5)), ("1", "1", "1"), out)

    def test_threads_option_binds_that_many_cores(self):
        if NCPU < 2:
            self.skipTest("needs 2 CPUs")
        m, out = self.run_script(1, 1, "--threads", "2")
        self.assertEqual((m.group(2), m.group(3), m.group(4), m.group(5)), ("2", "--threads", "2", "1"), out)
        self.assertNotIn("oversubscribed", out)
        m, out = self.run_script(1, 1, env={"OMP_NUM_THREADS": "2"})
        self.assertEqual((m.group(2), m.group(3), m.group(4)), ("2", "OMP_NUM_THREADS", "2"), out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
