/*
 * test_whiten.c - whiten_apply (src/search/whiten.c): a row's whitened code
 * is the same bits whatever batch it comes in and wherever it sits in it, so
 * serve (which whitens the codes of concurrent requests together), query and
 * index agree; and it equals (x - mean) mat^T computed in float64.
 *
 * Checks, for D = 7, 48 and 64 with random mean and matrix (fixed seeds):
 * 300 rows whitened at once; each row alone; the rows in batches of 1..97 at
 * shifting offsets; every result memcmp-equal to the all-at-once one, and
 * within 1e-5 (relative to the row's norm) of the float64 reference.
 * Runs in ~0.01 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "search/whiten.h"

#define ROWS 300

static uint64_t state = 88172645463325252ULL;

/* xorshift64: uniform in [-1, 1). */
static float uniform(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (float)((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void check_dim(int D)
{
    Whiten w = { .D = D };
    w.mean = malloc((size_t)D * sizeof *w.mean);
    w.mat = malloc((size_t)D * D * sizeof *w.mat);
    float *x = malloc((size_t)ROWS * D * sizeof *x), *all = malloc((size_t)ROWS * D * sizeof *all);
    float *part = malloc((size_t)ROWS * D * sizeof *part);
    assert_true(w.mean && w.mat && x && all && part);
    for (int j = 0; j < D; j++) w.mean[j] = 3.0f * uniform();
    for (int j = 0; j < D * D; j++) w.mat[j] = uniform();
    for (int j = 0; j < ROWS * D; j++) x[j] = 10.0f * uniform();

    memcpy(all, x, (size_t)ROWS * D * sizeof *x);
    whiten_apply(&w, all, ROWS);
    /* float64 reference */
    for (int i = 0; i < ROWS; i++) {
        double norm = 0;
        for (int j = 0; j < D; j++) {
            double acc = 0;
            for (int k = 0; k < D; k++)
                acc += ((double)x[(size_t)i * D + k] - w.mean[k]) * (double)w.mat[(size_t)j * D + k];
            norm += acc * acc;
            part[(size_t)i * D + j] = (float)acc;
        }
        for (int j = 0; j < D; j++)
            assert_true(fabs(all[(size_t)i * D + j] - part[(size_t)i * D + j]) <= 1e-5 * sqrt(norm) + 1e-6);
    }
    /* one row at a time */
    memcpy(part, x, (size_t)ROWS * D * sizeof *x);
    for (int i = 0; i < ROWS; i++) whiten_apply(&w, part + (size_t)i * D, 1);
    assert_memory_equal(part, all, (size_t)ROWS * D * sizeof *x);
    /* batches of every size 1..97 starting at shifting offsets */
    for (int b = 1; b <= 97; b += 3) {
        memcpy(part, x, (size_t)ROWS * D * sizeof *x);
        int r = 0;
        const int first = b % 5; /* a short first batch moves every row's position */
        if (first) {
            whiten_apply(&w, part, first);
            r = first;
        }
        for (; r < ROWS; r += b) whiten_apply(&w, part + (size_t)r * D, r + b <= ROWS ? b : ROWS - r);
        assert_memory_equal(part, all, (size_t)ROWS * D * sizeof *x);
    }
    free(w.mean);
    free(w.mat);
    free(x);
    free(all);
    free(part);
}

static void test_same_bits_whatever_the_batch(void **unused)
{
    (void)unused;
    check_dim(7);
    check_dim(48);
    check_dim(64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bits_whatever_the_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
