"""Messages and outputs of the aesim programs as a user reads them (issue 13,
items 5, 12-15, 17).

- An error is one line: no doubled "[rank 0] [rank 0]" prefix (aesim-search,
  whose subcommands pass an agreed error up through a second agreement), and
  under launch/mpi.sh no Open MPI box after it.
- A usage error is "NAME: error: ..." on one line with exit status 2, on
  every program, and every --help says so.
- A missing --resume file is reported once.
- Every option a program's --help lists is named in the README.
- A 1-rank run reports no MPI figures (no overlap, no allreduce, empty
  communication columns in metrics.csv); a run stopped by --max-steps
  mid-epoch says the epoch is partial and reports epochs as a fraction.
- metrics.csv: a step row is the mean over its steps; the epoch row (val_loss
  filled) holds the epoch's mean train loss and its images per training
  second, recomputed here with numpy from the step rows (--csv-every 1), and
  the log's epoch line prints the same figures.
- A global batch smaller than the number of ranks is warned about.
- --version on every program: exit 0, the version, the commit that
  `git rev-parse --short HEAD` reports, the build flags, and a conv kernel
  consistent with the CPU flags in /proc/cpuinfo (direct needs avx512f),
  whatever AESIM_KERNEL says (read by the benchmarks only: reported as
  ignored).
"""
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
PACK = os.path.join(ROOT, BUILD, "aesim-pack")
MPI_SH = os.path.join(ROOT, "launch", "mpi.sh")
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
TMP = tempfile.mkdtemp(prefix="mpi_messages.", dir=os.environ.get("AESIM_TEST_TMP") or None)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
DATA = os.path.join(TMP, "tiny-images-idx3-ubyte")
COMMON = ["--data", DATA, "--val", DATA, "--val-limit", "20", "--grid", "2", "--progress", "lines",
          "--threads", "1"]
# Open MPI's text after a rank exits non-zero.
MPI_BOX = "Primary job"


def setUpModule():
    import gzip
    with gzip.open(MNIST) as f:
        raw = f.read()
    with open(DATA, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 120, 28, 28) + raw[16:16 + 120 * 784])


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def run(*cmd, check=False):
    p = subprocess.run(list(cmd), env=ENV, capture_output=True, text=True, timeout=180, cwd=TMP)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def mpirun(np_, *args, check=False):
    return run("mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), *args, check=check)


def csv_rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        lines = f.read().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, r.split(","))) for r in lines[1:]]


class Errors(unittest.TestCase):
    def error_lines(self, stderr):
        return [l for l in stderr.splitlines() if "error" in l]

    def test_no_doubled_rank_prefix(self):
        for cmd in (["query", "--db", os.path.join(TMP, "nodb"), "--k", "3", "--queries", "x.npy"],
                    ["index", "--model", os.path.join(TMP, "none.npz"), "--data", DATA, "--db",
                     os.path.join(TMP, "db")]):
            p = mpirun(2, SEARCH, *cmd)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertNotIn("[rank 0] [rank", p.stderr)
            self.assertEqual(len(self.error_lines(p.stderr)), 1, p.stderr)

    def test_one_line_under_launch_script(self):
        p = run("bash", MPI_SH, "2", TRAIN, "--data", os.path.join(TMP, "missing.npz"), "--out",
                os.path.join(TMP, "o_missing"))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertNotIn(MPI_BOX, p.stdout + p.stderr)
        errs = self.error_lines(p.stderr)
        self.assertEqual(len(errs), 1, p.stderr)
        self.assertIn("missing.npz", errs[0])

    def test_missing_resume_file_reported_once(self):
        missing = os.path.join(TMP, "nothere", "checkpoint.npz")
        p = mpirun(2, TRAIN, *COMMON, "--resume", missing)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stderr.count(missing), 1, p.stderr)


    def test_preset_for_other_images_names_the_fitting_one(self):
        # The data are 28x28x1 (MNIST): imagenet32 is for 32x32x3, mnist fits.
        p = mpirun(2, TRAIN, *COMMON, "--arch", "imagenet32", "--out", os.path.join(TMP, "o_preset"))
        self.assertEqual(p.returncode, 1, p.stderr)
        errs = self.error_lines(p.stderr)
        self.assertEqual(len(errs), 1, p.stderr)
        self.assertIn("the preset 'imagenet32' is for 32x32x3 images, these are 28x28x1 (HxWxC): use --arch mnist",
                      errs[0])


    def test_usage_errors_exit_2_in_the_error_form(self):
        # Every program: "NAME: error: ..." on one line, exit status 2, as
        # the README and each --help say.
        cases = [(TRAIN, ["--bogus"]), (TRAIN, ["--epochs", "0"]), (TRAIN, ["--epochs"]),
                 (SEARCH, ["query", "--bogus"]), (SEARCH, ["index", "--k"]),
                 (PACK, []), (PACK, ["--bogus"]), (PACK, ["--out"]), (PACK, ["--window", "0", "--out", "x", DATA])]
        for prog, args in cases:
            name = os.path.basename(prog)
            p = run(prog, *args)
            lines = [l for l in p.stderr.splitlines() if l.strip()]
            self.assertEqual(p.returncode, 2, f"{name} {args}: {p.stderr}")
            self.assertEqual(len(lines), 1, f"{name} {args}: {p.stderr}")
            self.assertTrue(lines[0].startswith(f"{name}: error: "), f"{name} {args}: {p.stderr}")
        for prog in (TRAIN, SEARCH, PACK):
            self.assertIn("1 runtime error", run(prog, "--help").stdout)
            self.assertRegex(run(prog, "--help").stdout, r"Exit status: 0 success.*\n?.*2 bad usage")

    def test_model_beyond_the_address_space_limit_is_refused(self):
        # ulimit -v 1 GiB; the model needs ~3 GiB: a clear error, not a
        # failed malloc deep in the build (and an MPI abort box).
        import resource
        lim = 1 << 30
        p = subprocess.run([TRAIN, *COMMON, "--arch", "c1024 p c1024 | c1024 u c1", "--max-steps", "1", "--out",
                            os.path.join(TMP, "o_big")], env=ENV, capture_output=True, text=True, timeout=120,
                           cwd=TMP, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim)))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("but this process may map 1024 MiB (ulimit -v),", p.stderr)
        self.assertNotIn("fatal", p.stderr)

    def test_limit_just_above_the_model_counts_what_is_mapped_already(self):
        # Limits from just below to above what training needs: each run
        # trains or is refused cleanly, never a failed malloc (the check
        # compared the model with the whole limit, ignoring the ~0.4 GiB that
        # MPI, the BLAS and the data had mapped: 0.98 GiB of model under a
        # 1.43 GiB limit passed the check, then malloc failed).
        import resource
        fashion = "/usr/share/datasets/fashion-mnist"
        if not os.path.isdir(fashion):
            self.skipTest("dataset-fashion-mnist not installed")
        outcomes = set()
        for gib in (1.30, 1.36, 1.40, 1.43, 1.46, 1.50, 1.55, 1.70):
            lim = int(gib * (1 << 30))
            out = os.path.join(TMP, f"o_lim{gib}")
            p = subprocess.run([TRAIN, "--data", fashion, "--batch-size", "4096", "--max-steps", "1", "--threads", "1",
                                "--grid", "0", "--out", out], env=ENV, capture_output=True, text=True, timeout=120,
                               cwd=TMP, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim)))
            self.assertNotIn("fatal", p.stderr, f"limit {gib} GiB")
            if p.returncode:
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("MiB of it in use already", p.stderr)
                # the figures it gives add up: need + headroom + in use - limit = short
                m = re.search(r"needs (\d+) MiB, and (\d+) MiB more .* may map (\d+) MiB \(ulimit -v\), (\d+) MiB "
                              r"of it in use already .*: at least (\d+) MiB short", p.stderr)
                self.assertIsNotNone(m, p.stderr)
                need, more, limit, used, short = (int(v) for v in m.groups())
                self.assertEqual(limit, int(gib * 1024))
                self.assertLessEqual(abs(need + more + used - limit - short), 3)
                self.assertGreaterEqual(short, 1)
            outcomes.add(p.returncode)
        self.assertEqual(outcomes, {0, 1}, "the sweep should cross the limit")


class Summary(unittest.TestCase):
    def test_one_rank_has_no_mpi_figures_and_partial_epoch_is_said(self):
        out = os.path.join(TMP, "one")
        p = mpirun(1, TRAIN, *COMMON, "--batch-size", "30", "--max-steps", "2", "--csv-every", "1", "--out", out,
                   check=True)
        self.assertNotIn("overlap", p.stdout)
        self.assertNotIn("allreduce", p.stdout)
        for r in csv_rows(out):
            self.assertEqual((r["allreduce_ms"], r["comm_ms"], r["overlap"]), ("", "", ""), r)
        self.assertIn("partial: stopped by --max-steps after 2 of 4 batches", p.stdout)
        self.assertIn("done: 2 steps (0.50 epochs)", p.stdout)

    def test_two_ranks_report_overlap(self):
        out = os.path.join(TMP, "two")
        p = mpirun(2, TRAIN, *COMMON, "--batch-size", "30", "--max-steps", "2", "--out", out, check=True)
        self.assertIn("overlap", p.stdout)
        self.assertTrue(all(r["comm_ms"] != "" for r in csv_rows(out)))
        # The default --precision auto trains what --version says it runs
        # here; on a CPU with AVX512_BF16 whose VDPBF16PS is too slow to
        # pay, the log says why it runs fp32.
        auto = re.search(r"--precision auto \(the default\) runs (bf16|fp32) here", run(TRAIN, "--version").stdout)
        self.assertIsNotNone(auto)
        self.assertRegex(p.stdout, r"(?m)^model: .* \| " + ("bf16 \\(VDPBF16PS kernels\\)" if auto.group(1) == "bf16"
                                                             else "fp32") + "$")
        with open("/proc/cpuinfo") as f:
            native = " avx512_bf16" in f.read()
        note = re.search(r"(?m)^precision: auto runs fp32: VDPBF16PS does (\d+\.\d\d)x the multiply-adds per "
                         r"second of float32 FMAs on the slowest rank's CPU \(bf16 pays from 1\.4x\); "
                         r"--precision bf16 runs it anyway$", p.stdout)
        if native and auto.group(1) == "fp32":
            self.assertIsNotNone(note, p.stdout)
            self.assertLess(float(note.group(1)), 1.4)
        else:
            self.assertIsNone(note, p.stdout)

    def test_epoch_row_is_the_epochs_mean(self):
        out = os.path.join(TMP, "epoch_rows")
        p = mpirun(2, TRAIN, *COMMON, "--batch-size", "30", "--epochs", "2", "--csv-every", "1", "--out", out,
                   check=True)
        rows = csv_rows(out)
        steps = [r for r in rows if r["val_loss"] == ""]
        epochs = [r for r in rows if r["val_loss"] != ""]
        self.assertEqual(len(steps), 8)
        self.assertEqual(len(epochs), 2)
        for e, r in enumerate(epochs):
            mine = steps[4 * e:4 * e + 4]
            loss = np.mean([float(s["train_loss"]) for s in mine])
            # images per training second: 30 images per step, seconds = 30 / rate.
            rate = 120 / np.sum([30 / float(s["images_per_s"]) for s in mine])
            self.assertAlmostEqual(float(r["train_loss"]), loss, delta=1e-7 * loss)
            self.assertAlmostEqual(float(r["images_per_s"]), rate, delta=1e-6 * rate)
            line = re.search(rf"epoch {e + 1}/2: step {4 * e + 4}, train loss ([0-9.]+) \(mean of 4 steps\).*"
                             r", ([0-9]+) img/s", p.stdout)
            self.assertIsNotNone(line, p.stdout)
            self.assertEqual(line.group(1), f"{float(r['train_loss']):.5f}")
            self.assertEqual(line.group(2), f"{float(r['images_per_s']):.0f}")

    def test_batch_smaller_than_ranks_is_warned(self):
        p = mpirun(3, TRAIN, *COMMON, "--batch-size", "2", "--max-steps", "1", "--out", os.path.join(TMP, "idle"),
                   check=True)
        self.assertIn("global batch (2 images) is smaller than the 3 ranks", p.stderr)
        self.assertEqual(p.stderr.count("idle"), 1, p.stderr)


class HelpOptions(unittest.TestCase):
    def test_every_option_of_help_is_in_the_readme(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        # "--beta1/2" names --beta1 and --beta2.
        readme = re.sub(r"(--[a-z-]+)(\d)/(\d)", r"\1\2 \1\3", readme)
        missing = []
        for prog in (TRAIN, SEARCH, PACK):
            opts = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", run(prog, "--help").stdout))
            missing += [f"{os.path.basename(prog)} {o}" for o in sorted(opts)
                        if not re.search(re.escape(o) + r"(?![\w-])", readme)]
        self.assertEqual(missing, [], "options of --help the README never names")


class Version(unittest.TestCase):
    def test_every_program(self):
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        avx512 = " avx512f" in flags
        # --precision auto picks bf16 exactly where the CPU has AVX512_BF16
        # (and AVX512BW, which every such CPU has), as /proc/cpuinfo says,
        # and its VDPBF16PS, measured, does at least 1.4x the multiply-adds
        # per second of float32 FMAs (the measured rate is on the line).
        native = " avx512_bf16" in flags and " avx512bw" in flags
        # aesim-search only encodes: on a CPU with AMX (amx_tile, amx_bf16,
        # and the kernel grants the tile state) auto encodes bf16 on tiles.
        amx = " amx_tile" in flags and " amx_bf16" in flags
        for prog in (TRAIN, SEARCH, PACK):
            p = run(prog, "--version")
            self.assertEqual(p.returncode, 0, p.stderr)
            name = os.path.basename(prog)
            self.assertRegex(p.stdout, rf"^{name} \d+\.\d+\.\d+\n")
            if commit:
                self.assertIn("git " + commit, p.stdout)
            self.assertIn("CFLAGS -O", p.stdout)
            self.assertIn("conv direct" if avx512 else "conv generic", p.stdout)
            self.assertIn("OpenBLAS", p.stdout)
            auto = "fp32"
            if name != "aesim-pack" and native:
                m = re.search(r"^bf16: VDPBF16PS kernels \(AVX512_BF16\) at (\d+\.\d\d)x the multiply-adds per "
                              r"second of float32 FMAs, measured \(auto needs 1\.4x\); ", p.stdout, re.M)
                self.assertIsNotNone(m, p.stdout)
                # Known CPUs: about 0.5 (Intel Xeon) or 2.0 (AMD Zen 4, 5).
                self.assertTrue(0.2 <= float(m.group(1)) <= 4.0, m.group(0))
                auto = "bf16" if float(m.group(1)) >= 1.4 else "fp32"
            if name == "aesim-search" and amx:
                self.assertIn("; encoding on AMX tiles (AMX-BF16); ", p.stdout)
                auto = "bf16"
            elif name != "aesim-search":
                self.assertNotIn("AMX", p.stdout)
            if name == "aesim-train":
                self.assertIn("--precision auto (the default) runs %s here\n" % auto, p.stdout)
            elif name == "aesim-search":
                self.assertIn("--precision auto runs %s here (the default is fp32)\n" % auto, p.stdout)
            else:
                self.assertNotIn("precision", p.stdout)
            # AESIM_KERNEL is read by the benchmarks only: --version names
            # the kernel the program runs and says the variable is ignored.
            for value, tail in (("generic", "only the benchmarks read it)"),
                                ("bogus", "only the benchmarks read it, and refuse that name)")):
                q = subprocess.run([prog, "--version"], env=dict(ENV, AESIM_KERNEL=value), capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(q.returncode, 0, q.stderr)
                self.assertIn(("conv direct" if avx512 else "conv generic") + f" (AESIM_KERNEL={value} ignored: "
                              + tail, q.stdout)
            # Under mpirun: printed once.
            p = mpirun(2, prog, "--version")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stdout.count(name), 1, p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
