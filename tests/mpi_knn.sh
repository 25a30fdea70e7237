#!/usr/bin/env bash
# MPI test of the sharded exact k-NN (knn_search_sharded, tests/tool_knn_mpi.c).
# Runs the tool with P = 1, 2, 3 ranks on the same seeded random database,
# split unevenly across ranks (rank 1 is empty for P = 3), for L2 and IP,
# with a mask.  Checks:
#   * the merged results of P = 1, 2, 3 are byte-identical (exact ids and
#     distances), and identical on rank 0 and rank P-1 (broadcast);
#   * they equal a float64 numpy brute force accumulated in dimension order
#     and rounded to float32 (the definition in include/search/knn.h), sorted by
#     (distance, id) -- exact ids and distances;
#   * mismatched k on one rank gives the same AE_EARG on every rank.
# The build folder comes from AESIM_BUILD (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${AESIM_BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
TOOL="$BUILD/tests/tool_knn_mpi"
if [ ! -x "$TOOL" ]; then
    echo "mpi_knn.sh: $TOOL is not built (make BUILD=$BUILD test builds it)" >&2
    exit 1
fi
TMP=$(mktemp -d "${AESIM_TEST_TMP:-/tmp}/mpi_knn.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# M D Q K SEED: GEMM path on every non-empty shard, several database tiles
ARGS=(2600 24 37 10 2024)
for P in 1 2 3; do
    mpirun --oversubscribe -np "$P" "$TOOL" "$TMP/p$P" "${ARGS[@]}"
done
for m in l2 ip; do
    for P in 1 2 3; do
        cmp "$TMP/p1.$m.bin" "$TMP/p$P.$m.bin"
        cmp "$TMP/p$P.$m.bin" "$TMP/p$P.$m.last.bin"
    done
done
echo "mpi_knn.sh: P = 1, 2, 3 results byte-identical"

"$PYTHON" - "$TMP/p1" <<'PY'
import sys
import numpy as np

prefix = sys.argv[1]
raw = open(prefix + ".data.bin", "rb").read()
M, D, Q = np.frombuffer(raw[:24], dtype=np.int64)
off = 24
x = np.frombuffer(raw[off:off + 4 * M * D], dtype=np.float32).reshape(M, D)
off += 4 * M * D
q = np.frombuffer(raw[off:off + 4 * Q * D], dtype=np.float32).reshape(Q, D)
off += 4 * Q * D
mask = np.frombuffer(raw[off:off + M], dtype=np.uint8).astype(bool)
eligible = np.nonzero(mask)[0]
xd, qd = x.astype(np.float64), q.astype(np.float64)
fails = 0
for metric in ("l2", "ip"):
    r = open(f"{prefix}.{metric}.bin", "rb").read()
    Qr, k = np.frombuffer(r[:16], dtype=np.int64)
    dist = np.frombuffer(r[16:16 + 4 * Qr * k], dtype=np.float32).reshape(Qr, k)
    ids = np.frombuffer(r[16 + 4 * Qr * k:], dtype=np.int64).reshape(Qr, k)
    # float64 sum in dimension order d = 0..D-1 (element-wise, no pairwise
    # reduction), then one rounding to float32
    s = np.zeros((Q, M))
    for d in range(D):
        s += (qd[:, None, d] - xd[None, :, d]) ** 2 if metric == "l2" else qd[:, None, d] * xd[None, :, d]
    s32 = s.astype(np.float32)
    for i in range(Q):
        e = eligible
        key = s32[i, e] if metric == "l2" else -s32[i, e]
        order = np.lexsort((e, key))[:k]  # by distance, then id
        want_ids, want_d = e[order], s32[i, e[order]]
        if not (np.array_equal(ids[i], want_ids) and np.array_equal(dist[i], want_d)):
            fails += 1
            print(f"{metric} query {i}: got {ids[i].tolist()} want {want_ids.tolist()}")
        # float32 result vs the float64 values
        if not np.allclose(dist[i], s[i, want_ids], rtol=1e-6, atol=1e-6):
            fails += 1
    print(f"brute force {metric}: Q={Q} M={M} (eligible {len(eligible)}) D={D} k={k}: "
          f"{'exact match' if not fails else f'{fails} failures'}")
sys.exit(1 if fails else 0)
PY

mpirun --oversubscribe -np 3 "$TOOL" "$TMP/mm" "${ARGS[@]}" --mismatch
echo "mpi_knn.sh: ok"
