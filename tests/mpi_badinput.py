"""Hostile-input regression tests for aesim-train, aesim-search and aesim-pack.

The promise under test: bad input ends with a clear error naming the file or
option and a non-zero exit on every rank; never a crash (segfault, abort,
heap corruption), never a hang, never a half-written output; on MPI an error
on one rank ends all ranks with that message, not a deadlock.

Every run has a timeout (a hang is a failure) and runs in its own process
group, which is killed on timeout.  Runs that could allocate more memory than
the machine has are capped with RLIMIT_AS, so a missing memory check shows as
a failed allocation here, never as the OOM killer.

Tests marked @unittest.expectedFailure document bugs that are reported but
not fixed yet (the comment names the bug); when a fix lands, the test passes,
unittest reports an "unexpected success", and the marker must be removed.

Data: tiny arrays written here with numpy, plus the shared MNIST test file
(../shared/data/mnist) where a second, differently shaped source is needed.
"""
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import unittest
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
PACK = os.path.join(ROOT, BUILD, "aesim-pack")
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "mpi_badinput")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
# A run that finishes (with or without an error) takes < 3 s here; a hang is
# detected after this many seconds (short, to keep the file under a minute).
HANG_S = 6
TIMEOUT_S = 60
# Address-space cap for runs that might try to allocate tens of GiB: far below
# the machine's RAM, far above what a correct run of these tiny inputs needs.
AS_LIMIT = 4 << 30
# Signs of a crash in the output of a run (ours or Open MPI's reports).
CRASH_SIGNS = ("Segmentation fault", "Signal: ", "Aborted", "free(): ", "malloc(): ", "malloc_consolidate",
               "double free", "AddressSanitizer", "runtime error:", "Assertion", "Traceback", "core dumped")


class Run:
    def __init__(self, rc, out, err, timed_out, cmd):
        self.rc, self.out, self.err, self.timed_out, self.cmd = rc, out, err, timed_out, cmd

    def __str__(self):
        return (f"{' '.join(self.cmd)}\n-> rc {self.rc}{' (TIMED OUT)' if self.timed_out else ''}\n"
                f"--- stdout (tail)\n{self.out[-1500:]}\n--- stderr (tail)\n{self.err[-3000:]}")


def run(binary, *args, np_=0, timeout=TIMEOUT_S, limit_as=None, env=None, wrap=None, stdout=None):
    """Runs binary (under mpirun -np np_ when np_ > 0, through the wrapper
    script `wrap` when given) in a new process group; kills the group on
    timeout.  stdout: None = captured, else an open file to write to."""
    prog = [wrap, binary] if wrap else [binary]
    cmd = (["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_)] if np_ else []) + prog + list(args)

    def limits():
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    p = subprocess.Popen(cmd, env=dict(ENV, **(env or {})), stdout=stdout or subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, preexec_fn=limits)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        if np_:
            # mpirun forwards SIGTERM to the ranks and reaps them (a SIGKILL to
            # the group would leave them as zombies of init).
            p.terminate()
            try:
                out, err = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
    dec = lambda b: (b or b"").decode(errors="replace")  # noqa: E731
    return Run(p.returncode, dec(out), dec(err), timed_out, cmd)


def npz_rgb(path, n, seed=0):
    """Downsampled-ImageNet layout: data uint8 (n, 3*32*32), labels 1..10."""
    rng = np.random.default_rng(seed)
    np.savez(path, data=rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
             labels=rng.integers(1, 11, n).astype(np.int64))
    return path


def npy_grey(path, n, seed=0):
    np.save(path, np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8))
    return path


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(WORK, ignore_errors=True)
        os.makedirs(WORK)
        cls.rgb5 = npz_rgb(os.path.join(WORK, "rgb5.npz"), 5)
        cls.rgb2 = npz_rgb(os.path.join(WORK, "rgb2.npz"), 2)
        cls.grey40 = npy_grey(os.path.join(WORK, "grey40.npy"), 40)
        cls.grey20 = npy_grey(os.path.join(WORK, "grey20.npy"), 20, seed=1)
        cls.fifo = os.path.join(WORK, "fifo.npz")
        os.mkfifo(cls.fifo)
        # Rewrites the argument $WRAP_FROM to $WRAP_TO on rank $WRAP_RANK only:
        # one rank of the job is given other arguments than the rest.
        cls.wrap = os.path.join(WORK, "wrap.sh")
        with open(cls.wrap, "w") as f:
            f.write('#!/bin/bash\nargs=()\nfor a in "$@"; do\n'
                    '  if [ "${OMPI_COMM_WORLD_RANK:-0}" = "${WRAP_RANK:-1}" ] && [ "$a" = "$WRAP_FROM" ]; then '
                    'a="$WRAP_TO"; fi\n  args+=("$a")\ndone\nexec "${args[@]}"\n')
        os.chmod(cls.wrap, 0o755)
        # A small model (mnist preset on 40 random 28x28 images) and its database.
        cls.out = os.path.join(WORK, "model")
        r = run(TRAIN, "--data", cls.grey40, "--max-steps", "2", "--batch-size", "8", "--threads", "1",
                "--out", cls.out)
        assert r.rc == 0, str(r)
        cls.ckpt = os.path.join(cls.out, "checkpoint.npz")
        cls.db = os.path.join(WORK, "db")
        r = run(SEARCH, "index", "--model", cls.ckpt, "--data", cls.grey40, "--db", cls.db, "--threads", "1")
        assert r.rc == 0, str(r)
        with open(os.path.join(cls.db, "manifest.json")) as f:
            cls.dim = json.load(f)["dim"]
        vectors = np.load(os.path.join(cls.db, "shard-00000.vectors.npy"))
        cls.q = os.path.join(WORK, "q.npy")
        np.save(cls.q, vectors[:2])
        cls.q1000 = os.path.join(WORK, "q1000.npy")
        np.save(cls.q1000, vectors[np.arange(1000) % len(vectors)])

    # ----- helpers -------------------------------------------------------
    def no_crash(self, r):
        self.assertFalse(r.timed_out, f"hang (killed after the timeout):\n{r}")
        self.assertNotIn(r.rc, (-6, -11, 134, 139), f"crashed:\n{r}")
        for s in CRASH_SIGNS:
            self.assertNotIn(s, r.err + r.out, f"crash sign {s!r}:\n{r}")

    def fails_clearly(self, r, *needles):
        """Non-zero exit, no crash or hang, and every needle in stderr."""
        self.no_crash(r)
        self.assertNotEqual(r.rc, 0, f"should have failed:\n{r}")
        for n in needles:
            self.assertIn(n, r.err, f"message lacks {n!r}:\n{r}")
        self.assertNotIn("fatal: malloc", r.err, f"an allocation failure instead of a checked error:\n{r}")

    def tmp_leftovers(self, folder):
        return [f for f in os.listdir(folder) if ".tmp." in f]

    # ----- option validation (fixed in src/train/train_args.c, src/search/search_args.c) --
    def test_empty_option_values_refused(self):
        # `--resume "$CKPT"` with CKPT unset used to start from scratch silently
        # (and then rotate away the checkpoints in --out); `--ids-from ''`
        # silently searched everything.
        for binary, args, opt in ((TRAIN, ["--data", self.grey40, "--resume", ""], "--resume"),
                                  (TRAIN, ["--data", self.grey40, "--arch", ""], "--arch"),
                                  (TRAIN, ["--data", self.grey40, "--out", ""], "--out"),
                                  (SEARCH, ["query", "--db", self.db, "--queries", self.q, "--k", "1", "--ids-from", ""],
                                   "--ids-from"),
                                  (SEARCH, ["query", "--db", self.db, "--queries", self.q, "--k", "1", "--out", ""],
                                   "--out")):
            r = run(binary, *args)
            self.fails_clearly(r, opt, "empty")
            self.assertEqual(r.rc, 2, str(r))

    def test_unknown_short_option_named(self):
        # '-qq' used to be reported as "unknown option '<program path>'".
        r = run(TRAIN, "-qq")
        self.fails_clearly(r, "'-q'")
        r = run(SEARCH, "query", "-xq")
        self.fails_clearly(r, "'-x'")

    # ----- things that work: guards ---------------------------------------
    def test_fewer_images_than_ranks_batch_1(self):
        # 2 images, 4 ranks, global batch 1: two ranks get nothing every step.
        out = os.path.join(WORK, "tiny_p4")
        r = run(TRAIN, "--data", self.rgb2, "--val", self.rgb2, "--batch-size", "1", "--epochs", "2",
                "--threads", "1", "--out", out, np_=4)
        self.no_crash(r)
        self.assertEqual(r.rc, 0, str(r))
        sums = {line.split()[-3] for line in r.err.splitlines() if "parameter checksum" in line}
        self.assertEqual(len(sums), 1, f"ranks differ:\n{r}")

    def test_lying_files_refused_quickly(self):
        lie_idx = os.path.join(WORK, "lie-images-idx3-ubyte")
        with open(lie_idx, "wb") as f:  # header: 1000 images, file: 2
            f.write(bytes([0, 0, 8, 3]) + (1000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
        trunc = os.path.join(WORK, "trunc.npz")
        with open(self.rgb5, "rb") as f, open(trunc, "wb") as g:
            g.write(f.read()[:3000])
        empty_dir = os.path.join(WORK, "empty_dir")
        os.makedirs(empty_dir, exist_ok=True)
        for src in (lie_idx, trunc, "/dev/zero", empty_dir):
            r = run(TRAIN, "--data", src, "--max-steps", "1", "--out", os.path.join(WORK, "lie"), timeout=HANG_S)
            self.fails_clearly(r, src)

    # ----- hangs -------------------------------------------------------------
    # Fixed bug: a FIFO as a data source blocks in open() forever (image_source.c sniff,
    # npy.c, zip_read.c, cifar.c, image_folder.c list, image_decode.c: open before the S_ISREG check)
    def test_fifo_data_source_does_not_hang(self):
        r = run(TRAIN, "--data", self.fifo, "--max-steps", "1", "--out", os.path.join(WORK, "fifo_out"),
                timeout=HANG_S)
        self.fails_clearly(r, self.fifo)

    # Fixed bug: --queries FIFO (and --ids-from, --image, shard files) blocks in fopen()
    def test_fifo_queries_do_not_hang(self):
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.fifo, "--k", "1", timeout=HANG_S)
        self.fails_clearly(r, self.fifo)

    # Fixed bug: image_folder.c walk() follows symlinked folders; two loops make the
    # walk exponential (hang, memory grows ~30 MB/s); the depth limit of 64 does not help
    def test_branching_symlink_loops_in_folder(self):
        top = os.path.join(WORK, "loops")
        os.makedirs(os.path.join(top, "a"), exist_ok=True)
        from PIL import Image
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(top, "a", "0.png"))
        os.symlink("..", os.path.join(top, "a", "up"))
        os.symlink(".", os.path.join(top, "self"))
        r = run(TRAIN, "--data", top, "--max-steps", "1", "--arch", "c4 | c3", "--out", os.path.join(WORK, "loop_out"),
                timeout=HANG_S, limit_as=AS_LIMIT)
        self.fails_clearly(r, "loop")

    # Fixed bug: one symlink loop (DIR/self -> DIR) silently yields every image 41 times
    # (until ELOOP), instead of refusing the loop or visiting each folder once
    def test_single_symlink_loop_counts_images_once(self):
        top = os.path.join(WORK, "loop1")
        os.makedirs(os.path.join(top, "a"), exist_ok=True)
        from PIL import Image
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(top, "a", "0.png"))
        os.symlink(".", os.path.join(top, "self"))
        r = run(TRAIN, "--data", top, "--val", top, "--max-steps", "1", "--arch", "c4 | c3",
                "--out", os.path.join(WORK, "loop1_out"), timeout=HANG_S)
        self.no_crash(r)
        if r.rc == 0:
            self.assertIn("(1 images", r.out, f"the loop multiplied the images:\n{r}")
        else:
            self.assertIn("loop", r.err, str(r))

    # ----- outputs -----------------------------------------------------------
    # Fixed bug: fileio.c atomic_open/commit renames a temp file over ANY existing path:
    # `--out /dev/null` run as root replaces /dev/null with a regular file (aesim-search query/eval --out,
    # --sheet, aesim-pack --out); as non-root it fails because /dev is not writable
    def test_out_to_device_keeps_the_device(self):
        if os.geteuid() != 0:
            self.skipTest("mknod needs root")
        dev = os.path.join(WORK, "null_dev")
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.q, "--k", "2", "--out", dev)
        self.no_crash(r)
        self.assertTrue(stat.S_ISCHR(os.stat(dev).st_mode), f"--out replaced the device node:\n{r}")
        r = run(PACK, "--out", dev, self.rgb5)
        self.no_crash(r)
        self.assertTrue(stat.S_ISCHR(os.stat(dev).st_mode), f"aesim-pack --out replaced the device node:\n{r}")

    # Fixed bug: write errors on stdout are ignored: results to a full disk or a closed
    # pipe end with exit 0 and a truncated result (search.c TSV/JSON output: no ferror/fflush check)
    def test_stdout_write_error_is_an_error(self):
        if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
            self.skipTest("no /dev/full")
        with open("/dev/full", "w") as full:
            r = run(SEARCH, "query", "--db", self.db, "--queries", self.q, "--k", "2", stdout=full)
        self.no_crash(r)
        self.assertNotEqual(r.rc, 0, f"lost results, exit 0:\n{r}")

    # ----- memory ------------------------------------------------------------
    # Fixed bug: no memory estimate before model_build: a spec that needs ~32 GiB
    # (params+grads+Adam m,v of a 4096->4096 11x11 conv = 4 x 8.1 GB, each allocation below RAM) is
    # allocated; without RLIMIT_AS the run is OOM-killed instead of refused with a message
    def test_arch_needing_more_than_ram_is_refused(self):
        r = run(TRAIN, "--data", self.rgb5, "--val", self.rgb5, "--arch", "c4096k11 c4096k11 | c3",
                "--max-steps", "1", "--threads", "1", "--out", os.path.join(WORK, "huge"), limit_as=AS_LIMIT)
        self.fails_clearly(r, "--arch", "GiB")

    # Fixed bug: --batch-size larger than the data set sizes the activations for the
    # whole batch (1048576 images -> a 111 GB malloc, "fatal: malloc ... failed" + MPI_Abort) instead of
    # min(batch, images); 5 images should just train
    def test_batch_larger_than_dataset(self):
        r = run(TRAIN, "--data", self.rgb5, "--val", self.rgb5, "--batch-size", "1048576", "--max-steps", "1",
                "--threads", "1", "--out", os.path.join(WORK, "bigbatch"), limit_as=AS_LIMIT)
        self.no_crash(r)
        if r.rc != 0:
            self.fails_clearly(r, "--batch-size")

    # ----- ranks that disagree -----------------------------------------------
    # Fixed bug: ranks never check that they opened the same data: rank 1 with other
    # images makes the collectives mismatch (MPI_ERR_TRUNCATE), heap corruption, SIGSEGV in MPI_Abort
    def test_ranks_with_different_data_shapes(self):
        if not os.path.exists(MNIST):
            self.skipTest("no shared MNIST data")
        r = run(TRAIN, "--data", self.rgb5, "--max-steps", "2", "--batch-size", "4", "--threads", "1",
                "--out", os.path.join(WORK, "disagree"), np_=2, wrap=self.wrap,
                env={"WRAP_FROM": self.rgb5, "WRAP_TO": MNIST})
        self.fails_clearly(r, "rank 1")

    # Fixed bug: same shape, different image count on one rank: training "succeeds"
    # (exit 0) on inconsistent data (rank 1 samples from 20 images, rank 0 from 40)
    def test_ranks_with_different_data_counts(self):
        r = run(TRAIN, "--data", self.grey40, "--max-steps", "2", "--batch-size", "8", "--threads", "1",
                "--out", os.path.join(WORK, "disagree_n"), np_=2, wrap=self.wrap,
                env={"WRAP_FROM": self.grey40, "WRAP_TO": self.grey20})
        self.fails_clearly(r)
        self.assertTrue("grey20.npy" in r.err or "grey40.npy" in r.err, f"message names no data file:\n{r}")

    # Fixed bug: a different --k on one rank (1000 queries): MPI_Gather truncation,
    # heap corruption, SIGABRT (malloc_consolidate) inside MPI_Abort
    def test_search_ranks_with_different_k_no_crash(self):
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.q1000, "--k", "7", "--threads", "1",
                np_=2, wrap=self.wrap, env={"WRAP_FROM": "7", "WRAP_TO": "9"})
        self.no_crash(r)

    # Fixed bug: --k 1 on rank 0 but 40 on rank 1 (1000 queries): deadlock
    def test_search_ranks_with_different_k_no_deadlock(self):
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.q1000, "--k", "1",
                np_=2, wrap=self.wrap, env={"WRAP_FROM": "1", "WRAP_TO": "40"}, timeout=HANG_S)
        self.no_crash(r)

    # Fixed bug: aesim-pack with another source on one rank: MPI_ERR_TRUNCATE, then
    # "free(): invalid pointer" abort; the temporary store is left behind
    def test_pack_ranks_with_different_sources(self):
        if not os.path.exists(MNIST):
            self.skipTest("no shared MNIST data")
        folder = os.path.join(WORK, "pack_disagree")
        os.makedirs(folder, exist_ok=True)
        r = run(PACK, "--out", os.path.join(folder, "s.npz"), self.rgb5, np_=2, wrap=self.wrap,
                env={"WRAP_FROM": self.rgb5, "WRAP_TO": MNIST})
        self.fails_clearly(r)
        self.assertEqual(self.tmp_leftovers(folder), [], "temporary store left behind")

    # ----- aesim-search ------------------------------------------------------
    # Fixed bug: finite query values whose squared distances overflow float32 (3e38) gave 0 results and
    # exit 0; 1e19 gave all-inf distances in arbitrary order.  Now every query and database vector must
    # have a squared norm <= KNN_MAX_NORM2 (include/search/knn.h, FLT_MAX/64): a clear error naming the query
    # file (search.c checks the queries with knn_check_vectors before searching)
    def test_query_vectors_that_overflow(self):
        for value in (3e38, 1e19):
            q = os.path.join(WORK, "q_huge.npy")
            np.save(q, np.full((2, self.dim), value, np.float32))
            r = run(SEARCH, "query", "--db", self.db, "--queries", q, "--k", "3")
            self.fails_clearly(r, "squared norm", "overflow")
            self.assertIn(q, r.err, f"the error does not name the query file:\n{r}")
        # a large but valid scale still gives k results
        np.save(q, np.full((2, self.dim), 1e15, np.float32))
        r = run(SEARCH, "query", "--db", self.db, "--queries", q, "--k", "3")
        self.no_crash(r)
        self.assertEqual(r.rc, 0, str(r))
        rows = [l for l in r.out.splitlines()[1:] if l.strip()]
        self.assertEqual(len(rows), 6, f"k = 3 neighbours for each of 2 queries expected:\n{r}")

    # Fixed bug: --ids-from DIRECTORY reads as an empty id list: 0 results, exit 0
    def test_ids_from_directory(self):
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.q, "--k", "1", "--ids-from", WORK)
        self.fails_clearly(r, WORK)

    # Fixed bug: --ids-from text errors name the next line when the bad token ends
    # its line (search.c counts the newline before reporting)
    def test_ids_from_error_names_the_right_line(self):
        ids = os.path.join(WORK, "ids.txt")
        with open(ids, "w") as f:
            f.write("1 2 x\n3\n")
        r = run(SEARCH, "query", "--db", self.db, "--queries", self.q, "--k", "1", "--ids-from", ids)
        self.fails_clearly(r, ids, "line 1")

    # ----- checkpoints -------------------------------------------------------
    # Fixed bug: an architecture read from a checkpoint was reported as "--arch '...'"
    # although the user gave no --arch; the message names the checkpoint file
    def test_bad_arch_in_checkpoint_names_the_checkpoint(self):
        with np.load(self.ckpt) as z:
            d = {k: z[k] for k in z.files}
        d.pop("meta.crc32")
        d["meta.arch"] = np.frombuffer(b"c16 p c8 p c8 | c16 u c16 u c16 u c1", np.uint8)
        d["meta.crc32"] = np.array([zlib.crc32(np.ascontiguousarray(v).tobytes()) for v in d.values()], np.uint32)
        edited = os.path.join(WORK, "edited_arch.npz")
        np.savez(edited, **d)
        r = run(TRAIN, "--data", self.grey40, "--resume", edited, "--max-steps", "3", "--batch-size", "8",
                "--threads", "1", "--out", os.path.join(WORK, "edited_out"))
        self.fails_clearly(r, "error:")
        said = [l for l in r.err.splitlines() if "error:" in l]
        self.assertIn(edited, said[0], f"the error does not name the checkpoint:\n{r}")

    # ----- aesim-pack options --------------------------------------------------
    # Fixed bug: pack_main.c parsed --window with atoll: 'abc' printed only the usage
    # (no message), '5x' was taken as 5, and 99999999999 was a fatal malloc that left OUT.tmp.PID behind
    def test_pack_window_validation(self):
        folder = os.path.join(WORK, "pack_window")
        os.makedirs(folder, exist_ok=True)
        out = os.path.join(folder, "s.npz")
        for w in ("abc", "5x"):
            r = run(PACK, "--out", out, "--window", w, self.rgb5)
            self.fails_clearly(r)
            said = [l for l in r.err.splitlines() if l.startswith("aesim-pack") and "--window" in l]
            self.assertTrue(said, f"no error message naming --window (the usage text does not count):\n{r}")
        r = run(PACK, "--out", out, "--window", "99999999999", self.rgb5, limit_as=AS_LIMIT)
        self.no_crash(r)
        self.assertNotIn("fatal: malloc", r.err, str(r))
        self.assertEqual(self.tmp_leftovers(folder), [], "temporary store left behind")


if __name__ == "__main__":
    unittest.main(verbosity=2)
