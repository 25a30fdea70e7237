"""Output folders and resume of aesim-train (issue 13, items 1-3).

- --resume DIR without --out continues in DIR: new checkpoints there, rows
  appended to its metrics.csv, and the run that lives in the default folder
  (runs/aesim under the working directory) is left byte for byte as it was.
  The resumed command gives neither --seed nor --batch-size: the run takes
  them from the checkpoint, and the result equals the uninterrupted 2-epoch
  run bit for bit (reference: the same run without a stop).
- --epochs and --max-steps count from the run's first step after a resume.
- A fresh run into a folder that holds another run is refused with the way
  out, and changes nothing; --overwrite deletes the old run's files first.
- A resume into another --out that holds a run is refused; into a fresh one
  it starts that folder's metrics.csv with the resumed run's rows.
- The checkpoint records the schedule identity (meta.schedule, meta.data):
  the data fingerprint equals zlib.crc32 over the documented bytes, computed
  here from the IDX file with Python alone; a resume on other images (same
  count or another count) or with another --seed is refused, changing
  nothing; a version-2 checkpoint (no record, rewritten here with numpy)
  still resumes, with a warning that the data cannot be checked.
- --shuffle block:B:W is recorded (meta.shuffle, version 4) and a resume
  continues it bit for bit; a resume asking for another order is refused.
- --shuffle block:B:W is recorded (meta.shuffle, version 4) and a resume
  continues it bit for bit; a resume asking for another order is refused.
"""
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "aesim-train")
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
TMP = tempfile.mkdtemp(prefix="mpi_outdir.", dir=os.environ.get("AESIM_TEST_TMP") or None)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
N_IMAGES = 120
BATCH = 30          # 4 steps per epoch
DATA = os.path.join(TMP, "tiny-images-idx3-ubyte")
OTHER = os.path.join(TMP, "other-images-idx3-ubyte")      # as many images, shifted by one
FEWER = os.path.join(TMP, "fewer-images-idx3-ubyte")      # 90 images
# Options of the first run; a resume gives only the data and what it changes.
FIRST = ["--val-limit", "20", "--batch-size", str(BATCH), "--csv-every", "1", "--seed", "3", "--grid", "2",
         "--progress", "lines", "--threads", "1"]
DATA_ARGS = ["--data", DATA, "--val", DATA]
# The fingerprint samples this many images (include/train_schedule.h).
SAMPLES = 64


def setUpModule():
    import gzip
    with gzip.open(MNIST) as f:
        raw = f.read()
    for path, first, n in ((DATA, 0, N_IMAGES), (OTHER, 1, N_IMAGES), (FEWER, 0, 90)):
        with open(path, "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + raw[16 + first * 784:16 + (first + n) * 784])
    global REF
    REF = os.path.join(TMP, "ref")
    train(2, REF, *DATA_ARGS, *FIRST, "--epochs", "2")


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def train(np_, out, *args, check=True, cwd=None):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), "-x", "OMP_NUM_THREADS", BIN, *args]
    if out:
        cmd += ["--out", out]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180, cwd=cwd or TMP)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def members(path):
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def step_of(path):
    return int(members(path)["meta.state"][1])


def older_checkpoint(run, version, drop, folder):
    """run's checkpoint.npz as an older format version would have written
    it (members `drop` left out, meta.state[0] = version, meta.crc32
    recomputed) into the new folder; returns the folder."""
    ck = members(os.path.join(run, "checkpoint.npz"))
    old = {k: v for k, v in ck.items() if k not in (*drop, "meta.crc32")}
    old["meta.state"] = old["meta.state"].copy()
    old["meta.state"][0] = version
    old["meta.crc32"] = np.array([zlib.crc32(v.tobytes()) for v in old.values()], dtype=np.uint32)
    os.makedirs(folder)
    np.savez(os.path.join(folder, "checkpoint.npz"), **old)
    return folder


def tree_bytes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def csv_rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return [r.split(",") for r in f.read().splitlines()[1:]]


def step_rows(out):
    return [int(r[0]) for r in csv_rows(out) if r[3] == ""]


def assert_bitwise_weights(tc, got_path, ref_path):
    got, ref = members(got_path), members(ref_path)
    for k in ref:
        if k.startswith("conv") or k.startswith("opt.") or k == "meta.state":
            tc.assertTrue(got[k].tobytes() == ref[k].tobytes(), f"{got_path} differs from {ref_path} in {k}")


def fingerprint(path):
    """zlib.crc32 of n, C, H, W (int64 LE), then for each sampled image its
    uint8 pixels and int32 label (-1: this IDX file has no labels file)."""
    with open(path, "rb") as f:
        raw = f.read()
    _, n, h, w = struct.unpack(">IIII", raw[:16])
    crc = zlib.crc32(struct.pack("<qqqq", n, 1, h, w))
    s = min(n, SAMPLES)
    for j in range(s):
        i = j * (n - 1) // (s - 1) if s > 1 else 0
        crc = zlib.crc32(raw[16 + i * h * w:16 + (i + 1) * h * w], crc)
        crc = zlib.crc32(struct.pack("<i", -1), crc)
    return crc


class Resume(unittest.TestCase):
    def test_resume_without_out_continues_in_its_folder(self):
        run = os.path.join(TMP, "a")
        cwd = os.path.join(TMP, "cwd_a")
        decoy = os.path.join(cwd, "runs", "aesim")
        shutil.copytree(REF, decoy)       # a run living in the default folder
        before = tree_bytes(decoy)
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1", cwd=cwd)
        self.assertEqual(step_of(os.path.join(run, "checkpoint.npz")), 4)
        # No --out, --seed, --batch-size, --csv-every: all from the run resumed.
        p = train(2, None, *DATA_ARGS, "--threads", "1", "--epochs", "2", "--csv-every", "1", "--resume", run,
                  cwd=cwd)
        self.assertIn("output " + run, p.stdout)
        self.assertEqual(tree_bytes(decoy), before, "the run in the default folder was touched")
        self.assertEqual(step_of(os.path.join(run, "checkpoint.npz")), 8)
        self.assertTrue(os.path.exists(os.path.join(run, "ckpt-step00000008.npz")))
        self.assertEqual(step_rows(run), list(range(1, 9)), "metrics.csv continues")
        assert_bitwise_weights(self, os.path.join(run, "checkpoint.npz"), os.path.join(REF, "checkpoint.npz"))

    def test_epochs_and_max_steps_count_from_the_first_step(self):
        run = os.path.join(TMP, "totals")
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "2", "--max-steps", "3")
        self.assertEqual(step_of(os.path.join(run, "checkpoint.npz")), 3)
        train(2, None, *DATA_ARGS, "--threads", "1", "--max-steps", "6", "--resume", run)
        self.assertEqual(step_of(os.path.join(run, "checkpoint.npz")), 6, "--max-steps is a total")
        # No --max-steps: on to the run's --epochs (2, from the checkpoint).
        train(2, None, *DATA_ARGS, "--threads", "1", "--resume", run)
        self.assertEqual(step_of(os.path.join(run, "checkpoint.npz")), 8, "--epochs is a total")
        assert_bitwise_weights(self, os.path.join(run, "checkpoint.npz"), os.path.join(REF, "checkpoint.npz"))

    def test_resume_into_another_out(self):
        src = os.path.join(TMP, "src")
        train(2, src, *DATA_ARGS, *FIRST, "--epochs", "1")
        busy = os.path.join(TMP, "busy")
        shutil.copytree(REF, busy)
        before = tree_bytes(busy)
        p = train(2, busy, *DATA_ARGS, "--epochs", "2", "--resume", src, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(busy + " holds another run", p.stderr)
        self.assertIn("--overwrite", p.stderr)
        self.assertEqual(tree_bytes(busy), before)
        fresh = os.path.join(TMP, "fresh")
        train(2, fresh, *DATA_ARGS, "--epochs", "2", "--csv-every", "1", "--resume", src)
        self.assertEqual(step_rows(fresh), list(range(1, 9)), "the resumed run's rows come along")
        self.assertEqual(step_of(os.path.join(src, "checkpoint.npz")), 4, "the source run was changed")
        assert_bitwise_weights(self, os.path.join(fresh, "checkpoint.npz"), os.path.join(REF, "checkpoint.npz"))


class FreshRun(unittest.TestCase):
    def test_refuses_a_folder_holding_another_run(self):
        run = os.path.join(TMP, "taken")
        shutil.copytree(REF, run)
        before = tree_bytes(run)
        p = train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(run + " holds another run", p.stderr)
        self.assertIn("--resume " + run, p.stderr)
        self.assertIn("--overwrite", p.stderr)
        self.assertEqual(tree_bytes(run), before, "a refused run changed the folder")
        p = train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1", "--overwrite")
        self.assertIn("--overwrite: deleted", p.stdout)
        names = sorted(n for n in os.listdir(run) if n.endswith(".npz"))
        self.assertEqual(names, ["checkpoint.npz", "ckpt-step00000004.npz"], "old checkpoints left behind")
        self.assertEqual(step_rows(run), [1, 2, 3, 4])
        self.assertFalse(os.path.exists(os.path.join(run, "recon_epoch002.png")))


class Schedule(unittest.TestCase):
    def test_checkpoint_records_the_schedule(self):
        ck = members(os.path.join(REF, "checkpoint.npz"))
        self.assertEqual(int(ck["meta.state"][0]), 6, "format version")
        self.assertEqual([int(v) for v in ck["meta.schedule"]], [N_IMAGES, fingerprint(DATA), 2, 0])
        self.assertIn(os.path.basename(DATA), bytes(ck["meta.data"]).decode())
        self.assertEqual(bytes(ck["meta.data_arg"]).decode(), os.path.realpath(DATA))

    def check_refused(self, args, *needles):
        run = os.path.join(TMP, "sched")
        if not os.path.exists(run):
            train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1")
        before = tree_bytes(run)
        p = train(2, None, "--threads", "1", "--epochs", "2", "--resume", run, *args, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        for n in needles:
            self.assertIn(n, p.stderr)
        self.assertEqual(tree_bytes(run), before, "a refused resume changed the run")

    def test_other_images_same_count_refused(self):
        self.check_refused(["--data", OTHER, "--val", DATA], "other images", os.path.basename(OTHER))

    def test_other_count_refused(self):
        self.check_refused(["--data", FEWER, "--val", DATA], "120 images", "has 90")

    def test_other_seed_refused(self):
        self.check_refused([*DATA_ARGS, "--seed", "4"], "--seed 4", "seed 3")

    def test_version2_checkpoint_still_resumes(self):
        run = os.path.join(TMP, "v2")
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1")
        v2 = older_checkpoint(run, 2, ("meta.schedule", "meta.data", "meta.shuffle", "meta.data_arg", "meta.views"),
                              os.path.join(TMP, "v2only"))
        p = train(2, None, *DATA_ARGS, "--threads", "1", "--epochs", "2", "--batch-size", str(BATCH),
                  "--seed", "3", "--resume", v2)
        self.assertIn("does not record its training data", p.stderr)
        assert_bitwise_weights(self, os.path.join(v2, "checkpoint.npz"), os.path.join(REF, "checkpoint.npz"))

    @unittest.skipUnless(os.path.exists("/usr/share/datasets/fashion-mnist"), "no default --data (dataset-fashion-mnist)")
    def test_version4_checkpoint_without_data_names_the_default_data(self):
        """A version-4 checkpoint records no --data: a resume without --data
        reads the default one, and the refusal says so ("the default --data
        has"), not "--data has" as if the user had given one."""
        run = os.path.join(TMP, "v4")
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1")
        v4 = older_checkpoint(run, 4, ("meta.data_arg", "meta.views"), os.path.join(TMP, "v4only"))
        p = train(2, None, "--threads", "1", "--lr", "0.01", "--resume", v4, check=False)
        self.assertNotEqual(p.returncode, 0)
        # refused after the options were adopted: still only why
        self.assertNotIn("replaces", p.stdout + p.stderr)
        self.assertNotIn("resume: keeps", p.stdout)
        self.assertIn("was trained on 120 images", p.stderr)
        self.assertIn("but the default --data has ", p.stderr)
        self.assertIn("(hint: this checkpoint does not record its --data: give it)", p.stderr)
        self.assertNotIn("but --data has", p.stderr)

    def test_resize_of_the_recorded_data_names_it(self):
        """Without --data a resume reads the recorded --data: a shape refusal
        names that one (it said "the default --data" with a hint to give
        --data, which the checkpoint does record)."""
        run = os.path.join(TMP, "rec_shape")
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "1")
        p = train(2, None, "--threads", "1", "--val", DATA, "--data-opts", "size=14", "--resume", run, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("images but the recorded --data (read again now) has 14x14x1 (HxWxC)", p.stderr)
        self.assertNotIn("does not record", p.stderr)

    def test_block_shuffle_is_recorded_and_resumes_exactly(self):
        """--shuffle block:B:W (issue 18, item 3): the checkpoint records the
        order (meta.shuffle), a resume that does not repeat it continues it
        bit for bit, one that asks for another order is refused; the order
        is not the global shuffle's (other weights than REF)."""
        ref = os.path.join(TMP, "block_ref")
        train(2, ref, *DATA_ARGS, *FIRST, "--epochs", "2", "--shuffle", "block:8:3")
        ck = members(os.path.join(ref, "checkpoint.npz"))
        self.assertEqual([int(v) for v in ck["meta.shuffle"]], [8, 3])
        self.assertEqual(int(ck["meta.state"][0]), 6)
        self.assertFalse(np.array_equal(ck["conv0.weight"], members(os.path.join(REF, "checkpoint.npz"))["conv0.weight"]))
        run = os.path.join(TMP, "block_run")
        train(2, run, *DATA_ARGS, *FIRST, "--epochs", "2", "--shuffle", "block:8:3", "--max-steps", "3")
        before = tree_bytes(run)
        p = train(2, None, *DATA_ARGS, "--threads", "1", "--shuffle", "global", "--resume", run, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--shuffle differs from the order of", p.stderr)
        self.assertEqual(tree_bytes(run), before, "a refused resume changed the run's folder")
        train(2, None, *DATA_ARGS, "--threads", "1", "--resume", run)
        assert_bitwise_weights(self, os.path.join(run, "checkpoint.npz"), os.path.join(ref, "checkpoint.npz"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
