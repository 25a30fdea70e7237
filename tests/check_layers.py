#!/usr/bin/python3
"""check_layers.py - keeps the layer rules of src/ and include/ (README "Code map").

Reads only #include lines.  A file in src/LAYER/ or include/LAYER/ may include
"L/x.h" only for the layers L that ALLOWED[LAYER] lists (its own and those
below it); in addition
  - <mpi.h> / "mpi.h" only in src/par/ (the one parallel layer);
  - src/nn/ and include/nn/ (kernels, no I/O) include no data/ header, no file
    code of base/ (FILE_CODE) and none of <stdio.h>-level file APIs (NN_SYSTEM);
  - every quoted include names an existing header as "LAYER/x.h" (or the
    generated "build_info.h", for the programs in src/tools/, or a kernel
    template "x.inc" in the including file's own folder).
Usage: check_layers.py [ROOT]   (ROOT: the checkout, default: this file's ../)
Prints one line per violation (file:line: rule) and exits 1 if any, else
prints a one-line summary and exits 0.
"""
import os
import re
import sys

# Layer -> layers its files may include (lowest first: base, par, nn, data,
# model, then train and search side by side, then the programs).
ALLOWED = {
    "base": {"base"},
    "par": {"base", "par"},
    "nn": {"base", "nn"},
    "data": {"base", "par", "data"},
    "model": {"base", "nn", "data", "model"},
    "train": {"base", "par", "nn", "data", "model", "train"},
    "search": {"base", "par", "nn", "data", "model", "search"},
    "tools": {"base", "par", "nn", "data", "model", "train", "search", "tools"},
}
FILE_CODE = {"base/fileio.h"}          # atomic files, mkdir: not for kernels
NN_SYSTEM = {"stdio.h", "fcntl.h", "unistd.h", "sys/mman.h", "sys/stat.h", "dirent.h", "zlib.h", "zip.h", "png.h"}
GENERATED = {"build_info.h": "tools", "web_page_html.h": "search"}  # made by the Makefile in the build folder
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def check(root):
    bad = []
    n_files = 0
    for top in ("src", "include"):
        base = os.path.join(root, top)
        if not os.path.isdir(base):
            bad.append(f"{top}/: missing")
            continue
        for dirpath, _, names in os.walk(base):
            for name in sorted(names):
                if not name.endswith((".c", ".h")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                parts = rel.split(os.sep)
                if len(parts) != 3 or parts[1] not in ALLOWED:
                    bad.append(f"{rel}: not in a layer folder ({', '.join(top + '/' + l for l in ALLOWED)})")
                    continue
                layer = parts[1]
                n_files += 1
                with open(path, encoding="utf-8", errors="replace") as f:
                    for ln, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        quoted, inc = m.group(1) == '"', m.group(2)
                        where = f"{rel}:{ln}"
                        if os.path.basename(inc) == "mpi.h" and layer != "par":
                            bad.append(f"{where}: includes mpi.h outside src/par/ (MPI goes through par/par.h)")
                            continue
                        if layer == "nn" and not quoted and inc in NN_SYSTEM:
                            bad.append(f"{where}: nn/ includes <{inc}> (kernels do no file I/O)")
                        if not quoted:
                            continue
                        if GENERATED.get(inc) == layer:
                            continue
                        if "/" not in inc and inc.endswith(".inc") and os.path.isfile(os.path.join(dirpath, inc)):
                            continue  # a kernel template included twice by its one .c (same folder)
                        if "/" not in inc:
                            bad.append(f'{where}: "{inc}" names no layer (write "LAYER/{inc}")')
                            continue
                        dep = inc.split("/", 1)[0]
                        if dep not in ALLOWED:
                            bad.append(f'{where}: "{inc}" is in no layer')
                        elif not os.path.isfile(os.path.join(root, "include", inc)):
                            bad.append(f'{where}: "{inc}" does not exist in include/')
                        elif layer == "nn" and (dep == "data" or inc in FILE_CODE):
                            bad.append(f'{where}: nn/ includes "{inc}" (kernels never touch data or file code)')
                        elif dep not in ALLOWED[layer]:
                            bad.append(f'{where}: {layer}/ includes "{inc}" of layer {dep}/, which is above or '
                                       f'beside it ({layer}/ may use {", ".join(sorted(ALLOWED[layer]))})')
    return bad, n_files


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    bad, n = check(root)
    for b in bad:
        print(b)
    if bad:
        print(f"check-layers: {len(bad)} violation(s) in {n} files")
        return 1
    print(f"check-layers: {n} files in src/ and include/ keep the layer rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
