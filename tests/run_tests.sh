#!/usr/bin/env bash
# Runs the whole test suite: every C unit test (build/tests/test_*), every
# Python reference test (tests/test_*.py, against PyTorch / numpy / FAISS from
# Debian) and every MPI test (tests/mpi_*.sh).  Each program is one test case
# here; its own output says which check failed.  Ends with the line
# "N passed, N failed" and a non-zero exit if anything failed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
MPI=${MPI:-1}
export AESIM_BUILD="$BUILD" PYTHON
# The reference tests need the interpreter whose numpy / torch / faiss / PIL
# launch/install-deps.sh installed (Debian's /usr/bin/python3), not whatever
# python3 comes first on PATH: refuse any other at once, naming what is missing.
if ! "$PYTHON" -c 'import numpy, torch, faiss, PIL' 2>"${TMPDIR:-/tmp}/aesim_py_check.$$"; then
    echo "run_tests.sh: PYTHON=$PYTHON cannot import numpy, torch, faiss and PIL:" >&2
    tail -n 1 "${TMPDIR:-/tmp}/aesim_py_check.$$" >&2
    rm -f "${TMPDIR:-/tmp}/aesim_py_check.$$"
    echo "(hint: run ./launch/install-deps.sh and leave PYTHON unset: the default is /usr/bin/python3)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
rm -f "${TMPDIR:-/tmp}/aesim_py_check.$$"
# Open MPI refuses root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Tests must not oversubscribe the 2 cores unless they say so.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=1
# Scratch space for test outputs, removed at the end.
export AESIM_TEST_TMP=$(mktemp -d)
trap 'rm -rf "$AESIM_TEST_TMP"' EXIT
# Verified-file cache (include/data/verify.h) inside the scratch space: the
# tests never read or grow the user's ~/.cache/aesim, and every test that
# damages a file in place is checked afresh (mpi_verify.py tests the cache).
export AESIM_VERIFY_CACHE="$AESIM_TEST_TMP/verified.tsv"

pass=0; fail=0; failed=()
run() {  # run NAME CMD...
    local name=$1; shift
    local t0=$(date +%s.%N) log="$AESIM_TEST_TMP/$(echo "$name" | tr '/ ' '__').log"
    if timeout 600 "$@" >"$log" 2>&1; then
        pass=$((pass + 1)); printf 'PASS  %-40s %6.1fs\n' "$name" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
    else
        fail=$((fail + 1)); failed+=("$name")
        printf 'FAIL  %-40s\n' "$name"; sed 's/^/      | /' "$log" | tail -n 40
    fi
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    # OpenMP results must not depend on the thread count beyond tolerance.
    run "$(basename "$t") [1 thread]" env OMP_NUM_THREADS=1 "$t"
    run "$(basename "$t") [4 threads]" env OMP_NUM_THREADS=4 "$t"
done
for t in tests/test_*.py; do
    [ -f "$t" ] || continue
    run "$(basename "$t")" "$PYTHON" "$t"
done
if [ "$MPI" = 1 ]; then
    for t in tests/mpi_*.sh; do
        [ -f "$t" ] || continue
        run "$(basename "$t")" bash "$t"
    done
fi

echo
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
