/*
 * bench_ivf.c - the IVF index of aesim-search (issue 15) on clustered
 * synthetic vectors, beside bench/faiss_ivf.py (FAISS IndexIVFFlat) on the
 * same vectors.
 *
 * Data: N vectors of dimension D around C centres (centres N(0, 1), points
 * centre + --spread (default BENCH_IVF_SPREAD) x N(0, 1), the kind of data faiss's own
 * benchmarks use), queries drawn the same way from another seed; generated in
 * parallel from fixed seeds (one rng stream per block of rows).  Written as an
 * aesim database of one shard in --data-dir/db (FAISS reads its vectors.npy),
 * the queries as --data-dir/q.npy, and the exact ids of the first --nq-many
 * queries as --data-dir/exact_ids.npy (FAISS's recall uses the same truth).
 * Output: JSON lines of kind "ivf" (bench/report.py's IVF section), what =
 *   "train"   ivf_train_db (k-means on min(N, 256 nlist) vectors,
 *             IVF_KMEANS_ITERS = 10 iterations as faiss, then the lists)
 *   "search"  per nprobe: one call of --nq-many queries (nq = NQ), and
 *             --nq-one calls of one query (nq = 1), with recall@k against
 *             the exact ids
 *   "exact"   search_knn on the same queries (the full scan)
 * with N, d, nlist, nprobe, nq, items (queries timed), seconds, recall,
 * threads; and an "info" line with the index and vector bytes.
 * Threading: threads_setup(T) (OpenMP T, BLAS 1) as aesim-search does.  MPI:
 * one rank (the collectives are the identity).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "base/check.h"
#include "base/fileio.h"
#include "base/rng.h"
#include "base/threads.h"
#include "base/timer.h"
#include "data/npy.h"
#include "par/par.h"
#include "search/ivf.h"
#include "search/search_core.h"
#include "search/vecdb.h"

/* Seeds of the centres, the database and the queries (any fixed values). */
#define IVF_CENTRE_SEED 1501u
#define IVF_DATA_SEED 1502u
#define IVF_QUERY_SEED 1503u
/* Default standard deviation of the points around their centre (centres are
 * N(0, 1)): as large as the centres' own spread, so that clusters overlap and
 * recall grows gradually with nprobe (a tiny spread makes nprobe 1 exact). */
#define BENCH_IVF_SPREAD 1.0
/* Rows per rng stream when generating data in parallel. */
#define GEN_ROWS_PER_STREAM 1024
/* Most nprobe values in --nprobe. */
#define MAX_PROBES 16

static void fill_clustered(float *x, int64_t rows, int D, const float *centres, int C, float spread, uint64_t seed)
{
    int64_t nblocks = (rows + GEN_ROWS_PER_STREAM - 1) / GEN_ROWS_PER_STREAM;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        Rng rng;
        rng_seed(&rng, seed, (uint64_t)b);
        int64_t r1 = (b + 1) * GEN_ROWS_PER_STREAM < rows ? (b + 1) * GEN_ROWS_PER_STREAM : rows;
        for (int64_t i = b * GEN_ROWS_PER_STREAM; i < r1; i++) {
            const float *c = centres + (size_t)rng_below(&rng, (uint64_t)C) * (size_t)D;
            for (int d = 0; d < D; d++)
                x[(size_t)i * (size_t)D + (size_t)d] = c[d] + rng_normal_f32(&rng, 0.0f, spread);
        }
    }
}

/* One JSON line of the IVF section of the report (kind "ivf"): what =
 * "train", "exact" or "search"; nq queries per call (0 for train), items =
 * queries timed in `seconds`. */
static void emit(const char *what, int64_t N, int D, int nlist, int nprobe, int64_t nq, double items, double seconds,
                 double recall, int T)
{
    printf("{\"kind\": \"ivf\", \"impl\": \"aesim\", \"what\": \"%s\", \"N\": %lld, \"d\": %d, \"nlist\": %d, "
           "\"nprobe\": %d, \"nq\": %lld, \"items\": %.0f, \"seconds\": %.6f, \"recall\": %.4f, \"threads\": %d}\n",
           what, (long long)N, D, nlist, nprobe, (long long)nq, items, seconds, recall, T);
    fflush(stdout);
}

static void die(const char *what, const Err *err)
{
    fprintf(stderr, "bench_ivf: %s: %s\n", what, err->msg);
    exit(1);
}

static double recall_at(const TopK *got, const int64_t *exact, int64_t Q, int k)
{
    int64_t hit = 0;
    for (int64_t i = 0; i < Q; i++)
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++)
                if (got->ids[(size_t)i * (size_t)k + (size_t)b] == exact[(size_t)i * (size_t)k + (size_t)a]) {
                    hit++;
                    break;
                }
    return (double)hit / (double)(Q * k);
}

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    const int64_t N = bench_opt_int(argc, argv, "--n", 1000000, 1);
    const int D = (int)bench_opt_int(argc, argv, "--d", 512, 1);
    const int C = (int)bench_opt_int(argc, argv, "--clusters", 4096, 1);
    const int nlist = (int)bench_opt_int(argc, argv, "--nlist", 1024, 1);
    const int k = (int)bench_opt_int(argc, argv, "--k", 10, 1);
    const int64_t nq_one = bench_opt_int(argc, argv, "--nq-one", 200, 1);
    const int64_t nq_many = bench_opt_int(argc, argv, "--nq-many", 1000, 1);
    const int threads = (int)bench_opt_int(argc, argv, "--threads", 0, 0);
    const char *probe_list = bench_opt_str(argc, argv, "--nprobe", "1,2,4,8,16,32,64");
    const char *dir = bench_opt_str(argc, argv, "--data-dir", NULL);
    const float spread = (float)atof(bench_opt_str(argc, argv, "--spread", "1.0"));
    if (!dir) {
        fprintf(stderr, "bench_ivf: --data-dir DIR is required\n");
        return 2;
    }
    int probes[MAX_PROBES], n_probes = 0;
    for (const char *s = probe_list; *s && n_probes < MAX_PROBES;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1) {
            fprintf(stderr, "bench_ivf: bad --nprobe '%s'\n", probe_list);
            return 2;
        }
        probes[n_probes++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(threads, cpus.cpus, cpus.sharing, ctx.local_size);
    const int T = plan.omp_threads;
    const int64_t nq = nq_one > nq_many ? nq_one : nq_many;
    Err err;
    err_clear(&err);

    /* ---- data and database */
    double t0 = timer_now();
    float *centres = xmalloc((size_t)C * (size_t)D * sizeof *centres);
    Rng rc;
    rng_seed(&rc, IVF_CENTRE_SEED, 0);
    for (size_t i = 0; i < (size_t)C * (size_t)D; i++) centres[i] = rng_normal_f32(&rc, 0.0f, 1.0f);
    float *x = xmalloc((size_t)N * (size_t)D * sizeof *x);
    float *q = xmalloc((size_t)nq * (size_t)D * sizeof *q);
    fill_clustered(x, N, D, centres, C, spread, IVF_DATA_SEED);
    fill_clustered(q, nq, D, centres, C, spread, IVF_QUERY_SEED);
    char dbdir[4096], path[4200];
    snprintf(dbdir, sizeof dbdir, "%s/db", dir);
    if (fileio_mkdirs(dbdir, &err)) die(dbdir, &err);
    const char **names = xmalloc((size_t)N * sizeof *names);
    int32_t *labels = xmalloc((size_t)N * sizeof *labels);
    for (int64_t i = 0; i < N; i++) {
        names[i] = "synthetic";
        labels[i] = -1;
    }
    VecDb db;
    vecdb_init(&db, dbdir, 0, "none", 1, 1, D, "none", D, KNN_L2);
    if (vecdb_write_shard(dbdir, 0, x, labels, names, N, D, 0, &err)) die("write shard", &err);
    free(names);
    free(labels);
    const char *item = "synthetic";
    vecdb_add_source(&db, "synthetic", 1, &item, &N);
    vecdb_add_shard(&db, N);
    if (vecdb_write_manifest(&db, &err)) die("manifest", &err);
    snprintf(path, sizeof path, "%s/q.npy", dir);
    NpyArray qa = { .name = "", .dtype = NPY_F32, .ndim = 2, .shape = { nq, D }, .data = q };
    if (npy_write(path, &qa, &err)) die(path, &err);
    free(x);
    printf("# ivf data N=%lld D=%d C=%d nq=%lld written in %.1f s\n", (long long)N, D, C, (long long)nq,
           timer_now() - t0);

    /* ---- training */
    KmeansStats st;
    t0 = timer_now();
    if (ivf_train_db(&ctx, &db, nlist, IVF_KMEANS_ITERS, T, &st, &err)) die("train", &err);
    double sec = timer_now() - t0;
    if (vecdb_write_manifest(&db, &err)) die("manifest", &err);
    emit("train", N, D, nlist, 0, 0, 1, sec, 0, T);
    printf("# ivf train: %.2f s, %d iterations on %lld vectors, %lld splits\n", sec, st.iters,
           (long long)kmeans_sample_size(N, nlist), (long long)st.splits);
    printf("{\"kind\": \"info\", \"ivf_index_bytes\": \"%.0f\", \"ivf_vector_bytes\": \"%.0f\"}\n",
           8.0 * (double)(N + nlist + 1) + 4.0 * nlist * D, 4.0 * (double)N * D);

    /* ---- search */
    LocalShards ls;
    IvfLocal il;
    if (search_shards_open(&ctx, &ls, &db, KNN_L2, NULL, &err)) die("open", &err);
    if (ivf_local_open(&ctx, &il, &db, &ls, &err)) die("open ivf", &err);
    TopK exact, res;
    t0 = timer_now();
    if (search_knn(&ctx, &exact, q, nq_many, ls.dbs, ls.n, k, KNN_L2, T, &err)) die("exact", &err);
    sec = timer_now() - t0;
    emit("exact", N, D, nlist, 0, nq_many, (double)nq_many, sec, 1, T);
    snprintf(path, sizeof path, "%s/exact_ids.npy", dir);
    NpyArray ea = { .name = "", .dtype = NPY_I64, .ndim = 2, .shape = { nq_many, k }, .data = exact.ids };
    if (npy_write(path, &ea, &err)) die(path, &err);
    const int64_t n1 = nq_one < 20 ? nq_one : 20; /* exact single queries: a few suffice */
    t0 = timer_now();
    for (int64_t i = 0; i < n1; i++) {
        if (search_knn(&ctx, &res, q + (size_t)i * (size_t)D, 1, ls.dbs, ls.n, k, KNN_L2, T, &err)) die("exact", &err);
        topk_free(&res);
    }
    sec = timer_now() - t0;
    emit("exact", N, D, nlist, 0, 1, (double)n1, sec, 1, T);
    for (int p = 0; p < n_probes; p++) {
        const int np_ = probes[p] < nlist ? probes[p] : nlist;
        t0 = timer_now();
        if (ivf_search_knn(&ctx, &res, q, nq_many, ls.dbs, ls.n, &il, np_, k, KNN_L2, T, &err)) die("ivf", &err);
        sec = timer_now() - t0;
        double rec = recall_at(&res, exact.ids, nq_many, k);
        topk_free(&res);
        emit("search", N, D, nlist, np_, nq_many, (double)nq_many, sec, rec, T);
        t0 = timer_now();
        for (int64_t i = 0; i < nq_one; i++) {
            if (ivf_search_knn(&ctx, &res, q + (size_t)i * (size_t)D, 1, ls.dbs, ls.n, &il, np_, k, KNN_L2, T, &err))
                die("ivf", &err);
            topk_free(&res);
        }
        sec = timer_now() - t0;
        emit("search", N, D, nlist, np_, 1, (double)nq_one, sec, rec, T);
        printf("# ivf nprobe %d: recall@%d %.4f\n", np_, k, rec);
    }
    topk_free(&exact);
    ivf_local_close(&il);
    search_shards_close(&ls);
    vecdb_free(&db);
    free(centres);
    free(q);
    par_finalize(&ctx);
    return 0;
}
