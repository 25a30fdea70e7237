"""Reliability of aesim-train (issue 5): faults are injected into real runs
and we check that nothing is lost.

Reference: an uninterrupted run with the same number of ranks.  Resuming
after any fault must reproduce its weights and optimizer state BIT FOR BIT
(every npz member compared as bytes), since the data order is a function of
(seed, epoch) and the checkpoint holds the whole state.  Checkpoint integrity
is checked with Python's zlib.crc32 against meta.crc32 (include/model/ckpt.h).

- exact resume: 2 epochs straight == 1 epoch + resume (P=2), also from the
  middle of an epoch; resuming on another P continues the same schedule.
- --keep N rotation, checkpoint.npz == newest step file, CRCs valid.
- damaged newest checkpoint (truncated / bit flipped): refused with the
  reason, --resume falls back to the previous one, result still bitwise equal.
  A named checkpoint that does not exist is an error, not a fallback; a
  damaged older one does not count toward --keep; a resume from an older
  step leaves one history in the folder after its first save.
- SIGTERM to one rank, SIGTERM / SIGINT / SIGUSR1 to mpirun: every rank
  finishes the step and exits 0 (recorded per rank), the checkpoint is at the
  last step in metrics.csv; resuming gives the uninterrupted result (checked
  bit for bit after SIGTERM to a rank and SIGUSR1 to mpirun).
- kill -9 of one rank: the job ends within seconds; resume is exact.
- NaN in the gradient (test-only AESIM_FAULT_NAN_STEP): error naming the
  step, the last good checkpoint is not overwritten.
- full disk (200 KiB tmpfs) for the checkpoint, the PNG and the CSV, and a
  read-only folder: error with the file and errno text, previous files
  byte-identical, no temporary files left; a killed writer's temp filling
  the disk is removed before the resumed run writes.  Skipped (with the reason) if
  tmpfs cannot be mounted.
- two "hosts": two network namespaces joined by a veth pair, mpirun with a
  hostfile and an ip-netns launch agent instead of ssh, TCP only: same bits
  as on one host.  Skipped (with the reason) if namespaces cannot be made.
"""
import glob
import gzip
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import unittest
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "aesim-train")
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
TMP = tempfile.mkdtemp(prefix="mpi_rel.", dir=os.environ.get("AESIM_TEST_TMP") or None)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
ENV.pop("AESIM_FAULT_NAN_STEP", None)
N_IMAGES = 120
BATCH = 30          # 4 steps per epoch
DATA = os.path.join(TMP, "tiny-images-idx3-ubyte")
COMMON = ["--data", DATA, "--val", DATA, "--val-limit", "20", "--batch-size", str(BATCH),
          "--csv-every", "1", "--seed", "3", "--grid", "2", "--progress", "lines", "--threads", "1"]
# Longest a stopped or aborted job may take to end, seconds.
END_TIMEOUT = 30
LONG = ["--epochs", "100000"]


def mpirun(np_, out, *args, env=None, mca=(), timeout=120, check=True, popen=False, binary=None):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), *mca,
           "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS"]
    for k in env or {}:
        cmd += ["-x", k]
    cmd += [binary or BIN, *COMMON, "--out", out, *args]
    e = dict(ENV, **(env or {}))
    if popen:   # output to files: a full pipe would stall a long run
        with open(out + ".stdout", "w") as so, open(out + ".stderr", "w") as se:
            proc = subprocess.Popen(cmd, env=e, stdout=so, stderr=se)
        proc.logs = (out + ".stdout", out + ".stderr")
        return proc
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def serial(out, *args, check=True):
    """One process, no mpirun (an MPI singleton)."""
    p = subprocess.run([BIN, *COMMON, "--out", out, *args], env=ENV, capture_output=True, text=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"serial run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def members(path):
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def step_of(path):
    return int(members(path)["meta.state"][1])


def verify_crc(tc, path):
    with np.load(path) as z:
        names = z.files
        tc.assertEqual(names[-1], "meta.crc32", path)
        crcs = z["meta.crc32"]
        tc.assertEqual(len(crcs), len(names) - 1)
        for k, c in zip(names[:-1], crcs):
            tc.assertEqual(zlib.crc32(z[k].tobytes()), int(c), f"{path}: {k}")


def assert_bitwise(tc, got_path, ref_path):
    got, ref = members(got_path), members(ref_path)
    tc.assertEqual(sorted(got), sorted(ref))
    for k in ref:
        tc.assertEqual(got[k].dtype, ref[k].dtype, k)
        tc.assertTrue(got[k].tobytes() == ref[k].tobytes(),
                      f"{got_path} differs from {ref_path} in {k}: max abs diff "
                      f"{np.max(np.abs(got[k].astype(np.float64) - ref[k].astype(np.float64)))}")


def csv_lines(out):
    try:
        with open(os.path.join(out, "metrics.csv")) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def csv_steps(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = f.read().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows if r.split(",")[3] == ""]


def wait_for(cond, what, timeout=60):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rank_pids(mpirun_pid):
    """{rank: pid} of the processes mpirun started (children with OMPI_COMM_WORLD_RANK)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if b"OMPI_COMM_WORLD_RANK" in env:
                out[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(d)
        except (OSError, IndexError, ValueError):
            continue
    return out


def read_logs(proc):
    logs = []
    for p in proc.logs:
        with open(p) as f:
            logs.append(f.read())
    return tuple(logs)


def finish(tc, proc):
    """Waits for a Popen'ed job; on timeout kills mpirun and its ranks and fails."""
    try:
        proc.wait(timeout=END_TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in rank_pids(proc.pid).values():
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        tc.fail(f"job did not end within {END_TIMEOUT} s:\n" + "\n".join(read_logs(proc)))
    return (proc.returncode, *read_logs(proc))


def files_bytes(folder):
    """{name: bytes} of the run's or database's files; not the writers' lock
    files, which name whichever job held them last (include/base/fileio.h
    fileio_lock_dir) and hold no data."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name in (".aesim-train.lock", ".aesim-db.lock"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def temps(folder):
    return [f for f in os.listdir(folder) if ".tmp." in f]


def setUpModule():
    with gzip.open(MNIST) as f:
        raw = f.read()
    with open(DATA, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, N_IMAGES, 28, 28) + raw[16:16 + N_IMAGES * 784])
    global R8, R24
    # References: 2 epochs (8 steps) with checkpoints every 2 steps, keep 3;
    # 24 steps straight.
    R8 = os.path.join(TMP, "ref8")
    mpirun(2, R8, "--epochs", "2", "--ckpt-every", "2", "--keep", "3")
    R24 = os.path.join(TMP, "ref24")
    mpirun(2, R24, *LONG, "--max-steps", "24")


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class Checkpoints(unittest.TestCase):
    def test_rotation_keep_and_crc(self):
        steps = sorted(int(os.path.basename(p)[9:17]) for p in glob.glob(os.path.join(R8, "ckpt-step*.npz")))
        self.assertEqual(steps, [4, 6, 8], "--keep 3 keeps the newest three")
        latest = os.path.join(R8, "checkpoint.npz")
        self.assertEqual(os.stat(latest).st_ino, os.stat(os.path.join(R8, "ckpt-step00000008.npz")).st_ino)
        for p in glob.glob(os.path.join(R8, "*.npz")):
            verify_crc(self, p)
        self.assertEqual(step_of(latest), 8)
        self.assertEqual(temps(R8), [])

    def test_exact_resume_after_one_epoch(self):
        out = os.path.join(TMP, "resume_epoch")
        mpirun(2, out, "--epochs", "1")
        self.assertEqual(step_of(os.path.join(out, "checkpoint.npz")), 4)
        mpirun(2, out, "--epochs", "2", "--resume", out)
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))
        self.assertEqual(csv_steps(out), list(range(1, 9)))

    def test_exact_resume_mid_epoch(self):
        out = os.path.join(TMP, "resume_mid")
        mpirun(2, out, "--epochs", "2", "--max-steps", "6")
        mpirun(2, out, "--epochs", "2", "--resume", os.path.join(out, "checkpoint.npz"))
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))

    def test_resume_on_other_rank_count_continues_schedule(self):
        out = os.path.join(TMP, "resume_p1")
        mpirun(2, out, "--epochs", "2", "--max-steps", "6")
        mpirun(1, out, "--epochs", "2", "--resume", out)
        got, ref = members(os.path.join(out, "checkpoint.npz")), members(os.path.join(R8, "checkpoint.npz"))
        self.assertEqual(list(got["meta.state"]), list(ref["meta.state"]))
        for k in ref:
            if k.startswith("conv") or k.startswith("opt."):
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)

    def test_truncated_newest_falls_back(self):
        out = os.path.join(TMP, "trunc")
        shutil.copytree(R8, out)
        newest = os.path.join(out, "ckpt-step00000008.npz")
        with open(newest, "r+b") as f:   # checkpoint.npz is the same file
            f.truncate(os.path.getsize(newest) // 2)
        p = mpirun(2, out, "--epochs", "2", "--ckpt-every", "2", "--resume", out)
        self.assertIn("refusing checkpoint", p.stderr)
        self.assertIn(newest, p.stderr)
        self.assertIn("resuming from " + os.path.join(out, "ckpt-step00000006.npz"), p.stdout)
        # The resume line counts epochs done and batches of the next, as
        # meta.state (version, step, epoch 0-based, batches of it done) says.
        _, step, epoch, batch = (int(v) for v in members(os.path.join(R8, "ckpt-step00000006.npz"))["meta.state"][:4])
        done = "%d epoch(s) done" % epoch
        if batch:
            done += ", then %d batch(es) of epoch %d" % (batch, epoch + 1)
        self.assertIn("(step %d: %s)" % (step, done), p.stdout)
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))
        verify_crc(self, newest)   # rewritten whole

    def test_resuming_an_older_checkpoint_with_overwrite_branches(self):
        """--resume of an older step file in its own folder with --overwrite
        branches the run: the log names the newer checkpoints it deletes at
        once, and afterwards only the branch's files remain."""
        out = os.path.join(TMP, "branch")
        shutil.copytree(R8, out)
        p = mpirun(2, out, "--epochs", "2", "--max-steps", "7", "--ckpt-every", "1",
                   "--resume", os.path.join(out, "ckpt-step00000004.npz"), "--overwrite")
        self.assertIn(f"resume: --overwrite: deleted the 2 checkpoint(s) after step 4 (steps 6..8) of {out}",
                      p.stdout)
        steps = sorted(step_of(f) for f in glob.glob(os.path.join(out, "ckpt-step*.npz")))
        self.assertEqual(steps[-1], 7, "the branch's newest is step 7; the old 8 is gone")

    def test_branch_keeps_one_history(self):
        """Resuming step 4 of a folder holding 4, 6 and 8 would discard 6
        and 8: refused without --overwrite, the folder unchanged (it used to
        warn, then delete them at the first save, or keep them and mix two
        histories when stopped before it).  With --overwrite they go at
        once, with their metrics.csv rows, and the run continues one
        history: step 8 equal bit for bit to the straight run's."""
        out = os.path.join(TMP, "branch_once")
        shutil.copytree(R8, out)
        before = files_bytes(out)
        older = os.path.join(out, "ckpt-step00000004.npz")
        p = mpirun(2, out, "--epochs", "2", "--ckpt-every", "100", "--resume", older, check=False, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("newer than the one resumed (steps 6..8 after step 4): resuming here would discard them",
                      p.stderr)
        self.assertEqual(files_bytes(out), before)
        p = mpirun(2, out, "--epochs", "2", "--ckpt-every", "100", "--resume", older, "--overwrite")
        self.assertIn("--overwrite: deleted the 2 checkpoint(s) after step 4", p.stdout)
        steps = sorted(step_of(f) for f in glob.glob(os.path.join(out, "ckpt-step*.npz")))
        self.assertEqual(steps, [4, 8])
        assert_bitwise(self, os.path.join(out, "ckpt-step00000008.npz"), os.path.join(R8, "checkpoint.npz"))

    def test_missing_named_checkpoint_is_an_error(self):
        """--resume FILE naming a step that does not exist (a typo) stops
        with status 1, naming it and the steps there are; it neither falls
        back to an older one nor changes the folder."""
        out = os.path.join(TMP, "typo")
        shutil.copytree(R8, out)
        before = files_bytes(out)
        typo = os.path.join(out, "ckpt-step00000005.npz")
        p = mpirun(2, out, "--epochs", "3", "--resume", typo, check=False, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        err = [l for l in p.stderr.splitlines() if "error:" in l]
        self.assertTrue(err and typo in err[0] and "No such file" in err[0] and "step(s) 8 6 4" in err[0], p.stderr)
        self.assertNotIn("resuming from", p.stdout)
        self.assertEqual(files_bytes(out), before)

    def test_damaged_older_checkpoint_does_not_count_toward_keep(self):
        """Steps 4, 6, 8 with 6 truncated: the resume takes 8 and its save
        at step 10 (--keep 3) keeps the intact 4 instead of counting the
        damaged 6 (which stays, reported, until 3 newer intact ones exist)."""
        out = os.path.join(TMP, "damaged_keep")
        shutil.copytree(R8, out)
        damaged = os.path.join(out, "ckpt-step00000006.npz")
        os.truncate(damaged, 1000)
        p = mpirun(2, out, "--epochs", "3", "--max-steps", "10", "--ckpt-every", "100", "--resume", out)
        self.assertIn("resuming from " + os.path.join(out, "ckpt-step00000008.npz"), p.stdout)
        names = sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "ckpt-step*.npz")))
        self.assertEqual(names, ["ckpt-step%08d.npz" % s for s in (4, 6, 8, 10)])
        verify_crc(self, os.path.join(out, "ckpt-step00000004.npz"))
        self.assertEqual(os.path.getsize(damaged), 1000)
        warn = [l for l in p.stderr.splitlines() if "not counted toward --keep" in l]
        self.assertEqual(len(warn), 1, p.stderr)
        self.assertIn(damaged, warn[0])

    def test_resume_without_data_trains_on_the_recorded_data(self):
        """The checkpoint records --data, absolute though given relative: a
        resume without --data, started in another folder, trains on it, says
        so, and ends as the uninterrupted run bit for bit (before, it took the
        default Fashion-MNIST and blamed a --data never given).  A recorded
        path that is gone is an error naming it and suggesting --data."""
        rest = COMMON[COMMON.index("--val-limit"):]   # no --data, no --val: a seeded split
        data = os.path.realpath(os.path.join(TMP, "nodata-images-idx3-ubyte"))
        shutil.copy(DATA, data)

        def run(cwd, *args, check=True):
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", "-x", "OMP_NUM_THREADS",
                   "-x", "OPENBLAS_NUM_THREADS", BIN, *rest, "--epochs", "2", *args]
            p = subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=120)
            if check and p.returncode != 0:
                raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            return p
        ref, out = os.path.join(TMP, "nodata_ref"), os.path.join(TMP, "nodata")
        run(TMP, "--data", data, "--out", ref, "--max-steps", "6")
        run(TMP, "--data", os.path.basename(data), "--out", out, "--max-steps", "4")
        ck = os.path.join(out, "checkpoint.npz")
        self.assertEqual(bytes(members(ck)["meta.data_arg"]).decode(), data)
        p = run(HERE, "--resume", out, "--max-steps", "6")
        used = os.path.join(out, "ckpt-step00000004.npz")   # the newest step file, same as checkpoint.npz
        self.assertIn(f"resume: trains on --data {data}, recorded in {used} (no --data given)", p.stdout)
        self.assertIn("(the --data recorded in the checkpoint)", p.stdout)
        assert_bitwise(self, ck, os.path.join(ref, "checkpoint.npz"))
        os.rename(data, data + ".moved")
        p = run(HERE, "--resume", out, "--max-steps", "8", check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        err = [l for l in p.stderr.splitlines() if "error:" in l]
        self.assertTrue(err and f"was trained on --data {data}, which no longer exists" in err[0]
                        and "give --data" in err[0], p.stderr)

    def test_bit_flip_is_refused(self):
        out = os.path.join(TMP, "flip")
        shutil.copytree(R8, out)
        newest = os.path.join(out, "ckpt-step00000008.npz")
        w = members(newest)["conv2.weight"].tobytes()
        with open(newest, "rb") as f:
            data = bytearray(f.read())
        at = data.find(w[:64]) + 5
        self.assertGreater(at, 5)
        data[at] ^= 0x04
        with open(newest, "wb") as f:
            f.write(bytes(data))
        p = mpirun(2, out, "--epochs", "2", "--resume", newest)
        self.assertIn("refusing checkpoint", p.stderr)
        self.assertIn("CRC", p.stderr.upper())
        self.assertIn("resuming from " + os.path.join(out, "ckpt-step00000006.npz"), p.stdout)
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))

    def test_nothing_intact_is_an_error(self):
        out = os.path.join(TMP, "none")
        os.makedirs(out)
        with open(os.path.join(out, "checkpoint.npz"), "wb") as f:
            f.write(b"PK\x03\x04 not really")
        p = mpirun(2, out, "--epochs", "2", "--resume", out, check=False, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn(os.path.join(out, "checkpoint.npz"), p.stderr)

    def test_edited_meta_values_are_refused(self):
        """Hand-edited meta values with meta.crc32 recomputed (the CRC sees
        damage, not edits): refused by value, naming the file, the field and
        the value, with exit status 1 (formerly: a batch size of 2**40 was
        narrowed to 0 and the job died of SIGFPE; lr -1, beta1 1.5, an unknown
        optimizer kind or a NUL in meta.arch were trained with)."""
        src = os.path.join(R8, "ckpt-step00000008.npz")   # 2 epochs done, step 8
        cases = [
            ({"meta.state": {5: 2 ** 40}}, "meta.state batch size 1099511627776"),
            ({"meta.state": {2: 0, 1: 2 ** 62}}, "meta.state step 4611686018427387904"),
            ({"meta.state": {6: 7}}, "meta.state optimizer kind 7"),
            ({"meta.hparams": {0: -1.0}}, "meta.hparams lr -1"),
            ({"meta.hparams": {1: 1.5}}, "meta.hparams beta1 1.5"),
            ({"meta.arch": bytes(members(src)["meta.arch"]) + b"\0junk"}, "meta.arch holds a NUL byte"),
        ]
        for i, (edit, want) in enumerate(cases):
            with self.subTest(want=want):
                path = os.path.join(TMP, f"edited{i}.npz")   # not a step name: no fallback
                forge(src, path, edit)
                p = serial(os.path.join(TMP, f"edited_out{i}"), "--epochs", "3", "--resume", path, check=False)
                self.assertEqual(p.returncode, 1, f"{want}:\n{p.stdout}\n{p.stderr}")
                err = [l for l in p.stderr.splitlines() if "error:" in l]
                self.assertTrue(err and path in err[0] and want in err[0], p.stderr)
                self.assertNotIn("resume: keeps", p.stdout)

    def test_edited_newest_falls_back(self):
        """In a folder an edited newest checkpoint is skipped like a damaged
        one; the older one, rewritten with the same recomputed CRCs but no
        edit, resumes to the uninterrupted result bit for bit."""
        out = os.path.join(TMP, "edited_folder")
        shutil.copytree(R8, out)
        newest, older = (os.path.join(out, f"ckpt-step0000000{s}.npz") for s in (8, 6))
        forge(newest, newest, {"meta.state": {5: 2 ** 40}})
        forge(older, older, {})
        p = mpirun(2, out, "--epochs", "2", "--ckpt-every", "2", "--resume", out)
        self.assertIn("refusing checkpoint: " + newest + ": meta.state batch size 1099511627776", p.stderr)
        self.assertIn("resuming from " + older, p.stdout)
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))


def forge(src, dst, edit):
    """Writes checkpoint src as dst with edit ({member: {index: value}} or
    {member: new uint8 bytes}) and meta.crc32 recomputed as ckpt.h documents."""
    ck = members(src)
    del ck["meta.crc32"]
    for name, change in edit.items():
        if isinstance(change, bytes):
            ck[name] = np.frombuffer(change, np.uint8)
        else:
            for i, v in change.items():
                ck[name][i] = v
    ck["meta.crc32"] = np.array([zlib.crc32(v.tobytes()) for v in ck.values()], np.uint32)
    np.savez(dst + ".tmp.npz", **ck)
    os.replace(dst + ".tmp.npz", dst)


class Preemption(unittest.TestCase):
    def start_long(self, out, **kw):
        """Starts a long 2-rank run and waits until it has trained 2 steps."""
        proc = mpirun(2, out, *LONG, "--ckpt-every", "1000", popen=True, **kw)
        wait_for(lambda: csv_lines(out) >= 3 or proc.poll() is not None, "training to start")
        self.assertIsNone(proc.poll(), "training ended early:\n" + "".join(read_logs(proc)))
        return proc

    def finish(self, proc):
        return finish(self, proc)

    def check_stopped_and_resume(self, out, stdout, stderr, resume=True):
        """The checkpoint is at the step every rank stopped after; resuming
        to 24 steps reproduces the uninterrupted run bit for bit."""
        ck = os.path.join(out, "checkpoint.npz")
        s = step_of(ck)
        self.assertIn(f"stopped by a signal after step {s}", stdout)
        # Issue 13: one line for the request, one for the result, never one per rank.
        self.assertEqual(stdout.count("stopped by a signal"), 1, stdout)
        self.assertEqual(stderr.count("stop requested ("), 1, stderr)
        self.assertIn(f"stopping after step {s}", stderr)
        self.assertEqual(csv_steps(out)[-1], s, "every trained step is in metrics.csv")
        verify_crc(self, ck)
        if not resume:
            return
        self.assertLess(s, 24, "the stop came too late for the comparison")
        mpirun(2, out, *LONG, "--max-steps", "24", "--resume", out)
        assert_bitwise(self, ck, os.path.join(R24, "checkpoint.npz"))
        self.assertEqual(csv_steps(out), list(range(1, 25)))

    def test_second_job_on_a_busy_folder_is_refused(self):
        """One job per folder: while a run trains, a resume of it and a fresh
        run into it are refused, naming the holder (rank 0's pid); once it
        has stopped, the resume goes ahead."""
        out = os.path.join(TMP, "busy")
        proc = self.start_long(out)
        wait_for(lambda: len(rank_pids(proc.pid)) == 2, "rank pids")
        holder = rank_pids(proc.pid)[0]
        for args in (("--resume", out), ("--overwrite",)):
            p = mpirun(2, out, *LONG, *args, check=False, timeout=60)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn(f"{out} is in use by aesim-train, pid {holder} on ", p.stderr)
        self.assertIsNone(proc.poll(), "the first job must go on")
        os.kill(holder, signal.SIGTERM)
        rc, stdout, stderr = self.finish(proc)
        self.assertEqual(rc, 0, stderr)
        s = step_of(os.path.join(out, "checkpoint.npz"))
        mpirun(2, out, "--max-steps", str(s + 2), "--resume", out)
        self.assertEqual(step_of(os.path.join(out, "checkpoint.npz")), s + 2)

    def test_sigterm_to_one_rank(self):
        out = os.path.join(TMP, "term_rank")
        proc = self.start_long(out)
        wait_for(lambda: len(rank_pids(proc.pid)) == 2, "rank pids")
        os.kill(rank_pids(proc.pid)[1], signal.SIGTERM)
        rc, stdout, stderr = self.finish(proc)
        self.assertEqual(rc, 0, stderr)
        self.assertIn("stop requested (SIGTERM) on 1 of 2 rank(s)", stderr)
        self.check_stopped_and_resume(out, stdout, stderr)

    def test_signals_to_mpirun(self):
        # Open MPI 4.1 mpirun, on SIGTERM or SIGINT, sends the ranks SIGCONT,
        # SIGTERM odls_base_sigkill_timeout s later and SIGKILL as long again
        # after that, and exits 1 whatever the ranks do; SIGUSR1 it forwards at
        # once.  A short timeout (5 s) keeps the test quick, long enough for a step,
        # the checkpoint and the ranks' exit watchdog (2 s, src/train/train.c).
        # Each rank runs under a shell that records its exit status and
        # output (mpirun stops forwarding output while it shuts down).
        wrapper = os.path.join(TMP, "rank_status.sh")
        with open(wrapper, "w") as f:
            f.write('#!/bin/sh\nr=$OMPI_COMM_WORLD_RANK\n'
                    '"%s" "$@" >"$AESIM_RANK_LOG.$r.out" 2>"$AESIM_RANK_LOG.$r.err" &\nchild=$!\n'
                    'trap : TERM INT USR1\n'
                    'while :; do wait $child; rc=$?; kill -0 $child 2>/dev/null || break; done\n'
                    'echo "$r $rc" >> "$AESIM_RANK_LOG.status"\nexit $rc\n' % BIN)
        os.chmod(wrapper, 0o755)
        for sig, rank_sig in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGTERM"), (signal.SIGUSR1, "SIGUSR1")):
            with self.subTest(signal=sig.name):
                out = os.path.join(TMP, "mpirun_" + sig.name)
                log = os.path.join(TMP, "ranks_" + sig.name)
                proc = self.start_long(out, binary=wrapper, env={"AESIM_RANK_LOG": log},
                                       mca=["--mca", "odls_base_sigkill_timeout", "5"])
                proc.send_signal(sig)
                rc, _, mpirun_err = self.finish(proc)
                with open(log + ".status") as f:
                    codes = sorted(tuple(map(int, line.split())) for line in f)
                self.assertEqual(codes, [(0, 0), (1, 0)], f"rank exit codes\n{mpirun_err}")
                logs = {}
                for ext in ("out", "err"):
                    logs[ext] = ""
                    for r in (0, 1):
                        with open(f"{log}.{r}.{ext}") as f:
                            logs[ext] += f.read()
                self.assertIn(f"stop requested ({rank_sig})", logs["err"])
                if sig == signal.SIGUSR1:
                    self.assertEqual(rc, 0, mpirun_err)
                # SIGTERM/SIGINT reach the ranks 5 s late, past the 24-step
                # reference; the same stop path is compared bit for bit in
                # test_sigterm_to_one_rank and for SIGUSR1 here.
                self.check_stopped_and_resume(out, logs["out"], logs["err"], resume=sig == signal.SIGUSR1)

    def test_kill9_of_a_rank_ends_job_and_checkpoint_is_resumable(self):
        out = os.path.join(TMP, "kill9")
        proc = mpirun(2, out, *LONG, "--ckpt-every", "3", popen=True)
        wait_for(lambda: os.path.exists(os.path.join(out, "ckpt-step00000006.npz")) or proc.poll() is not None,
                 "checkpoint at step 6")
        self.assertIsNone(proc.poll(), "training ended early")
        t0 = time.time()
        os.kill(rank_pids(proc.pid)[1], signal.SIGKILL)
        rc, stdout, stderr = self.finish(proc)
        took = time.time() - t0
        self.assertNotEqual(rc, 0)
        self.assertLess(took, 15, "the job outlived its dead rank")
        ck = os.path.join(out, "checkpoint.npz")
        verify_crc(self, ck)
        s = step_of(ck)
        self.assertLess(s, 24)
        mpirun(2, out, *LONG, "--max-steps", "24", "--resume", out)
        assert_bitwise(self, ck, os.path.join(R24, "checkpoint.npz"))


class MappedInput(unittest.TestCase):
    def test_data_file_shrinking_under_training_ends_the_job_naming_it(self):
        """The training data is memory-mapped; truncating it under a running
        job (reads past the new end raise SIGBUS, POSIX mmap(2)) ends every
        rank with a line naming the file, not "Bus error"; the checkpoint
        on disk stays intact."""
        data = os.path.join(TMP, "shrink-images-idx3-ubyte")
        shutil.copy(DATA, data)
        out = os.path.join(TMP, "shrink")
        proc = mpirun(2, out, *LONG, "--data", data, "--ckpt-every", "4", popen=True)
        wait_for(lambda: csv_lines(out) >= 6 or proc.poll() is not None, "training to start")
        self.assertIsNone(proc.poll(), "training ended early:\n" + "".join(read_logs(proc)))
        os.truncate(data, 16)   # the IDX header alone
        rc, stdout, stderr = finish(self, proc)
        self.assertNotEqual(rc, 0)
        self.assertIn(data + " changed while in use", stderr)
        self.assertNotIn("Bus error", stderr)
        verify_crc(self, os.path.join(out, "checkpoint.npz"))


class NumericalFault(unittest.TestCase):
    def test_nan_gradient_stops_and_keeps_last_good_checkpoint(self):
        out = os.path.join(TMP, "nan")
        p = mpirun(2, out, "--epochs", "2", "--ckpt-every", "2", env={"AESIM_FAULT_NAN_STEP": "5"}, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("not finite at step 5", p.stderr)
        self.assertIn("ckpt-step00000004.npz is kept", p.stderr)
        self.assertEqual(sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "*.npz"))),
                         ["checkpoint.npz", "ckpt-step00000002.npz", "ckpt-step00000004.npz"])
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "ckpt-step00000004.npz"))
        self.assertLessEqual(max(csv_steps(out)), 4)


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)
    return p.returncode == 0, p.stderr.strip()


def umount(path):
    subprocess.run(["umount", "-l", path], capture_output=True)


def fill(folder, leave_bytes):
    """Creates folder/filler so that about leave_bytes stay free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(folder, "filler"), "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
        f.flush()
        os.fsync(f.fileno())


class DiskFaults(unittest.TestCase):
    def setUp(self):
        self.mnt = tempfile.mkdtemp(dir=TMP, prefix="tmpfs.")
        ok, why = mount_tmpfs(self.mnt, "200k")
        if not ok:
            self.skipTest(f"cannot mount a tmpfs here ({why}); the full-disk tests need root")
        self.addCleanup(umount, self.mnt)

    def test_full_disk_during_checkpoint(self):
        out = os.path.join(self.mnt, "run")
        # A checkpoint is ~77 KB: two fit in 200 KiB, the third does not.
        p = serial(out, "--epochs", "2", "--ckpt-every", "2", "--keep", "2", check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("No space left on device", p.stderr)
        self.assertIn(os.path.join(out, "ckpt-step00000006.npz"), p.stderr)
        self.assertIn("ckpt-step00000004.npz is intact", p.stderr)
        self.assertEqual(temps(out), [])
        for s in (2, 4):
            verify_crc(self, os.path.join(out, f"ckpt-step{s:08d}.npz"))
        self.assertEqual(step_of(os.path.join(out, "checkpoint.npz")), 4)
        self.assertEqual(csv_steps(out)[:6], list(range(1, 7)))
        # ... and training continues from it elsewhere.
        out2 = os.path.join(TMP, "after_full")
        serial(out2, "--epochs", "2", "--resume", out)
        self.assertEqual(step_of(os.path.join(out2, "checkpoint.npz")), 8)

    def test_stale_temp_is_removed_before_the_first_save(self):
        """A temp left by a checkpoint write that was killed fills the disk:
        the resume removes it when it takes the folder (saying so, with its
        size), so its first save has room (it used to be removed only after a
        successful save: every resume failed with "No space left")."""
        out = os.path.join(self.mnt, "run")
        serial(out, "--epochs", "2", "--max-steps", "2", "--keep", "1")
        stale = os.path.join(out, "ckpt-step00000003.npz.tmp.99999999")  # no such pid
        st = os.statvfs(self.mnt)
        with open(stale, "wb") as f:   # all but 8 KiB: less than a checkpoint (~77 KB) is left
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 8192))
        size = os.path.getsize(stale)
        self.assertGreater(size, 77000)
        # the run's other files' temps go too; a user's look-alike and a
        # live writer's temp stay
        keep = ["ckpt-stepnotes.tmp.99999999", "metrics.csv.tmp.%d" % os.getpid()]
        for name in ["metrics.csv.tmp.99999999", "recon_epoch001.png.tmp.99999999.Ab12Cd", *keep]:
            open(os.path.join(out, name), "w").close()
        p = serial(out, "--epochs", "2", "--max-steps", "3", "--keep", "1", "--resume", out, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("note: removed 3 temporary file(s) (%.1f MB) left in %s by a writer that was killed"
                      % (size / 1e6, out), p.stdout)
        self.assertEqual(sorted(temps(out)), sorted(keep))
        self.assertEqual(step_of(os.path.join(out, "checkpoint.npz")), 3)
        verify_crc(self, os.path.join(out, "ckpt-step00000003.npz"))

    def test_full_disk_png_and_csv_leave_old_files(self):
        out = os.path.join(self.mnt, "run")
        grid = ["--grid", "8"]   # a PNG of 2 pages (4 KiB each)
        serial(out, "--epochs", "2", "--max-steps", "2", *grid)
        before = files_bytes(out)
        self.assertGreater(len(before["recon_epoch001.png"]), 4096)
        # One page free: the CSV still fits, the PNG does not.
        fill(self.mnt, 4096)
        p = serial(out, "--epochs", "2", "--max-steps", "3", "--resume", out, *grid, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("No space left on device", p.stderr)
        self.assertIn(os.path.join(out, "recon_epoch001.png"), p.stderr)
        after = files_bytes(out)
        self.assertEqual(after["recon_epoch001.png"], before["recon_epoch001.png"])
        self.assertEqual(after["checkpoint.npz"], before["checkpoint.npz"])
        self.assertEqual(temps(out), [])
        # Completely full: the metrics CSV cannot be rewritten; nothing changes.
        fill(self.mnt, 0)
        os.remove(os.path.join(self.mnt, "filler"))
        fill(self.mnt, 0)
        before = files_bytes(out)
        p = serial(out, "--epochs", "2", "--max-steps", "3", "--resume", out, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("No space left on device", p.stderr)
        self.assertIn(os.path.join(out, "metrics.csv"), p.stderr)
        self.assertEqual(files_bytes(out), before)
        self.assertEqual(temps(out), [])

    def test_full_disk_during_vector_database_append(self):
        # A database of 20 images (D = 392: ~31 KB of vectors) fits; appending
        # the 120-image set (~190 KB more) does not.  The error names the
        # file and errno text; the manifest and the old shard stay as they
        # were, no temporary file is left, and the database still answers.
        small = os.path.join(TMP, "tiny20-images-idx3-ubyte")
        with open(DATA, "rb") as f:
            raw = f.read()
        with open(small, "wb") as f:
            f.write(struct.pack(">IIII", 0x803, 20, 28, 28) + raw[16:16 + 20 * 784])
        ck = os.path.join(R8, "checkpoint.npz")
        search = os.path.join(ROOT, BUILD, "aesim-search")
        db = os.path.join(self.mnt, "db")
        run = lambda *a: subprocess.run([search, *a], env=ENV, capture_output=True, text=True, timeout=120)
        p = run("index", "--model", ck, "--data", small, "--db", db)
        self.assertEqual(p.returncode, 0, p.stderr)
        before = files_bytes(db)
        p = run("index", "--model", ck, "--data", DATA, "--db", db, "--append")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("No space left on device", p.stderr)
        self.assertIn(db, p.stderr)
        self.assertEqual(files_bytes(db), before)
        self.assertEqual(temps(db), [])
        q = run("query", "--model", ck, "--db", db, "--data", small, "--ids", "3", "--k", "1")
        self.assertEqual(q.returncode, 0, q.stderr)
        self.assertEqual(q.stdout.splitlines()[1].split("\t")[2], "3")

    def test_read_only_folder(self):
        out = os.path.join(self.mnt, "run")
        serial(out, "--epochs", "1")
        before = files_bytes(out)
        r = subprocess.run(["mount", "-o", "remount,ro", self.mnt], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest(f"cannot remount the tmpfs read-only ({r.stderr.strip()})")
        p = serial(out, "--epochs", "2", "--resume", out, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("Read-only file system", p.stderr)
        self.assertIn(out, p.stderr)
        self.assertEqual(files_bytes(out), before)
        # Reading from the read-only folder is fine.
        out2 = os.path.join(TMP, "from_ro")
        serial(out2, "--epochs", "2", "--resume", out)
        self.assertEqual(step_of(os.path.join(out2, "checkpoint.npz")), 8)


class MultiHost(unittest.TestCase):
    """mpirun across two network namespaces (two 'hosts' with their own
    network stack and host name) joined by a veth pair."""

    def setUp(self):
        tag = str(os.getpid())
        self.ns = [f"aesA{tag}", f"aesB{tag}"]
        self.veth = [f"va{tag}", f"vb{tag}"]
        self.ips = ["10.213.0.1", "10.213.0.2"]
        for tool in ("ip", "unshare"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed (iproute2 / util-linux)")
        r = subprocess.run(["ip", "netns", "add", self.ns[0]], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest(f"cannot create a network namespace here: {r.stderr.strip()}")
        self.addCleanup(self.cleanup)
        cmds = [["ip", "netns", "add", self.ns[1]],
                ["ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1]]]
        for i in (0, 1):
            cmds += [["ip", "link", "set", self.veth[i], "netns", self.ns[i]],
                     ["ip", "-n", self.ns[i], "addr", "add", self.ips[i] + "/24", "dev", self.veth[i]],
                     ["ip", "-n", self.ns[i], "link", "set", self.veth[i], "up"],
                     ["ip", "-n", self.ns[i], "link", "set", "lo", "up"]]
        cmds.append(["ip", "netns", "exec", self.ns[0], "unshare", "--uts", "true"])
        for c in cmds:
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode != 0:
                self.skipTest(f"cannot set up the two hosts ({' '.join(c)}: {r.stderr.strip()})")

    def cleanup(self):
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def test_two_hosts_over_tcp(self):
        agent = os.path.join(TMP, "netns_agent.sh")
        with open(agent, "w") as f:
            # Called by mpirun as ssh would be: AGENT HOST COMMAND...
            f.write("#!/bin/sh\nhost=$1; shift\ncase $host in\n"
                    f"  {self.ips[0]}) ns={self.ns[0]};;\n  {self.ips[1]}) ns={self.ns[1]};;\n"
                    '  *) echo "netns agent: unknown host $host" >&2; exit 255;;\nesac\n'
                    'exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"\n')
        os.chmod(agent, 0o755)
        hostfile = os.path.join(TMP, "hostfile")
        with open(hostfile, "w") as f:
            f.write(f"{self.ips[0]} slots=1\n{self.ips[1]} slots=1\n")
        out = os.path.join(TMP, "multihost")
        subnet = self.ips[0].rsplit(".", 1)[0] + ".0/24"
        mpi = ["mpirun", "--hostfile", hostfile, "-np", "2", "--mca", "plm_rsh_agent", agent,
               "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", subnet,
               "--mca", "oob_tcp_if_include", subnet, "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS",
               BIN, *COMMON, "--out", out, "--epochs", "2", "--ckpt-every", "2", "--keep", "3"]
        # mpirun itself runs on the first "host".
        cmd = ["ip", "netns", "exec", self.ns[0], "unshare", "--uts", "sh", "-c",
               f'hostname {self.ns[0]}; exec "$@"', "sh", *mpi]
        p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("threads: 1 rank(s)/node", p.stdout, "the two ranks should be on different hosts")
        assert_bitwise(self, os.path.join(out, "checkpoint.npz"), os.path.join(R8, "checkpoint.npz"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
