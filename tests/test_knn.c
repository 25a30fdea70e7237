/*
 * test_knn.c - exact k-NN and range search (include/knn.h) against a naive
 * brute force written here: every eligible row's distance accumulated in
 * double in dimension order, rounded once to float (the documented
 * definition of the reported value), all rows sorted by (distance, id).
 * Because knn.c promises exactly that result whatever path it takes (direct
 * loop, GEMM candidates + re-scoring, fallback), ids and distances are
 * compared EXACTLY; distances are also checked against the unrounded double
 * values (rtol 1e-6).  Covers the direct and GEMM paths (several tiles and
 * query blocks), M < k, an empty shard, D = 1, heavy exact ties (fallback
 * path), masks, explicit ids, thread counts 1 vs 4, shards merged with
 * knn_merge, range search, normalisation and argument errors.
 * Serial process; OpenMP inside the library.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "knn.h"
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
     * and two query blocks (Q = 300), k = 1, the margin boundary. */
    const int64_t cases[][4] = {
        { 1, 50, 8, 5 },   { 7, 100, 3, 10 },    { 13, 5, 4, 10 },    { 5, 0, 4, 3 },
        { 17, 300, 1, 7 }, { 33, 5000, 64, 10 }, { 300, 1500, 17, 20 }, { 2, 40, 5, 1 },
        { 9, 26, 6, 10 },  { 9, 27, 6, 10 },     { 3, 2049, 129, 3 },
    };
    uint64_t rng = 21;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int metric = 0; metric <= 1; metric++) {
            int64_t Q = cases[c][0], M = cases[c][1];
            int D = (int)cases[c][2], k = (int)cases[c][3];
            float *q = rand_matrix(Q, D, &rng, -1, 1), *x = rand_matrix(M, D, &rng, -1, 1);
            int64_t *gid = offset_ids(M, 1000);
            KnnDb db = { x, M, D, 1000, NULL, NULL };
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
 * the k-th place, so the GEMM candidates cannot prove the result and the
 * exact fallback must give the smallest ids among equals. */
static void test_duplicates(void **state)
{
    (void)state;
    enum { Q = 20, DISTINCT = 30, COPIES = 20, M = DISTINCT * COPIES, D = 8, K = 25 };
    uint64_t rng = 22;
    float *base = malloc(DISTINCT * D * sizeof *base), *x = malloc(M * D * sizeof *x), *q = malloc(Q * D * sizeof *q);
    for (int i = 0; i < DISTINCT * D; i++) base[i] = (float)(int)(test_rng_next(&rng) % 7);
    for (int j = 0; j < M; j++) memcpy(x + j * D, base + (j % DISTINCT) * D, D * sizeof *x);
    for (int i = 0; i < Q * D; i++) q[i] = (float)(int)(test_rng_next(&rng) % 7);
    int64_t *gid = offset_ids(M, 0);
    for (int metric = 0; metric <= 1; metric++) {
        KnnDb db = { x, M, D, 0, NULL, NULL };
        TopK out;
        assert_int_equal(knn_search_local(&out, q, Q, &db, K, (KnnMetric)metric, 0, NULL), AE_OK);
        check_knn(&out, q, Q, x, M, D, K, (KnnMetric)metric, gid, NULL);
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
 * the range search must re-score every row too. */
static void test_cancellation(void **state)
{
    (void)state;
    enum { Q = 6, M = 400, D = 16, K = 10 };
    const float offset = 1000.0f, spread = 0.05f;
    uint64_t rng = 27;
    float *q = rand_matrix(Q, D, &rng, -spread, spread), *x = rand_matrix(M, D, &rng, -spread, spread);
    for (int i = 0; i < Q * D; i++) q[i] += offset;
    for (int i = 0; i < M * D; i++) x[i] += offset;
    int64_t *ids = malloc(M * sizeof *ids);
    for (int j = 0; j < M; j++) ids[j] = M - 1 - j;  /* id order opposite to row order */
    KnnDb db = { x, M, D, 0, ids, NULL };
    TopK out;
    assert_int_equal(knn_search_local(&out, q, Q, &db, K, KNN_L2, 0, NULL), AE_OK);
    check_knn(&out, q, Q, x, M, D, K, KNN_L2, ids, NULL);
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
 * mask (all padding) and k larger than the eligible count. */
static void test_mask_and_ids(void **state)
{
    (void)state;
    enum { Q = 11, M = 1200, D = 10 };
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
        for (int t = 0; t < 3; t++) {
            KnnDb db = { x, M, D, 0, ids, mask };
            TopK out;
            assert_int_equal(knn_search_local(&out, q, Q, &db, ks[t], (KnnMetric)metric, 0, NULL), AE_OK);
            check_knn(&out, q, Q, x, M, D, ks[t], (KnnMetric)metric, ids, mask);
            topk_free(&out);
        }
        KnnDb db0 = { x, M, D, 0, ids, none };
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

/* Same bits for 1 and 4 threads, and for the database split into uneven
 * shards (one empty) searched separately and merged with knn_merge. */
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
        KnnDb db = { x, M, D, 0, NULL, mask };
        TopK t1, t4, merged, parts[S];
        assert_int_equal(knn_search_local(&t1, q, Q, &db, K, (KnnMetric)metric, 1, NULL), AE_OK);
        assert_int_equal(knn_search_local(&t4, q, Q, &db, K, (KnnMetric)metric, 4, NULL), AE_OK);
        check_knn(&t1, q, Q, x, M, D, K, (KnnMetric)metric, gid, mask);
        assert_memory_equal(t1.ids, t4.ids, Q * K * sizeof *t1.ids);
        assert_memory_equal(t1.dist, t4.dist, Q * K * sizeof *t1.dist);
        int64_t start = 0;
        for (int s = 0; s < S; s++) {
            KnnDb sh = { x + start * D, sizes[s], D, start, NULL, mask + start };
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
    enum { QMAX = 12, M = 2000, D = 16 };
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
            for (int64_t Q = 1; Q <= QMAX; Q += QMAX - 1) { /* Q = 1 direct, Q = 12 GEMM */
                const uint8_t *masks[2] = { NULL, mask };
                for (int mm = 0; mm < 2; mm++) {
                    KnnDb db = { x, M, D, 50, NULL, masks[mm] };
                    KnnRange r;
                    assert_int_equal(knn_range_search_local(&r, q, Q, &db, radii[t], (KnnMetric)metric, 0, NULL),
                                     AE_OK);
                    check_range(&r, q, Q, x, M, D, radii[t], (KnnMetric)metric, gid, masks[mm]);
                    knn_range_free(&r);
                }
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
    KnnDb db = { x, 2, 4, 0, NULL, NULL };
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
    KnnDb d0 = { x, 2, 0, 0, NULL, NULL };
    assert_int_equal(knn_search_local(&out, q, 1, &d0, 1, KNN_L2, 0, &err), AE_ESHAPE);
    KnnDb dneg = { x, 2, 4, -1, NULL, NULL };
    assert_int_equal(knn_search_local(&out, q, 1, &dneg, 1, KNN_L2, 0, &err), AE_EARG);
    KnnDb dids = { x, 2, 4, 0, bad_ids, NULL };
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),       cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_cancellation),
        cmocka_unit_test(test_mask_and_ids), cmocka_unit_test(test_threads_and_shards),
        cmocka_unit_test(test_range),        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
