"""MPI tests of aesim-train on real images (../shared/data, read-only).

- P = 1 and P = 2 (same seed, same global batch of 30 images, which does not
  split evenly) give the same per-step loss curve over 25 steps and the same
  final weights within float tolerance; P = 3 and 4 (--oversubscribe) too.
- Every rank ends with bitwise-identical parameters (CRC-32 printed per rank).
- Samples are neither dropped nor double counted: an epoch of 7 batches of a
  data set whose size does not divide by the batch or by P has the loss of
  exactly those images (compared with P = 1).
- Resume: 10 steps on 2 ranks, then resume for 15 on 3 ranks == 25 straight
  steps on 1 rank (same schedule), within tolerance.
- The downsampled-ImageNet npz path trains (imagenet32 preset, 2 ranks).
- Bad input ends every rank with a message naming the file and a non-zero
  exit, never a hang: missing file, wrong format, image size that does not
  fit --arch, bad spec, unwritable output folder, bad option.
- A collapsed network (reconstructions that no longer depend on the input)
  is reported once in the log, with the variance ratio that PyTorch (the
  twin of tests/aesim_torch.py, on the checkpoint) and numpy compute on the
  same validation images; a slowly starting network and a single
  evaluation are not.
"""
import csv
import os
import re
import subprocess
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
BIN = os.path.join(ROOT, BUILD, "aesim-train")
SHARED = os.path.join(ROOT, "..", "shared", "data")
MNIST = os.path.join(SHARED, "mnist", "t10k-images-idx3-ubyte.gz")
IMAGENET32 = os.path.join(SHARED, "imagenet-sample", "sample32_data_batch.npz")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# Loss curves of different P agree to float rounding (different summation order).
RTOL = 1e-4


def train(np_, out, *args, check=True, timeout=300):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), BIN,
           "--threads", "1", "--out", out, *args]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def losses(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["train_loss"]) for r in rows if r["val_loss"] == ""}


def checksums(stderr):
    return re.findall(r"\[rank (\d+)\] parameter checksum crc32 ([0-9a-f]+)", stderr)


MNIST_ARGS = ["--data", MNIST, "--val-fraction", "0.05", "--batch-size", "30", "--max-steps", "25",
              "--csv-every", "1", "--seed", "7", "--grid", "4"]


class MpiTrain(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.runs = {}
        for p in (1, 2, 3, 4):
            out = os.path.join(TMP, f"mnist_p{p}")
            cls.runs[p] = (out, train(p, out, *MNIST_ARGS))

    def test_same_loss_curve_for_any_P(self):
        ref = losses(self.runs[1][0])
        self.assertEqual(sorted(ref), list(range(1, 26)))
        self.assertLess(ref[25], ref[1], "the loss did not go down")
        for p in (2, 3, 4):
            got = losses(self.runs[p][0])
            self.assertEqual(sorted(got), sorted(ref), f"P={p} steps")
            for s in ref:
                self.assertLessEqual(abs(got[s] - ref[s]), RTOL * abs(ref[s]), f"P={p} step {s}: {got[s]} vs {ref[s]}")

    def test_same_weights_for_any_P(self):
        ref = np.load(os.path.join(self.runs[1][0], "checkpoint.npz"))
        for p in (2, 3, 4):
            got = np.load(os.path.join(self.runs[p][0], "checkpoint.npz"))
            for k in ref.files:
                if k.startswith("conv"):
                    np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-5, err_msg=f"P={p} {k}")
            self.assertEqual(list(got["meta.state"]), list(ref["meta.state"]), f"P={p} state")

    def test_ranks_hold_identical_parameters(self):
        for p in (2, 3, 4):
            sums = checksums(self.runs[p][1].stderr)
            self.assertEqual(sorted(int(r) for r, _ in sums), list(range(p)), self.runs[p][1].stderr)
            self.assertEqual(len({c for _, c in sums}), 1, f"P={p} ranks differ: {sums}")

    def test_outputs_exist(self):
        out = self.runs[2][0]
        for f in ("checkpoint.npz", "metrics.csv", "recon_epoch001.png"):
            self.assertTrue(os.path.getsize(os.path.join(out, f)) > 0, f)
        self.assertFalse([f for f in os.listdir(out) if ".tmp" in f], "temporary files left behind")

    def test_full_epoch_counts_every_sample(self):
        # 203 images, batch 30: 6 full batches + one of 23; P = 3 splits 23 as 8+8+7.
        # Epoch loss with P=1 and P=3 must agree, and the step count must be 7.
        data = os.path.join(TMP, "small203.npz")
        if not os.path.exists(data):
            with np.load(IMAGENET32) as z:
                np.savez(data, data=z["data"][:203], labels=z["labels"][:203])
        runs = []
        for p in (1, 3):
            out = os.path.join(TMP, f"epoch_p{p}")
            train(p, out, "--data", data, "--val", data, "--val-limit", "20", "--batch-size", "30",
                  "--epochs", "1", "--csv-every", "1")
            runs.append(losses(out))
        self.assertEqual(sorted(runs[0]), list(range(1, 8)))
        for s in runs[0]:
            self.assertLessEqual(abs(runs[1][s] - runs[0][s]), RTOL * runs[0][s], f"step {s}")

    def test_resume_with_other_P_continues_schedule(self):
        out = os.path.join(TMP, "resume")
        args = [a for a in MNIST_ARGS]
        args[args.index("--max-steps") + 1] = "10"
        train(2, out, *args)
        ck = os.path.join(out, "checkpoint.npz")
        self.assertEqual(int(np.load(ck)["meta.state"][1]), 10)
        out2 = os.path.join(TMP, "resumed")
        train(3, out2, *MNIST_ARGS, "--resume", ck)
        ref = np.load(os.path.join(self.runs[1][0], "checkpoint.npz"))
        got = np.load(os.path.join(out2, "checkpoint.npz"))
        self.assertEqual(int(got["meta.state"][1]), 25)
        for k in ref.files:
            if k.startswith("conv") or k.startswith("opt."):
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-5, err_msg=k)
        got_l, ref_l = losses(out2), losses(self.runs[1][0])
        for s in range(11, 26):
            self.assertLessEqual(abs(got_l[s] - ref_l[s]), RTOL * ref_l[s], f"step {s}")

    def test_imagenet_npz(self):
        out = os.path.join(TMP, "imagenet32")
        p = train(2, out, "--data", IMAGENET32, "--batch-size", "16", "--max-steps", "6", "--val-limit", "32")
        self.assertIn("bottleneck 8x8x8 = 512 values", p.stdout)
        self.assertTrue(os.path.exists(os.path.join(out, "recon_epoch001.png")))


EMB_ARGS = ["--data", MNIST, "--val-fraction", "0.05", "--batch-size", "30", "--max-steps", "8",
            "--csv-every", "1", "--seed", "7", "--grid", "2", "--val-limit", "60",
            "--augment", "default", "--noise", "gauss:0.1", "--contrastive", "1", "--tau", "0.5",
            # float32: this checks the global batch's semantics at fp32's
            # tolerance; under bf16 (the default on AVX512_BF16 CPUs) the
            # ranks' different summation orders flip a few bf16 roundings
            # and 8 Adam steps move single weights by ~4e-5 (MpiTrain covers
            # P-invariance at the default precision)
            "--precision", "fp32"]


class MpiEmbeddings(unittest.TestCase):
    """--augment/--noise/--contrastive (issue 17): views are seeded by global
    position and NT-Xent takes its negatives from the whole global batch
    (codes all-gathered), so P = 1, 2, 3 give the same losses and weights."""
    @classmethod
    def setUpClass(cls):
        cls.runs = {}
        for p in (1, 2, 3):
            out = os.path.join(TMP, f"emb_p{p}")
            cls.runs[p] = (out, train(p, out, *EMB_ARGS))

    def test_same_losses_and_weights_for_any_P(self):
        ref = losses(self.runs[1][0])
        self.assertEqual(sorted(ref), list(range(1, 9)))
        # recon MSE (< 1) + NT-Xent of 60 rows, log(59) ~ 4.1 at the start
        self.assertGreater(ref[1], 3.0)
        w0 = np.load(os.path.join(self.runs[1][0], "checkpoint.npz"))
        for p in (2, 3):
            got = losses(self.runs[p][0])
            for s in ref:
                self.assertLessEqual(abs(got[s] - ref[s]), RTOL * abs(ref[s]), f"P={p} step {s}: {got[s]} vs {ref[s]}")
            w = np.load(os.path.join(self.runs[p][0], "checkpoint.npz"))
            for k in w0.files:
                if k.startswith("conv"):
                    np.testing.assert_allclose(w[k], w0[k], rtol=1e-3, atol=1e-5, err_msg=f"P={p} {k}")
            sums = checksums(self.runs[p][1].stderr)
            self.assertEqual(len({c for _, c in sums}), 1, f"P={p} ranks differ: {sums}")

    def test_pooled_contrastive_same_for_any_P(self):
        # --contrastive-pool avg: the ranks gather channel means (C floats
        # per row, not D); P = 1 and 2 still give the same run, and one
        # that differs from the flattened-code run of the same seed
        runs = {}
        for p in (1, 2):
            out = os.path.join(TMP, f"emb_pool_p{p}")
            runs[p] = (out, train(p, out, *EMB_ARGS, "--contrastive-pool", "avg"))
        ref, got = losses(runs[1][0]), losses(runs[2][0])
        self.assertEqual(sorted(ref), list(range(1, 9)))
        for s in ref:
            self.assertLessEqual(abs(got[s] - ref[s]), RTOL * abs(ref[s]), f"pooled P=2 step {s}: {got[s]} vs {ref[s]}")
        w1, w2 = (np.load(os.path.join(runs[p][0], "checkpoint.npz")) for p in (1, 2))
        for k in w1.files:
            if k.startswith("conv"):
                np.testing.assert_allclose(w2[k], w1[k], rtol=1e-3, atol=1e-5, err_msg=f"pooled P=2 {k}")
        self.assertGreater(abs(ref[1] - losses(self.runs[1][0])[1]), 1e-3)

    def test_projection_head_any_P_and_resume(self):
        # --contrastive-head: every rank runs the head over the gathered
        # rows, so P = 1 and 2 agree; the head is in every checkpoint, and a
        # run stopped at step 4 and resumed (on another P) ends as the
        # straight run: same losses, same conv and head weights
        head = [*EMB_ARGS, "--contrastive-pool", "avg", "--contrastive-head", "16"]
        runs = {}
        for p in (1, 2):
            out = os.path.join(TMP, f"emb_head_p{p}")
            train(p, out, *head)
            runs[p] = out
        ref = losses(runs[1])
        w1 = np.load(os.path.join(runs[1], "checkpoint.npz"))
        self.assertEqual(w1["head.0.weight"].shape, (16, 8))  # [N][C]: the mnist preset's 8 pooled channels
        self.assertEqual(w1["opt.v.head.2.bias"].shape, (16,))
        first = [*head]
        first[first.index("--max-steps") + 1] = "4"
        part = os.path.join(TMP, "emb_head_part")
        train(2, part, *first)
        resumed = os.path.join(TMP, "emb_head_resumed")
        train(1, resumed, *head, "--resume", os.path.join(part, "checkpoint.npz"))
        for name, out in (("P=2", runs[2]), ("resumed", resumed)):
            got = losses(out)
            for s in got:
                self.assertLessEqual(abs(got[s] - ref[s]), RTOL * abs(ref[s]), f"{name} step {s}: {got[s]} vs {ref[s]}")
            w = np.load(os.path.join(out, "checkpoint.npz"))
            for k in w1.files:
                if k.startswith(("conv", "head.", "opt.m.head.")):
                    np.testing.assert_allclose(w[k], w1[k], rtol=1e-3, atol=1e-5, err_msg=f"{name} {k}")
        self.assertLessEqual({5, 6, 7, 8}, set(losses(resumed)))
        self.assertNotAlmostEqual(ref[8], losses(self.runs[1][0])[8], places=3)
        # a checkpoint without a head: a new head starts, and the log says so
        plain = os.path.join(TMP, "emb_nohead")
        train(1, plain, *first[:first.index("--contrastive-head")])
        p = train(1, os.path.join(TMP, "emb_head_new"), *head, "--resume", os.path.join(plain, "checkpoint.npz"))
        self.assertIn("has no projection head", p.stdout + p.stderr)
        # another head width: refused with both widths (the checkpoint
        # records its head, meta.views)
        p = train(1, os.path.join(TMP, "emb_head_bad"), *head[:-1], "8", "--resume",
                  os.path.join(part, "checkpoint.npz"), check=False, timeout=120)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--contrastive-head 8 differs from the projection head of", p.stderr)
        self.assertIn("(16 units)", p.stderr)

    def test_resume_keeps_the_objective(self):
        # the checkpoint records --noise, --augment, --contrastive, --tau,
        # --contrastive-pool and --contrastive-head (meta.views): a resume
        # that repeats none of them trains the same objective (the straight
        # run's losses and head) and keeps the head in its checkpoints; a
        # change is reported, one that would drop or resize the trained
        # head is refused (before, the resume silently trained the plain
        # autoencoder and wrote checkpoints without the head)
        head = [*EMB_ARGS, "--contrastive-pool", "avg", "--contrastive-head", "16"]
        straight = os.path.join(TMP, "obj_straight")
        train(1, straight, *head)
        first = [*head]
        first[first.index("--max-steps") + 1] = "4"
        part = os.path.join(TMP, "obj_part")
        train(1, part, *first)
        ck = os.path.join(part, "checkpoint.npz")
        self.assertEqual([float(v) for v in np.load(ck)["meta.views"]], [1, 0.5, 1, 16, 1, 0.1, 0.5, 1, 2])
        plain = [*EMB_ARGS[:EMB_ARGS.index("--augment")], "--precision", "fp32"]
        resumed = os.path.join(TMP, "obj_resumed")
        p = train(1, resumed, *plain, "--resume", ck)
        self.assertIn("adam lr 0.001, --contrastive 1 --tau 0.5 --contrastive-pool avg --contrastive-head 16, "
                      "--noise gauss:0.1, --augment crop:0.5,flip,shift:2 (", p.stdout)
        ref, got = losses(straight), losses(resumed)
        self.assertEqual(sorted(got), [1, 2, 3, 4, 5, 6, 7, 8])
        for s in got:
            self.assertLessEqual(abs(got[s] - ref[s]), RTOL * abs(ref[s]), f"step {s}: {got[s]} vs {ref[s]}")
        w, w0 = (np.load(os.path.join(o, "checkpoint.npz")) for o in (resumed, straight))
        self.assertEqual(sorted(k for k in w.files if "head." in k), sorted(k for k in w0.files if "head." in k))
        for k in w0.files:
            if k.startswith(("conv", "head.", "opt.m.head.")):
                np.testing.assert_allclose(w[k], w0[k], rtol=1e-3, atol=1e-5, err_msg=k)
        for i, (args, needle) in enumerate(((["--contrastive", "0"], "holds a projection head (16 units)"),
                                            (["--contrastive-pool", "none"], "holds a projection head (16 units)"),
                                            (["--contrastive-head", "0"], "--contrastive-head 0 differs"))):
            p = train(1, os.path.join(TMP, f"obj_refused{i}"), *plain, *args, "--resume", ck, check=False, timeout=120)
            self.assertEqual(p.returncode, 1, f"{args}: {p.stdout}{p.stderr}")
            self.assertIn(needle, p.stderr, args)
            # a refused resume says only why: no note reads as if the value was applied
            self.assertNotIn("replaces", p.stdout + p.stderr, args)
            self.assertFalse(os.path.exists(os.path.join(TMP, f"obj_refused{i}")), args)
        # allowed changes are reported, as --lr's (max-steps 4: nothing to train)
        p = train(1, os.path.join(TMP, "obj_changed"), *plain, "--max-steps", "4", "--tau", "0.2", "--augment", "none",
                  "--noise", "mask:0.25", "--resume", ck)
        for line in (f"resume: --tau 0.2 replaces 0.5 of {ck}", f"resume: --augment none replaces crop:0.5,flip,shift:2 "
                     f"of {ck}", f"resume: --noise mask:0.25 replaces gauss:0.1 of {ck}"):
            self.assertIn(line, p.stdout)

    def test_options_change_the_run(self):
        # the plain run of the same seed and batches has another (smaller) loss
        out = os.path.join(TMP, "emb_plain")
        train(1, out, *EMB_ARGS[:EMB_ARGS.index("--augment")])
        plain = losses(out)
        self.assertLess(plain[1], 1.0)
        self.assertNotAlmostEqual(plain[8], losses(self.runs[1][0])[8], places=3)

    def test_bad_options(self):
        for args, needle in ((["--noise", "salt:0.1"], "--noise"), (["--noise", "gauss:-1"], "gauss:SIGMA"),
                             (["--augment", "rotate"], "rotate"), (["--contrastive", "-1"], "--contrastive"),
                             (["--tau", "0"], "--tau"), (["--contrastive-pool", "max"], "--contrastive-pool"),
                             (["--contrastive", "1", "--contrastive-head", "16"], "--contrastive-pool avg"),
                             (["--contrastive-head", "-1"], "--contrastive-head")):
            p = train(2, os.path.join(TMP, "bad_emb"), "--data", MNIST, *args, check=False, timeout=120)
            self.assertEqual(p.returncode, 2, f"{args}: {p.stderr}")
            self.assertIn(needle, p.stderr)


class BadInput(unittest.TestCase):
    def fails(self, args, *needles, np_=2):
        out = os.path.join(TMP, "bad")
        p = train(np_, out, *args, check=False, timeout=120)
        self.assertNotEqual(p.returncode, 0, f"{args} succeeded")
        for n in needles:
            self.assertIn(n, p.stderr, f"{args}: message lacks {n!r}:\n{p.stderr}")
        self.assertNotIn("Segmentation", p.stderr)
        return p

    def test_missing_file(self):
        self.fails(["--data", "/nonexistent/train.npz"], "/nonexistent/train.npz")

    def test_wrong_format(self):
        bad = os.path.join(TMP, "not_an_npz.npz")
        with open(bad, "wb") as f:
            f.write(b"this is not a zip file" * 10)
        self.fails(["--data", bad], bad)

    def test_image_size_does_not_fit_arch(self):
        self.fails(["--data", MNIST, "--arch", "imagenet32"], "28x28x1")

    def test_bad_spec(self):
        self.fails(["--data", MNIST, "--arch", "c16 p c8 p p | u u c1"], "pooling")
        self.fails(["--data", MNIST, "--arch", "c16 q | c1"], "unknown token 'q'")

    def test_unwritable_output(self):
        self.fails(["--data", MNIST, "--max-steps", "1", "--out", "/etc/passwd/out"], "/etc/passwd")

    def test_bad_option(self):
        self.fails(["--batch-size", "0"], "--batch-size")
        self.fails(["--frobnicate"], "--frobnicate")

    def test_help(self):
        p = subprocess.run([BIN, "--help"], env=ENV, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0)
        for opt in ("--data", "--val", "--arch", "--batch-size", "--lr", "--resume", "--threads", "--out"):
            self.assertIn(opt, p.stdout)


COLLAPSE_WARNING = re.compile(r"warning: the network has collapsed: .*variance across the validation images is "
                              r"(\S+)% of the images' own")


class Collapse(unittest.TestCase):
    """aesim-train warns once when, at two epoch ends in a row, the
    reconstructions' variance across the validation images is below 1e-3 of
    the images' own and not rising, and the PSNR is stuck (train.c
    TRAIN_COLLAPSE_VAR_RATIO).  The ratio is recomputed here from the final
    checkpoint with the PyTorch twin and numpy (float64 per-pixel variances,
    averaged over the pixels)."""
    @classmethod
    def setUpClass(cls):
        import gzip
        with gzip.open(MNIST) as f:
            imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        cls.val_images = imgs[-300:].astype(np.float32) / 255
        cls.val = os.path.join(TMP, "collapse_val.npz")
        np.savez(cls.val, images=imgs[-300:], labels=np.zeros(300, np.int32))

    ARCH = "c16 p c8 p c8 | c16 u c16 u c1"  # the mnist preset

    def run_and_ratio(self, name, lr, *args):
        import sys
        import torch
        sys.path.insert(0, HERE)
        import aesim_torch
        out = os.path.join(TMP, name)
        p = train(2, out, "--data", MNIST, "--val", self.val, "--batch-size", "64", "--seed", "7",
                  "--lr", lr, "--precision", "fp32", "--grid", "0", "--arch", self.ARCH, *args)
        m = aesim_torch.build(self.ARCH, 1)
        aesim_torch.load_npz(m, np.load(os.path.join(out, "checkpoint.npz")))
        with torch.no_grad():
            y = m(torch.from_numpy(self.val_images[:, None])).double().numpy().reshape(300, -1)
        x = self.val_images.astype(np.float64).reshape(300, -1)
        return p, y.var(axis=0).mean() / x.var(axis=0).mean()

    def test_collapse_is_reported_once(self):
        # two epochs of the 10,000 images (the warning needs two epoch ends);
        # at the default --lr the network collapses with a small non-zero
        # ratio (about 1e-5), so the printed figure checks aesim's sums
        p, ratio = self.run_and_ratio("collapse", "1e-3", "--epochs", "2")
        found = COLLAPSE_WARNING.findall(p.stdout + p.stderr)
        self.assertEqual(len(found), 1, p.stdout + p.stderr)
        self.assertLess(ratio, 1e-3)
        self.assertLessEqual(abs(float(found[0]) / 100 - ratio), 1e-6 + 0.05 * ratio, (found, ratio))
        self.assertIn("--lr", p.stdout + p.stderr)

    def test_training_network_is_not_reported(self):
        # a slow start (the ratio of a fresh network is below the threshold too)
        p, ratio = self.run_and_ratio("no_collapse", "1e-4", "--epochs", "2")
        self.assertGreater(ratio, 1e-2)
        self.assertNotIn("collapsed", p.stdout + p.stderr)
        # one evaluation of a barely trained network: below the threshold, no verdict
        p, ratio = self.run_and_ratio("one_eval", "1e-4", "--max-steps", "5")
        self.assertLess(ratio, 1e-3)
        self.assertNotIn("collapsed", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
