/*
 * knn.c - exact k-NN and range search of float32 vectors on one shard
 * (candidates from blocked sgemm via knn_gemm.h, or from the float pre-scan of
 * knn_scan.h, + fixed-order exact re-scoring), the merge of per-shard
 * results, and the MPI-sharded search (see include/search/knn.h for the contract
 * and for why the results are exact and independent of blocking).
 *
 * Does not: read files, choose shards, or include mpi.h (MPI goes through
 * par.h).  Never allocates in the inner loops; every scratch buffer is made
 * once per call (one slice per thread).
 *
 * Threading (choice: OpenMP across query blocks, GEMM single-threaded
 * inside): the queries are cut into blocks; an OpenMP loop hands whole blocks
 * to threads, and each thread runs the sgemm tiles of its block, updates its
 * block's heaps and re-scores its block's queries, in its own scratch slice
 * (owner-writes, no atomics).  At most one block of queries: the threads
 * split the database tiles instead (knn_rows_split), so that every thread
 * multiplies all the queries and the shard is streamed once.  So BLAS must
 * run single-threaded when nthreads > 1: that is the program's default
 * (threads.h sets OpenBLAS to 1 thread and gives the cores to OpenMP, as
 * for the conv kernels), and it is
 * what makes the search use all cores.  With OMP=0 everything is serial and
 * BLAS may thread each tile.  The pre-scan (few queries) instead hands
 * chunks of rows to the threads (dynamic schedule), each thread with its own
 * candidate heaps, merged and re-scored after the loop.
 */
#include "search/knn.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/check.h"
#include "search/knn_gemm.h"
#include "search/knn_scan.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define KNN_HAVE_AVX512 1
#include <immintrin.h>
#else
#define KNN_HAVE_AVX512 0
#endif

/* OpenMP pragmas through _Pragma, so an OMP=0 build has no unknown-pragma
 * warnings. */
#ifdef _OPENMP
#define KNN_OMP(directive) _Pragma(directive)
#else
#define KNN_OMP(directive)
#endif

/* Tile of the GEMM pass: KNN_QUERY_BLOCK queries x KNN_DB_BLOCK database
 * rows, i.e. an inner-product tile of 512 x 512 floats = 1 MiB that stays in
 * cache while the heaps are updated.  Each thread streams the whole shard
 * once per query block, and the AVX-512 GEMM packs every database row once
 * per block, so larger query blocks read and pack less per query.
 * Measured (issue 16, 2026-12-04, 2-core AMD EPYC Zen 5, AVX-512 GEMM,
 * bench_knn N = 1,000,000, D = 512, k = 10, 3 calls x 1000 queries, 2
 * threads, queries/s, 4 interleaved rounds): 256 x 1024 (before) 248-273,
 * 512 x 512 287-304 (+10%), 512 x 1024 224-297, 512 x 256 262-297,
 * 1024 x 256 259-303; nq = 100 (50 queries per thread either way) 116-125
 * for both.  perf: the GEMM is 94% of the time, its B packing ~11% of that.
 * Earlier (2-core Xeon, OpenBLAS, D = 64, M = 20,000) every block size from
 * 64 to 4096 was within the noise; faiss uses 4096 x 1024. */
#define KNN_QUERY_BLOCK 512
#define KNN_DB_BLOCK 512

/* KNN_SCAN_MAX_QUERIES (knn.h) = 32, measured on the dev machine (2-core
 * Xeon at 2.3 GHz with AVX-512, 2 threads, k = 10, queries/s, pre-scan vs
 * GEMM pass): N = 1,000,000, D = 392: Q = 1 17.2 (the GEMM pass is not
 * used there), Q = 2 29 vs 5.3, Q = 8 70 vs 17, Q = 32 91 vs 41, Q = 256
 * 98 vs 70 (each GEMM thread streams the whole shard for its query block,
 * after a norms pass); N = 20,000, D = 64 (in cache): Q = 2 5,500-6,300 vs
 * 1,600, Q = 8 9,400 vs 4,300-6,300, Q = 32 ~10,000 vs 7,300-11,300,
 * Q = 128 10,100 vs 14,400.  So the pre-scan for Q < 32 (faiss switches
 * from its SIMD direct loop to BLAS at 20 queries). */

/* Rows per OpenMP work item of the pre-scan: a dynamic schedule of chunks
 * lets a thread slowed by other load take fewer of them; 16384 rows of
 * D = 392 are 25 MB, so the scheduling cost is nothing. */
#define KNN_SCAN_CHUNK_ROWS 16384

/* Largest D for the pre-scan: keeps its error bound's n u below 1/200
 * (knn_scan.h), as the norm flag below requires.  Larger D takes the GEMM
 * pass (any Q). */
#define KNN_SCAN_MAX_D (1 << 20)

/* A pre-scan float squared norm above this (or NaN/inf) flags the shard
 * for the exact row check: any row of exact squared norm > KNN_MAX_NORM2
 * has a float norm > KNN_MAX_NORM2 (1 - gamma_n) - a > KNN_MAX_NORM2 / 2
 * (D <= KNN_SCAN_MAX_D); valid rows above it only cost the extra check. */
#define KNN_FLAG_NORM2 ((float)(KNN_MAX_NORM2 / 2.0))

/* Factor applied to the float GEMM rounding-error bound before trusting it
 * to exclude rows from re-scoring: covers the float rounding of the
 * re-scored value itself and the double-accumulation error. */
#define KNN_ERR_SAFETY 2.0

/* Unit roundoff of float32 (2^-24). */
#define KNN_U_F32 ((double)FLT_EPSILON / 2.0)

/* Largest |q|,|x| scale (squared norm units) for which the float GEMM
 * formula cannot overflow: (|q| + |x|)^2 below FLT_MAX / 16 keeps
 * ||q||^2, ||x||^2 and 2 q.x finite.  Queries beyond it are re-scored
 * directly against the whole shard. */
#define KNN_GEMM_MAX_SCALE ((double)FLT_MAX / 16.0)

/* Work (multiply-adds) below which a loop stays serial: thread start-up
 * costs a few microseconds, i.e. about this many flops. */
#define KNN_OMP_MIN_WORK 32768

/* Bytes of one rank's part of a par_gather in knn_search_sharded, bounded so
 * that rank 0's receive buffer (P times this) stays small and each MPI call
 * stays far below INT_MAX bytes. */
#define KNN_GATHER_CHUNK_BYTES ((size_t)16 << 20)

/* Initial capacity (entries) of a query's range-search result list. */
#define KNN_RANGE_INIT_CAP 16

/* ---------------------------------------------------------------- helpers */

TopKOrder knn_metric_order(KnnMetric metric)
{
    return metric == KNN_IP ? TOPK_LARGEST : TOPK_SMALLEST;
}

static int resolve_threads(int nthreads)
{
#ifdef _OPENMP
    return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    (void)nthreads;
    return 1;
#endif
}

static const float *row_ptr(const float *x, int64_t i, int D)
{
    return x + (size_t)i * (size_t)D;
}

static int64_t row_gid(const KnnDb *db, int64_t j)
{
    return db->ids ? db->ids[j] : db->id_offset + j;
}

/* The fixed-order exact distance of knn.h "Exactness": accumulated in
 * double in the order d = 0..D-1, rounded once to float.  GCC with -std=c11
 * does not contract a*b+c into an FMA (-ffp-contract=off), so any IEEE
 * double loop in the same order reproduces it bit for bit (tests/mpi_knn.sh
 * does, in numpy). */
static float dist_exact(KnnMetric metric, const float *a, const float *b, int D)
{
    double s = 0.0;
    if (metric == KNN_L2) {
        for (int d = 0; d < D; d++) {
            double t = (double)a[d] - (double)b[d];
            s += t * t;
        }
    } else {
        for (int d = 0; d < D; d++) s += (double)a[d] * (double)b[d];
    }
    return (float)s;
}

/* Squared norms of the eligible rows of the shard, accumulated in double:
 * out[i] is the float rounding (used by the GEMM formula), 0 for a masked
 * row (never read).  Returns the largest squared norm in double (for the
 * error bound), 0 if there is no eligible row; *bad = 1 if some eligible
 * row's norm is NaN, infinite or above KNN_MAX_NORM2 (the caller then runs
 * check_rows), else 0. */
static double row_norms(float *out, int *bad, const KnnDb *db, int nt)
{
    const int64_t n = db->M;
    const int D = db->D;
    double mx = 0.0;
    int flag = 0;
    (void)nt;
    KNN_OMP("omp parallel for num_threads(nt) reduction(max:mx) reduction(|:flag) if(n * D > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < n; i++) {
        if (db->mask && !db->mask[i]) {
            out[i] = 0.0f;
            continue;
        }
        const float *r = row_ptr(db->x, i, D);
        /* 8 partial sums (d mod 8), added pairwise at the end: 8 independent
         * chains instead of one latency-bound chain of D double adds; in
         * double, the order changes the sum far below the float rounding
         * of out[i], which the GEMM error bound already counts. */
        double p[8] = { 0.0 };
        int d = 0;
        for (; d + 8 <= D; d += 8)
            for (int l = 0; l < 8; l++) p[l] += (double)r[d + l] * (double)r[d + l];
        for (; d < D; d++) p[d & 7] += (double)r[d] * (double)r[d];
        const double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        out[i] = (float)s;
        if (!(s <= KNN_MAX_NORM2)) flag = 1;
        else if (s > mx) mx = s;
    }
    *bad = flag;
    return mx;
}

/* Bound on |GEMM value - re-scored value| for a query of squared norm qn2
 * against any row of squared norm <= xmax2 (knn.h "Exactness"): the
 * standard dot-product bound gamma_D sum|q_d x_d| <= ~D u |q||x| (any
 * summation order, FMA or not), plus the roundings of the norms and of
 * ||q||^2 + ||x||^2 - 2 q.x, plus underflow, times KNN_ERR_SAFETY.  INFINITY
 * when the GEMM might overflow (the caller then re-scores everything). */
static double gemm_err_bound(KnnMetric metric, double qn2, double xmax2, int D)
{
    double qn = sqrt(qn2), xn = sqrt(xmax2);
    double scale = metric == KNN_L2 ? (qn + xn) * (qn + xn) : qn * xn;
    double extra = metric == KNN_L2 ? 4.0 : 2.0;
    if (!((qn + xn) * (qn + xn) < KNN_GEMM_MAX_SCALE)) return INFINITY;
    return KNN_ERR_SAFETY * ((D + extra) * KNN_U_F32 * scale + (D + extra) * (double)FLT_MIN);
}

/* Checks one vector v[D] (knn.h "Valid input"): every component finite
 * and squared norm (double) at most KNN_MAX_NORM2.  `what` and `idx` name
 * it in the message ("query 3", "database row 7"), `hint` ends it. */
static int check_vector(const char *fn, const char *what, int64_t idx, const float *v, int D, const char *hint,
                        Err *err)
{
    double n2 = 0.0;
    for (int d = 0; d < D; d++) {
        if (!isfinite(v[d]))
            return err_set(err, AE_ENUMERIC, "%s: %s %lld component %d is NaN or infinite; hint: %s", fn, what,
                           (long long)idx, d, hint);
        n2 += (double)v[d] * (double)v[d];
    }
    if (!(n2 <= KNN_MAX_NORM2))
        return err_set(err, AE_ENUMERIC,
                       "%s: %s %lld has squared norm %.3g, above the limit %.3g (FLT_MAX/64): its float32 "
                       "distances would overflow to inf; hint: %s",
                       fn, what, (long long)idx, n2, KNN_MAX_NORM2, hint);
    return AE_OK;
}

int knn_check_vectors(const float *v, int64_t n, int D, const char *what, Err *err)
{
    assert(n >= 0 && D >= 1 && what);
    for (int64_t i = 0; i < n; i++) {
        int rc = check_vector(what, "vector", i, row_ptr(v, i, D), D,
                              "vectors must be finite and of moderate scale (encoder output, or values in "
                              "the wrong units?)",
                              err);
        if (rc != AE_OK) return rc;
    }
    return AE_OK;
}

/* Checks every eligible database row with check_vector, in row order (the
 * first bad row is named by its global id, which names its shard in a
 * database, and by its row in this shard).  Returns AE_OK or AE_ENUMERIC. */
static int check_rows(const char *fn, const KnnDb *db, Err *err)
{
    for (int64_t j = 0; j < db->M; j++) {
        if (db->mask && !db->mask[j]) continue;
        const int64_t id = db->ids ? db->ids[j] : db->id_offset + j;
        const float *v = row_ptr(db->x, j, db->D);
        if (check_vector(fn, "", id, v, db->D, "", NULL) == AE_OK) continue;
        /* the failing row only: its message, with the row in this shard */
        char hint[160];
        snprintf(hint, sizeof hint,
                 "it is row %lld of its shard; check the embeddings that made it (vectors must be finite and of "
                 "moderate scale)",
                 (long long)j);
        return check_vector(fn, "database vector with id", id, v, db->D, hint, err);
    }
    return AE_OK;
}

/* Checks the arguments common to the searches; names the function `fn`.
 * The database rows are checked here only if `rows` is set; the pre-scan
 * and GEMM passes check them in their own read of the shard. */
static int validate(const char *fn, const float *q, int64_t Q, const KnnDb *db, KnnMetric metric, int rows,
                    Err *err)
{
    if (Q < 0) return err_set(err, AE_EARG, "%s: Q = %lld queries; hint: Q must be >= 0", fn, (long long)Q);
    if (db->M < 0)
        return err_set(err, AE_EARG, "%s: M = %lld database rows; hint: M must be >= 0", fn,
                       (long long)db->M);
    if (db->D <= 0)
        return err_set(err, AE_ESHAPE, "%s: dimension D = %d; hint: vectors need D >= 1", fn, db->D);
    if (metric != KNN_L2 && metric != KNN_IP)
        return err_set(err, AE_EARG, "%s: unknown metric %d; hint: use KNN_L2 (0) or KNN_IP (1)", fn,
                       (int)metric);
    if (db->ids == NULL && (db->id_offset < 0 || db->id_offset > INT64_MAX - db->M))
        return err_set(err, AE_EARG,
                       "%s: id_offset %lld with M = %lld gives ids outside 0..INT64_MAX; hint: "
                       "id_offset is this shard's first global id (an exclusive scan of shard sizes)",
                       fn, (long long)db->id_offset, (long long)db->M);
    int D = db->D;
    for (int64_t j = 0; db->ids && j < db->M; j++)
        if (db->ids[j] < 0)
            return err_set(err, AE_EARG,
                           "%s: explicit id of database row %lld is %lld; hint: ids must be >= 0 "
                           "(-1 marks a missing result)",
                           fn, (long long)j, (long long)db->ids[j]);
    for (int64_t i = 0; i < Q; i++) {
        int rc = check_vector(fn, "query", i, row_ptr(q, i, D), D,
                              "check the query vectors (encoder output diverged, or values of the wrong scale)",
                              err);
        if (rc != AE_OK) return rc;
    }
    return rows ? check_rows(fn, db, err) : AE_OK;
}

void knn_normalize(float *x, int64_t n, int D)
{
    assert(n >= 0 && D >= 1);
    KNN_OMP("omp parallel for schedule(static) if(n * D > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < n; i++) {
        float *r = x + (size_t)i * (size_t)D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)r[d] * (double)r[d];
        if (s > 0.0) {
            double inv = 1.0 / sqrt(s);
            for (int d = 0; d < D; d++) r[d] = (float)((double)r[d] * inv);
        }
    }
}

/* --------------------------------------------------------------- k-NN */

/* Exact top k of query qi over every eligible row of the shard, with the
 * fixed-order distance: writes the sorted list to hd[k], hi[k]. */
static void scan_rows(float *hd, int64_t *hi, int k, const float *qi, const KnnDb *db, KnnMetric metric,
                      int64_t j0, int64_t j1)
{
    TopKOrder order = knn_metric_order(metric);
    topk_heap_init(hd, hi, k, order);
    for (int64_t j = j0; j < j1; j++) {
        if (db->mask && !db->mask[j]) continue;
        float d = dist_exact(metric, qi, row_ptr(db->x, j, db->D), db->D);
        int64_t id = row_gid(db, j);
        if (topk_better(order, d, id, hd[0], hi[0])) topk_heap_push(hd, hi, k, order, d, id);
    }
    topk_heap_sort(hd, hi, k, order);
}

static void scan_direct(float *hd, int64_t *hi, int k, const float *qi, const KnnDb *db,
                        KnnMetric metric)
{
    scan_rows(hd, hi, k, qi, db, metric, 0, db->M);
}

/* Offers one row of a GEMM tile to a query's candidate heap hd[kc], hi[kc]
 * (heap ids are LOCAL row indices: the candidates are re-scored, so only the
 * values matter for exactness).  ipr[nb] = q.x for rows j0..j0+nb-1. */
/* The scalar test and heap push of row j0 + j (tile_update's body). */
static inline void tile_one(float *hd, int64_t *hi, int kc, KnnMetric metric, TopKOrder order, float d, int64_t j,
                            int64_t j0, float qn, const float *xn, const uint8_t *mask)
{
    if (metric == KNN_L2) {
        d = qn + xn[j0 + j] - 2.0f * d;
        /* ||q||^2 + ||x||^2 - 2 q.x cancels catastrophically when x is
         * close to q and can come out slightly negative; a squared
         * distance is >= 0 (faiss clamps the same way). */
        if (d < 0.0f) d = 0.0f;
        if (d > hd[0]) return; /* quick reject: most rows */
    } else if (d < hd[0]) {
        return;
    }
    if (mask && !mask[j0 + j]) return;
    if (topk_better(order, d, j0 + j, hd[0], hi[0])) topk_heap_push(hd, hi, kc, order, d, j0 + j);
}

#if KNN_HAVE_AVX512
/* tile_update's reject test 16 rows at a time: the same float operations
 * as tile_one (qn + xn, 2 ip, their difference: no FMA), compared with the
 * heap's root; only rows that may enter go through tile_one, which repeats
 * the exact scalar test against the root as it is then (a root only ever
 * gets better, so a row rejected here is rejected there too).  NaN values
 * are never rejected here (tile_one decides, as before). */
__attribute__((target("avx512f"))) static void tile_update_avx512(float *hd, int64_t *hi, int kc, KnnMetric metric,
                                                                   const float *ipr, int64_t nb, int64_t j0, float qn,
                                                                   const float *xn, const uint8_t *mask)
{
    const TopKOrder order = knn_metric_order(metric);
    const __m512 vq = _mm512_set1_ps(qn), two = _mm512_set1_ps(2.0f), zero = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= nb; j += 16) {
        const __m512 ip = _mm512_loadu_ps(ipr + j), root = _mm512_set1_ps(hd[0]);
        __mmask16 maybe;
        if (metric == KNN_L2) {
            __m512 d = _mm512_sub_ps(_mm512_add_ps(vq, _mm512_loadu_ps(xn + j0 + j)), _mm512_mul_ps(two, ip));
            d = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(d, zero, _CMP_LT_OQ), d, zero);
            maybe = _mm512_cmp_ps_mask(d, root, _CMP_NGT_UQ); /* not (d > root) */
        } else {
            maybe = _mm512_cmp_ps_mask(ip, root, _CMP_NLT_UQ); /* not (d < root) */
        }
        while (maybe) {
            const int c = __builtin_ctz(maybe);
            maybe &= (__mmask16)(maybe - 1);
            tile_one(hd, hi, kc, metric, order, ipr[j + c], j + c, j0, qn, xn, mask);
        }
    }
    for (; j < nb; j++) tile_one(hd, hi, kc, metric, order, ipr[j], j, j0, qn, xn, mask);
}
#endif

/* vec: the AVX-512 reject test (when the GEMM runs our AVX-512 kernel,
 * knn_gemm.h; AESIM_KNN_GEMM=blas runs the scalar loop alone, which is how
 * the tests exercise both). */
static void tile_update(float *hd, int64_t *hi, int kc, KnnMetric metric, const float *ipr, int64_t nb,
                        int64_t j0, float qn, const float *xn, const uint8_t *mask, int vec)
{
#if KNN_HAVE_AVX512
    if (vec) {
        tile_update_avx512(hd, hi, kc, metric, ipr, nb, j0, qn, xn, mask);
        return;
    }
#else
    (void)vec;
#endif
    TopKOrder order = knn_metric_order(metric);
    for (int64_t j = 0; j < nb; j++) tile_one(hd, hi, kc, metric, order, ipr[j], j, j0, qn, xn, mask);
}

/* Re-scores the candidates hd[kc], hi[kc] (local rows) of query qi exactly
 * into the sorted list od[k], oi[k] (global ids), and falls back to a full
 * direct scan unless the error bound `bound` proves that no other row can
 * enter the top k (knn.h "Exactness").  Returns 1 if it fell back. */
static int rescore(float *od, int64_t *oi, int k, const float *hd, const int64_t *hi, int kc,
                   const float *qi, const KnnDb *db, KnnMetric metric, double bound)
{
    TopKOrder order = knn_metric_order(metric);
    topk_heap_init(od, oi, k, order);
    for (int c = 0; c < kc; c++) {
        if (hi[c] == TOPK_NO_ID) continue;
        float d = dist_exact(metric, qi, row_ptr(db->x, hi[c], db->D), db->D);
        int64_t id = row_gid(db, hi[c]);
        if (topk_better(order, d, id, od[0], oi[0])) topk_heap_push(od, oi, k, order, d, id);
    }
    /* hd[0] is the worst candidate's GEMM value: every row that is not a
     * candidate has a GEMM value at least as bad.  A padding root means
     * fewer than kc eligible rows: all of them are candidates. */
    int safe = hi[0] == TOPK_NO_ID;
    if (!safe) {
        double worst_cand = hd[0], kth = od[0];
        safe = metric == KNN_L2 ? worst_cand - bound > kth : worst_cand + bound < kth;
    }
    if (!safe) {
        scan_direct(od, oi, k, qi, db, metric);
        return 1;
    }
    topk_heap_sort(od, oi, k, order);
    return 0;
}

/* Thread index for the scratch slices (0 without OpenMP). */
static int thread_index(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads in the current OpenMP team (1 outside one or without OpenMP). */
static int team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Exact top k of query qi over the whole shard, written sorted to od[k],
 * oi[k]: the rows are split into nt contiguous ranges scanned in parallel
 * with the exact distance and the nt sorted lists are merged (topk_merge,
 * ties by id): the same result as one scan, since every distance is the
 * same fixed-order value. */
static void exact_query(float *od, int64_t *oi, int k, const float *qi, const KnnDb *db, KnnMetric metric,
                        int nt)
{
    const double work = (double)db->M * db->D;
    if (!(nt > 1 && work > KNN_OMP_MIN_WORK * (double)nt)) {
        scan_direct(od, oi, k, qi, db, metric);
        return;
    }
    float *pd = xmalloc((size_t)nt * (size_t)k * sizeof *pd);
    int64_t *pi = xmalloc((size_t)nt * (size_t)k * sizeof *pi);
    const float **ld = xmalloc((size_t)nt * sizeof *ld);
    const int64_t **li = xmalloc((size_t)nt * sizeof *li);
    int *lk = xmalloc((size_t)nt * sizeof *lk);
    KNN_OMP("omp parallel for num_threads(nt) schedule(static, 1)")
    for (int t = 0; t < nt; t++)
        scan_rows(pd + (size_t)t * k, pi + (size_t)t * k, k, qi, db, metric, db->M * t / nt,
                  db->M * (t + 1) / nt);
    for (int t = 0; t < nt; t++) {
        ld[t] = pd + (size_t)t * k;
        li[t] = pi + (size_t)t * k;
        lk[t] = k;
    }
    topk_merge(od, oi, k, ld, li, lk, nt, knn_metric_order(metric));
    free(pd);
    free(pi);
    free(ld);
    free(li);
    free(lk);
}

/* Direct path of small shards (at most k + KNN_RESCORE_MARGIN rows, where
 * no pass could exclude anything): every query scans the shard with the
 * exact distance; OpenMP over queries, or over rows when there are fewer
 * queries than threads. */
static void search_direct(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k,
                          KnnMetric metric, int nt)
{
    double work = (double)Q * (double)db->M * db->D;
    (void)work;
    if (Q < nt) {
        for (int64_t i = 0; i < Q; i++)
            exact_query(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k,
                        row_ptr(q, i, db->D), db, metric, nt);
        return;
    }
    KNN_OMP("omp parallel for num_threads(nt) schedule(dynamic, 1) if(work > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < Q; i++)
        scan_direct(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k,
                    row_ptr(q, i, db->D), db, metric);
}

/* ------------------------------------------------------- float pre-scan */

/* One query's range-search hits (grown by doubling). */
typedef struct RangeHit { float d; int64_t id; } RangeHit;
typedef struct RangeList { int64_t n, cap; RangeHit *h; } RangeList;

/* What a pre-scan pass computes: kNN candidate heaps (lists == NULL) or
 * range hits within `radius`. */
typedef struct ScanJob {
    const float *q;     /* [nq][D] queries */
    int64_t nq;
    const double *qn2;  /* [nq] squared query norms in double (IP bounds) */
    const KnnDb *db;
    KnnMetric metric;
    int kc;             /* candidates per query (kNN) */
    KnnScanBound bound; /* error bounds for D (knn_scan.h) */
    float radius;       /* range search threshold */
    int range;          /* 1: range search, 0: kNN */
} ScanJob;

/* Per-thread state of a pre-scan pass (one slice per thread). */
typedef struct ScanSlice {
    float *hd;         /* [nq][kc] candidate heaps: pre-scan values (kNN) */
    int64_t *hi;       /* [nq][kc] candidate heaps: local row indices (kNN) */
    RangeList *lists;  /* [nq] hits of this thread's rows (range search) */
    float *f;          /* [nq][KNN_SCAN_BLOCK] pre-scan values of a block */
    float *nf;         /* [KNN_SCAN_BLOCK] float squared norms of a block */
    int64_t *rows;     /* [KNN_SCAN_BLOCK] eligible rows of a block */
    float nfmax;       /* largest float squared norm seen (INFINITY if NaN seen) */
} ScanSlice;

static ScanSlice *scan_alloc(int nt, const ScanJob *job)
{
    ScanSlice *s = xcalloc((size_t)nt, sizeof *s);
    const TopKOrder order = knn_metric_order(job->metric);
    const size_t nq = (size_t)job->nq, kc = (size_t)job->kc;
    for (int t = 0; t < nt; t++) {
        if (job->range) {
            s[t].lists = xcalloc(nq, sizeof *s[t].lists);
        } else {
            s[t].hd = xmalloc(nq * kc * sizeof *s[t].hd);
            s[t].hi = xmalloc(nq * kc * sizeof *s[t].hi);
            for (size_t i = 0; i < nq; i++) topk_heap_init(s[t].hd + i * kc, s[t].hi + i * kc, job->kc, order);
        }
        s[t].f = xmalloc(nq * KNN_SCAN_BLOCK * sizeof *s[t].f);
        s[t].nf = xmalloc(KNN_SCAN_BLOCK * sizeof *s[t].nf);
        s[t].rows = xmalloc(KNN_SCAN_BLOCK * sizeof *s[t].rows);
        s[t].nfmax = 0.0f;
    }
    return s;
}

/* Frees the slices (and the hit arrays of their range lists). */
static void scan_free(ScanSlice *s, int nt, int64_t nq)
{
    for (int t = 0; t < nt; t++) {
        for (int64_t i = 0; s[t].lists && i < nq; i++) free(s[t].lists[i].h);
        free(s[t].lists);
        free(s[t].hd);
        free(s[t].hi);
        free(s[t].f);
        free(s[t].nf);
        free(s[t].rows);
    }
    free(s);
}

static void range_append(RangeList *l, float d, int64_t id)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : KNN_RANGE_INIT_CAP;
        RangeHit *h = xmalloc((size_t)cap * sizeof *h);
        if (l->n) memcpy(h, l->h, (size_t)l->n * sizeof *h);
        free(l->h);
        l->h = h;
        l->cap = cap;
    }
    l->h[l->n].d = d;
    l->h[l->n].id = id;
    l->n++;
}

/* 1 if the re-scored value d is within the radius. */
static int in_range(KnnMetric metric, float d, float radius)
{
    return metric == KNN_L2 ? d <= radius : d >= radius;
}

/* Collects the next eligible rows of [*j, j1) into s->rows (at most
 * KNN_SCAN_BLOCK), computes their pre-scan values for the job's queries and
 * their norms, and advances *j.  Returns the number of rows (0 = done). */
static int scan_next_block(ScanSlice *s, int64_t *j, int64_t j1, const ScanJob *job)
{
    const KnnDb *db = job->db;
    int nb = 0;
    for (; *j < j1 && nb < KNN_SCAN_BLOCK; (*j)++)
        if (!db->mask || db->mask[*j]) s->rows[nb++] = *j;
    if (nb == 0) return 0;
    knn_scan_rows(s->f, s->nf, job->q, (int)job->nq, db->x, s->rows, nb, db->D, job->metric);
    for (int c = 0; c < nb; c++) {
        const float v = s->nf[c];
        if (!(v <= s->nfmax)) s->nfmax = isnan(v) ? INFINITY : v;
    }
    return nb;
}

/* kNN: offers a block's values to the slice's candidate heaps (values by
 * metric order, ties by local row index: the candidates are re-scored, so
 * only the values matter for exactness). */
static void scan_block_knn(ScanSlice *s, int nb, const ScanJob *job)
{
    const TopKOrder order = knn_metric_order(job->metric);
    const int kc = job->kc;
    for (int64_t i = 0; i < job->nq; i++) {
        float *hd = s->hd + (size_t)i * (size_t)kc;
        int64_t *hi = s->hi + (size_t)i * (size_t)kc;
        const float *f = s->f + (size_t)i * (size_t)nb;
        for (int c = 0; c < nb; c++) {
            /* quick reject against the current worst candidate (a NaN value
             * passes here and is refused by the push) */
            if (order == TOPK_SMALLEST ? f[c] > hd[0] : f[c] < hd[0]) continue;
            topk_heap_push(hd, hi, kc, order, f[c], s->rows[c]);
        }
    }
}

/* Range search: re-scores every row of the block whose bound does not
 * exclude it (a NaN value is never excluded) and keeps it if within the
 * radius. */
static void scan_block_range(ScanSlice *s, int nb, const ScanJob *job)
{
    const KnnDb *db = job->db;
    const int D = db->D;
    for (int64_t i = 0; i < job->nq; i++) {
        const float *f = s->f + (size_t)i * (size_t)nb, *qi = row_ptr(job->q, i, D);
        for (int c = 0; c < nb; c++) {
            if (job->metric == KNN_L2 ? knn_scan_l2_lower(&job->bound, f[c]) > job->radius
                                      : knn_scan_ip_upper(&job->bound, f[c], job->qn2[i], s->nf[c]) < job->radius)
                continue;
            float d = dist_exact(job->metric, qi, row_ptr(db->x, s->rows[c], D), D);
            if (in_range(job->metric, d, job->radius)) range_append(&s->lists[i], d, row_gid(db, s->rows[c]));
        }
    }
}

/* One pre-scan pass over the shard: chunks of KNN_SCAN_CHUNK_ROWS rows,
 * OpenMP dynamic over the chunks, each thread in its own slice of s[nt]
 * (owner-writes).  Then checks the rows if a slice flagged one (knn.h
 * "Valid input").  Returns AE_OK or check_rows' AE_ENUMERIC (fn names the
 * caller). */
static int scan_pass(ScanSlice *s, int nt, const ScanJob *job, const char *fn, Err *err)
{
    const KnnDb *db = job->db;
    const int64_t nchunks = (db->M + KNN_SCAN_CHUNK_ROWS - 1) / KNN_SCAN_CHUNK_ROWS;
    const double work = (double)job->nq * (double)db->M * db->D;
    (void)work;
    KNN_OMP("omp parallel for num_threads(nt) schedule(dynamic, 1) if(nchunks > 1 && work > KNN_OMP_MIN_WORK)")
    for (int64_t c = 0; c < nchunks; c++) {
        ScanSlice *sl = &s[thread_index()];
        int64_t j = c * KNN_SCAN_CHUNK_ROWS;
        const int64_t j1 = db->M - j < KNN_SCAN_CHUNK_ROWS ? db->M : j + KNN_SCAN_CHUNK_ROWS;
        int nb;
        while ((nb = scan_next_block(sl, &j, j1, job)) > 0) {
            if (job->range) scan_block_range(sl, nb, job);
            else scan_block_knn(sl, nb, job);
        }
    }
    for (int t = 0; t < nt; t++)
        if (!(s[t].nfmax <= KNN_FLAG_NORM2)) return check_rows(fn, db, err);
    return AE_OK;
}

/* Largest float squared norm over the slices. */
static float scan_nfmax(const ScanSlice *s, int nt)
{
    float m = 0.0f;
    for (int t = 0; t < nt; t++)
        if (s[t].nfmax > m) m = s[t].nfmax;
    return m;
}

/* Re-scores query i's candidates of every slice into the sorted list
 * od[k], oi[k] and proves it exact (knn.h "Exactness"): every row that is no
 * slice's candidate lies in a full heap whose worst value w bounds it, so
 * its re-scored value is >= knn_scan_l2_lower(w) (L2) or <=
 * knn_scan_ip_upper(w, ...) (IP, with the largest row norm nfmax); if that
 * is strictly worse than the k-th re-scored value, no such row can enter
 * (nor tie it: ties would need equal values).  Returns 1 if proven, 0 if
 * the caller must scan the whole shard exactly. */
static int scan_rescore(float *od, int64_t *oi, int k, const ScanSlice *s, int nt, const ScanJob *job,
                        int64_t i, float nfmax)
{
    const KnnDb *db = job->db;
    const KnnMetric metric = job->metric;
    const int kc = job->kc;
    const float *qi = row_ptr(job->q, i, db->D);
    const TopKOrder order = knn_metric_order(metric);
    topk_heap_init(od, oi, k, order);
    for (int t = 0; t < nt; t++) {
        const int64_t *hi = s[t].hi + (size_t)i * (size_t)kc;
        for (int c = 0; c < kc; c++) {
            if (hi[c] == TOPK_NO_ID) continue;
            float d = dist_exact(metric, qi, row_ptr(db->x, hi[c], db->D), db->D);
            int64_t id = row_gid(db, hi[c]);
            if (topk_better(order, d, id, od[0], oi[0])) topk_heap_push(od, oi, k, order, d, id);
        }
    }
    const double kth = od[0];
    for (int t = 0; t < nt; t++) {
        const float *hd = s[t].hd + (size_t)i * (size_t)kc;
        const int64_t *hi = s[t].hi + (size_t)i * (size_t)kc;
        /* a padding root: every row this slice saw is a candidate */
        if (hi[0] == TOPK_NO_ID) continue;
        const int safe = metric == KNN_L2 ? knn_scan_l2_lower(&job->bound, hd[0]) > kth
                                          : knn_scan_ip_upper(&job->bound, hd[0], job->qn2[i], nfmax) < kth;
        if (!safe) return 0;
    }
    topk_heap_sort(od, oi, k, order);
    return 1;
}

/* Squared norms in double of the nq queries q[nq][D], into qn2[nq] (the IP
 * bounds). */
static void query_norms(double *qn2, const float *q, int64_t nq, int D)
{
    for (int64_t i = 0; i < nq; i++) {
        const float *v = row_ptr(q, i, D);
        double n2 = 0.0;
        for (int d = 0; d < D; d++) n2 += (double)v[d] * (double)v[d];
        qn2[i] = n2;
    }
}

/* Pre-scan path (knn.h "Exactness"): Q < KNN_SCAN_MAX_QUERIES queries,
 * k + KNN_RESCORE_MARGIN < M, D <= KNN_SCAN_MAX_D.  Streams the shard once
 * for all Q queries; a query whose proof fails is scanned again exactly.
 * Returns AE_OK or the AE_ENUMERIC of a bad row (fn names the caller). */
static int search_scan(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, KnnMetric metric, int nt,
                       const char *fn, Err *err)
{
    double *qn2 = xmalloc((size_t)Q * sizeof *qn2);
    query_norms(qn2, q, Q, db->D);
    ScanJob job = { .q = q, .nq = Q, .qn2 = qn2, .db = db, .metric = metric, .kc = k + KNN_RESCORE_MARGIN };
    knn_scan_bound_init(&job.bound, db->D);
    ScanSlice *s = scan_alloc(nt, &job);
    int rc = scan_pass(s, nt, &job, fn, err);
    if (rc == AE_OK) {
        const float nfmax = scan_nfmax(s, nt);
        for (int64_t i = 0; i < Q; i++) {
            const float *qi = row_ptr(q, i, db->D);
            float *od = out->dist + (size_t)i * (size_t)k;
            int64_t *oi = out->ids + (size_t)i * (size_t)k;
            if (!scan_rescore(od, oi, k, s, nt, &job, i, nfmax))
                exact_query(od, oi, k, qi, db, metric, nt);
        }
    }
    scan_free(s, nt, Q);
    free(qn2);
    return rc;
}

/* Queries per block: at most KNN_QUERY_BLOCK, and small enough that every
 * one of the nt threads gets a block. */
static int64_t query_block(int64_t Q, int nt)
{
    int64_t bq = (Q + nt - 1) / nt;
    if (bq > KNN_QUERY_BLOCK) bq = KNN_QUERY_BLOCK;
    return bq < 1 ? 1 : bq;
}

/* Per-thread scratch of the GEMM pass, sizes for a block of bq queries. */
typedef struct Scratch {
    float *ip;     /* [bq][KNN_DB_BLOCK] inner-product tile */
    float *qn;     /* [bq] ||q||^2 (float, for the GEMM formula) */
    double *bound; /* [bq] GEMM error bound of each query */
    float *cd;     /* [bq][kc] candidate heaps: GEMM values */
    int64_t *ci;   /* [bq][kc] candidate heaps: local row indices */
    float *qpack;  /* the block's queries packed for the GEMM (knn_gemm_prepare) */
    KnnGemm gemm;  /* the inner-product kernel (knn_gemm.h) */
} Scratch;

static Scratch *scratch_alloc(int nt, int64_t bq, int64_t bm, int D, int kc, KnnGemm gemm)
{
    Scratch *s = xcalloc((size_t)nt, sizeof *s);
    for (int t = 0; t < nt; t++) {
        s[t].gemm = gemm;
        s[t].ip = xmalloc((size_t)bq * (size_t)bm * sizeof *s[t].ip);
        s[t].qn = xmalloc((size_t)bq * sizeof *s[t].qn);
        s[t].bound = xmalloc((size_t)bq * sizeof *s[t].bound);
        const size_t nqp = knn_gemm_queries_floats(gemm, (int)bq, D);
        s[t].qpack = nqp ? xmalloc(nqp * sizeof *s[t].qpack) : NULL;
        if (kc > 0) {
            s[t].cd = xmalloc((size_t)bq * (size_t)kc * sizeof *s[t].cd);
            s[t].ci = xmalloc((size_t)bq * (size_t)kc * sizeof *s[t].ci);
        }
    }
    return s;
}

static void scratch_free(Scratch *s, int nt)
{
    for (int t = 0; t < nt; t++) {
        free(s[t].ip);
        free(s[t].qn);
        free(s[t].bound);
        free(s[t].qpack);
        free(s[t].cd);
        free(s[t].ci);
    }
    free(s);
}

/* Norms and error bounds of the nq queries qb[nq][D] into s->qn, s->bound. */
static void block_norms(Scratch *s, const float *qb, int64_t nq, int D, KnnMetric metric, double xmax2)
{
    for (int64_t i = 0; i < nq; i++) {
        const float *r = row_ptr(qb, i, D);
        double n2 = 0.0;
        for (int d = 0; d < D; d++) n2 += (double)r[d] * (double)r[d];
        s->qn[i] = (float)n2;
        s->bound[i] = gemm_err_bound(metric, n2, xmax2, D);
    }
}

/* GEMM candidates of the nq queries qb[nq][D] among rows [r0, r1): s's
 * heaps (initialised here), norms and bounds.  Runs on one thread. */
static void block_candidates(const float *qb, int64_t nq, int64_t r0, int64_t r1, const KnnDb *db,
                             const float *xn, double xmax2, int k, KnnMetric metric, Scratch *s)
{
    const int D = db->D, kc = k + KNN_RESCORE_MARGIN;
    TopKOrder order = knn_metric_order(metric);
    block_norms(s, qb, nq, D, metric, xmax2);
    for (int64_t i = 0; i < nq; i++)
        topk_heap_init(s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, order);
    /* nq, nb are bounded by the block sizes, so the int arguments cannot
     * overflow */
    const KnnGemmQueries qs = knn_gemm_prepare(s->gemm, qb, (int)nq, D, s->qpack);
    for (int64_t j0 = r0; j0 < r1; j0 += KNN_DB_BLOCK) {
        const int64_t nb = r1 - j0 < KNN_DB_BLOCK ? r1 - j0 : KNN_DB_BLOCK;
        knn_gemm_tile(&qs, s->ip, row_ptr(db->x, j0, D), (int)nb); /* ip[i][j] = qb[i] . x[j0+j] */
        for (int64_t i = 0; i < nq; i++)
            tile_update(s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, metric,
                        s->ip + (size_t)i * (size_t)nb, nb, j0, s->qn[i], xn, db->mask,
                        knn_gemm_resolve(s->gemm) == KNN_GEMM_AVX512);
    }
}

/* Query i of qb (row i0 + i of out) re-scored from s's heaps. */
static void block_rescore(TopK *out, const float *qb, int64_t i0, int64_t i, const KnnDb *db, int k,
                          KnnMetric metric, const Scratch *s)
{
    const int kc = k + KNN_RESCORE_MARGIN;
    rescore(out->dist + (size_t)(i0 + i) * (size_t)k, out->ids + (size_t)(i0 + i) * (size_t)k, k,
            s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, row_ptr(qb, i, db->D), db,
            metric, s->bound[i]);
}

/* k-NN of the nq queries qb = q[i0..i0+nq-1] by GEMM candidates and exact
 * re-scoring, written to rows i0.. of out.  Runs on one thread. */
static void knn_block(TopK *out, const float *qb, int64_t i0, int64_t nq, const KnnDb *db,
                      const float *xn, double xmax2, int k, KnnMetric metric, Scratch *s)
{
    block_candidates(qb, nq, 0, db->M, db, xn, xmax2, k, metric, s);
    for (int64_t i = 0; i < nq; i++) block_rescore(out, qb, i0, i, db, k, metric, s);
}

/* Few queries (Q <= KNN_QUERY_BLOCK) on nt > 1 threads: one query block,
 * the shard's rows split into nt ranges of whole tiles; each thread finds
 * its range's GEMM candidates of every query, the threads' heaps are
 * merged into slice 0's (the kc best (value, row) pairs, whichever thread
 * saw them) and the queries re-scored in parallel.  Splitting the queries
 * instead gave each thread Q / nt of them: every thread streamed and
 * packed the whole shard for half as many queries, and the 12-row GEMM
 * tiles ran part empty.  Measured (2026-12-05, Zen 5, bench_knn N =
 * 1,000,000, D = 512, 2 threads, 3 interleaved rounds, queries/s): 100
 * queries 113-141 -> 167-205, 300 queries 238-247 -> 270-296.  Results are
 * the same either way (the re-scoring is exact for any candidate set, knn.h
 * "Exactness"; test_knn compares 1 and 4 threads bit for bit). */
static void knn_rows_split(TopK *out, const float *q, int64_t Q, const KnnDb *db, const float *xn, double xmax2,
                           int k, KnnMetric metric, int nt, Scratch *s)
{
    const int kc = k + KNN_RESCORE_MARGIN;
    const int64_t tiles = (db->M + KNN_DB_BLOCK - 1) / KNN_DB_BLOCK;
    const TopKOrder order = knn_metric_order(metric);
    (void)nt; /* unused without OpenMP */
    KNN_OMP("omp parallel num_threads(nt)")
    {
        /* the team OpenMP gave (at most nt): its threads split the rows */
        const int t = thread_index(), team = team_size();
        const int64_t r0 = tiles * t / team * KNN_DB_BLOCK, r1e = tiles * (t + 1) / team * KNN_DB_BLOCK;
        block_candidates(q, Q, r0, r1e < db->M ? r1e : db->M, db, xn, xmax2, k, metric, &s[t]);
        KNN_OMP("omp barrier")
        KNN_OMP("omp for schedule(dynamic, 16)")
        for (int64_t i = 0; i < Q; i++) {
            float *hd = s[0].cd + (size_t)i * (size_t)kc;
            int64_t *hi = s[0].ci + (size_t)i * (size_t)kc;
            for (int u = 1; u < team; u++)
                for (int c = 0; c < kc; c++) {
                    const float d = s[u].cd[(size_t)i * (size_t)kc + (size_t)c];
                    const int64_t id = s[u].ci[(size_t)i * (size_t)kc + (size_t)c];
                    if (id != TOPK_NO_ID && topk_better(order, d, id, hd[0], hi[0]))
                        topk_heap_push(hd, hi, kc, order, d, id);
                }
            block_rescore(out, q, 0, i, db, k, metric, &s[0]);
        }
    }
}

/* GEMM path (knn.h "Exactness"); requires k + KNN_RESCORE_MARGIN < M.
 * Returns AE_OK or the AE_ENUMERIC of a bad row (fn names the caller). */
static int search_gemm(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, KnnMetric metric, int nt,
                       KnnGemm gemm, const char *fn, Err *err)
{
    const int D = db->D;
    const int64_t M = db->M;
    const int64_t bq = query_block(Q, nt), nblocks = (Q + bq - 1) / bq;
    const int64_t bm = M < KNN_DB_BLOCK ? M : KNN_DB_BLOCK;
    /* [M] ||x||^2: the database's cached norms (every row valid: no check
     * needed; masked rows are never read), else computed here */
    float *own = db->norms ? NULL : xmalloc((size_t)M * sizeof *own);
    const float *xn = db->norms ? db->norms : own;
    int bad = 0;
    double xmax2 = db->norms ? db->norms_max2 : row_norms(own, &bad, db, nt);
    int rc = bad ? check_rows(fn, db, err) : AE_OK;
    if (rc != AE_OK) {
        free(own);
        return rc;
    }
    double work = (double)Q * (double)M * D;
    if (Q <= KNN_QUERY_BLOCK && nt > 1 && M >= (int64_t)nt * KNN_DB_BLOCK && work > KNN_OMP_MIN_WORK) {
        Scratch *s = scratch_alloc(nt, Q, bm, D, k + KNN_RESCORE_MARGIN, gemm);
        knn_rows_split(out, q, Q, db, xn, xmax2, k, metric, nt, s);
        scratch_free(s, nt);
        free(own);
        return AE_OK;
    }
    /* one scratch slice per thread of a team of at most nblocks threads */
    const int team = nblocks < nt ? (int)nblocks : nt;
    Scratch *s = scratch_alloc(team, bq, bm, D, k + KNN_RESCORE_MARGIN, gemm);
    /* dynamic: a query that falls back scans the whole shard */
    KNN_OMP("omp parallel for num_threads(team) schedule(dynamic, 1) if(nblocks > 1 && work > KNN_OMP_MIN_WORK)")
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t i0 = b * bq, nq = Q - i0 < bq ? Q - i0 : bq;
        knn_block(out, row_ptr(q, i0, D), i0, nq, db, xn, xmax2, k, metric, &s[thread_index()]);
    }
    scratch_free(s, team);
    free(own);
    return AE_OK;
}

int knn_row_norms(float *out, double *max2, const KnnDb *db, int nthreads)
{
    KnnDb all = *db;
    all.mask = NULL;
    int bad = 0;
    *max2 = row_norms(out, &bad, &all, resolve_threads(nthreads));
    return !bad;
}

int knn_search_local(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, KnnMetric metric,
                     int nthreads, Err *err)
{
    static const char fn[] = "knn_search_local";
    assert(out && db);
    memset(out, 0, sizeof *out);
    if (k <= 0) return err_set(err, AE_EARG, "%s: k = %d neighbours; hint: k must be >= 1", fn, k);
    /* The passes pay off only when they can exclude rows (more rows than
     * candidates); otherwise every row is re-scored directly. */
    const int pass = Q > 0 && (int64_t)k + KNN_RESCORE_MARGIN < db->M && k <= INT32_MAX - KNN_RESCORE_MARGIN;
    KnnGemm gemm;
    int rc = knn_gemm_from_env(&gemm, err);
    if (rc != AE_OK) return rc;
    rc = validate(fn, q, Q, db, metric, !pass, err);
    if (rc != AE_OK) return rc;
    topk_alloc(out, Q, k, knn_metric_order(metric));
    if (Q == 0 || db->M == 0) return AE_OK;
    int nt = resolve_threads(nthreads);
    if (!pass)
        search_direct(out, q, Q, db, k, metric, nt);
    else if (Q < KNN_SCAN_MAX_QUERIES && db->D <= KNN_SCAN_MAX_D)
        rc = search_scan(out, q, Q, db, k, metric, nt, fn, err);
    else
        rc = search_gemm(out, q, Q, db, k, metric, nt, gemm, fn, err);
    if (rc != AE_OK) topk_free(out);
    return rc;
}

void knn_merge(TopK *out, const TopK *parts, int P, int k, KnnMetric metric)
{
    assert(out && parts && P >= 1 && k >= 1);
    TopKOrder order = knn_metric_order(metric);
    int64_t Q = parts[0].Q;
    for (int p = 0; p < P; p++) assert(parts[p].Q == Q && parts[p].order == order);
    topk_alloc(out, Q, k, order);
    const float **in_d = xmalloc((size_t)P * sizeof *in_d);
    const int64_t **in_i = xmalloc((size_t)P * sizeof *in_i);
    int *in_k = xmalloc((size_t)P * sizeof *in_k);
    for (int64_t i = 0; i < Q; i++) {
        for (int p = 0; p < P; p++) {
            in_k[p] = parts[p].k;
            in_d[p] = parts[p].dist + (size_t)i * (size_t)parts[p].k;
            in_i[p] = parts[p].ids + (size_t)i * (size_t)parts[p].k;
        }
        topk_merge(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k,
                   (const float *const *)in_d, (const int64_t *const *)in_i, in_k, P, order);
    }
    free(in_d);
    free(in_i);
    free(in_k);
}

/* --------------------------------------------------------- range search */

static int hit_cmp_smallest(const void *a, const void *b)
{
    const RangeHit *x = a, *y = b;
    if (topk_better(TOPK_SMALLEST, x->d, x->id, y->d, y->id)) return -1;
    return topk_better(TOPK_SMALLEST, y->d, y->id, x->d, x->id) ? 1 : 0;
}

static int hit_cmp_largest(const void *a, const void *b)
{
    const RangeHit *x = a, *y = b;
    if (topk_better(TOPK_LARGEST, x->d, x->id, y->d, y->id)) return -1;
    return topk_better(TOPK_LARGEST, y->d, y->id, x->d, x->id) ? 1 : 0;
}

/* Rows j0..j0+nb-1 of a tile for one query: rows whose GEMM value may be
 * within the radius (written so that a NaN value counts as "may be") are
 * re-scored exactly and kept if they are. */
static void range_tile_update(RangeList *l, const float *qi, const float *ipr, int64_t nb, int64_t j0,
                              float qn, const float *xn, const KnnDb *db, KnnMetric metric,
                              float radius, double bound)
{
    for (int64_t j = 0; j < nb; j++) {
        if (db->mask && !db->mask[j0 + j]) continue;
        /* a NaN GEMM value (only possible when bound is infinite) fails
         * both tests below, so the row is re-scored */
        if (metric == KNN_L2) {
            double a = qn + xn[j0 + j] - 2.0f * ipr[j];
            if (a > (double)radius + bound) continue;
        } else if ((double)ipr[j] < (double)radius - bound) {
            continue;
        }
        float d = dist_exact(metric, qi, row_ptr(db->x, j0 + j, db->D), db->D);
        if (in_range(metric, d, radius)) range_append(l, d, row_gid(db, j0 + j));
    }
}

/* Range search of the nq queries qb[nq][D] into lists[nq] (one thread). */
static void range_block(RangeList *lists, const float *qb, int64_t nq, const KnnDb *db, const float *xn,
                        double xmax2, float radius, KnnMetric metric, Scratch *s)
{
    const int D = db->D;
    const int64_t M = db->M;
    block_norms(s, qb, nq, D, metric, xmax2);
    const KnnGemmQueries qs = knn_gemm_prepare(s->gemm, qb, (int)nq, D, s->qpack);
    for (int64_t j0 = 0; j0 < M; j0 += KNN_DB_BLOCK) {
        const int64_t nb = M - j0 < KNN_DB_BLOCK ? M - j0 : KNN_DB_BLOCK;
        knn_gemm_tile(&qs, s->ip, row_ptr(db->x, j0, D), (int)nb);
        for (int64_t i = 0; i < nq; i++)
            range_tile_update(&lists[i], row_ptr(qb, i, D), s->ip + (size_t)i * (size_t)nb, nb, j0,
                              s->qn[i], xn, db, metric, radius, s->bound[i]);
    }
}

int knn_range_search_local(KnnRange *out, const float *q, int64_t Q, const KnnDb *db, float radius,
                           KnnMetric metric, int nthreads, Err *err)
{
    static const char fn[] = "knn_range_search_local";
    assert(out && db);
    memset(out, 0, sizeof *out);
    if (!isfinite(radius))
        return err_set(err, AE_EARG, "%s: radius is NaN or infinite; hint: "
                       "pass a finite squared distance (L2) or score (IP)", fn);
    /* with Q > 0 both passes read (and check) every eligible row */
    KnnGemm gemm;
    int rc = knn_gemm_from_env(&gemm, err);
    if (rc != AE_OK) return rc;
    rc = validate(fn, q, Q, db, metric, Q == 0, err);
    if (rc != AE_OK) return rc;
    const int D = db->D;
    const int64_t M = db->M;
    int nt = resolve_threads(nthreads);
    RangeList *lists = xcalloc(Q > 0 ? (size_t)Q : 1, sizeof *lists);

    if (Q > 0 && M > 0 && Q < KNN_SCAN_MAX_QUERIES && D <= KNN_SCAN_MAX_D) {
        double *qn2 = xmalloc((size_t)Q * sizeof *qn2);
        query_norms(qn2, q, Q, D);
        ScanJob job = { .q = q, .nq = Q, .qn2 = qn2, .db = db, .metric = metric, .radius = radius, .range = 1 };
        knn_scan_bound_init(&job.bound, D);
        ScanSlice *s = scan_alloc(nt, &job);
        rc = scan_pass(s, nt, &job, fn, err);
        /* concatenate the threads' hits (sorted below) */
        for (int t = 0; t < nt && rc == AE_OK; t++)
            for (int64_t i = 0; i < Q; i++)
                for (int64_t h = 0; h < s[t].lists[i].n; h++)
                    range_append(&lists[i], s[t].lists[i].h[h].d, s[t].lists[i].h[h].id);
        scan_free(s, nt, Q);
        free(qn2);
    } else if (Q > 0 && M > 0) {
        const int64_t bq = query_block(Q, nt), nblocks = (Q + bq - 1) / bq;
        const int64_t bm = M < KNN_DB_BLOCK ? M : KNN_DB_BLOCK;
        float *xn = xmalloc((size_t)M * sizeof *xn); /* [M] ||x||^2 */
        int bad;
        double xmax2 = row_norms(xn, &bad, db, nt);
        if (bad) rc = check_rows(fn, db, err);
        if (rc == AE_OK) {
            const int team = nblocks < nt ? (int)nblocks : nt;
            Scratch *s = scratch_alloc(team, bq, bm, db->D, 0, gemm);
            const int par = nblocks > 1 && (double)Q * (double)M * D > KNN_OMP_MIN_WORK;
            (void)par;
            KNN_OMP("omp parallel for num_threads(team) schedule(dynamic, 1) if(par)")
            for (int64_t b = 0; b < nblocks; b++) {
                const int64_t i0 = b * bq, nq = Q - i0 < bq ? Q - i0 : bq;
                range_block(lists + i0, row_ptr(q, i0, D), nq, db, xn, xmax2, radius, metric,
                            &s[thread_index()]);
            }
            scratch_free(s, team);
        }
        free(xn);
    }
    if (rc != AE_OK) {
        for (int64_t i = 0; i < Q; i++) free(lists[i].h);
        free(lists);
        return rc;
    }

    /* Sort each list best first (ties by id) and pack them. */
    int (*cmp)(const void *, const void *) = metric == KNN_L2 ? hit_cmp_smallest : hit_cmp_largest;
    out->Q = Q;
    out->lims = xmalloc(((size_t)Q + 1) * sizeof *out->lims);
    out->lims[0] = 0;
    for (int64_t i = 0; i < Q; i++) out->lims[i + 1] = out->lims[i] + lists[i].n;
    size_t total = (size_t)out->lims[Q];
    out->ids = xmalloc(total * sizeof *out->ids);
    out->dist = xmalloc(total * sizeof *out->dist);
    KNN_OMP("omp parallel for num_threads(nt) schedule(dynamic, 16) if(total > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < Q; i++) {
        RangeList *l = &lists[i];
        if (l->n > 1) qsort(l->h, (size_t)l->n, sizeof *l->h, cmp);
        for (int64_t t = 0; t < l->n; t++) {
            out->dist[out->lims[i] + t] = l->h[t].d;
            out->ids[out->lims[i] + t] = l->h[t].id;
        }
        free(l->h);
    }
    free(lists);
    return AE_OK;
}

void knn_range_free(KnnRange *r)
{
    if (!r) return;
    free(r->lims);
    free(r->ids);
    free(r->dist);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------- sharded */

int knn_search_sharded(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *db,
                       int k, KnnMetric metric, int nthreads, Err *err)
{
    assert(ctx && out && db);
    memset(out, 0, sizeof *out);
    Err e;
    err_clear(&e);

    /* Every rank must search the same queries with the same options. */
    int64_t mine[4] = { Q, k, db->D, (int64_t)metric }, root[4];
    memcpy(root, mine, sizeof root);
    par_bcast(ctx, root, sizeof root, 0);
    if (memcmp(root, mine, sizeof root) != 0)
        err_set(&e, AE_EARG,
                "knn_search_sharded: this rank has Q=%lld k=%lld D=%lld metric=%lld but rank 0 has "
                "Q=%lld k=%lld D=%lld metric=%lld; hint: every rank must pass the same queries and options",
                (long long)mine[0], (long long)mine[1], (long long)mine[2], (long long)mine[3],
                (long long)root[0], (long long)root[1], (long long)root[2], (long long)root[3]);

    TopK local = { 0 };
    if (e.code == AE_OK) knn_search_local(&local, q, Q, db, k, metric, nthreads, &e);
    if (par_agree(ctx, &e) != AE_OK) {
        topk_free(&local);
        if (err) *err = e;
        return e.code;
    }

    TopKOrder order = knn_metric_order(metric);
    topk_alloc(out, Q, k, order);
    const int P = ctx->size;
    const int is_root = ctx->rank == 0;
    /* Queries per gather: one rank's ids part (the larger) <= the chunk. */
    int64_t qc = (int64_t)(KNN_GATHER_CHUNK_BYTES / ((size_t)P * (size_t)k * sizeof(int64_t)));
    if (qc < 1) qc = 1;
    if (qc > Q) qc = Q;
    float *gd = NULL;
    int64_t *gi = NULL;
    const float **in_d = xmalloc((size_t)P * sizeof *in_d);
    const int64_t **in_i = xmalloc((size_t)P * sizeof *in_i);
    int *in_k = xmalloc((size_t)P * sizeof *in_k);
    if (is_root && Q > 0) {
        gd = xmalloc((size_t)P * (size_t)qc * (size_t)k * sizeof *gd);  /* [P][qc][k] */
        gi = xmalloc((size_t)P * (size_t)qc * (size_t)k * sizeof *gi);
    }
    for (int64_t i0 = 0; i0 < Q; i0 += qc) {
        const int64_t nq = Q - i0 < qc ? Q - i0 : qc;
        const size_t n = (size_t)nq * (size_t)k;
        par_gather(ctx, local.dist + (size_t)i0 * (size_t)k, gd, n * sizeof *gd, 0);
        par_gather(ctx, local.ids + (size_t)i0 * (size_t)k, gi, n * sizeof *gi, 0);
        if (!is_root) continue;
        for (int64_t i = 0; i < nq; i++) {
            for (int p = 0; p < P; p++) {
                in_k[p] = k;
                in_d[p] = gd + ((size_t)p * (size_t)nq + (size_t)i) * (size_t)k;
                in_i[p] = gi + ((size_t)p * (size_t)nq + (size_t)i) * (size_t)k;
            }
            topk_merge(out->dist + (size_t)(i0 + i) * (size_t)k, out->ids + (size_t)(i0 + i) * (size_t)k,
                       k, (const float *const *)in_d, (const int64_t *const *)in_i, in_k, P, order);
        }
    }
    /* Q*k*12 bytes, small next to the O(Q M D) search: every rank gets the
     * result. */
    par_bcast(ctx, out->dist, (size_t)Q * (size_t)k * sizeof *out->dist, 0);
    par_bcast(ctx, out->ids, (size_t)Q * (size_t)k * sizeof *out->ids, 0);
    free(gd);
    free(gi);
    free(in_d);
    free(in_i);
    free(in_k);
    topk_free(&local);
    return AE_OK;
}
