#!/usr/bin/python3
"""The README's promise on a fresh machine (issue 13, items 19-22), checked
against references nobody here wrote: dpkg's database (which package owns a
tool or a Python module, and what each package depends on), GNU make's own
decision to recompile, and the interpreter the kernel runs for a shebang.

  * every tool that make, the tests and .ci/run call, and every Python module
    the reference tests import, belongs to a package that
    launch/install-deps.sh installs (or that one of them pulls in, or that is
    Essential);
  * the README's package list is exactly `launch/install-deps.sh --list`;
  * the README says what .ci/run really runs (every make target it calls);
  * a flag change (WERROR=1) recompiles objects of a reused build folder, and
    an unchanged build recompiles nothing;
  * every Python script is run by /usr/bin/python3 (shebangs, shell scripts),
    and the suite refuses an interpreter without numpy/torch/faiss/PIL.
"""
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_PYTHON = "/usr/bin/python3"


def sh(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, **kw)


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def clean_make_env():
    """The environment without the calling make's settings (under `make
    WERROR=1 test`, MAKEFLAGS would pass WERROR=1 on to our own make runs)."""
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "WERROR", "OPT", "CFLAGS", "LDFLAGS", "SAN"):
        env.pop(k, None)
    return env


def script_packages():
    r = sh("bash", "launch/install-deps.sh", "--list")
    assert r.returncode == 0, r.stderr
    return [p for p in r.stdout.split() if p]


def dpkg_owner(path):
    """Package that installed `path` (symlinks followed, /usr-merge aware)."""
    cands = [path, os.path.realpath(path)]
    for c in list(cands):
        if c.startswith("/usr/"):
            cands.append(c[4:])          # /usr/bin/x may be registered as /bin/x
        else:
            cands.append("/usr" + c)
    for c in cands:
        r = subprocess.run(["dpkg-query", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].split(",")[0].strip()
    return None


@functools.lru_cache(maxsize=None)
def dpkg_db():
    """Every package dpkg knows, read once: name -> (the names its Depends,
    Pre-Depends and Provides fields list, alternatives included; Essential)."""
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\\t${Depends}, ${Pre-Depends}, ${Provides}\\t${Essential}\\n"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    db = {}
    for line in r.stdout.splitlines():
        name, rel, ess = (line.split("\t") + ["", ""])[:3]
        deps = []
        for alt in rel.split(","):
            for dep in alt.split("|"):
                dep = re.sub(r"\(.*?\)|:any|:amd64", "", dep).strip()
                if dep:
                    deps.append(dep)
        db[name] = (deps, ess.strip() == "yes")
    return db


def dependency_closure(pkgs):
    """Installed packages reachable from pkgs through Depends / Pre-Depends
    (dpkg's own records), alternatives included."""
    db = dpkg_db()
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(db.get(p, ([], False))[0])
    return seen


def essential(pkg):
    return dpkg_db().get(pkg, ([], False))[1]


def tools_used():
    """Commands that make, .ci/run, the tests and the launch scripts run."""
    tools = {"make", "cc", "pkg-config", "mpicc", "mpirun", "clang", "valgrind", "gnuplot", "ip", "unshare", "git",
             "ar"}
    texts = []
    for d in ("tests", "launch", "fuzz", ".ci", "datasets"):
        for name in sorted(os.listdir(os.path.join(ROOT, d))):
            p = os.path.join(ROOT, d, name)
            if os.path.isfile(p) and (name.endswith((".sh", ".py")) or d == ".ci"):
                texts.append(read(p))
    texts.append(read(os.path.join(ROOT, "Makefile")))
    for t in texts:
        tools.update(re.findall(r"command -v ([A-Za-z0-9_.+-]+)", t))
        tools.update(re.findall(r"shutil\.which\(\"([A-Za-z0-9_.+-]+)\"\)", t))
        tools.update(re.findall(r"for tool in \(([^)]*)\)", t) and
                     re.findall(r"\"([a-z]+)\"", " ".join(re.findall(r"for tool in \(([^)]*)\)", t))))
    tools.discard("$(MPICC)")
    return sorted(tools)


class Packages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("dpkg-query"):
            raise unittest.SkipTest("not a Debian system (no dpkg-query)")
        cls.pkgs = script_packages()
        cls.closure = dependency_closure(cls.pkgs)

    def covered(self, owner):
        return owner in self.closure or essential(owner)

    def test_readme_lists_exactly_the_script_packages(self):
        readme = read(os.path.join(ROOT, "README.md"))
        m = re.search(r"<!-- install-deps:begin[^>]*-->(.*?)<!-- install-deps:end -->", readme, re.S)
        self.assertIsNotNone(m, "README.md has no install-deps:begin/end block")
        listed = re.findall(r"`([^`]+)`", m.group(1))
        self.assertEqual(listed, self.pkgs, "README package list differs from launch/install-deps.sh --list")

    def test_every_tool_comes_from_an_installed_package(self):
        missing = []
        for tool in tools_used():
            path = shutil.which(tool)
            if path is None:
                missing.append(f"{tool}: not on PATH")
                continue
            owner = dpkg_owner(path)
            if owner is None or not self.covered(owner):
                missing.append(f"{tool} ({path}) belongs to {owner}, which install-deps.sh does not install")
        self.assertEqual(missing, [], "tools not installed by launch/install-deps.sh:\n  " + "\n  ".join(missing))

    def test_python_modules_come_from_installed_packages(self):
        bad = []
        for mod in ("numpy", "torch", "faiss", "PIL"):
            r = subprocess.run([DEBIAN_PYTHON, "-c", f"import {mod}; print({mod}.__file__)"], capture_output=True,
                               text=True)
            if r.returncode != 0:
                bad.append(f"{mod}: {DEBIAN_PYTHON} cannot import it")
                continue
            owner = dpkg_owner(r.stdout.strip())
            if owner is None or not self.covered(owner):
                bad.append(f"{mod} ({r.stdout.strip()}) belongs to {owner}")
        interp_owner = dpkg_owner(os.path.realpath(DEBIAN_PYTHON))
        if interp_owner is None or not self.covered(interp_owner):
            bad.append(f"{DEBIAN_PYTHON} belongs to {interp_owner}")
        self.assertEqual(bad, [], "\n".join(bad))


class InstallDepsArguments(unittest.TestCase):
    """--help prints the usage, an unknown argument is an error (exit 2):
    neither installs anything (apt-get, sudo and dpkg-query are fakes here
    that record a call; every package looks missing)."""

    def run_script(self, *args):
        with tempfile.TemporaryDirectory() as d:
            marker = os.path.join(d, "installed")
            for tool, body in (("dpkg-query", "exit 1"), ("apt-get", f"touch {marker}"), ("sudo", f"touch {marker}")):
                with open(os.path.join(d, tool), "w") as f:
                    f.write(f"#!/bin/sh\n{body}\n")
                os.chmod(os.path.join(d, tool), 0o755)
            env = dict(os.environ, PATH=d + os.pathsep + os.environ.get("PATH", ""))
            r = subprocess.run(["bash", "launch/install-deps.sh", *args], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=60)
            return r, os.path.exists(marker)

    def test_help(self):
        r, installed = self.run_script("--help")
        self.assertEqual((r.returncode, installed), (0, False), r.stdout + r.stderr)
        self.assertIn("usage: launch/install-deps.sh", r.stdout)
        self.assertIn("--list", r.stdout)

    def test_unknown_arguments_are_errors(self):
        for args in (["--bogus"], ["extra"], ["--list", "--bogus"]):
            r, installed = self.run_script(*args)
            self.assertEqual((r.returncode, installed), (2, False), f"{args}: {r.stdout}{r.stderr}")
            self.assertIn("usage:", r.stderr)

    def test_list_still_lists(self):
        r, installed = self.run_script("--list")
        self.assertEqual((r.returncode, installed), (0, False), r.stderr)
        self.assertIn("libopenblas-dev", r.stdout.split())


class CiDescription(unittest.TestCase):
    def test_readme_names_every_ci_step(self):
        ci = read(os.path.join(ROOT, ".ci", "run"))
        steps = set(re.findall(r"^\s*(?:\./launch/install-deps\.sh && )?(make [a-z-]+)", ci, re.M))
        steps.update(re.findall(r"(make [a-z-]+ FUZZ_SECONDS=\d+)", ci))
        self.assertTrue(steps, ".ci/run runs no make target?")
        readme = read(os.path.join(ROOT, "README.md"))
        self.assertNotIn("runs exactly this command", readme)
        for step in sorted(steps):
            self.assertIn(f"`{step}", readme, f"README does not say that CI runs `{step}`")
        if "WERROR=1" in ci:
            self.assertIn("WERROR=1", readme)


class FlagsRebuild(unittest.TestCase):
    def make(self, build, *args):
        r = sh("make", "--no-print-directory", f"BUILD={build}", *args, f"{build}/obj/base/err.o", env=clean_make_env())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return [line for line in r.stdout.splitlines() if " -c src/base/err.c " in line]

    def test_werror_recompiles_a_reused_build(self):
        with tempfile.TemporaryDirectory() as build:
            first = self.make(build, "MPI=0", "OMP=0", "WERROR=0")
            self.assertEqual(len(first), 1)
            self.assertNotIn("-Werror", first[0])
            again = self.make(build, "MPI=0", "OMP=0", "WERROR=0")
            self.assertEqual(again, [], "nothing changed, yet err.o was recompiled")
            werror = self.make(build, "MPI=0", "OMP=0", "WERROR=1")
            self.assertEqual(len(werror), 1, "WERROR=1 did not recompile an object built without it")
            self.assertIn("-Werror", werror[0])
            opt = self.make(build, "MPI=0", "OMP=0", "WERROR=1", "OPT=-O1")
            self.assertEqual(len(opt), 1, "OPT=-O1 did not recompile")
            self.assertIn("-O1", opt[0])


class SlurmExample(unittest.TestCase):
    """launch/slurm.sbatch does what the README's "Checkpoints, stopping and
    faults" says (no SLURM here: its directives and srun line, read)."""

    def test_signal_reaches_the_ranks(self):
        text = read(os.path.join(ROOT, "launch", "slurm.sbatch"))
        sig = re.findall(r"^#SBATCH\s+--signal=(\S+)", text, re.M)
        self.assertEqual(len(sig), 1, "slurm.sbatch: one #SBATCH --signal line expected")
        # "B:" signals only the batch shell: without a trap there it dies and
        # the ranks under srun never see the signal.
        self.assertFalse(sig[0].startswith("B:") and "trap" not in text,
                         f"--signal={sig[0]} signals only the batch shell, which has no trap")
        self.assertRegex(sig[0], r"^(R:)?(USR1|SIGUSR1|10)@\d+$")
        srun = re.search(r"^srun\b.*", text, re.M)
        self.assertIsNotNone(srun, "slurm.sbatch starts no srun step")
        self.assertIn("--kill-on-bad-exit=1", srun.group(0))
        # An mpirun (ORTE) setting would be a promise srun does not keep.
        self.assertNotIn("odls_base", re.sub(r"#.*", "", text))


class ReadmeCommands(unittest.TestCase):
    """Scripts and benchmark programs the README runs by path work as
    written: executable, with a shebang, and built by a make target."""

    def readme(self):
        # A path broken over two lines ("`bench/\n  serve_bench.py") joined.
        return re.sub(r"/\n\s*", "/", read(os.path.join(ROOT, "README.md")))

    def test_scripts_run_by_path_are_executable(self):
        run = set(re.findall(r"(?:^|`)\s*((?:bench|launch)/[\w.]+)\s+[-\w]", self.readme(), re.M))
        self.assertIn("bench/serve_load.py", run)
        bad = []
        for rel in sorted(run):
            p = os.path.join(ROOT, rel)
            with open(p, "rb") as f:
                first = f.readline()
            if not os.access(p, os.X_OK) or not first.startswith(b"#!"):
                bad.append(rel)
            mode = sh("git", "ls-files", "-s", rel).stdout.split()[:1]
            if mode and mode[0] != "100755":
                bad.append(f"{rel} (git mode {mode[0]})")
        self.assertEqual(bad, [], "README runs these by path, but they are not executable scripts")

    def test_bench_programs_are_built_by_make(self):
        named = set(re.findall(r"build/bench/(\w+)", self.readme()))
        self.assertIn("bench_ivf", named)
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(["make", "-n", "--no-print-directory", "BUILD=" + d, "bench-programs"], cwd=ROOT,
                               env=clean_make_env(), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        for prog in sorted(named):
            self.assertIn(f"-o {d}/bench/{prog}", r.stdout, f"make bench-programs does not build build/bench/{prog}")


class DebianPython(unittest.TestCase):
    def python_files(self):
        for d in ("tests", "bench", "datasets", "launch", "fuzz"):
            for name in sorted(os.listdir(os.path.join(ROOT, d))):
                yield os.path.join(d, name)

    def test_shebangs_name_debian_python(self):
        bad = []
        for rel in self.python_files():
            p = os.path.join(ROOT, rel)
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
            if first.startswith("#!") and "python" in first and first != "#!" + DEBIAN_PYTHON:
                bad.append(f"{rel}: {first}")
        self.assertEqual(bad, [], "shebangs that run whatever python3 is first on PATH:\n" + "\n".join(bad))

    def test_shell_scripts_never_call_bare_python(self):
        bad = []
        # (install-deps.sh names the Debian package python3, not a command)
        files = [os.path.join(ROOT, r) for r in self.python_files()
                 if r.endswith((".sh", ".sbatch")) and not r.endswith("install-deps.sh")]
        files += [os.path.join(ROOT, ".ci", "run"), os.path.join(ROOT, "Makefile")]
        for p in files:
            for no, line in enumerate(read(p).splitlines(), 1):
                code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
                for m in re.finditer(r"(?<![/\w.-])python3?(?![\w-])", code):
                    bad.append(f"{os.path.relpath(p, ROOT)}:{no}: {line.strip()}")
        self.assertEqual(bad, [], "bare python calls:\n" + "\n".join(bad))

    def test_fake_python_first_on_path_is_not_used(self):
        with tempfile.TemporaryDirectory() as d:
            marker = os.path.join(d, "called")
            fake = os.path.join(d, "python3")
            with open(fake, "w") as f:
                f.write(f"#!/bin/sh\ntouch {marker}\nexit 3\n")
            os.chmod(fake, 0o755)
            env = dict(os.environ, PATH=d + os.pathsep + os.environ.get("PATH", ""))
            env.pop("PYTHON", None)
            # Each script's shebang, run by the kernel with the fake first on
            # PATH, must start Debian's interpreter (a copy of the shebang
            # line over a body that prints the interpreter).
            for rel in self.python_files():
                p = os.path.join(ROOT, rel)
                if not (rel.endswith(".py") and os.path.isfile(p)):
                    continue
                with open(p, "rb") as f:
                    first = f.readline().decode(errors="replace")
                if not first.startswith("#!"):
                    continue
                probe = os.path.join(d, "probe.py")
                with open(probe, "w") as f:
                    f.write(first + "import sys; print(sys.executable)\n")
                os.chmod(probe, 0o755)
                r = subprocess.run([probe], env=env, capture_output=True, text=True, timeout=60)
                self.assertFalse(os.path.exists(marker), f"{rel}'s shebang ran the python3 first on PATH")
                self.assertEqual(r.stdout.strip(), DEBIAN_PYTHON, f"{rel}: {first.strip()}")
            # make test's interpreter (dry run: prints the command).
            menv = clean_make_env()
            menv["PATH"] = env["PATH"]
            menv.pop("PYTHON", None)
            r = subprocess.run(["make", "-n", "--no-print-directory", "BUILD=" + os.path.join(d, "b"), "test"],
                               cwd=ROOT, env=menv, capture_output=True, text=True, timeout=120)
            self.assertIn(f"PYTHON={DEBIAN_PYTHON}", r.stdout)
            # The suite refuses an interpreter without the reference modules.
            env["PYTHON"] = fake
            r = subprocess.run(["bash", "tests/run_tests.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("cannot import numpy", r.stderr)
            self.assertIn("0 passed, 1 failed", r.stdout)


if __name__ == "__main__":
    unittest.main()
