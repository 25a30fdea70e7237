/*
 * test_upsample.c - 2x nearest-neighbour upsampling against the naive
 * reference in naive_ref.h (forward) and central finite differences of
 * L = sum(r * y) in double on that reference (backward).  Shapes include
 * 1x1 planes, odd H/W, N=1, C=1 and one large enough for the OpenMP path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "check.h"
#include "naive_ref.h"
#include "testutil.h"
#include "upsample.h"

/* Forward only copies values: exact. */
#define EXACT_ATOL 0.0
#define EXACT_RTOL 0.0
/* Backward is a float sum of 4 values in [-1, 1]; L is linear, so the
 * double finite difference is exact up to ~1e-12. */
#define BWD_ATOL 1e-6
#define BWD_RTOL 1e-6

typedef struct Shape { int N, C, H, W; } Shape;

static const Shape SHAPES[] = {
    {1, 1, 1, 1}, {1, 1, 3, 5}, {5, 3, 7, 5}, {2, 8, 7, 7}, {3, 16, 14, 14}, {4, 16, 32, 32},
};
/* Finite differences evaluate the whole reference per element: small shapes only. */
static const Shape FD_SHAPES[] = {{1, 1, 1, 1}, {1, 1, 3, 5}, {5, 3, 7, 5}, {2, 8, 7, 7}};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static size_t in_count(Shape s) { return (size_t)s.N * s.C * s.H * s.W; }
static size_t out_count(Shape s) { return 4 * in_count(s); }

static void fill_nan(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = NAN;
}

static void test_forward_matches_naive(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(SHAPES); k++) {
        const Shape s = SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        uint64_t seed = 100 + k;
        float *x = xmalloc(sizeof(float) * ni), *y = xmalloc(sizeof(float) * no);
        double *xd = xmalloc(sizeof(double) * ni), *yd = xmalloc(sizeof(double) * no);
        double *tmp = xmalloc(sizeof(double) * no);
        test_fill_uniform(x, ni, &seed, -1.0f, 1.0f);
        ref_to_double(xd, x, ni);
        fill_nan(y, no);
        upsample2x_forward(y, x, s.N, s.C, s.H, s.W);
        ref_upsample2x(yd, xd, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "y N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, y, yd, no, EXACT_ATOL, EXACT_RTOL, tmp));
        free(x); free(y); free(xd); free(yd); free(tmp);
    }
}

typedef struct FdCtx { Shape s; double *xd, *rd, *yd; } FdCtx;

static double fd_loss(void *ctx)
{
    FdCtx *c = ctx;
    ref_upsample2x(c->yd, c->xd, c->s.N, c->s.C, c->s.H, c->s.W);
    return ref_dot(c->rd, c->yd, out_count(c->s));
}

static void test_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(FD_SHAPES); k++) {
        const Shape s = FD_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        uint64_t seed = 200 + k;
        float *x = xmalloc(sizeof(float) * ni), *r = xmalloc(sizeof(float) * no);
        float *dx = xmalloc(sizeof(float) * ni);
        FdCtx c = {s, xmalloc(sizeof(double) * ni), xmalloc(sizeof(double) * no), xmalloc(sizeof(double) * no)};
        double *g = xmalloc(sizeof(double) * ni), *tmp = xmalloc(sizeof(double) * ni);
        test_fill_uniform(x, ni, &seed, -1.0f, 1.0f);
        test_fill_uniform(r, no, &seed, -1.0f, 1.0f);
        ref_to_double(c.xd, x, ni);
        ref_to_double(c.rd, r, no);
        ref_grad_fd(g, c.xd, ni, fd_loss, &c, REF_FD_EPS);
        fill_nan(dx, ni);  /* dx must be overwritten */
        upsample2x_backward(dx, r, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "dx vs finite differences N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, dx, g, ni, BWD_ATOL, BWD_RTOL, tmp));
        free(x); free(r); free(dx); free(c.xd); free(c.rd); free(c.yd); free(g); free(tmp);
    }
}

/* The large shape (OpenMP path) against the definition: each dx is the sum
 * of its 2x2 block of dy, summed here in double. */
static void test_backward_large_matches_block_sums(void **state)
{
    (void)state;
    const Shape s = SHAPES[COUNT(SHAPES) - 1];
    const size_t ni = in_count(s), no = out_count(s);
    uint64_t seed = 300;
    float *dy = xmalloc(sizeof(float) * no), *dx = xmalloc(sizeof(float) * ni);
    double *want = xmalloc(sizeof(double) * ni), *tmp = xmalloc(sizeof(double) * ni);
    test_fill_uniform(dy, no, &seed, -1.0f, 1.0f);
    for (size_t i = 0; i < ni; i++) want[i] = 0.0;
    for (int p = 0; p < s.N * s.C; p++)
        for (int i = 0; i < 2 * s.H; i++)
            for (int j = 0; j < 2 * s.W; j++)
                want[((size_t)p * s.H + i / 2) * s.W + j / 2] += dy[((size_t)p * 2 * s.H + i) * 2 * s.W + j];
    upsample2x_backward(dx, dy, s.N, s.C, s.H, s.W);
    assert_true(ref_check("dx large", dx, want, ni, BWD_ATOL, BWD_RTOL, tmp));
    free(dy); free(dx); free(want); free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_naive),
        cmocka_unit_test(test_backward_matches_finite_differences),
        cmocka_unit_test(test_backward_large_matches_block_sums),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
