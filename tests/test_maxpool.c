/*
 * test_maxpool.c - 2x2 stride-2 max-pooling against the naive reference in
 * naive_ref.h (forward), central finite differences of L = sum(r * y) in
 * double on that reference (backward, inputs without ties), and PyTorch's
 * documented CPU rules for ties (first maximum in row-major order) and NaN
 * (propagates).  Shapes include N=1, C=1, non-square planes and one large
 * enough for the OpenMP path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "check.h"
#include "maxpool.h"
#include "naive_ref.h"
#include "testutil.h"

/* Max-pooling only copies values: forward and backward must be exact. */
#define EXACT_ATOL 0.0
#define EXACT_RTOL 0.0
/* Finite differences of a piecewise-linear L away from kinks: exact up to
 * the double rounding of L (~1e-12). */
#define FD_ATOL 1e-6
#define FD_RTOL 1e-6
/* Spacing of the distinct test values: well above 2*REF_FD_EPS, so a
 * finite-difference step never changes a window's winner. */
#define DISTINCT_STEP 0.01f

typedef struct Shape { int N, C, H, W; } Shape;

static const Shape SHAPES[] = {
    {1, 1, 2, 2}, {1, 1, 2, 10}, {5, 3, 6, 8}, {2, 4, 28, 28}, {3, 8, 14, 14}, {4, 8, 64, 64},
};
/* Finite differences evaluate the whole reference per element: small shapes only. */
static const Shape FD_SHAPES[] = {{1, 1, 2, 2}, {1, 1, 2, 10}, {5, 3, 6, 8}, {2, 2, 14, 14}};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static size_t in_count(Shape s) { return (size_t)s.N * s.C * s.H * s.W; }
static size_t out_count(Shape s) { return in_count(s) / 4; }

/* x[i] = distinct multiples of DISTINCT_STEP in random order (no ties anywhere). */
static void fill_distinct(float *x, size_t n, uint64_t *seed)
{
    size_t *perm = xmalloc(sizeof(size_t) * n);
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n; i > 1; i--) {
        const size_t j = (size_t)(test_rng_next(seed) % i);
        const size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < n; i++) x[i] = ((float)perm[i] - (float)(n / 2)) * DISTINCT_STEP;
    free(perm);
}

/* x[i] in {0, 1, 2}: most windows have ties. */
static void fill_ties(float *x, size_t n, uint64_t *seed)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(test_rng_next(seed) % 3);
}

static void fill_nan(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = NAN;
}

/* Forward and backward against the naive reference for one input filling. */
static void check_against_naive(void (*fill)(float *, size_t, uint64_t *), uint64_t seed0, const char *what)
{
    for (size_t k = 0; k < COUNT(SHAPES); k++) {
        const Shape s = SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        uint64_t seed = seed0 + k;
        float *x = xmalloc(sizeof(float) * ni), *y = xmalloc(sizeof(float) * no);
        float *dy = xmalloc(sizeof(float) * no), *dx = xmalloc(sizeof(float) * ni);
        double *xd = xmalloc(sizeof(double) * ni), *yd = xmalloc(sizeof(double) * no);
        double *dyd = xmalloc(sizeof(double) * no), *dxd = xmalloc(sizeof(double) * ni);
        double *tmp = xmalloc(sizeof(double) * ni);
        fill(x, ni, &seed);
        test_fill_uniform(dy, no, &seed, -1.0f, 1.0f);
        ref_to_double(xd, x, ni);
        ref_to_double(dyd, dy, no);

        fill_nan(y, no);
        maxpool2x2_forward(y, x, s.N, s.C, s.H, s.W);
        ref_maxpool2x2(yd, xd, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "y (%s) N%d C%d %dx%d", what, s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, y, yd, no, EXACT_ATOL, EXACT_RTOL, tmp));

        fill_nan(dx, ni);
        maxpool2x2_backward(dx, dy, x, s.N, s.C, s.H, s.W);
        ref_maxpool2x2_backward(dxd, dyd, xd, s.N, s.C, s.H, s.W);
        snprintf(name, sizeof name, "dx (%s) N%d C%d %dx%d", what, s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, dx, dxd, ni, EXACT_ATOL, EXACT_RTOL, tmp));

        free(x); free(y); free(dy); free(dx); free(xd); free(yd); free(dyd); free(dxd); free(tmp);
    }
}

static void test_forward_backward_match_naive_distinct(void **state)
{
    (void)state;
    check_against_naive(fill_distinct, 100, "distinct");
}

static void test_forward_backward_match_naive_ties(void **state)
{
    (void)state;
    check_against_naive(fill_ties, 200, "ties");
}

typedef struct FdCtx { Shape s; double *xd, *rd, *yd; } FdCtx;

static double fd_loss(void *ctx)
{
    FdCtx *c = ctx;
    ref_maxpool2x2(c->yd, c->xd, c->s.N, c->s.C, c->s.H, c->s.W);
    return ref_dot(c->rd, c->yd, out_count(c->s));
}

static void test_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(FD_SHAPES); k++) {
        const Shape s = FD_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        uint64_t seed = 300 + k;
        float *x = xmalloc(sizeof(float) * ni), *r = xmalloc(sizeof(float) * no);
        float *dx = xmalloc(sizeof(float) * ni);
        FdCtx c = {s, xmalloc(sizeof(double) * ni), xmalloc(sizeof(double) * no), xmalloc(sizeof(double) * no)};
        double *g = xmalloc(sizeof(double) * ni), *tmp = xmalloc(sizeof(double) * ni);
        fill_distinct(x, ni, &seed);
        test_fill_uniform(r, no, &seed, -1.0f, 1.0f);
        ref_to_double(c.xd, x, ni);
        ref_to_double(c.rd, r, no);
        ref_grad_fd(g, c.xd, ni, fd_loss, &c, REF_FD_EPS);
        fill_nan(dx, ni);
        maxpool2x2_backward(dx, r, x, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "dx vs finite differences N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, dx, g, ni, FD_ATOL, FD_RTOL, tmp));
        free(x); free(r); free(dx); free(c.xd); free(c.rd); free(c.yd); free(g); free(tmp);
    }
}

/* Hand-checked windows (one 2x8 plane = four windows), from PyTorch's CPU
 * rule "take a value if it is > the maximum so far or NaN", maximum
 * starting at -inf:
 *   window 0: all equal          -> winner (0,0)
 *   window 1: 1 3 / 3 2          -> winner (0,1), the first of the tied 3s
 *   window 2: 0 NaN / 5 1        -> output NaN, winner (0,1)
 *   window 3: all -inf           -> output -inf, winner (0,0) */
static void test_ties_nan_and_infinity(void **state)
{
    (void)state;
    const float x[16] = {
        7, 7, 1, 3, 0, NAN, -INFINITY, -INFINITY,
        7, 7, 3, 2, 5, 1,   -INFINITY, -INFINITY,
    };
    const float dy[4] = {10, 20, 30, 40};
    const float want_dx[16] = {
        10, 0, 0, 20, 0, 30, 40, 0,
        0,  0, 0, 0,  0, 0,  0,  0,
    };
    float y[4], dx[16];
    maxpool2x2_forward(y, x, 1, 1, 2, 8);
    assert_true(y[0] == 7.0f && y[1] == 3.0f && isnan(y[2]) && isinf(y[3]) && y[3] < 0);
    maxpool2x2_backward(dx, dy, x, 1, 1, 2, 8);
    assert_true(check_tensor("dx ties/NaN/-inf", dx, want_dx, 16, EXACT_ATOL, EXACT_RTOL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_backward_match_naive_distinct),
        cmocka_unit_test(test_forward_backward_match_naive_ties),
        cmocka_unit_test(test_backward_matches_finite_differences),
        cmocka_unit_test(test_ties_nan_and_infinity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
