/*
 * test_knn.c - exact k-NN and range search (include/search/knn.h) against a naive
 * brute force written here: every eligible row's distance accumulated in
 * double in dimension order, rounded once to float (the documented
 * definition of the reported value), all rows sorted by (distance, id).
 * Because knn.c promises exactly that result whatever path it takes (direct
 * loop, GEMM candidates + re-scoring, fallback), ids and distances are
 * compared EXACTLY; distances are also checked against the unrounded double
 * values (rtol 1e-6).  Covers the direct, float pre-scan and GEMM paths
 * (several tiles, query blocks and row chunks), M < k, an empty shard,
 * D = 1, heavy exact ties and near-ties (fallback paths), masks, explicit
 * ids, thread counts 1 vs 4, shards merged with knn_merge, range search,
 * normalisation and argument errors.  The pre-scan kernels (AVX-512 when
 * the CPU has it, and the portable one) are checked against the double
 * brute force through their documented error bounds (knn_scan.h), on
 * ordinary, wide-range and underflowing data; vectors whose squared norm
 * exceeds KNN_MAX_NORM2 must be refused with AE_ENUMERIC naming them.
 * The whole group runs once per kNN GEMM kernel (issue 16: OpenBLAS, then
 * aesim's AVX-512 kernel where the CPU has AVX-512F), forced through
 * AESIM_KNN_GEMM (knn_gemm.h); an invalid value must be refused.
 * Serial process; OpenMP inside the library.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "search/knn.h"
#include "search/knn_gemm.h"
#include "search/knn_scan.h"
#include "testutil.h"

typedef struct Hit { float d; double dd; int64_t id; } Hit;

static double naive_dist(KnnMetric metric, const float *a, const float *b, int D)
{
    double s = 0.0;
    for (int d = 0; d < D; d++) {
        if (metric == KNN_L2) {
            double t = (double)a[d] - (double)b[d];
            s += t * t;
        } else {
            s += (double)a[d] * (double)b[d];
        }
    }
    return s;
}

/* Reference orders: by distance (ascending for L2, descending for IP), then
 * by id. */
static int hit_cmp_l2(const void *pa, const void *pb)
{
    const Hit *a = pa, *b = pb;
    if (a->d != b->d) return a->d < b->d ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int hit_cmp_ip(const void *pa, const void *pb)
{
    const Hit *a = pa, *b = pb;
    if (a->d != b->d) return a->d > b->d ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* All eligible rows of x[M][D] for query qi, sorted; returns the count. */
static int64_t naive_all(Hit *hits, const float *qi, const float *x, int64_t M, int D, KnnMetric metric,
                         const int64_t *gid, const uint8_t *mask)
{
    int64_t n = 0;
    for (int64_t j = 0; j < M; j++) {
        if (mask && !mask[j]) continue;
        double dd = naive_dist(metric, qi, x + j * D, D);
        hits[n].dd = dd;
        hits[n].d = (float)dd;
        hits[n].id = gid[j];
        n++;
    }
    qsort(hits, (size_t)n, sizeof *hits, metric == KNN_L2 ? hit_cmp_l2 : hit_cmp_ip);
    return n;
}

/* Checks got (Q x k) against the naive brute force, exactly. */
static void check_knn(const TopK *got, const float *q, int64_t Q, const float *x, int64_t M, int D, int k,
                      KnnMetric metric, const int64_t *gid, const uint8_t *mask)
{
    assert_int_equal(got->Q, Q);
    assert_int_equal(got->k, k);
    Hit *hits = malloc((size_t)(M > 0 ? M : 1) * sizeof *hits);
    double *ref = malloc((size_t)k * sizeof *ref), *gd = malloc((size_t)k * sizeof *gd);
    assert_non_null(hits);
    float pad = metric == KNN_L2 ? INFINITY : -INFINITY;
    for (int64_t i = 0; i < Q; i++) {
        int64_t n = naive_all(hits, q + i * D, x, M, D, metric, gid, mask);
        const float *od = got->dist + i * k;
        const int64_t *oi = got->ids + i * k;
        int nreal = 0;
        for (int j = 0; j < k; j++) {
            if (j < n) {
                if (oi[j] != hits[j].id || od[j] != hits[j].d)
                    fprintf(stderr, "  query %lld rank %d: got (%.9g, %lld), naive (%.9g, %lld)\n",
                            (long long)i, j, (double)od[j], (long long)oi[j], (double)hits[j].d,
                            (long long)hits[j].id);
                assert_int_equal(oi[j], hits[j].id);
                assert_true(od[j] == hits[j].d);
                ref[nreal] = hits[j].dd;
                gd[nreal] = od[j];
                nreal++;
            } else {
                assert_int_equal(oi[j], -1);
                assert_true(od[j] == pad);
            }
        }
        /* the float result is the double brute force to float precision */
        assert_true(check_tensor_d("dist vs double brute force", gd, ref, (size_t)nreal, 1e-6, 1e-6));
    }
    free(hits);
    free(ref);
    free(gd);
}

static void check_range(const KnnRange *r, const float *q, int64_t Q, const float *x, int64_t M, int D,
                        float radius, KnnMetric metric, const int64_t *gid, const uint8_t *mask);

static float *rand_matrix(int64_t n, int D, uint64_t *rng, float lo, float hi)
{
    float *m = malloc((size_t)(n > 0 ? n : 1) * (size_t)D * sizeof *m);
    assert_non_null(m);
    test_fill_uniform(m, (size_t)n * (size_t)D, rng, lo, hi);
    return m;
}

static int64_t *offset_ids(int64_t M, int64_t off)
{
    int64_t *g = malloc((size_t)(M > 0 ? M : 1) * sizeof *g);
    assert_non_null(g);
    for (int64_t j = 0; j < M; j++) g[j] = off + j;
    return g;
}

static void test_shapes(void **state)
{
    (void)state;
    /* {Q, M, D, k}: direct path (Q = 1, M <= k + margin), M < k, empty
     * shard, D = 1, odd sizes, GEMM with several database tiles (M = 5000)
     * and two query blocks (Q = 600 > KNN_QUERY_BLOCK = 512), k = 1, the margin boundary. */
    const int64_t cases[][4] = {
        { 1, 50, 8, 5 },   { 7, 100, 3, 10 },    { 13, 5, 4, 10 },    { 5, 0, 4, 3 },
        { 17, 300, 1, 7 }, { 33, 5000, 64, 10 }, { 600, 1500, 17, 20 }, { 2, 40, 5, 1 },
        { 9, 26, 6, 10 },  { 9, 27, 6, 10 },     { 3, 2049, 129, 3 },
    };
    uint64_t rng = 21;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int metric = 0; metric <= 1; metric++) {
            int64_t Q = cases[c][0], M = cases[c][1];
            int D = (int)cases[c][2], k = (int)cases[c][3];
            float *q = rand_matrix(Q, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
            int64_t *gid = offset_ids(M, 1000);
            KnnDb db = { x, M, D, 1000, NULL, NULL, NULL, 0 };
            TopK out;
            Err err;
            assert_int_equal(knn_search_local(&out, q, Q, &db, k, (KnnMetric)metric, 0, &err), AE_OK);
            check_knn(&out, q, Q, x, M, D, k, (KnnMetric)metric, gid, NULL);
            topk_free(&out);
            free(q);
            free(x);
            free(gid);
        }
}

/* 30 distinct integer vectors, each repeated 20 times: exact ties straddle
 * the k-th place, so the candidates cannot prove the result and the exact
 * fallback must give the smallest ids among equals.  Q = 40 takes the GEMM
 * pass, its first 3 queries the pre-scan. */
static void test_duplicates(void **state)
{
    (void)state;
    enum { Q = KNN_SCAN_MAX_QUERIES + 8, DISTINCT = 30, COPIES = 20, M = DISTINCT * COPIES, D = 8, K = 25 };
    uint64_t rng = 22;
    float *base = malloc(DISTINCT * D * sizeof *base), *x = malloc(M * D * sizeof *x), *q = malloc(Q * D * sizeof *q);
    for (int i = 0; i < DISTINCT * D; i++) base[i] = (float)(int)(test_rng_next(&rng) % 7);
    for (int j = 0; j < M; j++) memcpy(x + j * D, base + (j % DISTINCT) * D, D * sizeof *x);
    for (int i = 0; i < Q * D; i++) q[i] = (float)(int)(test_rng_next(&rng) % 7);
    int64_t *gid = offset_ids(M, 0);
    for (int metric = 0; metric <= 1; metric++)
        for (int64_t nq = Q; nq >= 3; nq = nq == Q ? 3 : 0) {
            KnnDb db = { x, M, D, 0, NULL, NULL, NULL, 0 };
            TopK out;
            assert_int_equal(knn_search_local(&out, q, nq, &db, K, (KnnMetric)metric, 0, NULL), AE_OK);
            check_knn(&out, q, nq, x, M, D, K, (KnnMetric)metric, gid, NULL);
            topk_free(&out);
        }
    free(base);
    free(x);
    free(q);
    free(gid);
}

/* Catastrophic cancellation: every vector is a large common offset plus a
 * small perturbation, so ||q||^2 + ||x||^2 - 2 q.x in float is noise (and is
 * clamped at 0) while the exact distances are distinct.  The GEMM candidates
 * are then wrong and only the error-bound fallback gives the exact result;
 * the range search must re-score every row too.  Q >= KNN_SCAN_MAX_QUERIES
 * takes the GEMM pass; one query (pre-scan, whose direct differences do not
 * cancel) is checked as well. */
static void test_cancellation(void **state)
{
    (void)state;
    enum { Q = KNN_SCAN_MAX_QUERIES + 2, M = 400, D = 16, K = 10 };
    const float offset = 1000.0f, spread = 0.05f;
    uint64_t rng = 27;
    float *q = rand_matrix(Q, D, &rng, -spread, spread), *x = rand_matrix(M, D, &rng, -spread, spread);
    for (int i = 0; i < Q * D; i++) q[i] += offset;
    for (int i = 0; i < M * D; i++) x[i] += offset;
    int64_t *ids = malloc(M * sizeof *ids);
    for (int j = 0; j < M; j++) ids[j] = M - 1 - j;  /* id order opposite to row order */
    KnnDb db = { x, M, D, 0, ids, NULL, NULL, 0 };
    TopK out;
    assert_int_equal(knn_search_local(&out, q, Q, &db, K, KNN_L2, 0, NULL), AE_OK);
    check_knn(&out, q, Q, x, M, D, K, KNN_L2, ids, NULL);
    topk_free(&out);
    assert_int_equal(knn_search_local(&out, q, 1, &db, K, KNN_L2, 0, NULL), AE_OK);
    check_knn(&out, q, 1, x, M, D, K, KNN_L2, ids, NULL);
    Hit *hits = malloc(M * sizeof *hits);
    naive_all(hits, q, x, M, D, KNN_L2, ids, NULL);
    KnnRange r;
    assert_int_equal(knn_range_search_local(&r, q, Q, &db, hits[20].d, KNN_L2, 0, NULL), AE_OK);
    check_range(&r, q, Q, x, M, D, hits[20].d, KNN_L2, ids, NULL);
    knn_range_free(&r);
    topk_free(&out);
    free(hits);
    free(q);
    free(x);
    free(ids);
}

/* A mask applied in the scan, explicit non-monotone global ids, an all-zero
 * mask (all padding) and k larger than the eligible count, for 11 queries
 * (pre-scan) and 40 (GEMM pass). */
static void test_mask_and_ids(void **state)
{
    (void)state;
    enum { Q = KNN_SCAN_MAX_QUERIES + 8, QS = 11, M = 1200, D = 10 };
    uint64_t rng = 23;
    float *q = rand_matrix(Q, D, &rng, -2, 2), *x = rand_matrix(M, D, &rng, -2, 2);
    uint8_t *mask = malloc(M), *none = calloc(M, 1);
    int64_t *ids = malloc(M * sizeof *ids);
    for (int j = 0; j < M; j++) {
        mask[j] = (test_rng_next(&rng) % 10) < 7;
        ids[j] = 3 * (int64_t)((j * 577) % M) + 7;  /* 577 coprime to 1200: a permutation */
    }
    for (int metric = 0; metric <= 1; metric++) {
        const int ks[] = { 1, 12, 2000 };
        for (int t = 0; t < 3; t++)
            for (int64_t nq = Q; nq >= QS; nq = nq == Q ? QS : 0) {
                KnnDb db = { x, M, D, 0, ids, mask, NULL, 0 };
                TopK out;
                assert_int_equal(knn_search_local(&out, q, nq, &db, ks[t], (KnnMetric)metric, 0, NULL), AE_OK);
                check_knn(&out, q, nq, x, M, D, ks[t], (KnnMetric)metric, ids, mask);
                topk_free(&out);
            }
        KnnDb db0 = { x, M, D, 0, ids, none, NULL, 0 };
        TopK out;
        assert_int_equal(knn_search_local(&out, q, Q, &db0, 4, (KnnMetric)metric, 0, NULL), AE_OK);
        check_knn(&out, q, Q, x, M, D, 4, (KnnMetric)metric, ids, none);
        topk_free(&out);
    }
    free(q);
    free(x);
    free(mask);
    free(none);
    free(ids);
}

/* Cached row norms (KnnDb.norms, as aesim-search serve keeps them): the
 * many-query pass gives the same bits with and without them, masked or not,
 * and the brute-force reference agrees; a NaN row gets no cache. */
static void test_cached_norms(void **state)
{
    (void)state;
    enum { Q = KNN_SCAN_MAX_QUERIES + 5, M = 900, D = 12 };
    uint64_t rng = 41;
    float *q = rand_matrix(Q, D, &rng, -2, 2), *x = rand_matrix(M, D, &rng, -2, 2);
    uint8_t *mask = malloc(M);
    for (int j = 0; j < M; j++) mask[j] = (test_rng_next(&rng) % 10) < 6;
    float *nr = malloc(M * sizeof *nr);
    int64_t *ids = malloc(M * sizeof *ids);
    for (int j = 0; j < M; j++) ids[j] = j;
    for (int metric = 0; metric <= 1; metric++)
        for (int masked = 0; masked <= 1; masked++) {
            KnnDb plain = { x, M, D, 0, NULL, masked ? mask : NULL, NULL, 0 };
            KnnDb cached = plain;
            double mx;
            assert_int_equal(knn_row_norms(nr, &mx, &plain, 2), 1);
            cached.norms = nr;
            cached.norms_max2 = mx;
            TopK a, b;
            assert_int_equal(knn_search_local(&a, q, Q, &plain, 7, (KnnMetric)metric, 0, NULL), AE_OK);
            assert_int_equal(knn_search_local(&b, q, Q, &cached, 7, (KnnMetric)metric, 0, NULL), AE_OK);
            assert_memory_equal(a.ids, b.ids, (size_t)Q * 7 * sizeof *a.ids);
            assert_memory_equal(a.dist, b.dist, (size_t)Q * 7 * sizeof *a.dist);
            check_knn(&b, q, Q, x, M, D, 7, (KnnMetric)metric, ids, masked ? mask : NULL);
            topk_free(&a);
            topk_free(&b);
        }
    x[5 * D + 3] = NAN;
    KnnDb bad = { x, M, D, 0, NULL, NULL, NULL, 0 };
    double mx;
    assert_int_equal(knn_row_norms(nr, &mx, &bad, 1), 0);
    free(ids);
    free(nr);
    free(mask);
    free(q);
    free(x);
}

/* Same bits for 1 and 4 threads (4 threads and 50 queries: the threads
 * split the database tiles, knn.c knn_rows_split; 1 thread: one query
 * block), and for the database split into uneven shards (one empty)
 * searched separately and merged with knn_merge. */
static void test_threads_and_shards(void **state)
{
    (void)state;
    enum { Q = 50, M = 3000, D = 32, K = 15, S = 5 };
    const int64_t sizes[S] = { 0, 1, 1200, 799, 1000 };
    uint64_t rng = 24;
    float *q = rand_matrix(Q, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
    uint8_t *mask = malloc(M);
    for (int j = 0; j < M; j++) mask[j] = (j % 13) != 5;
    int64_t *gid = offset_ids(M, 0);
    for (int metric = 0; metric <= 1; metric++) {
        KnnDb db = { x, M, D, 0, NULL, mask, NULL, 0 };
        TopK t1, t4, merged, parts[S];
        assert_int_equal(knn_search_local(&t1, q, Q, &db, K, (KnnMetric)metric, 1, NULL), AE_OK);
        assert_int_equal(knn_search_local(&t4, q, Q, &db, K, (KnnMetric)metric, 4, NULL), AE_OK);
        check_knn(&t1, q, Q, x, M, D, K, (KnnMetric)metric, gid, mask);
        assert_memory_equal(t1.ids, t4.ids, Q * K * sizeof *t1.ids);
        assert_memory_equal(t1.dist, t4.dist, Q * K * sizeof *t1.dist);
        int64_t start = 0;
        for (int s = 0; s < S; s++) {
            KnnDb sh = { x + start * D, sizes[s], D, start, NULL, mask + start, NULL, 0 };
            /* per-shard k differs from the merged k on purpose */
            assert_int_equal(knn_search_local(&parts[s], q, Q, &sh, K + s, (KnnMetric)metric, 2, NULL), AE_OK);
            start += sizes[s];
        }
        assert_int_equal(start, M);
        knn_merge(&merged, parts, S, K, (KnnMetric)metric);
        assert_memory_equal(t1.ids, merged.ids, Q * K * sizeof *t1.ids);
        assert_memory_equal(t1.dist, merged.dist, Q * K * sizeof *t1.dist);
        /* merge order of the parts does not matter */
        TopK rev[S], merged2;
        for (int s = 0; s < S; s++) rev[s] = parts[S - 1 - s];
        knn_merge(&merged2, rev, S, K, (KnnMetric)metric);
        assert_memory_equal(merged.ids, merged2.ids, Q * K * sizeof *t1.ids);
        for (int s = 0; s < S; s++) topk_free(&parts[s]);
        topk_free(&t1);
        topk_free(&t4);
        topk_free(&merged);
        topk_free(&merged2);
    }
    free(q);
    free(x);
    free(mask);
    free(gid);
}

static void check_range(const KnnRange *r, const float *q, int64_t Q, const float *x, int64_t M, int D,
                        float radius, KnnMetric metric, const int64_t *gid, const uint8_t *mask)
{
    Hit *hits = malloc((size_t)M * sizeof *hits);
    assert_int_equal(r->Q, Q);
    assert_int_equal(r->lims[0], 0);
    for (int64_t i = 0; i < Q; i++) {
        int64_t n = naive_all(hits, q + i * D, x, M, D, metric, gid, mask);
        int64_t m = 0;
        while (m < n && (metric == KNN_L2 ? hits[m].d <= radius : hits[m].d >= radius)) m++;
        assert_int_equal(r->lims[i + 1] - r->lims[i], m);
        for (int64_t t = 0; t < m; t++) {
            assert_int_equal(r->ids[r->lims[i] + t], hits[t].id);
            assert_true(r->dist[r->lims[i] + t] == hits[t].d);
        }
    }
    free(hits);
}

static void test_range(void **state)
{
    (void)state;
    enum { QMAX = KNN_SCAN_MAX_QUERIES + 8, M = 2000, D = 16 };
    uint64_t rng = 25;
    float *q = rand_matrix(QMAX, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
    uint8_t *mask = malloc(M);
    for (int j = 0; j < M; j++) mask[j] = (j % 4) != 1;
    int64_t *gid = offset_ids(M, 50);
    Hit *hits = malloc(M * sizeof *hits);
    for (int metric = 0; metric <= 1; metric++) {
        /* radius = query 0's 40th best distance: tens of results per query */
        naive_all(hits, q, x, M, D, (KnnMetric)metric, gid, NULL);
        const float radii[] = { hits[39].d, metric == KNN_L2 ? -1.0f : 1e6f };
        for (int t = 0; t < 2; t++)
            for (int64_t Q = 1; Q <= QMAX; Q += QMAX - 1) { /* Q = 1 pre-scan, Q = QMAX GEMM */
                const uint8_t *masks[2] = { NULL, mask };
                for (int mm = 0; mm < 2; mm++) {
                    KnnDb db = { x, M, D, 50, NULL, masks[mm], NULL, 0 };
                    KnnRange r;
                    assert_int_equal(knn_range_search_local(&r, q, Q, &db, radii[t], (KnnMetric)metric, 0, NULL),
                                     AE_OK);
                    check_range(&r, q, Q, x, M, D, radii[t], (KnnMetric)metric, gid, masks[mm]);
                    knn_range_free(&r);
                }
            }
        /* radius = exactly each of the 40 best reported values of query 0:
         * a row ON the radius must be kept whatever its float pre-scan
         * value (the bound must not exclude it) */
        for (int t = 0; t < 40; t++) {
            KnnDb db = { x, M, D, 50, NULL, NULL, NULL, 0 };
            KnnRange r;
            assert_int_equal(knn_range_search_local(&r, q, 1, &db, hits[t].d, (KnnMetric)metric, 0, NULL), AE_OK);
            check_range(&r, q, 1, x, M, D, hits[t].d, (KnnMetric)metric, gid, NULL);
            knn_range_free(&r);
        }
    }
    free(hits);
    free(q);
    free(x);
    free(mask);
    free(gid);
}

static void test_normalize(void **state)
{
    (void)state;
    enum { N = 9, D = 7 };
    uint64_t rng = 26;
    float *x = rand_matrix(N, D, &rng, -3, 3), *x0 = malloc(N * D * sizeof *x0);
    for (int d = 0; d < D; d++) x[4 * D + d] = 0.0f;  /* a zero row stays zero */
    memcpy(x0, x, N * D * sizeof *x0);
    knn_normalize(x, N, D);
    for (int i = 0; i < N; i++) {
        double n2 = 0.0;
        for (int d = 0; d < D; d++) n2 += (double)x0[i * D + d] * x0[i * D + d];
        double ref[D], got[D];
        for (int d = 0; d < D; d++) {
            ref[d] = n2 > 0 ? x0[i * D + d] / sqrt(n2) : 0.0;
            got[d] = x[i * D + d];
        }
        assert_true(check_tensor_d("normalised row", got, ref, D, 1e-7, 1e-6));
    }
    free(x);
    free(x0);
}

static void test_errors(void **state)
{
    (void)state;
    float q[4] = { 1, 2, 3, 4 }, x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    int64_t bad_ids[2] = { 3, -2 };
    KnnDb db = { x, 2, 4, 0, NULL, NULL, NULL, 0 };
    TopK out;
    KnnRange r;
    Err err;
    err_clear(&err);
    assert_int_equal(knn_search_local(&out, q, 1, &db, 0, KNN_L2, 0, &err), AE_EARG);
    assert_null(out.dist);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(knn_search_local(&out, q, 1, &db, -3, KNN_IP, 0, &err), AE_EARG);
    assert_int_equal(knn_search_local(&out, q, 1, &db, 1, (KnnMetric)7, 0, &err), AE_EARG);
    assert_int_equal(knn_search_local(&out, q, -1, &db, 1, KNN_L2, 0, &err), AE_EARG);
    KnnDb d0 = { x, 2, 0, 0, NULL, NULL, NULL, 0 };
    assert_int_equal(knn_search_local(&out, q, 1, &d0, 1, KNN_L2, 0, &err), AE_ESHAPE);
    KnnDb dneg = { x, 2, 4, -1, NULL, NULL, NULL, 0 };
    assert_int_equal(knn_search_local(&out, q, 1, &dneg, 1, KNN_L2, 0, &err), AE_EARG);
    KnnDb dids = { x, 2, 4, 0, bad_ids, NULL, NULL, 0 };
    assert_int_equal(knn_search_local(&out, q, 1, &dids, 1, KNN_L2, 0, &err), AE_EARG);
    x[6] = NAN;
    assert_int_equal(knn_search_local(&out, q, 1, &db, 1, KNN_L2, 0, &err), AE_ENUMERIC);
    assert_non_null(strstr(err.msg, "row 1"));
    x[6] = 7;
    q[2] = INFINITY;
    assert_int_equal(knn_search_local(&out, q, 1, &db, 1, KNN_L2, 0, &err), AE_ENUMERIC);
    q[2] = 3;
    assert_int_equal(knn_range_search_local(&r, q, 1, &db, NAN, KNN_L2, 0, &err), AE_EARG);
    assert_null(r.lims);
    assert_int_equal(knn_search_local(&out, q, 1, &db, 1, KNN_L2, 0, &err), AE_OK);
    assert_int_equal(out.ids[0], 0);
    topk_free(&out);
}

/* ------------------------------------------------------ float pre-scan */

typedef void (*ScanFn)(float *, float *, const float *, int, const float *, const int64_t *, int, int, KnnMetric);

/* Checks one kernel's values for queries q[nq][D] and rows x[M][D] against
 * the double brute force through the documented bounds: the reported value
 * r (double sum rounded to float) satisfies r >= knn_scan_l2_lower(f) (L2)
 * or r <= knn_scan_ip_upper(f, ...) (IP), and the bounds are not vacuous
 * (within rel_tight of r where r is far from underflow). */
static void check_scan_kernel(ScanFn fn, const char *name, const float *q, int nq, const float *x, int M, int D,
                              double rel_tight)
{
    int64_t *rows = malloc((size_t)M * sizeof *rows);
    float *f = malloc((size_t)nq * (size_t)M * sizeof *f), *nf = malloc((size_t)M * sizeof *nf);
    for (int j = 0; j < M; j++) rows[j] = M - 1 - j;  /* any order */
    KnnScanBound b;
    knn_scan_bound_init(&b, D);
    for (int metric = 0; metric <= 1; metric++) {
        fn(f, nf, q, nq, x, rows, M, D, (KnnMetric)metric);
        for (int c = 0; c < M; c++) {
            const float *xr = x + rows[c] * D;
            double n2 = naive_dist(KNN_IP, xr, xr, D);
            /* float norm: a relative gamma_n bound, n small next to 1/u */
            if (!(fabs((double)nf[c] - n2) <= 1e-4 * n2 + 1e-30)) {
                fprintf(stderr, "  %s D=%d row %d: norm %.9g vs %.9g\n", name, D, c, (double)nf[c], n2);
                fail();
            }
            for (int i = 0; i < nq; i++) {
                const float *qi = q + i * D;
                double exact = naive_dist((KnnMetric)metric, qi, xr, D);
                double r = (float)exact, fv = f[(size_t)i * M + c];
                if (metric == KNN_L2) {
                    double lo = knn_scan_l2_lower(&b, fv);
                    if (!(lo <= r) || (r > 1e-20 && !(lo >= r * (1.0 - rel_tight)))) {
                        fprintf(stderr, "  %s L2 D=%d query %d row %d: f %.9g, lower %.9g, reported %.9g\n", name, D,
                                i, c, fv, lo, r);
                        fail();
                    }
                } else {
                    double qn2 = naive_dist(KNN_IP, qi, qi, D);
                    double hi = knn_scan_ip_upper(&b, fv, qn2, nf[c]);
                    double scale = sqrt(qn2 * n2);
                    if (!(hi >= r) || (scale > 1e-20 && !(hi - r <= rel_tight * scale))) {
                        fprintf(stderr, "  %s IP D=%d query %d row %d: f %.9g, upper %.9g, reported %.9g\n", name,
                                D, i, c, fv, hi, r);
                        fail();
                    }
                }
            }
        }
    }
    free(rows);
    free(f);
    free(nf);
}

/* Both kernels (the AVX-512 one when this CPU has it) on several D (not
 * multiples of 16, smaller than 16, the 392) and value ranges:
 * ordinary [-1, 1), wide magnitudes (1e-12 .. 1e12 with random signs, so
 * the IP sums cancel), and tiny values whose squares underflow to
 * subnormals or zero. */
static void test_scan_kernel_bounds(void **state)
{
    (void)state;
    const int dims[] = { 1, 7, 16, 17, 33, 392, 1000 };
    enum { NQ = 3, M = 23 };
    uint64_t rng = 31;
    ScanFn fns[2] = { knn_scan_rows_portable, knn_scan_rows };
    const char *names[2] = { "portable", knn_scan_avx512_supported() ? "avx512" : "dispatch(portable)" };
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const int D = dims[t];
        for (int range = 0; range < 3; range++) {
            float *q = rand_matrix(NQ, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
            if (range == 1) {
                for (int i = 0; i < NQ * D; i++) q[i] *= powf(10.0f, test_rng_uniform(&rng, -12, 12));
                for (int i = 0; i < M * D; i++) x[i] *= powf(10.0f, test_rng_uniform(&rng, -12, 12));
            } else if (range == 2) {
                for (int i = 0; i < NQ * D; i++) q[i] *= 1e-21f;
                for (int i = 0; i < M * D; i++) x[i] *= 1e-22f;
            }
            /* a row equal to query 0: exact distance 0 */
            memcpy(x + 5 * D, q, (size_t)D * sizeof *x);
            /* tightness is asserted on ordinary data only (wide ranges
             * make the IP scale |q||x| dominated by one term) */
            const double tight = range == 0 ? 1e-3 : 1.0;
            for (int k = 0; k < 2; k++) check_scan_kernel(fns[k], names[k], q, NQ, x, M, D, tight);
            free(q);
            free(x);
        }
    }
}

/* The pre-scan path (Q = 1 and 2, M above k + margin, several row chunks) against
 * the brute force: random rows plus near-duplicates, exact duplicates and
 * copies of the query; masks, explicit permuted ids, k beyond the eligible
 * count, D not a multiple of 16; 1 and 4 threads give the same bits. */
static void test_scan_path(void **state)
{
    (void)state;
    enum { M = 40000, D = 37 };
    uint64_t rng = 32;
    float *q = rand_matrix(2, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
    /* rows 100..102 equal query 0; rows 200..229 copies of one row near it;
     * rows 300..339 tiny perturbations of another */
    for (int j = 100; j < 103; j++) memcpy(x + (size_t)j * D, q, D * sizeof *x);
    for (int d = 0; d < D; d++) x[(size_t)200 * D + d] = q[d] + 0.01f;
    for (int j = 201; j < 230; j++) memcpy(x + (size_t)j * D, x + (size_t)200 * D, D * sizeof *x);
    for (int j = 300; j < 340; j++)
        for (int d = 0; d < D; d++) x[(size_t)j * D + d] = q[d] + (d == 0 ? 0.02f + 1e-7f * (float)(j - 300) : 0.02f);
    uint8_t *mask = malloc(M), *few = calloc(M, 1);
    int64_t *ids = malloc(M * sizeof *ids), *seq = offset_ids(M, 7);
    for (int j = 0; j < M; j++) {
        mask[j] = (test_rng_next(&rng) % 10) < 6 || (j >= 100 && j < 340 && j % 3);
        ids[j] = 2 * (int64_t)((j * 7919) % M) + 1;  /* 7919 prime, coprime to 40000 */
    }
    for (int j = 0; j < 15; j++) few[(j * 2671) % M] = 1;
    const int ks[] = { 1, 10, 25 };
    for (int metric = 0; metric <= 1; metric++)
        for (int variant = 0; variant < 3; variant++) {
            const int64_t *gid = variant == 0 ? seq : ids;
            const uint8_t *mk = variant == 0 ? NULL : variant == 1 ? mask : few;
            KnnDb db = { x, M, D, 7, variant == 0 ? NULL : ids, mk, NULL, 0 };
            for (int t = 0; t < 3; t++)
                for (int64_t nq = 1; nq <= 2; nq++) {
                    TopK t1, t4;
                    assert_int_equal(knn_search_local(&t1, q, nq, &db, ks[t], (KnnMetric)metric, 1, NULL), AE_OK);
                    assert_int_equal(knn_search_local(&t4, q, nq, &db, ks[t], (KnnMetric)metric, 4, NULL), AE_OK);
                    check_knn(&t1, q, nq, x, M, D, ks[t], (KnnMetric)metric, gid, mk);
                    assert_memory_equal(t1.ids, t4.ids, (size_t)(nq * ks[t]) * sizeof *t1.ids);
                    assert_memory_equal(t1.dist, t4.dist, (size_t)(nq * ks[t]) * sizeof *t1.dist);
                    topk_free(&t1);
                    topk_free(&t4);
                }
        }
    /* the second query alone, and range search with Q = 1 through the
     * pre-scan (radius = its 30th distance) */
    Hit *hits = malloc(M * sizeof *hits);
    for (int metric = 0; metric <= 1; metric++) {
        KnnDb db = { x, M, D, 0, ids, mask, NULL, 0 };
        naive_all(hits, q + D, x, M, D, (KnnMetric)metric, ids, mask);
        KnnRange r;
        assert_int_equal(knn_range_search_local(&r, q + D, 1, &db, hits[29].d, (KnnMetric)metric, 0, NULL), AE_OK);
        check_range(&r, q + D, 1, x, M, D, hits[29].d, (KnnMetric)metric, ids, mask);
        knn_range_free(&r);
    }
    free(hits);
    free(q);
    free(x);
    free(mask);
    free(few);
    free(ids);
    free(seq);
}

/* Cases built so that the pre-scan cannot prove its candidates: 60 exact
 * copies of the nearest row (its float value is the same for all copies, so
 * the worst candidate is within the bound of the k-th re-scored value) with
 * ids in the opposite order of the rows (the pre-scan's ties by row index
 * would keep the wrong copies), and 60 near-ties whose exact distances
 * differ by less than the bound.  The fallback must run and give the exact
 * result; the precondition (bound not met) is asserted with knn_scan.h. */
static void test_scan_fallback(void **state)
{
    (void)state;
    enum { M = 20000, D = 24, K = 10, COPIES = 60 };
    uint64_t rng = 33;
    float *q = rand_matrix(1, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
    int64_t *ids = malloc(M * sizeof *ids);
    for (int j = 0; j < M; j++) ids[j] = M - 1 - j;
    for (int c = 0; c < 2; c++) {
        /* c = 0: exact copies of q + 0.01; c = 1: q + 0.01 with the last
         * component moved by j ulps (near-ties) */
        for (int i = 0; i < COPIES; i++) {
            float *r = x + (size_t)(i * (M / COPIES)) * D;
            for (int d = 0; d < D; d++) r[d] = q[d] + 0.01f;
            if (c == 1) r[D - 1] = nextafterf(r[D - 1], 2.0f) + (float)i * 1e-9f;
        }
        for (int metric = 0; metric <= 1; metric++) {
            float *xm = malloc((size_t)M * D * sizeof *xm), *qm = malloc(D * sizeof *qm);
            memcpy(xm, x, (size_t)M * D * sizeof *xm);
            memcpy(qm, q, D * sizeof *qm);
            if (metric == KNN_IP) {
                /* other rows scaled down, the copies / near-ties = q: the
                 * best scores */
                for (int j = 0; j < M; j++)
                    for (int d = 0; d < D; d++) xm[(size_t)j * D + d] = x[(size_t)j * D + d] * 0.5f;
                for (int i = 0; i < COPIES; i++) {
                    float *r = xm + (size_t)(i * (M / COPIES)) * D;
                    for (int d = 0; d < D; d++) r[d] = qm[d];
                    if (c == 1) r[D - 1] = nextafterf(r[D - 1], 2.0f) + (float)i * 1e-9f;
                }
            }
            /* precondition: the bound cannot separate the copies/near-ties,
             * i.e. the kc-th best float value bound reaches the k-th reported value */
            Hit *hits = malloc(M * sizeof *hits);
            naive_all(hits, qm, xm, M, D, (KnnMetric)metric, ids, NULL);
            int64_t row_k = M - 1 - hits[K - 1].id, row_c = M - 1 - hits[K + KNN_RESCORE_MARGIN].id;
            float fk, fc, nk, nc;
            knn_scan_rows(&fk, &nk, qm, 1, xm, &row_k, 1, D, (KnnMetric)metric);
            knn_scan_rows(&fc, &nc, qm, 1, xm, &row_c, 1, D, (KnnMetric)metric);
            KnnScanBound b;
            knn_scan_bound_init(&b, D);
            if (metric == KNN_L2)
                assert_true(knn_scan_l2_lower(&b, fc) <= (double)hits[K - 1].d);
            else
                assert_true(knn_scan_ip_upper(&b, fc, naive_dist(KNN_IP, qm, qm, D), nc) >= (double)hits[K - 1].d);
            free(hits);
            KnnDb db = { xm, M, D, 0, ids, NULL, NULL, 0 };
            for (int nt = 1; nt <= 4; nt += 3) {
                TopK out;
                assert_int_equal(knn_search_local(&out, qm, 1, &db, K, (KnnMetric)metric, nt, NULL), AE_OK);
                check_knn(&out, qm, 1, xm, M, D, K, (KnnMetric)metric, ids, NULL);
                topk_free(&out);
            }
            free(xm);
            free(qm);
        }
    }
    free(q);
    free(x);
    free(ids);
}

/* Finite vectors too large for float32 distances (squared norm above
 * KNN_MAX_NORM2) are refused with AE_ENUMERIC naming the query or row, on
 * every path (direct: small shard; pre-scan: Q = 1; GEMM: Q = 5; range);
 * a bad row that is masked out is not read and does not matter. */
static void test_overflow_refused(void **state)
{
    (void)state;
    enum { M = 3000, D = 20, Q = 5 };
    uint64_t rng = 34;
    float *q = rand_matrix(Q, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
    uint8_t *mask = malloc(M);
    memset(mask, 1, M);
    TopK out;
    KnnRange r;
    Err err;
    const float huge[] = { 3e38f, 1e19f };
    for (int h = 0; h < 2; h++) {
        /* query 1 too large: 3e38 overflows float when squared, 1e19 in
         * the sum over d (both are finite in float) */
        float *qb = malloc(Q * D * sizeof *qb);
        memcpy(qb, q, Q * D * sizeof *qb);
        for (int d = 0; d < D; d++) qb[D + d] = huge[h];
        KnnDb db = { x, M, D, 0, NULL, NULL, NULL, 0 };
        const int64_t nqs[2] = { 2, Q };
        for (int t = 0; t < 2; t++) {
            err_clear(&err);
            assert_int_equal(knn_search_local(&out, qb, nqs[t], &db, 3, KNN_L2, 0, &err), AE_ENUMERIC);
            assert_null(out.dist);
            assert_non_null(strstr(err.msg, "query 1"));
            assert_non_null(strstr(err.msg, "overflow"));
        }
        err_clear(&err);
        assert_int_equal(knn_range_search_local(&r, qb + D, 1, &db, 1.0f, KNN_IP, 0, &err), AE_ENUMERIC);
        assert_non_null(strstr(err.msg, "query 0"));
        /* the same check for a caller naming its source */
        assert_int_equal(knn_check_vectors(qb, 1, D, "q.npy", &err), AE_OK);
        assert_int_equal(knn_check_vectors(qb, Q, D, "q.npy", &err), AE_ENUMERIC);
        assert_non_null(strstr(err.msg, "q.npy: vector 1 has squared norm"));
        qb[2 * D + 4] = NAN;
        qb[D] = 1.0f;
        assert_int_equal(knn_check_vectors(qb, Q, D, "q.npy", &err), AE_ENUMERIC);
        assert_non_null(strstr(err.msg, "q.npy: vector 1 has squared norm"));
        for (int d = 0; d < D; d++) qb[D + d] = q[D + d];
        assert_int_equal(knn_check_vectors(qb, Q, D, "q.npy", &err), AE_ENUMERIC);
        assert_non_null(strstr(err.msg, "q.npy: vector 2 component 4 is NaN or infinite"));
        free(qb);
        /* row 1234 too large (and row 2000 too, later: the first is named) */
        for (int d = 0; d < D; d++) x[1234 * D + d] = x[2000 * D + d] = huge[h];
        for (int metric = 0; metric <= 1; metric++) {
            const int64_t nqs2[2] = { 1, Q };
            for (int t = 0; t < 2; t++) {
                err_clear(&err);
                assert_int_equal(knn_search_local(&out, q, nqs2[t], &db, 3, (KnnMetric)metric, 0, &err), AE_ENUMERIC);
                assert_null(out.dist);
                assert_non_null(strstr(err.msg, "row 1234"));
                err_clear(&err);
                assert_int_equal(knn_range_search_local(&r, q, nqs2[t], &db, 0.5f, (KnnMetric)metric, 0, &err),
                                 AE_ENUMERIC);
                assert_null(r.lims);
                assert_non_null(strstr(err.msg, "row 1234"));
            }
            /* small shard (direct path: 15 rows <= k + margin) whose first
             * global id is 5000, its row 7 too large: named by both */
            KnnDb small = { x + 1227 * D, 15, D, 5000, NULL, NULL, NULL, 0 };
            assert_int_equal(knn_search_local(&out, q, 2, &small, 3, (KnnMetric)metric, 0, &err), AE_ENUMERIC);
            assert_non_null(strstr(err.msg, "database vector with id 5007 "));
            assert_non_null(strstr(err.msg, "row 7 of its shard"));
            /* masked out: searched as if absent */
            mask[1234] = mask[2000] = 0;
            KnnDb dbm = { x, M, D, 0, NULL, mask, NULL, 0 };
            int64_t *gid = offset_ids(M, 0);
            for (int t = 0; t < 2; t++) {
                assert_int_equal(knn_search_local(&out, q, nqs2[t], &dbm, 4, (KnnMetric)metric, 0, NULL), AE_OK);
                check_knn(&out, q, nqs2[t], x, M, D, 4, (KnnMetric)metric, gid, mask);
                topk_free(&out);
            }
            free(gid);
            mask[1234] = mask[2000] = 1;
        }
        /* a NaN row in the pre-scan path is named too (the lowest bad row) */
        x[1234 * D + 3] = NAN;
        assert_int_equal(knn_search_local(&out, q, 1, &db, 3, KNN_L2, 0, &err), AE_ENUMERIC);
        assert_non_null(strstr(err.msg, "id 1234 component 3"));
        for (int d = 0; d < D; d++) x[1234 * D + d] = x[2000 * D + d] = 0.5f;
    }
    /* just below the limit: accepted, and the result is exact */
    const float big = (float)sqrt(KNN_MAX_NORM2 / D) * 0.999f;
    for (int d = 0; d < D; d++) x[10 * D + d] = big;
    KnnDb db = { x, M, D, 0, NULL, NULL, NULL, 0 };
    int64_t *gid = offset_ids(M, 0);
    for (int metric = 0; metric <= 1; metric++) {
        assert_int_equal(knn_search_local(&out, q, 1, &db, 5, (KnnMetric)metric, 0, NULL), AE_OK);
        check_knn(&out, q, 1, x, M, D, 5, (KnnMetric)metric, gid, NULL);
        topk_free(&out);
    }
    free(gid);
    free(q);
    free(x);
    free(mask);
}

/* AESIM_KNN_GEMM: parsing, and an invalid value refused by the searches
 * with AE_EARG naming the variable (restores the caller's value). */
static void test_gemm_choice(void **state)
{
    (void)state;
    KnnGemm g = KNN_GEMM_AVX512;
    Err err;
    assert_int_equal(knn_gemm_parse(&g, NULL, &err), AE_OK);
    assert_int_equal(g, KNN_GEMM_AUTO);
    assert_int_equal(knn_gemm_parse(&g, "blas", &err), AE_OK);
    assert_int_equal(knn_gemm_resolve(g), KNN_GEMM_BLAS);
    assert_int_equal(knn_gemm_parse(&g, "avx9000", &err), AE_EARG);
    assert_non_null(strstr(err.msg, KNN_GEMM_ENV));
    const char *old = getenv(KNN_GEMM_ENV);
    char *saved = old ? strdup(old) : NULL;
    setenv(KNN_GEMM_ENV, "cublas", 1);
    uint64_t rng = 5;
    float *q = rand_matrix(40, 8, &rng, -1, 1), *x = rand_matrix(100, 8, &rng, -1, 1);
    KnnDb db = { x, 100, 8, 0, NULL, NULL, NULL, 0 };
    TopK out;
    KnnRange r;
    assert_int_equal(knn_search_local(&out, q, 40, &db, 3, KNN_L2, 1, &err), AE_EARG);
    assert_non_null(strstr(err.msg, "cublas"));
    assert_int_equal(knn_range_search_local(&r, q, 40, &db, 1.0f, KNN_L2, 1, &err), AE_EARG);
    if (saved) setenv(KNN_GEMM_ENV, saved, 1);
    else unsetenv(KNN_GEMM_ENV);
    free(saved);
    free(q);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),       cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_cancellation),
        cmocka_unit_test(test_mask_and_ids), cmocka_unit_test(test_threads_and_shards),
        cmocka_unit_test(test_range),        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_scan_kernel_bounds),
        cmocka_unit_test(test_scan_path),    cmocka_unit_test(test_scan_fallback),
        cmocka_unit_test(test_overflow_refused), cmocka_unit_test(test_gemm_choice),
        cmocka_unit_test(test_cached_norms),
    };
    /* Every test once per kNN GEMM kernel (knn_gemm.h), forced by name. */
    int failed = 0;
    setenv(KNN_GEMM_ENV, "blas", 1);
    failed += cmocka_run_group_tests_name("knn, GEMM on OpenBLAS", tests, NULL, NULL);
    KnnGemm g;
    if (knn_gemm_parse(&g, "avx512", NULL) == AE_OK) {
        setenv(KNN_GEMM_ENV, "avx512", 1);
        failed += cmocka_run_group_tests_name("knn, GEMM on AVX-512", tests, NULL, NULL);
    } else {
        printf("  (no AVX-512F on this CPU: the AVX-512 kNN GEMM not run)\n");
    }
    return failed;
}
