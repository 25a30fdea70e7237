/*
 * bench_knn.c - throughput of aesim's exact k-NN (knn_search_local, the
 * per-rank search of aesim-search) on a random database (issue 6).
 *
 * Data: database x[N][D] and queries q[NQ][D] uniform in [0, 1) (like
 * post-ReLU embeddings: non-negative, no structure), generated from fixed
 * seeds in parallel (one rng stream per block of rows, so the data do not
 * depend on the thread count).  --data-dir DIR saves them as DIR/x.npy and
 * DIR/q.npy, and the ids found by the first timed run of each query count
 * as DIR/ids_nq<NQ>.npy, so bench/faiss_knn.py searches the same vectors
 * and checks that FAISS finds the same neighbours.
 * Workloads: one database, one or more query counts (--nq 10000/3,100);
 * for each, an untimed warm-up search of a few queries, then --runs timed
 * searches of all NQ queries, or for an entry NQ/C, C timed searches of
 * consecutive slices of NQ/C queries each (one slice = one run: keeps the
 * largest workload within the suite's time budget while still searching
 * every query once; a remainder of fewer than C queries is skipped).
 * FLOPs per query: 2 N D (the distance GEMM); bytes per run: N D 4 (the
 * database must be read at least once per search).
 * Output: JSON lines (bench_common.h); each result names the kNN GEMM
 * kernel that ran ("knn_gemm": AESIM_KNN_GEMM=auto|blas|avx512 chooses,
 * knn_gemm.h).
 * Threading: threads_setup(T) as aesim's programs do (OpenMP T, BLAS 1),
 * because knn.c runs its sgemm tiles inside its OpenMP loop over query
 * blocks.  No MPI communication (one rank).
 * Database row norms: computed once before the timed runs and passed as
 * KnnDb.norms, as aesim-search does when it loads its shards.
 * Does not: time the sharded MPI search or its merge.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "base/check.h"
#include "search/knn.h"
#include "search/knn_gemm.h"
#include "data/npy.h"
#include "par/par.h"
#include "base/rng.h"
#include "base/threads.h"
#include "base/timer.h"
#include "search/topk.h"

/* Seeds of the database and queries (any fixed values). */
#define KNN_DATA_SEED 512u
#define KNN_QUERY_SEED 513u
/* Rows per rng stream when generating data in parallel. */
#define GEN_ROWS_PER_STREAM 1024
/* Queries in the untimed warm-up search (at least 2 so the GEMM path is
 * warmed when NQ takes it). */
#define WARMUP_QUERIES 8
/* Most query counts in --nq. */
#define MAX_NQ_LIST 8

static void fill_uniform(float *x, int64_t rows, int D, uint64_t seed)
{
    int64_t nblocks = (rows + GEN_ROWS_PER_STREAM - 1) / GEN_ROWS_PER_STREAM;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        Rng rng;
        rng_seed(&rng, seed, (uint64_t)b);
        int64_t r1 = (b + 1) * GEN_ROWS_PER_STREAM < rows ? (b + 1) * GEN_ROWS_PER_STREAM : rows;
        for (size_t i = (size_t)b * GEN_ROWS_PER_STREAM * (size_t)D; i < (size_t)r1 * (size_t)D; i++)
            x[i] = rng_uniform_f32(&rng, 0.0f, 1.0f);
    }
}

static void save_npy(const char *dir, const char *name, NpyDtype t, int64_t rows, int64_t cols, void *data)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    NpyArray a = { .name = "", .dtype = t, .ndim = 2, .shape = { rows, cols }, .data = data };
    Err err;
    err_clear(&err);
    if (npy_write(path, &a, &err) != AE_OK) {
        fprintf(stderr, "bench_knn: %s\n", err.msg);
        exit(1);
    }
}

static void search_or_die(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, int nthreads)
{
    Err err;
    err_clear(&err);
    if (knn_search_local(out, q, Q, db, k, KNN_L2, nthreads, &err) != AE_OK) {
        fprintf(stderr, "bench_knn: knn_search_local: %s\n", err.msg);
        exit(1);
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
    int threads = (int)bench_opt_int(argc, argv, "--threads", 0, 0);
    const char *nq_list = bench_opt_str(argc, argv, "--nq", "100");
    const char *dir = bench_opt_str(argc, argv, "--data-dir", NULL);
    CHECK(runs <= BENCH_MAX_RUNS);

    int64_t nqs[MAX_NQ_LIST], nq_max = 0;
    int chunks[MAX_NQ_LIST];
    int n_nq = 0;
    for (const char *s = nq_list; *s && n_nq < MAX_NQ_LIST;) {
        char *end;
        long long v = strtoll(s, &end, 10);
        long long c = 1;
        if (end != s && *end == '/') {
            const char *cs = end + 1;
            c = strtoll(cs, &end, 10);
            if (end == cs) c = 0;
        }
        if (v < 1 || c < 1 || c > BENCH_MAX_RUNS || c > v) {
            fprintf(stderr, "bench_knn: --nq wants a comma-separated list of NQ or NQ/CALLS (1 <= CALLS <= "
                            "min(NQ, %d)), got '%s'\n", BENCH_MAX_RUNS, nq_list);
            return 2;
        }
        chunks[n_nq] = (int)c;
        nqs[n_nq++] = v;
        if (v > nq_max) nq_max = v;
        s = *end == ',' ? end + 1 : end;
    }
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(threads, cpus.cpus, cpus.sharing, ctx.local_size);

    double t0 = timer_now();
    float *x = xmalloc((size_t)N * (size_t)D * sizeof(float));
    float *q = xmalloc((size_t)nq_max * (size_t)D * sizeof(float));
    fill_uniform(x, N, D, KNN_DATA_SEED);
    fill_uniform(q, nq_max, D, KNN_QUERY_SEED);
    if (dir) {
        save_npy(dir, "x.npy", NPY_F32, N, D, x);
        save_npy(dir, "q.npy", NPY_F32, nq_max, D, q);
    }
    printf("# knn data N=%lld D=%d NQ<=%lld generated in %.1f s\n", (long long)N, D, (long long)nq_max,
           timer_now() - t0);
    KnnDb db = { .x = x, .M = N, .D = D, .id_offset = 0, .ids = NULL, .mask = NULL };
    /* the row norms once, untimed, as aesim-search computes them when it
     * loads its shards (search_core.c); without them every search computes
     * them again (a full read of the database, ~3% of a 1000-query call) */
    float *norms = xmalloc((size_t)N * sizeof *norms);
    if (knn_row_norms(norms, &db.norms_max2, &db, plan.omp_threads)) db.norms = norms;

    for (int j = 0; j < n_nq; j++) {
        int64_t nq = nqs[j];
        int c = chunks[j];
        int nrun = c > 1 ? c : runs;
        int64_t per = nq / c; /* queries per timed run; a remainder < c is not searched */
        TopK res;
        search_or_die(&res, q, nq < WARMUP_QUERIES ? nq : WARMUP_QUERIES, &db, k, plan.omp_threads);
        topk_free(&res);
        double sec[BENCH_MAX_RUNS];
        for (int r = 0; r < nrun; r++) {
            const float *qr = q + (c > 1 ? (size_t)r * (size_t)per * (size_t)D : 0);
            double ts = timer_now();
            search_or_die(&res, qr, per, &db, k, plan.omp_threads);
            sec[r] = timer_now() - ts;
            printf("# knn N=%lld D=%d nq=%lld run %d: %.3f s (%.1f queries/s)\n", (long long)N, D,
                   (long long)per, r + 1, sec[r], (double)per / sec[r]);
            if (r == 0 && dir) {
                char name[64];
                snprintf(name, sizeof name, "ids_nq%lld.npy", (long long)nq);
                save_npy(dir, name, NPY_I64, per, k, res.ids);
            }
            topk_free(&res);
        }
        char workload[128], variant[128], extra[128];
        snprintf(workload, sizeof workload, "knn N=%lld d=%d k=%d nq=%lld", (long long)N, D, k, (long long)nq);
        if (c > 1)
            snprintf(variant, sizeof variant, "%d threads, %d calls x %lld queries", plan.omp_threads, c,
                     (long long)per);
        else
            snprintf(variant, sizeof variant, "%d threads", plan.omp_threads);
        KnnGemm gemm = KNN_GEMM_AUTO;
        knn_gemm_from_env(&gemm, NULL); /* an invalid value fails the search itself */
        snprintf(extra, sizeof extra, "\"threads\": %d, \"chunks\": %d, \"knn_gemm\": \"%s\"", plan.omp_threads, c,
                 knn_gemm_name(knn_gemm_resolve(gemm)));
        bench_print_result(stdout, workload, "aesim", variant, sec, nrun, (double)per, 2.0 * (double)N * D,
                           4.0 * (double)N * D, extra);
    }
    free(norms);
    free(x);
    free(q);
    par_finalize(&ctx);
    return 0;
}
