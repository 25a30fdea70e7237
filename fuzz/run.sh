#!/usr/bin/env bash
# run.sh - builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan)
# and runs each for a bounded time from a seed corpus made of real and
# numpy/Pillow-written files.  Called by `make fuzz`:
#   bash fuzz/run.sh CC BUILD_DIR SECONDS_PER_TARGET "PKG_CFLAGS" "PKG_LIBS"
# Exit status non-zero if a target fails to build or finds a crash, leak or
# undefined behaviour (the reproducer is left in BUILD_DIR/crashes/).
# Needs clang and libclang-rt-14-dev (libFuzzer runtime) on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${1:-clang}; OUT=${2:-build-fuzz}; SECS=${3:-20}; PKG=${4:-}; LIBS=${5:-}
PY=${PYTHON:-/usr/bin/python3}
mkdir -p "$OUT/obj" "$OUT/corpus" "$OUT/crashes"
# The library modules the parsers need (serial build, no MPI).
SRC="base/err base/check par/par_serial base/fileio base/mapguard data/npy data/idx data/zip_read data/image_decode data/image_convert
     data/dataset_opts data/verify data/image_source data/numbered_set data/source_array data/image_folder data/cifar data/dataset data/sample_store
     base/rng search/http_api search/search_input search/vecdb search/knn search/knn_gemm search/knn_scan search/topk base/threads
     nn/gemm nn/gemm_avx512 base/timer"
CFLAGS="-g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Iinclude -DAESIM_MPI=0 -DAESIM_OMP=0
        -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
OBJS=()
for s in $SRC; do
    o="$OUT/obj/${s//\//_}.o"
    $CC $CFLAGS $PKG -c "src/$s.c" -o "$o"
    OBJS+=("$o")
done
# Seed corpora.
"$PY" - "$OUT/corpus" <<'PYEOF'
import glob, gzip, io, os, shutil, struct, sys
import numpy as np
out = sys.argv[1]
def put(target, name, data):
    d = os.path.join(out, target); os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f: f.write(data)
data = os.path.join(os.path.dirname(os.path.abspath(".")), "shared", "data")
if not os.path.isdir(data): data = "/work/shared/data"
for p in sorted(glob.glob(os.path.join(data, "pngsuite", "png", "*.png")))[::6]:
    put("image", os.path.basename(p), open(p, "rb").read())
try:
    from PIL import Image
    for mode in ("RGB", "L", "CMYK"):
        b = io.BytesIO(); Image.new(mode, (9, 7), "red" if mode == "RGB" else 90).save(b, "JPEG"); put("image", mode + ".jpg", b.getvalue())
except ImportError:
    pass
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
for v in ((1, 0), (2, 0), (3, 0)):
    b = io.BytesIO(); np.lib.format.write_array(b, x, version=v); put("npy", "v%d.npy" % v[0], b.getvalue())
    put("dataset", "npy%d" % v[0], b"\x01" + b.getvalue())
for name, saver in (("s.npz", np.savez), ("c.npz", np.savez_compressed)):
    b = io.BytesIO(); saver(b, data=x.reshape(3, -1), labels=np.arange(3)); put("zip", name, b.getvalue())
    put("dataset", name, b"\x00" + b.getvalue())
idx = struct.pack(">BBBB3I", 0, 0, 8, 3, 2, 3, 3) + bytes(range(18))
put("dataset", "idx", b"\x02" + idx); put("dataset", "idx.gz", b"\x00" + gzip.compress(idx))
put("dataset", "cifar", b"\x03" + bytes([1]) + bytes(3072)); put("dataset", "cifar100", b"\x01" + bytes([2, 3]) + bytes(3072))
put("http", "args", b"\x00k=10&label=1,2&label=3&radius=0.5")
put("http", "path", b"\x00/images/123")
put("http", "vector", b"\x01" + b'{"vector": [0.5, -1, 2e3, 0, 0, 1, 1, 1]}')
put("http", "id", b"\x02" + b'{"id": 42}')
for p in sorted(glob.glob(os.path.join(data, "pngsuite", "png", "*.png")))[::12]:
    put("http", "img-" + os.path.basename(p), b"\x03" + open(p, "rb").read())
put("text", "spec", b"folder:/a/b?size=64x64&channels=3&fit=crop&bg=ff00aa&skip_bad=1")
put("text", "list", b"# c\na.png 3\n/abs/b.jpg\t-1\nc d.png\n")
PYEOF
status=0
for t in fuzz/fuzz_*.c; do
    name=$(basename "$t" .c); target=${name#fuzz_}
    $CC $CFLAGS -fsanitize=fuzzer -Ifuzz "$t" "${OBJS[@]}" $LIBS -lm -o "$OUT/$name"
    mkdir -p "$OUT/corpus/$target"
    echo "fuzz: $name for ${SECS}s"
    if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 "$OUT/$name" -max_total_time="$SECS" -max_len=65536 \
        -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$OUT/crashes/$name-" -print_final_stats=1 \
        "$OUT/corpus/$target" > "$OUT/$name.log" 2>&1; then
        echo "FAIL: $name (see $OUT/$name.log and $OUT/crashes/)"; tail -n 30 "$OUT/$name.log"; status=1
    else
        grep -E "stat::number_of_executed_units|cov:" "$OUT/$name.log" | tail -n 2 | tr '\n' ' '; echo
    fi
done
exit $status
