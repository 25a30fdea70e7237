#!/usr/bin/env bash
# mpi_pack.sh - aesim-pack with 1, 2 and 3 ranks writes byte-identical sample
# stores (folder decoding split across ranks, a bad file skipped, a deflated
# npz streamed by rank 0), and a failure (a bad file without --skip-bad)
# makes every rank exit non-zero with the file named and a hint naming
# --skip-bad (the summary of a run that skipped has no hint).  Inputs are written by
# Pillow/numpy; the reference is the 1-rank store, itself checked against
# numpy in test_array_sources.py.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-${AESIM_BUILD:-build}}
PY=${PYTHON:-/usr/bin/python3}
TMP=$(mktemp -d "${AESIM_TEST_TMP:-/tmp}/mpi_pack.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
"$PY" - "$TMP" <<'PYEOF'
import os, sys
import numpy as np
from PIL import Image
root = sys.argv[1]
rng = np.random.default_rng(3)
for i in range(23):
    d = os.path.join(root, "imgs", "class%d" % (i % 4))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (9 + i % 5, 11, 3), dtype=np.uint8)).save(os.path.join(d, "%02d.png" % i))
with open(os.path.join(root, "imgs", "class2", "07_bad.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n garbage")
np.savez_compressed(os.path.join(root, "x.npz"), images=rng.integers(0, 256, (31, 3, 8, 8), dtype=np.uint8),
                    labels=np.arange(31))
PYEOF
SPEC="folder:$TMP/imgs?size=8x8&skip_bad=1,$TMP/x.npz"
for np in 1 2 3; do
    mpirun -np $np --oversubscribe "$BUILD/aesim-pack" --window 4 --out "$TMP/s$np.npz" "$SPEC" > "$TMP/log$np" 2>&1 \
        || { cat "$TMP/log$np"; echo "FAIL: pack with $np ranks"; exit 1; }
    grep -q "54 images" "$TMP/log$np" || { cat "$TMP/log$np"; echo "FAIL: expected 54 images"; exit 1; }
done
cmp "$TMP/s1.npz" "$TMP/s2.npz" && cmp "$TMP/s1.npz" "$TMP/s3.npz" || { echo "FAIL: stores differ across rank counts"; exit 1; }
# Skipping was asked for: the summary names the first bad file and why, with
# no hint to skip bad files.
grep -q "skipped 1 bad file(s); first: .*07_bad.png" "$TMP/log1" || { cat "$TMP/log1"; echo "FAIL: no skip summary"; exit 1; }
! grep -q "hint" "$TMP/log1" || { cat "$TMP/log1"; echo "FAIL: the skip summary repeats the hint"; exit 1; }
set +e
mpirun -np 2 --oversubscribe "$BUILD/aesim-pack" --out "$TMP/bad.npz" "folder:$TMP/imgs?size=8x8" > "$TMP/logbad" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || { echo "FAIL: a bad file without --skip-bad was accepted"; exit 1; }
grep -q "07_bad.png" "$TMP/logbad" || { cat "$TMP/logbad"; echo "FAIL: message does not name the file"; exit 1; }
# aesim-pack's hint names its own option, not the source key.
grep -q "skip bad files with --skip-bad)" "$TMP/logbad" && ! grep -q "skip_bad=1" "$TMP/logbad" \
    || { cat "$TMP/logbad"; echo "FAIL: the hint does not name --skip-bad"; exit 1; }
[ ! -e "$TMP/bad.npz" ] && ! ls "$TMP"/bad.npz.tmp.* >/dev/null 2>&1 || { echo "FAIL: partial store left"; exit 1; }
# Two packs racing for one --out (no --overwrite): never both succeed, and
# the store left is byte-identical to the winner's reference (before, both
# could pass the existence check and one store silently replaced the other).
"$BUILD/aesim-pack" --out "$TMP/xref.npz" "$TMP/x.npz" > /dev/null 2>&1
for round in 1 2 3 4 5; do
    rm -f "$TMP/race.npz"
    set +e
    "$BUILD/aesim-pack" --window 4 --out "$TMP/race.npz" "$SPEC" > "$TMP/race1" 2>&1 &
    p1=$!
    "$BUILD/aesim-pack" --out "$TMP/race.npz" "$TMP/x.npz" > "$TMP/race2" 2>&1 &
    p2=$!
    wait $p1; r1=$?
    wait $p2; r2=$?
    set -e
    if [ $r1 -eq 0 ] && [ $r2 -ne 0 ]; then ref="$TMP/s1.npz"
    elif [ $r2 -eq 0 ] && [ $r1 -ne 0 ]; then ref="$TMP/xref.npz"
    else cat "$TMP/race1" "$TMP/race2"; echo "FAIL: round $round: exit statuses $r1 and $r2 (one must win)"; exit 1; fi
    cmp "$TMP/race.npz" "$ref" || { echo "FAIL: round $round: the store is not the winner's"; exit 1; }
    grep -q "race.npz" "$TMP/race1" "$TMP/race2" || { echo "FAIL: the loser does not name the file"; exit 1; }
done
echo "mpi_pack: 1/2/3-rank stores identical; bad file refused on all ranks; racing packs: one wins, nothing replaced"
