/*
 * test_topk.c - unit tests of the top-k heaps, their sort and the k-way merge
 * (include/search/topk.h) against a naive reference written here: sort every
 * (distance, id) pair with qsort and take the first k.  Data have many
 * deliberate duplicate distances so the tie-break by id is exercised.
 * Serial; no MPI.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "testutil.h"
#include "search/topk.h"

typedef struct Pair { float d; int64_t id; } Pair;

/* Naive reference order: by distance (ascending, or descending for
 * "largest"), then by id ascending. */
static int ref_cmp_smallest(const void *a, const void *b)
{
    const Pair *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int ref_cmp_largest(const void *a, const void *b)
{
    const Pair *x = a, *y = b;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Sorts pairs[n] in the reference order of `order` (in place). */
static void ref_sort(Pair *pairs, size_t n, TopKOrder order)
{
    qsort(pairs, n, sizeof *pairs, order == TOPK_SMALLEST ? ref_cmp_smallest : ref_cmp_largest);
}

/* n pairs with distances drawn from only `levels` values (many ties) and
 * distinct ids base_id, base_id+stride, ... in shuffled order. */
static void make_pairs(Pair *p, int n, int levels, int64_t base_id, int64_t stride, uint64_t *rng)
{
    for (int i = 0; i < n; i++) {
        p[i].d = (float)(test_rng_next(rng) % (uint64_t)levels) * 0.25f - 3.0f;
        p[i].id = base_id + stride * i;
    }
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(test_rng_next(rng) % (uint64_t)(i + 1));
        Pair t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* Pushes pairs[n] into a fresh heap of size k, sorts, and checks the result
 * against the first k of the reference sort, padding after n entries. */
static void check_heap(const Pair *pairs, int n, int k, TopKOrder order)
{
    float *hd = malloc((size_t)k * sizeof *hd);
    int64_t *hi = malloc((size_t)k * sizeof *hi);
    Pair *ref = malloc((size_t)(n > 0 ? n : 1) * sizeof *ref);
    assert_non_null(hd);
    assert_non_null(hi);
    assert_non_null(ref);
    for (int i = 0; i < n; i++) ref[i] = pairs[i];
    ref_sort(ref, (size_t)n, order);

    topk_heap_init(hd, hi, k, order);
    for (int i = 0; i < n; i++) topk_heap_push(hd, hi, k, order, pairs[i].d, pairs[i].id);
    topk_heap_sort(hd, hi, k, order);

    float pad = order == TOPK_SMALLEST ? INFINITY : -INFINITY;
    for (int j = 0; j < k; j++) {
        if (j < n) {
            assert_int_equal(hi[j], ref[j].id);
            assert_true(hd[j] == ref[j].d);
        } else {
            assert_int_equal(hi[j], -1);
            assert_true(hd[j] == pad);
        }
    }
    free(hd);
    free(hi);
    free(ref);
}

static void test_heap_sorted_with_ties(void **state)
{
    (void)state;
    uint64_t rng = 11;
    enum { N = 500 };
    Pair p[N];
    const int ks[] = { 1, 2, 7, 32, 100, 499, 500 };
    for (int order = 0; order <= 1; order++)
        for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
            make_pairs(p, N, 13, 0, 1, &rng);  /* 13 levels: ~38 copies each */
            check_heap(p, N, ks[t], (TopKOrder)order);
        }
}

static void test_heap_padding_k_gt_n(void **state)
{
    (void)state;
    uint64_t rng = 12;
    Pair p[9];
    for (int order = 0; order <= 1; order++) {
        make_pairs(p, 9, 4, 100, 3, &rng);
        check_heap(p, 9, 20, (TopKOrder)order);  /* k > n: 9 sorted + 11 padding */
        check_heap(p, 0, 5, (TopKOrder)order);   /* nothing pushed: all padding */
        check_heap(p, 1, 1, (TopKOrder)order);
    }
}

/* A real entry with an infinite distance beats padding; NaN never enters. */
static void test_heap_inf_and_nan(void **state)
{
    (void)state;
    float hd[3];
    int64_t hi[3];
    topk_heap_init(hd, hi, 3, TOPK_SMALLEST);
    assert_int_equal(topk_heap_push(hd, hi, 3, TOPK_SMALLEST, NAN, 1), 0);
    assert_int_equal(topk_heap_push(hd, hi, 3, TOPK_SMALLEST, INFINITY, 5), 1);
    assert_int_equal(topk_heap_push(hd, hi, 3, TOPK_SMALLEST, 2.0f, 9), 1);
    topk_heap_sort(hd, hi, 3, TOPK_SMALLEST);
    assert_int_equal(hi[0], 9);
    assert_int_equal(hi[1], 5);
    assert_true(isinf(hd[1]));
    assert_int_equal(hi[2], -1);

    topk_heap_init(hd, hi, 3, TOPK_LARGEST);
    assert_int_equal(topk_heap_push(hd, hi, 3, TOPK_LARGEST, NAN, 1), 0);
    assert_int_equal(topk_heap_push(hd, hi, 3, TOPK_LARGEST, -INFINITY, 4), 1);
    topk_heap_sort(hd, hi, 3, TOPK_LARGEST);
    assert_int_equal(hi[0], 4);
    assert_int_equal(hi[1], -1);
    assert_true(hd[1] == -INFINITY);
}

/* Merge of P sorted lists (some empty, some shorter than k with padding)
 * equals the top k of their concatenation. */
static void test_merge_equals_concat(void **state)
{
    (void)state;
    uint64_t rng = 13;
    enum { PMAX = 5, NMAX = 60 };
    for (int trial = 0; trial < 40; trial++) {
        TopKOrder order = (TopKOrder)(trial & 1);
        int P = 1 + (int)(test_rng_next(&rng) % PMAX);
        int k = 1 + (int)(test_rng_next(&rng) % 40);
        Pair all[PMAX * NMAX];
        size_t nall = 0;
        float ld[PMAX][NMAX];
        int64_t li[PMAX][NMAX];
        const float *in_d[PMAX];
        const int64_t *in_i[PMAX];
        int in_k[PMAX];
        for (int p = 0; p < P; p++) {
            int n = (trial % 7 == 0 && p == 0) ? 0 : (int)(test_rng_next(&rng) % NMAX);
            Pair src[NMAX];
            /* ids p, p+P, p+2P...: disjoint shards, interleaved ids */
            make_pairs(src, n, 6, p, P, &rng);
            /* each list: its own top kp (kp may exceed n: padded) */
            int kp = 1 + (int)(test_rng_next(&rng) % NMAX);
            topk_heap_init(ld[p], li[p], kp, order);
            for (int i = 0; i < n; i++) topk_heap_push(ld[p], li[p], kp, order, src[i].d, src[i].id);
            topk_heap_sort(ld[p], li[p], kp, order);
            ref_sort(src, (size_t)n, order);
            for (int i = 0; i < n && i < kp; i++) all[nall++] = src[i];
            in_d[p] = ld[p];
            in_i[p] = li[p];
            in_k[p] = kp;
        }
        ref_sort(all, nall, order);
        float od[64];
        int64_t oi[64];
        topk_merge(od, oi, k, in_d, in_i, in_k, P, order);
        for (int j = 0; j < k; j++) {
            if ((size_t)j < nall) {
                assert_int_equal(oi[j], all[j].id);
                assert_true(od[j] == all[j].d);
            } else {
                assert_int_equal(oi[j], -1);
                assert_true(od[j] == (order == TOPK_SMALLEST ? INFINITY : -INFINITY));
            }
        }
    }
}

static void test_alloc_padded(void **state)
{
    (void)state;
    TopK t;
    topk_alloc(&t, 3, 4, TOPK_LARGEST);
    assert_int_equal(t.Q, 3);
    assert_int_equal(t.k, 4);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(t.ids[i], -1);
        assert_true(t.dist[i] == -INFINITY);
    }
    topk_free(&t);
    assert_null(t.dist);
    assert_null(t.ids);
    topk_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_sorted_with_ties),
        cmocka_unit_test(test_heap_padding_k_gt_n),
        cmocka_unit_test(test_heap_inf_and_nan),
        cmocka_unit_test(test_merge_equals_concat),
        cmocka_unit_test(test_alloc_padded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
