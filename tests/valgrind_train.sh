#!/usr/bin/env bash
# Short aesim-train runs under valgrind memcheck (make valgrind): a fresh run
# with checkpoints, a resume from the folder whose newest checkpoint is
# truncated (the refuse-and-fall-back path), and a run stopped by an injected
# NaN (the error path).  Fails on any memcheck error (invalid read/write,
# uninitialised value) or definitely lost block.  Needs a serial build
# (MPI=0: Open MPI's own allocations would drown the report; OMP=0: the
# OpenMP runtime keeps thread stacks alive at exit).  Not run by make test
# (~10 s): valgrind slows the kernels ~50x.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:?set BUILD to a serial build folder}
PYTHON=${PYTHON:-/usr/bin/python3}
BIN="$BUILD/aesim-train"
command -v valgrind >/dev/null || { echo "valgrind_train.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/valgrind_train.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
# 24 MNIST test images as an IDX file.
"$PYTHON" - "$TMP/vg-images-idx3-ubyte" <<'PY'
import gzip, struct, sys
n = 24
with gzip.open("../shared/data/mnist/t10k-images-idx3-ubyte.gz") as f:
    raw = f.read()
open(sys.argv[1], "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + raw[16:16 + n * 784])
PY
VG=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --track-origins=yes)
ARGS=(--data "$TMP/vg-images-idx3-ubyte" --val "$TMP/vg-images-idx3-ubyte" --val-limit 4 --batch-size 4
      --grid 2 --progress lines --out "$TMP/out" --keep 2)
run() {  # run NAME EXPECTED_STATUS ARGS...
    local name=$1 want=$2; shift 2
    local rc=0
    "${VG[@]}" "$BIN" "${ARGS[@]}" "$@" >"$TMP/$name.log" 2>&1 || rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL valgrind $name: exit status $rc, expected $want (99 = memcheck error)"; cat "$TMP/$name.log"; exit 1
    fi
    echo "ok   valgrind $name"
}
run fresh 0 --max-steps 3 --ckpt-every 1
truncate -s 1000 "$TMP/out/ckpt-step00000003.npz"
run resume_fallback 0 --max-steps 4 --resume "$TMP/out"
grep -q "refusing checkpoint" "$TMP/resume_fallback.log" || { echo "FAIL: no fallback"; cat "$TMP/resume_fallback.log"; exit 1; }
AESIM_FAULT_NAN_STEP=6 run nan_stop 1 --max-steps 8 --resume "$TMP/out"
grep -q "not finite at step 6" "$TMP/nan_stop.log" || { echo "FAIL: no NaN stop"; cat "$TMP/nan_stop.log"; exit 1; }
echo "valgrind: no memory errors, no definite leaks"
