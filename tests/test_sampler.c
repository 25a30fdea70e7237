/*
 * test_sampler.c - sampler.h invariants (CoMD-style "particle conservation"):
 *   - each epoch permutation is a permutation (every index exactly once);
 *   - same (seed, epoch) -> same permutation, other epoch / seed -> other one;
 *   - the shuffle is uniform: over many epochs all 3! orders of 3 items
 *     appear equally often (chi-square, p = 0.001), which catches the classic
 *     "swap with any position" bug, and the first element is uniform over
 *     n = 10 positions;
 *   - for n in {1, 7, 800, 1001}, batch in {1, 64, 128}, P in 1..5 the rank
 *     slices of every global batch tile it exactly, in rank order, sizes
 *     differing by at most one, and the samples seen per epoch summed over
 *     ranks are each index exactly once (n in total).
 * The references are counts computed here with direct loops.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/check.h"
#include "data/sampler.h"

/* Upper 0.1% critical values of chi-square with 5 and 9 degrees of freedom
 * (NIST/SEMATECH e-Handbook 1.3.6.7.4). */
#define CHI2_P001_DOF5 20.515
#define CHI2_P001_DOF9 27.877

static void assert_is_permutation(const int64_t *perm, int64_t n)
{
    uint8_t *seen = xcalloc((size_t)n + 1, 1);
    for (int64_t i = 0; i < n; i++) {
        assert_true(perm[i] >= 0 && perm[i] < n);
        assert_int_equal(seen[perm[i]], 0);
        seen[perm[i]] = 1;
    }
    free(seen);
}

static void test_permutation_is_permutation(void **state)
{
    (void)state;
    const int64_t ns[] = {0, 1, 2, 7, 800, 1001, 60000};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int64_t n = ns[k];
        int64_t *perm = xmalloc(((size_t)n + 1) * sizeof *perm);
        for (int64_t e = 0; e < 3; e++) {
            sampler_epoch_permutation(perm, n, 12345, e);
            assert_is_permutation(perm, n);
        }
        free(perm);
    }
}

/* Block-shuffled order: a permutation; reproducible; each window of W
 * blocks holds exactly the samples of W whole blocks (the last window and
 * block may be short); the blocks come in a random order, and the samples
 * inside a window are mixed (not in block order). */
static void test_block_permutation(void **state)
{
    (void)state;
    const int64_t ns[] = { 0, 1, 7, 1000, 1003 };
    const int64_t bs[] = { 1, 8, 16 }, ws[] = { 1, 4, 1000 };
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof bs / sizeof *bs; b++)
            for (size_t c = 0; c < sizeof ws / sizeof *ws; c++) {
                const int64_t n = ns[a], B = bs[b], W = ws[c];
                int64_t *p = xmalloc(((size_t)n + 1) * sizeof *p), *q = xmalloc(((size_t)n + 1) * sizeof *q);
                sampler_block_permutation(p, n, 99, 2, B, W);
                sampler_block_permutation(q, n, 99, 2, B, W);
                assert_is_permutation(p, n);
                assert_memory_equal(p, q, (size_t)n * sizeof *p);
                /* window by window: the set of blocks touched, each whole */
                const int64_t nb = (n + B - 1) / B;
                int64_t at = 0;
                for (int64_t w0 = 0; w0 < nb; w0 += W) {
                    int64_t len = 0, blocks = 0;
                    uint8_t *hit = calloc((size_t)nb + 1, 1);
                    for (int64_t k = 0; k < W && w0 + k < nb; k++) blocks++;
                    /* the window's length is the sum of its blocks' sizes */
                    int64_t want = 0, seen_blocks = 0;
                    for (int64_t t = at; t < n && seen_blocks <= blocks; t++) {
                        int64_t blk = p[t] / B;
                        if (!hit[blk]) {
                            if (seen_blocks == blocks) break;
                            hit[blk] = 1;
                            seen_blocks++;
                            want += (blk + 1) * B < n ? B : n - blk * B;
                        }
                        len++;
                    }
                    assert_int_equal(seen_blocks, blocks);
                    assert_int_equal(len, want);
                    at += len;
                    free(hit);
                }
                assert_int_equal(at, n);
                free(p);
                free(q);
            }
    /* Random block order and mixing inside windows (n = 1000, B = 10, W = 4). */
    int64_t *p = xmalloc(1000 * sizeof *p);
    sampler_block_permutation(p, 1000, 5, 0, 10, 4);
    int64_t first_blocks = 0, in_order = 0;
    for (int64_t t = 0; t < 40; t++) first_blocks += p[t] / 10 < 4;
    for (int64_t t = 1; t < 1000; t++) in_order += p[t] == p[t - 1] + 1;
    assert_true(first_blocks < 40);  /* not blocks 0..3 first */
    assert_true(in_order < 100);     /* mixed, not runs of consecutive samples */
    free(p);
}

static void test_permutation_reproducible_and_varies(void **state)
{
    (void)state;
    enum { N = 800 };
    int64_t *a = xmalloc(N * sizeof *a), *b = xmalloc(N * sizeof *b);
    sampler_epoch_permutation(a, N, 7, 3);
    sampler_epoch_permutation(b, N, 7, 3);
    assert_memory_equal(a, b, N * sizeof *a);
    /* Not the identity. */
    int64_t fixed = 0;
    for (int64_t i = 0; i < N; i++) fixed += a[i] == i;
    assert_true(fixed < N / 10);
    /* Other epoch, other seed: different orders (agreement at a position
     * happens with probability 1/N, so most positions differ). */
    sampler_epoch_permutation(b, N, 7, 4);
    int64_t same = 0;
    for (int64_t i = 0; i < N; i++) same += a[i] == b[i];
    assert_true(same < N / 10);
    sampler_epoch_permutation(b, N, 8, 3);
    same = 0;
    for (int64_t i = 0; i < N; i++) same += a[i] == b[i];
    assert_true(same < N / 10);
    free(a);
    free(b);
}

static double chi_square(const int64_t *count, int bins, double expected_each)
{
    double x = 0;
    for (int b = 0; b < bins; b++) {
        double d = (double)count[b] - expected_each;
        x += d * d / expected_each;
    }
    return x;
}

static void test_shuffle_uniform(void **state)
{
    (void)state;
    enum { EPOCHS = 6000 };
    int64_t orders[6] = {0};
    int64_t perm[10];
    for (int64_t e = 0; e < EPOCHS; e++) {
        sampler_epoch_permutation(perm, 3, 2024, e);
        /* Lehmer code of a permutation of 3: index in 0..5. */
        int64_t code = perm[0] * 2 + (perm[1] > perm[2]);
        orders[code]++;
    }
    assert_true(chi_square(orders, 6, EPOCHS / 6.0) < CHI2_P001_DOF5);
    int64_t first[10] = {0};
    for (int64_t e = 0; e < EPOCHS; e++) {
        sampler_epoch_permutation(perm, 10, 77, e);
        first[perm[0]]++;
    }
    assert_true(chi_square(first, 10, EPOCHS / 10.0) < CHI2_P001_DOF9);
}

static void test_num_batches(void **state)
{
    (void)state;
    assert_int_equal(sampler_num_batches(0, 64), 0);
    assert_int_equal(sampler_num_batches(1, 64), 1);
    assert_int_equal(sampler_num_batches(64, 64), 1);
    assert_int_equal(sampler_num_batches(65, 64), 2);
    assert_int_equal(sampler_num_batches(1001, 128), 8);
    assert_int_equal(sampler_num_batches(7, 1), 7);
}

static void test_rank_slices_tile_every_batch(void **state)
{
    (void)state;
    const int64_t ns[] = {1, 7, 800, 1001};
    const int64_t batches[] = {1, 64, 128};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
        int64_t n = ns[a];
        int64_t *perm = xmalloc((size_t)n * sizeof *perm);
        int64_t *seen = xmalloc((size_t)n * sizeof *seen);
        sampler_epoch_permutation(perm, n, 99, 1);
        for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
            int64_t batch = batches[b];
            for (int P = 1; P <= 5; P++) {
                memset(seen, 0, (size_t)n * sizeof *seen);
                int64_t nb = sampler_num_batches(n, batch), total = 0, covered = 0;
                /* Reference batch count: a direct loop over start offsets. */
                int64_t nb_ref = 0;
                for (int64_t s = 0; s < n; s += batch) nb_ref++;
                assert_int_equal(nb, nb_ref);
                for (int64_t g = 0; g < nb; g++) {
                    int64_t start, len;
                    sampler_batch_bounds(n, batch, g, &start, &len);
                    assert_int_equal(start, covered);
                    assert_true(len >= 1 && len <= batch);
                    int64_t expect_begin = 0, cmin = len, cmax = 0;
                    for (int r = 0; r < P; r++) {
                        int64_t begin, count;
                        sampler_rank_slice(len, r, P, &begin, &count);
                        assert_int_equal(begin, expect_begin); /* contiguous, rank order */
                        assert_true(count >= 0);
                        cmin = count < cmin ? count : cmin;
                        cmax = count > cmax ? count : cmax;
                        for (int64_t i = 0; i < count; i++) seen[perm[start + begin + i]]++;
                        total += count;
                        expect_begin += count;
                    }
                    assert_int_equal(expect_begin, len); /* the slices tile the batch */
                    assert_true(cmax - cmin <= 1);
                    covered += len;
                }
                assert_int_equal(covered, n);
                assert_int_equal(total, n);
                for (int64_t i = 0; i < n; i++) assert_int_equal(seen[i], 1);
            }
        }
        free(perm);
        free(seen);
    }
}

static void test_rank_slice_small_batches(void **state)
{
    (void)state;
    int64_t begin, count;
    /* len 3 over 5 ranks: ranks 0..2 get one each, 3 and 4 none. */
    for (int r = 0; r < 5; r++) {
        sampler_rank_slice(3, r, 5, &begin, &count);
        assert_int_equal(count, r < 3 ? 1 : 0);
        assert_int_equal(begin, r < 3 ? r : 3);
    }
    /* len 11 over 4 ranks: 3, 3, 3, 2. */
    const int64_t want_begin[4] = {0, 3, 6, 9}, want_count[4] = {3, 3, 3, 2};
    for (int r = 0; r < 4; r++) {
        sampler_rank_slice(11, r, 4, &begin, &count);
        assert_int_equal(begin, want_begin[r]);
        assert_int_equal(count, want_count[r]);
    }
    sampler_rank_slice(0, 0, 1, &begin, &count);
    assert_int_equal(count, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_permutation_is_permutation),
        cmocka_unit_test(test_permutation_reproducible_and_varies),
        cmocka_unit_test(test_block_permutation),
        cmocka_unit_test(test_shuffle_uniform),
        cmocka_unit_test(test_num_batches),
        cmocka_unit_test(test_rank_slices_tile_every_batch),
        cmocka_unit_test(test_rank_slice_small_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
