/*
 * tool_knn_mpi.c - test helper for tests/mpi_knn.sh: sharded exact k-NN
 * (knn_search_sharded) over the ranks of an mpirun job.  Not run on its own.
 *
 *   tool_knn_mpi OUT_PREFIX M D Q K SEED [--mismatch]
 *
 * Every rank generates the same global database x[M][D], queries q[Q][D]
 * (uniform in [-1, 1), splitmix64 from SEED) and eligibility mask
 * (global id % 11 != 3), then keeps its own uneven slice: rank r's share is
 * proportional to (r+1)^2, except that rank 1 gets no rows when P >= 3 (an
 * empty shard).  Its id offset comes from par_exscan_sum_i64 of the slice
 * sizes, and the tool checks that every row lies in exactly one shard.
 * For each metric (l2, ip) it runs knn_search_sharded and writes
 *   rank 0:    OUT_PREFIX.<metric>.bin
 *   rank P-1:  OUT_PREFIX.<metric>.last.bin  (the result is broadcast)
 * as int64 Q, int64 k, float32 dist[Q*k], int64 ids[Q*k]; rank 0 also writes
 * OUT_PREFIX.data.bin = int64 M, int64 D, int64 Q, float32 x[M*D],
 * float32 q[Q*D], uint8 mask[M] for the brute force in the script.
 * --mismatch: rank P-1 passes k+1; the tool then exits 0 only if every rank
 * got the same AE_EARG from the collective error agreement.
 * Exit status 0 = success.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "search/knn.h"
#include "par/par.h"
#include "testutil.h"

/* Mask: rows whose global id % MASK_MOD == MASK_SKIP are ineligible. */
#define MASK_MOD 11
#define MASK_SKIP 3

static void write_file(const char *path, const void *a, size_t na, const void *b, size_t nb, const void *c,
                       size_t nc, const void *d, size_t nd)
{
    FILE *f = fopen(path, "wb");
    if (!f || (na && fwrite(a, 1, na, f) != na) || (nb && fwrite(b, 1, nb, f) != nb) ||
        (nc && fwrite(c, 1, nc, f) != nc) || (nd && fwrite(d, 1, nd, f) != nd) || fclose(f) != 0) {
        fprintf(stderr, "tool_knn_mpi: cannot write %s\n", path);
        par_abort(1);
    }
}

static void write_topk(const char *path, const TopK *t)
{
    int64_t hdr[2] = { t->Q, t->k };
    size_t n = (size_t)t->Q * (size_t)t->k;
    write_file(path, hdr, sizeof hdr, t->dist, n * sizeof *t->dist, t->ids, n * sizeof *t->ids, NULL, 0);
}

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    if (argc < 7) {
        par_err0(&ctx, "usage: tool_knn_mpi OUT_PREFIX M D Q K SEED [--mismatch]\n");
        par_finalize(&ctx);
        return 1;
    }
    const char *prefix = argv[1];
    int64_t M = atoll(argv[2]), Q = atoll(argv[4]);
    int D = atoi(argv[3]), k = atoi(argv[5]);
    uint64_t rng = strtoull(argv[6], NULL, 10);
    int mismatch = argc > 7 && strcmp(argv[7], "--mismatch") == 0;
    const int P = ctx.size, r = ctx.rank;

    float *x = xmalloc((size_t)M * (size_t)D * sizeof *x), *q = xmalloc((size_t)Q * (size_t)D * sizeof *q);
    uint8_t *mask = xmalloc((size_t)M);
    test_fill_uniform(x, (size_t)M * (size_t)D, &rng, -1.0f, 1.0f);
    test_fill_uniform(q, (size_t)Q * (size_t)D, &rng, -1.0f, 1.0f);
    for (int64_t j = 0; j < M; j++) mask[j] = j % MASK_MOD != MASK_SKIP;

    /* uneven shard sizes, rank 1 empty when P >= 3 */
    int64_t wsum = 0, start = 0, mine = 0;
    for (int p = 0; p < P; p++) wsum += (P >= 3 && p == 1) ? 0 : (int64_t)(p + 1) * (p + 1);
    for (int p = 0; p <= r; p++) {
        int64_t w = (P >= 3 && p == 1) ? 0 : (int64_t)(p + 1) * (p + 1);
        int64_t size = p == P - 1 ? M - start : M * w / wsum;
        if (p == r) mine = size;
        else start += size;
    }
    int64_t offset = par_exscan_sum_i64(&ctx, mine), total = mine;
    par_allreduce_sum_i64(&ctx, &total, 1);
    if (offset != start || total != M) {
        fprintf(stderr, "[rank %d] shard offset %lld (expected %lld), total %lld (expected %lld)\n", r,
                (long long)offset, (long long)start, (long long)total, (long long)M);
        par_abort(1);
    }
    KnnDb db = { x + (size_t)offset * (size_t)D, mine, D, offset, NULL, mask + offset, NULL, 0 };

    int status = 0;
    const char *names[2] = { "l2", "ip" };
    for (int m = 0; m < 2; m++) {
        TopK out;
        Err err;
        err_clear(&err);
        int kk = mismatch && r == P - 1 ? k + 1 : k;
        int rc = knn_search_sharded(&ctx, &out, q, Q, &db, kk, (KnnMetric)m, 0, &err);
        if (mismatch) {
            /* every rank must report the same agreed error */
            int bad = rc != AE_EARG || (P > 1 && strstr(err.msg, "rank") == NULL);
            if (par_allreduce_max_int(&ctx, bad) != 0) status = 1;
            par_log0(&ctx, "mismatch (%s): agreed error %d: %s\n", names[m], rc, err.msg);
            continue;
        }
        if (rc != AE_OK) {
            par_err0(&ctx, "tool_knn_mpi: %s\n", err.msg);
            status = 1;
            continue;
        }
        char path[4096];
        if (r == 0) {
            snprintf(path, sizeof path, "%s.%s.bin", prefix, names[m]);
            write_topk(path, &out);
        }
        if (r == P - 1) {
            snprintf(path, sizeof path, "%s.%s.last.bin", prefix, names[m]);
            write_topk(path, &out);
        }
        topk_free(&out);
    }
    if (r == 0 && !mismatch) {
        char path[4096];
        int64_t hdr[3] = { M, D, Q };
        snprintf(path, sizeof path, "%s.data.bin", prefix);
        write_file(path, hdr, sizeof hdr, x, (size_t)M * (size_t)D * sizeof *x, q,
                   (size_t)Q * (size_t)D * sizeof *q, mask, (size_t)M);
    }
    free(x);
    free(q);
    free(mask);
    par_finalize(&ctx);
    return status;
}
