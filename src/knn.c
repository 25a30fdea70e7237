/*
 * knn.c - exact k-NN and range search of float32 vectors on one shard
 * (blocked sgemm candidates via gemm.h + fixed-order exact re-scoring), the merge
 * of per-shard results, and the MPI-sharded search (see include/knn.h for the
 * contract and for why the results are exact and independent of blocking).
 *
 * Does not: read files, choose shards, or include mpi.h (MPI goes through
 * par.h).  Never allocates in the inner loops; every scratch buffer is made
 * once per call (one slice per thread).
 *
 * Threading (choice: OpenMP across query blocks, GEMM single-threaded
 * inside): the queries are cut into blocks; an OpenMP loop hands whole blocks
 * to threads, and each thread runs the sgemm tiles of its block, updates its
 * block's heaps and re-scores its block's queries, in its own scratch slice
 * (owner-writes, no atomics).  So BLAS must run single-threaded when
 * nthreads > 1: that is the program's default (threads.h sets OpenBLAS to 1
 * thread and gives the cores to OpenMP, as for the conv kernels), and it is
 * what makes the search use all cores.  With OMP=0 everything is serial and
 * BLAS may thread each tile.
 */
#include "knn.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "gemm.h"

/* OpenMP pragmas through _Pragma, so an OMP=0 build has no unknown-pragma
 * warnings. */
#ifdef _OPENMP
#define KNN_OMP(directive) _Pragma(directive)
#else
#define KNN_OMP(directive)
#endif

/* Tile of the GEMM pass: KNN_QUERY_BLOCK queries x KNN_DB_BLOCK database
 * rows, i.e. an inner-product tile of 256 x 1024 floats = 1 MiB that stays in
 * cache while the heaps are updated.  Measured on the dev machine (2-core
 * Xeon, OpenBLAS 0.3.21 pthread, 1 thread; Q = 1000, M = 20000, D = 64,
 * k = 10): all of query blocks 64 / 256 / 1024 x database blocks
 * 256 / 1024 / 4096 took 0.14-0.20 s, within the run-to-run noise; the sgemm
 * alone takes ~0.1 s of it, so the heap updates are not the bottleneck.
 * faiss uses 4096 x 1024; the smaller query block keeps the candidate heaps
 * of a block in cache. */
#define KNN_QUERY_BLOCK 256
#define KNN_DB_BLOCK 1024

/* Fewer queries than this take the direct loop (no GEMM).  Measured as
 * above (M = 20000): Q = 1 direct 1.6 ms vs GEMM 2.0 ms (the GEMM path pays
 * a norms pass over the shard); Q = 2: 2.7 vs 2.0 ms; Q = 8: 8.8 vs 2.8 ms.
 * (faiss switches at 20 queries, with a SIMD float direct loop; ours
 * accumulates in double, in order, and cannot vectorise.) */
#define KNN_BLAS_MIN_QUERIES 2

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

/* Squared norms of the rows of x[n][D], accumulated in double: out[i] is the
 * float rounding (used by the GEMM formula).  Returns the largest squared
 * norm in double (for the error bound), 0 if n == 0. */
static double row_norms(float *out, const float *x, int64_t n, int D, int nt)
{
    double mx = 0.0;
    (void)nt;
    KNN_OMP("omp parallel for num_threads(nt) reduction(max:mx) if(n * D > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < n; i++) {
        const float *r = row_ptr(x, i, D);
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)r[d] * (double)r[d];
        out[i] = (float)s;
        if (s > mx) mx = s;
    }
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

/* Checks the arguments common to the searches; names the function `fn`. */
static int validate(const char *fn, const float *q, int64_t Q, const KnnDb *db, KnnMetric metric,
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
    for (int64_t i = 0; i < Q; i++)
        for (int d = 0; d < D; d++)
            if (!isfinite(q[(size_t)i * (size_t)D + (size_t)d]))
                return err_set(err, AE_ENUMERIC,
                               "%s: query %lld component %d is NaN or infinite; hint: check the "
                               "encoder output for divergence",
                               fn, (long long)i, d);
    for (int64_t j = 0; j < db->M; j++)
        for (int d = 0; d < D; d++)
            if (!isfinite(db->x[(size_t)j * (size_t)D + (size_t)d]))
                return err_set(err, AE_ENUMERIC,
                               "%s: database row %lld component %d is NaN or infinite; hint: "
                               "check the embeddings file",
                               fn, (long long)j, d);
    return AE_OK;
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
static void tile_update(float *hd, int64_t *hi, int kc, KnnMetric metric, const float *ipr, int64_t nb,
                        int64_t j0, float qn, const float *xn, const uint8_t *mask)
{
    TopKOrder order = knn_metric_order(metric);
    for (int64_t j = 0; j < nb; j++) {
        float d = ipr[j];
        if (metric == KNN_L2) {
            d = qn + xn[j0 + j] - 2.0f * d;
            /* ||q||^2 + ||x||^2 - 2 q.x cancels catastrophically when x is
             * close to q and can come out slightly negative; a squared
             * distance is >= 0 (faiss clamps the same way). */
            if (d < 0.0f) d = 0.0f;
            if (d > hd[0]) continue; /* quick reject: most rows */
        } else if (d < hd[0]) {
            continue;
        }
        if (mask && !mask[j0 + j]) continue;
        if (topk_better(order, d, j0 + j, hd[0], hi[0])) topk_heap_push(hd, hi, kc, order, d, j0 + j);
    }
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

/* Direct path: every query scans the shard with the exact distance.  With
 * fewer queries than threads (typically one), each query's rows are split
 * into nt contiguous ranges scanned in parallel and the nt sorted lists are
 * merged (topk_merge, ties by id): the same result as one scan, since every
 * distance is the same fixed-order value. */
static void search_direct(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k,
                          KnnMetric metric, int nt)
{
    double work = (double)Q * (double)db->M * db->D;
    (void)nt;
    (void)work;
    if (Q < nt && work > KNN_OMP_MIN_WORK * (double)nt) {
        float *pd = xmalloc((size_t)nt * (size_t)k * sizeof *pd);
        int64_t *pi = xmalloc((size_t)nt * (size_t)k * sizeof *pi);
        const float **ld = xmalloc((size_t)nt * sizeof *ld);
        const int64_t **li = xmalloc((size_t)nt * sizeof *li);
        int *lk = xmalloc((size_t)nt * sizeof *lk);
        for (int64_t i = 0; i < Q; i++) {
            const float *qi = row_ptr(q, i, db->D);
            KNN_OMP("omp parallel for num_threads(nt) schedule(static, 1)")
            for (int t = 0; t < nt; t++)
                scan_rows(pd + (size_t)t * k, pi + (size_t)t * k, k, qi, db, metric, db->M * t / nt,
                          db->M * (t + 1) / nt);
            for (int t = 0; t < nt; t++) {
                ld[t] = pd + (size_t)t * k;
                li[t] = pi + (size_t)t * k;
                lk[t] = k;
            }
            topk_merge(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k, ld, li, lk, nt,
                       knn_metric_order(metric));
        }
        free(pd);
        free(pi);
        free(ld);
        free(li);
        free(lk);
        return;
    }
    KNN_OMP("omp parallel for num_threads(nt) schedule(dynamic, 1) if(work > KNN_OMP_MIN_WORK)")
    for (int64_t i = 0; i < Q; i++)
        scan_direct(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k,
                    row_ptr(q, i, db->D), db, metric);
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
} Scratch;

static Scratch *scratch_alloc(int nt, int64_t bq, int64_t bm, int kc)
{
    Scratch *s = xcalloc((size_t)nt, sizeof *s);
    for (int t = 0; t < nt; t++) {
        s[t].ip = xmalloc((size_t)bq * (size_t)bm * sizeof *s[t].ip);
        s[t].qn = xmalloc((size_t)bq * sizeof *s[t].qn);
        s[t].bound = xmalloc((size_t)bq * sizeof *s[t].bound);
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

/* k-NN of the nq queries qb = q[i0..i0+nq-1] by GEMM candidates and exact
 * re-scoring, written to rows i0.. of out.  Runs on one thread. */
static void knn_block(TopK *out, const float *qb, int64_t i0, int64_t nq, const KnnDb *db,
                      const float *xn, double xmax2, int k, KnnMetric metric, Scratch *s)
{
    const int D = db->D, kc = k + KNN_RESCORE_MARGIN;
    const int64_t M = db->M;
    TopKOrder order = knn_metric_order(metric);
    block_norms(s, qb, nq, D, metric, xmax2);
    for (int64_t i = 0; i < nq; i++)
        topk_heap_init(s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, order);
    for (int64_t j0 = 0; j0 < M; j0 += KNN_DB_BLOCK) {
        const int64_t nb = M - j0 < KNN_DB_BLOCK ? M - j0 : KNN_DB_BLOCK;
        /* ip[i][j] = q[i0+i] . x[j0+j]; nq, nb are bounded by the block
         * sizes, so the int arguments cannot overflow */
        gemm_nt(s->ip, qb, row_ptr(db->x, j0, D), (int)nq, (int)nb, D, 0.0f);
        for (int64_t i = 0; i < nq; i++)
            tile_update(s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, metric,
                        s->ip + (size_t)i * (size_t)nb, nb, j0, s->qn[i], xn, db->mask);
    }
    for (int64_t i = 0; i < nq; i++)
        rescore(out->dist + (size_t)(i0 + i) * (size_t)k, out->ids + (size_t)(i0 + i) * (size_t)k, k,
                s->cd + (size_t)i * (size_t)kc, s->ci + (size_t)i * (size_t)kc, kc, row_ptr(qb, i, D),
                db, metric, s->bound[i]);
}

/* GEMM path (knn.h "Exactness"); requires k + KNN_RESCORE_MARGIN < M. */
static void search_gemm(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k,
                        KnnMetric metric, int nt)
{
    const int D = db->D;
    const int64_t M = db->M;
    const int64_t bq = query_block(Q, nt), nblocks = (Q + bq - 1) / bq;
    const int64_t bm = M < KNN_DB_BLOCK ? M : KNN_DB_BLOCK;
    float *xn = xmalloc((size_t)M * sizeof *xn); /* [M] ||x||^2 */
    double xmax2 = row_norms(xn, db->x, M, D, nt);
    /* one scratch slice per thread of a team of at most nblocks threads */
    const int team = nblocks < nt ? (int)nblocks : nt;
    Scratch *s = scratch_alloc(team, bq, bm, k + KNN_RESCORE_MARGIN);
    double work = (double)Q * (double)M * D;
    (void)work;
    /* dynamic: a query that falls back scans the whole shard */
    KNN_OMP("omp parallel for num_threads(team) schedule(dynamic, 1) if(nblocks > 1 && work > KNN_OMP_MIN_WORK)")
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t i0 = b * bq, nq = Q - i0 < bq ? Q - i0 : bq;
        knn_block(out, row_ptr(q, i0, D), i0, nq, db, xn, xmax2, k, metric, &s[thread_index()]);
    }
    scratch_free(s, team);
    free(xn);
}

int knn_search_local(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, KnnMetric metric,
                     int nthreads, Err *err)
{
    assert(out && db);
    memset(out, 0, sizeof *out);
    if (k <= 0)
        return err_set(err, AE_EARG, "knn_search_local: k = %d neighbours; hint: k must be >= 1", k);
    int rc = validate("knn_search_local", q, Q, db, metric, err);
    if (rc != AE_OK) return rc;
    topk_alloc(out, Q, k, knn_metric_order(metric));
    if (Q == 0 || db->M == 0) return AE_OK;
    int nt = resolve_threads(nthreads);
    /* The GEMM pass pays off only with enough queries and when it can
     * exclude rows (more rows than candidates). */
    if (Q >= KNN_BLAS_MIN_QUERIES && (int64_t)k + KNN_RESCORE_MARGIN < db->M &&
        k <= INT32_MAX - KNN_RESCORE_MARGIN)
        search_gemm(out, q, Q, db, k, metric, nt);
    else
        search_direct(out, q, Q, db, k, metric, nt);
    return AE_OK;
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

typedef struct RangeHit { float d; int64_t id; } RangeHit;
typedef struct RangeList { int64_t n, cap; RangeHit *h; } RangeList;

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

/* 1 if the re-scored value d is within the radius. */
static int in_range(KnnMetric metric, float d, float radius)
{
    return metric == KNN_L2 ? d <= radius : d >= radius;
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
    for (int64_t j0 = 0; j0 < M; j0 += KNN_DB_BLOCK) {
        const int64_t nb = M - j0 < KNN_DB_BLOCK ? M - j0 : KNN_DB_BLOCK;
        gemm_nt(s->ip, qb, row_ptr(db->x, j0, D), (int)nq, (int)nb, D, 0.0f);
        for (int64_t i = 0; i < nq; i++)
            range_tile_update(&lists[i], row_ptr(qb, i, D), s->ip + (size_t)i * (size_t)nb, nb, j0,
                              s->qn[i], xn, db, metric, radius, s->bound[i]);
    }
}

int knn_range_search_local(KnnRange *out, const float *q, int64_t Q, const KnnDb *db, float radius,
                           KnnMetric metric, int nthreads, Err *err)
{
    assert(out && db);
    memset(out, 0, sizeof *out);
    if (!isfinite(radius))
        return err_set(err, AE_EARG, "knn_range_search_local: radius is NaN or infinite; hint: "
                       "pass a finite squared distance (L2) or score (IP)");
    int rc = validate("knn_range_search_local", q, Q, db, metric, err);
    if (rc != AE_OK) return rc;
    const int D = db->D;
    const int64_t M = db->M;
    int nt = resolve_threads(nthreads);
    (void)nt;
    RangeList *lists = xcalloc(Q > 0 ? (size_t)Q : 1, sizeof *lists);

    if (Q > 0 && M > 0 && Q < KNN_BLAS_MIN_QUERIES) {
        double work = (double)Q * (double)M * D;
        (void)work;
        KNN_OMP("omp parallel for num_threads(nt) schedule(dynamic, 1) if(work > KNN_OMP_MIN_WORK)")
        for (int64_t i = 0; i < Q; i++)
            for (int64_t j = 0; j < M; j++) {
                if (db->mask && !db->mask[j]) continue;
                float d = dist_exact(metric, row_ptr(q, i, D), row_ptr(db->x, j, D), D);
                if (in_range(metric, d, radius)) range_append(&lists[i], d, row_gid(db, j));
            }
    } else if (Q > 0 && M > 0) {
        const int64_t bq = query_block(Q, nt), nblocks = (Q + bq - 1) / bq;
        const int64_t bm = M < KNN_DB_BLOCK ? M : KNN_DB_BLOCK;
        float *xn = xmalloc((size_t)M * sizeof *xn); /* [M] ||x||^2 */
        double xmax2 = row_norms(xn, db->x, M, D, nt);
        const int team = nblocks < nt ? (int)nblocks : nt;
        Scratch *s = scratch_alloc(team, bq, bm, 0);
        double work = (double)Q * (double)M * D;
        (void)work;
        KNN_OMP("omp parallel for num_threads(team) schedule(dynamic, 1) if(nblocks > 1 && work > KNN_OMP_MIN_WORK)")
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t i0 = b * bq, nq = Q - i0 < bq ? Q - i0 : bq;
            range_block(lists + i0, row_ptr(q, i0, D), nq, db, xn, xmax2, radius, metric,
                        &s[thread_index()]);
        }
        scratch_free(s, team);
        free(xn);
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
