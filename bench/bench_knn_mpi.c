/*
 * bench_knn_mpi.c - the sharded search of aesim-search (knn_search_sharded:
 * per-rank blocked-GEMM top-k, gather, k-way merge) on P ranks, to compare
 * P ranks x T threads layouts on one machine (issue 4: P=1 x 2 threads vs
 * P=2 x 1 thread).
 *
 * usage: mpirun -np P bench_knn_mpi --n N --d D --k K --nq NQ[,NQ...] --runs R --threads T
 * Data: database rows uniform in [0, 1), row i generated from rng stream
 * i / 1024 of a fixed seed, so the global database is the same for any P;
 * rank r holds rows [N r / P, N (r+1) / P).  Queries from another seed.
 * Output (rank 0): one line per NQ: median seconds over R runs and
 * queries/s.  The timed region is the whole sharded call (search + gather +
 * merge + broadcast), after one untimed warm-up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "check.h"
#include "knn.h"
#include "par.h"
#include "rng.h"
#include "threads.h"
#include "timer.h"
#include "topk.h"

/* Seeds and rows per rng stream (same values as bench_knn.c). */
#define KNN_DATA_SEED 512u
#define KNN_QUERY_SEED 513u
#define GEN_ROWS_PER_STREAM 1024
/* Most query counts in --nq. */
#define MAX_NQ_LIST 8

/* Rows [r0, r1) of the global uniform matrix with D columns. */
static void fill_rows(float *x, int64_t r0, int64_t r1, int D, uint64_t seed)
{
    int64_t b0 = r0 / GEN_ROWS_PER_STREAM, b1 = (r1 + GEN_ROWS_PER_STREAM - 1) / GEN_ROWS_PER_STREAM;
#pragma omp parallel for schedule(static)
    for (int64_t b = b0; b < b1; b++) {
        Rng rng;
        rng_seed(&rng, seed, (uint64_t)b);
        for (int64_t i = b * GEN_ROWS_PER_STREAM; i < (b + 1) * GEN_ROWS_PER_STREAM && i < r1; i++)
            for (int d = 0; d < D; d++) {
                float v = rng_uniform_f32(&rng, 0.0f, 1.0f);
                if (i >= r0) x[(size_t)(i - r0) * (size_t)D + (size_t)d] = v;
            }
    }
}

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    int64_t N = bench_opt_int(argc, argv, "--n", 1000000, 1);
    int D = (int)bench_opt_int(argc, argv, "--d", 512, 1);
    int k = (int)bench_opt_int(argc, argv, "--k", 10, 1);
    int runs = (int)bench_opt_int(argc, argv, "--runs", 3, 1);
    int T = (int)bench_opt_int(argc, argv, "--threads", 1, 1);
    const char *nq_list = bench_opt_str(argc, argv, "--nq", "1,100");
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(T, cpus.cpus, cpus.sharing, ctx.local_size);
    int64_t r0 = N * ctx.rank / ctx.size, r1 = N * (ctx.rank + 1) / ctx.size;
    float *x = xmalloc((size_t)(r1 - r0) * (size_t)D * sizeof(float));
    fill_rows(x, r0, r1, D, KNN_DATA_SEED);
    KnnDb db = { .x = x, .M = r1 - r0, .D = D, .id_offset = r0, .ids = NULL, .mask = NULL };
    char buf[256];
    snprintf(buf, sizeof buf, "%s", nq_list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int64_t nq = atoll(tok);
        if (nq < 1) continue;
        float *q = xmalloc((size_t)nq * (size_t)D * sizeof(float));
        fill_rows(q, 0, nq, D, KNN_QUERY_SEED);
        double t[16];
        int n_runs = runs < 16 ? runs : 16;
        Err err;
        err_clear(&err);
        for (int r = -1; r < n_runs; r++) {
            TopK out;
            par_barrier(&ctx);
            double t0 = timer_now();
            if (knn_search_sharded(&ctx, &out, q, nq, &db, k, KNN_L2, plan.omp_threads, &err)) {
                par_err0(&ctx, "bench_knn_mpi: %s\n", err.msg);
                par_abort(1);
            }
            double dt = timer_now() - t0;
            if (r >= 0) t[r] = dt;
            topk_free(&out);
        }
        bench_sort(t, (size_t)n_runs);
        par_log0(&ctx, "knn sharded N=%lld d=%d k=%d nq=%lld | %d rank(s) x %d thread(s) | median %.3f s "
                 "(min %.3f, max %.3f) | %.1f queries/s\n", (long long)N, D, k, (long long)nq, ctx.size,
                 plan.omp_threads, t[n_runs / 2], t[0], t[n_runs - 1], nq / t[n_runs / 2]);
        free(q);
    }
    free(x);
    par_finalize(&ctx);
    return 0;
}
