#!/usr/bin/python3
"""test_npy.py - npy.h (src/data/npy.c) against numpy's own .npy/.npz writer and reader.

numpy (Debian python3-numpy) is the reference: it writes .npy files of
format versions 1.0, 2.0 and 3.0 (numpy.lib.format.write_array) and .npz
archives (numpy.savez, numpy.savez_compressed, and zip64 members through
zipfile); tests/tool_npz_roundtrip reads them and dumps every array as raw
bytes plus a text index, which must equal numpy's arrays byte for byte
(dtype string, shape, data; NaN payloads included).  In the other direction,
the tool re-writes what it read with npz_write / npy_write and numpy.load must
give back the original arrays.  Malformed inputs (fortran order, big-endian,
object arrays, truncated data, headers that lie about the size, non-zip
files, damaged archives) must be refused with a non-zero exit status (the
AE_* code) and a message naming the file.

Environment: AESIM_BUILD (build folder, default "build"), AESIM_TEST_TMP
(scratch folder, default a fresh temporary folder).
"""
import atexit
import io
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("AESIM_BUILD", "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
TOOL = os.path.join(BUILD, "tests", "tool_npz_roundtrip")
TMP_ROOT = os.environ.get("AESIM_TEST_TMP")
if not TMP_ROOT:
    TMP_ROOT = tempfile.mkdtemp(prefix="aesim_test_npy_")
    atexit.register(shutil.rmtree, TMP_ROOT, ignore_errors=True)

# Status codes of include/base/err.h.
AE_EIO, AE_EFORMAT, AE_EARG = 1, 2, 4

DTYPES = ["|u1", "|i1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8"]
SHAPES = [(), (0,), (3, 0), (5,), (2, 3), (2, 3, 4), (1, 2, 1, 3), (1,) * 7 + (2,)]


def make_array(descr, shape, rng):
    """Random array covering the dtype's whole range (floats: specials too)."""
    dt = np.dtype(descr)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        if a.size >= 2:
            a.flat[0], a.flat[1] = info.min, info.max
        return a
    a = (rng.standard_normal(size=shape) * 1e3).astype(dt)
    specials = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dt).tiny / 2]
    for i, v in enumerate(specials[: a.size]):
        a.flat[i] = v
    return a


def all_arrays(rng):
    """One array per (dtype, shape) pair, named for the pair."""
    out = {}
    for i, d in enumerate(DTYPES):
        for j, s in enumerate(SHAPES):
            out["a%d_%d" % (i, j)] = make_array(d, s, rng)
    return out


class NpyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=TMP_ROOT)
        self.rng = np.random.default_rng(20240611)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run_tool(self, *args):
        return subprocess.run([TOOL] + [str(a) for a in args], capture_output=True, text=True, timeout=60)

    def dump(self, src, select=None):
        """Runs the tool's dump (or select) and returns {name: array}."""
        out = tempfile.mkdtemp(dir=self.tmp)
        args = ["select", src, out] + list(select) if select is not None else ["dump", src, out]
        r = self.run_tool(*args)
        self.assertEqual(r.returncode, 0, "tool failed on %s: %s" % (src, r.stderr))
        arrays = {}
        with open(os.path.join(out, "index.txt")) as f:
            for line in f:
                parts = line.split()
                idx, name, descr, ndim = parts[0], parts[1], parts[2], int(parts[3])
                shape = tuple(int(x) for x in parts[4 : 4 + ndim])
                data = np.fromfile(os.path.join(out, idx + ".bin"), dtype=np.dtype(descr))
                arrays[name] = data.reshape(shape)
        return arrays

    def assert_same(self, got, want, what):
        self.assertEqual(got.dtype.str, want.dtype.str, what)
        self.assertEqual(got.shape, want.shape, what)
        self.assertEqual(got.tobytes(), np.ascontiguousarray(want).tobytes(), what)

    def assert_refused(self, args, code, *must_name):
        r = self.run_tool(*args)
        self.assertNotEqual(r.returncode, 0, "accepted %s" % (args,))
        self.assertEqual(r.returncode, code, "wrong status for %s: %s" % (args, r.stderr))
        for s in must_name:
            self.assertIn(s, r.stderr)
        return r.stderr

    # ---- reading what numpy writes ----------------------------------------

    def test_npy_all_versions_dtypes_shapes(self):
        cases = [(d, SHAPES[i % len(SHAPES)]) for i, d in enumerate(DTYPES)]
        cases += [("<f4", s) for s in SHAPES] + [("|u1", s) for s in SHAPES]
        for version in [(1, 0), (2, 0), (3, 0)]:
            for k, (d, s) in enumerate(cases):
                a = make_array(d, s, self.rng)
                p = self.path("v%d_%d.npy" % (version[0], k))
                with open(p, "wb") as f:
                    np.lib.format.write_array(f, a, version=version)
                with open(p, "rb") as f:
                    self.assertEqual(np.lib.format.read_magic(f), version)
                got = self.dump(p)
                self.assert_same(got["-"], a, "%s %s %s" % (version, d, s))

    def test_npy_written_by_numpy_save(self):
        a = make_array("<f8", (4, 5), self.rng)
        p = self.path("save.npy")
        np.save(p, a)
        self.assert_same(self.dump(p)["-"], a, "np.save")

    def test_npz_savez_and_compressed(self):
        arrays = all_arrays(self.rng)
        for fn, name in [(np.savez, "plain.npz"), (np.savez_compressed, "deflated.npz")]:
            p = self.path(name)
            fn(p, **arrays)
            got = self.dump(p)
            self.assertEqual(sorted(got), sorted(arrays))
            for k, a in arrays.items():
                self.assert_same(got[k], a, "%s %s" % (name, k))

    def test_npz_positional_names_and_empty_archive(self):
        a, b = np.arange(6, dtype="<i4").reshape(2, 3), np.ones(3, dtype="<f4")
        p = self.path("pos.npz")
        np.savez(p, a, b)
        got = self.dump(p)
        self.assert_same(got["arr_0"], a, "arr_0")
        self.assert_same(got["arr_1"], b, "arr_1")
        p = self.path("empty.npz")
        np.savez(p)
        self.assertEqual(self.dump(p), {})
        out = self.path("empty_copy.npz")
        self.assertEqual(self.run_tool("copy", p, out).returncode, 0)
        with np.load(out) as z:
            self.assertEqual(z.files, [])

    def test_npz_zip64_members(self):
        """numpy.savez writes zip64 records for members > 2 GiB; force them here."""
        arrays = {"x": make_array("<f4", (7, 3), self.rng), "y": make_array("|u1", (300,), self.rng)}
        for comp in [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]:
            p = self.path("zip64_%d.npz" % comp)
            with zipfile.ZipFile(p, "w", compression=comp, allowZip64=True) as zf:
                for k, a in arrays.items():
                    with zf.open(k + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, a)
            with open(p, "rb") as f:
                raw = f.read()
            self.assertIn(b"\x01\x00", raw)  # zip64 extra field id 0x0001 is present
            got = self.dump(p)
            for k, a in arrays.items():
                self.assert_same(got[k], a, "zip64 %d %s" % (comp, k))

    def test_select_reads_only_named_members(self):
        p = self.path("mixed.npz")
        a = make_array("<f4", (3,), self.rng)
        np.savez(p, a=a, names=np.array(["x", "yy"]), c=np.zeros(2, dtype="<i8"))
        got = self.dump(p, select=["a", "missing"])
        self.assertEqual(sorted(got), ["a"])
        self.assert_same(got["a"], a, "select")
        # Reading everything must refuse the unicode member, naming it.
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "names.npy", "<U2")

    # ---- writing what numpy reads ------------------------------------------

    def test_npz_write_roundtrip(self):
        arrays = all_arrays(self.rng)
        src, out = self.path("src.npz"), self.path("out.npz")
        np.savez_compressed(src, **arrays)
        r = self.run_tool("copy", src, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with np.load(out) as z:
            self.assertEqual(sorted(z.files), sorted(arrays))
            for k, a in arrays.items():
                self.assert_same(z[k], a, "npz_write %s" % k)
        with zipfile.ZipFile(out) as zf:
            self.assertIsNone(zf.testzip())
            for info in zf.infolist():
                self.assertEqual(info.compress_type, zipfile.ZIP_STORED, info.filename)
                with zf.open(info) as f:
                    self.assertEqual(np.lib.format.read_magic(f), (1, 0))
                    np.lib.format.read_array_header_1_0(f)
                    self.assertEqual(f.tell() % 64, 0, "data of %s not 64-byte aligned" % info.filename)
        self.assertEqual([n for n in os.listdir(self.tmp) if ".tmp." in n], [], "temporary file left behind")

    def test_npy_write_roundtrip(self):
        for k, d in enumerate(DTYPES):
            for j, s in enumerate(SHAPES):
                if (k + j) % 3:
                    continue  # a third of the pairs keeps the test fast; every dtype and shape occurs
                a = make_array(d, s, self.rng)
                src, out = self.path("s%d_%d.npy" % (k, j)), self.path("o%d_%d.npy" % (k, j))
                np.save(src, a)
                r = self.run_tool("copy", src, out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assert_same(np.load(out), a, "npy_write %s %s" % (d, s))
                with open(out, "rb") as f:
                    self.assertEqual(np.lib.format.read_magic(f), (1, 0))
                    np.lib.format.read_array_header_1_0(f)
                    self.assertEqual(f.tell() % 64, 0)

    def test_write_into_missing_folder_fails(self):
        src = self.path("w.npz")
        np.savez(src, a=np.zeros(3))
        bad = os.path.join(self.tmp, "no", "such", "out.npz")
        self.assert_refused(["copy", src, bad], AE_EIO, bad)
        bad = os.path.join(self.tmp, "no", "such", "out.npy")
        self.assert_refused(["copy", self._save("w.npy", np.zeros(2)), bad], AE_EIO, bad)

    # ---- refusals ---------------------------------------------------------

    def _save(self, name, a, **kw):
        p = self.path(name)
        np.save(p, a, **kw)
        return p

    def _raw_npy(self, name, header, data, version=(1, 0)):
        """An .npy with a hand-written header dict (padded like numpy's)."""
        h = header.encode("latin1")
        pre = 10 if version == (1, 0) else 12
        pad = (-(pre + len(h) + 1)) % 64
        h = h + b" " * pad + b"\n"
        lenfield = struct.pack("<H", len(h)) if version == (1, 0) else struct.pack("<I", len(h))
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(b"\x93NUMPY" + bytes(version) + lenfield + h + data)
        return p

    def test_refuses_unsupported_arrays(self):
        cases = [
            (self._save("fortran.npy", np.asfortranarray(np.arange(6.0).reshape(2, 3))), "fortran"),
            (self._save("big.npy", np.arange(4, dtype=">f4")), ">f4"),
            (self._save("object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True), "object"),
            (self._save("bool.npy", np.array([True, False])), "|b1"),
            (self._save("complex.npy", np.zeros(2, dtype="<c8")), "<c8"),
            (self._save("half.npy", np.zeros(2, dtype="<f2")), "<f2"),
            (self._save("unicode.npy", np.array(["ab"])), "<U2"),
            (self._save("struct.npy", np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])), "structured"),
        ]
        for p, why in cases:
            self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, why)
        # The same inside an npz: the message names the file and the member.
        p = self.path("bad_members.npz")
        np.savez(p, good=np.zeros(2), bad=np.arange(3, dtype=">i8"))
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "bad.npy", ">i8")
        p = self.path("fortran_member.npz")
        np.savez(p, f=np.asfortranarray(np.ones((3, 2), dtype="<f4")))
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "f.npy", "fortran")

    def test_refuses_truncated_and_lying_npy(self):
        good = self._save("good.npy", np.arange(10, dtype="<f8"))
        raw = read_bytes(good)
        for cut, name in [(len(raw) - 1, "cut_data.npy"), (64 + 8, "cut_data2.npy"), (40, "cut_header.npy"),
                          (9, "cut_prefix.npy"), (0, "empty.npy")]:
            p = self.path(name)
            with open(p, "wb") as f:
                f.write(raw[:cut])
            self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        data = np.arange(5, dtype="<f4").tobytes()
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }"
        ok = self._raw_npy("ok.npy", hdr % "5,", data)
        self.assert_same(self.dump(ok)["-"], np.arange(5, dtype="<f4"), "hand-written header")
        lies = {
            "more.npy": hdr % "6,",  # claims more data than exists
            "fewer.npy": hdr % "4,",  # data longer than the header says
            "huge.npy": hdr % "4294967296, 4294967296",  # 2^64 elements: overflow
            "huge2.npy": hdr % "99999999999999999999,",  # does not fit int64
            "neg.npy": hdr % "-5,",
            "ninedims.npy": hdr % "1, 1, 1, 1, 1, 1, 1, 1, 5",
        }
        for name, h in lies.items():
            p = self._raw_npy(name, h, data)
            self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        malformed = {
            "extra_key.npy": "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), 'x': 1, }",
            "no_shape.npy": "{'descr': '<f4', 'fortran_order': False, }",
            "not_dict.npy": "['descr', '<f4']",
            "bad_bool.npy": "{'descr': '<f4', 'fortran_order': 0, 'shape': (5,), }",
            "garbage_after.npy": "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), } x",
        }
        for name, h in malformed.items():
            p = self._raw_npy(name, h, data)
            self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        # Version 2.0 with the same lie, and an unknown version.
        p = self._raw_npy("v2_more.npy", hdr % "6,", data, version=(2, 0))
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        p = self._raw_npy("v4.npy", hdr % "5,", data, version=(4, 0))
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "4.0")
        p = self.path("magic.npy")
        with open(p, "wb") as f:
            f.write(b"\x93NUMPX" + raw[6:])
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "NUMPY")

    def test_refuses_bad_archives(self):
        missing = self.path("missing.npz")
        self.assert_refused(["dump", missing, self.tmp], AE_EIO, missing)
        self.assert_refused(["dump", self.path("missing.npy"), self.tmp], AE_EIO, "missing.npy")
        p = self.path("text.npz")
        with open(p, "w") as f:
            f.write("this is not a zip archive\n" * 10)
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        p = self.path("zero.npz")
        open(p, "wb").close()
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        self.assert_refused(["dump", self.tmp, self.tmp], AE_EIO, self.tmp)  # a folder
        good = self.path("good.npz")
        a = make_array("<f4", (64, 16), self.rng)
        np.savez(good, a=a, b=np.arange(100))
        raw = read_bytes(good)
        p = self.path("half.npz")
        with open(p, "wb") as f:
            f.write(raw[: len(raw) // 2])
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p)
        # One flipped byte inside the stored data of member 'a': the CRC fails.
        p = self.path("crc.npz")
        bad = bytearray(raw)
        bad[raw.index(a.tobytes()) + 100] ^= 0xFF
        with open(p, "wb") as f:
            f.write(bytes(bad))
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "a.npy")
        # A member whose .npy is itself truncated (the zip is fine).
        p = self.path("short_member.npz")
        buf = raw_npy_bytes(np.arange(10, dtype="<i4"))
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("ok.npy", raw_npy_bytes(np.arange(3, dtype="<i4")))
            zf.writestr("short.npy", buf[:-4])
        self.assert_refused(["dump", p, self.tmp], AE_EFORMAT, p, "short.npy")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def raw_npy_bytes(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, a)
    return b.getvalue()


if __name__ == "__main__":
    unittest.main()
