/*
 * test_act.c - ReLU and sigmoid, forward against the naive double reference
 * in naive_ref.h (including large |x|, +-inf and NaN), backward against
 * central finite differences of L = sum(r * y) in double on that reference.
 * Sizes include 1 element and one large enough for the OpenMP path; the
 * in-place forms (y == x, dx == dy) are checked too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "act.h"
#include "check.h"
#include "naive_ref.h"
#include "testutil.h"

/* ReLU copies or zeroes: exact. */
#define EXACT_ATOL 0.0
#define EXACT_RTOL 0.0
/* Sigmoid: expf and one division, a few float ulps; atol covers outputs
 * near 0 and in the subnormal range. */
#define SIG_ATOL 1e-7
#define SIG_RTOL 1e-6
/* Sigmoid backward: float products of y (rounded) against a finite
 * difference with O(eps^2) ~ 1e-7 truncation error. */
#define SIG_BWD_ATOL 1e-6
#define SIG_BWD_RTOL 1e-5
/* ReLU backward: a finite difference of a linear piece, exact to ~1e-12. */
#define RELU_BWD_ATOL 1e-9
#define RELU_BWD_RTOL 1e-9
/* Inputs for ReLU finite differences keep |x| >= this (> REF_FD_EPS), away
 * from the kink at 0. */
#define RELU_MIN_ABS 0.01f

static const size_t SIZES[] = {1, 1000, 100003};
/* Finite differences evaluate all n outputs per element (n^2 work). */
static const size_t FD_SIZES[] = {1, 17, 1500};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Special values appended to random sigmoid inputs: saturation, the float
 * overflow point of exp (88.7), subnormal outputs (-100, -104) and infinities. */
static const float SIG_SPECIAL[] = {0.0f, -0.0f, 20.0f, -20.0f, 88.0f, -88.0f, 89.0f, -89.0f,
                                    100.0f, -100.0f, -104.0f, 1e30f, -1e30f, INFINITY, -INFINITY};

static void test_relu_forward_matches_naive(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(SIZES); k++) {
        const size_t n = SIZES[k];
        uint64_t seed = 10 + k;
        float *x = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
        double *xd = xmalloc(sizeof(double) * n), *yd = xmalloc(sizeof(double) * n);
        double *tmp = xmalloc(sizeof(double) * n);
        test_fill_uniform(x, n, &seed, -3.0f, 3.0f);
        ref_to_double(xd, x, n);
        ref_relu(yd, xd, n);
        relu_forward(y, x, n);
        assert_true(ref_check("relu y", y, yd, n, EXACT_ATOL, EXACT_RTOL, tmp));
        relu_forward(x, x, n);  /* in place */
        assert_true(ref_check("relu y in place", x, yd, n, EXACT_ATOL, EXACT_RTOL, tmp));
        free(x); free(y); free(xd); free(yd); free(tmp);
    }
    const float nan_in = NAN;
    float nan_out = 0.0f;
    relu_forward(&nan_out, &nan_in, 1);
    assert_true(isnan(nan_out));  /* torch.relu(nan) is nan */
}

static void test_sigmoid_forward_matches_naive(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(SIZES); k++) {
        const size_t n = SIZES[k] + COUNT(SIG_SPECIAL);
        uint64_t seed = 20 + k;
        float *x = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
        double *xd = xmalloc(sizeof(double) * n), *yd = xmalloc(sizeof(double) * n);
        double *tmp = xmalloc(sizeof(double) * n);
        test_fill_uniform(x, SIZES[k], &seed, -12.0f, 12.0f);
        memcpy(x + SIZES[k], SIG_SPECIAL, sizeof SIG_SPECIAL);
        ref_to_double(xd, x, n);
        ref_sigmoid(yd, xd, n);
        sigmoid_forward(y, x, n);
        assert_true(ref_check("sigmoid y", y, yd, n, SIG_ATOL, SIG_RTOL, tmp));
        sigmoid_forward(x, x, n);  /* in place */
        assert_true(ref_check("sigmoid y in place", x, yd, n, SIG_ATOL, SIG_RTOL, tmp));
        free(x); free(y); free(xd); free(yd); free(tmp);
    }
}

/* Relative accuracy far out in the tail, where 1/(1+exp(-x)) in float would
 * give 0: sigmoid(-100) = 3.72e-44 is a float subnormal; check it is not 0. */
static void test_sigmoid_tail_not_flushed(void **state)
{
    (void)state;
    const float x = -100.0f;
    float y = 0.0f;
    sigmoid_forward(&y, &x, 1);
    assert_true(y > 0.0f && fabs((double)y - exp(-100.0)) < 3e-45);  /* 2 subnormal ulps */
}

typedef struct FdCtx {
    void (*fn)(double *, const double *, size_t);
    size_t n;
    double *xd, *rd, *yd;
} FdCtx;

static double fd_loss(void *ctx)
{
    FdCtx *c = ctx;
    c->fn(c->yd, c->xd, c->n);
    return ref_dot(c->rd, c->yd, c->n);
}

/* Compares backward(dx, r, forward(x)) with finite differences of sum(r * ref(x)),
 * then again with dx == dy (in place). */
static void check_backward(void (*fwd)(float *, const float *, size_t),
                           void (*bwd)(float *, const float *, const float *, size_t),
                           void (*ref)(double *, const double *, size_t), int away_from_zero,
                           double atol, double rtol, const char *name, uint64_t seed0)
{
    for (size_t k = 0; k < COUNT(FD_SIZES); k++) {
        const size_t n = FD_SIZES[k];
        uint64_t seed = seed0 + k;
        float *x = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
        float *r = xmalloc(sizeof(float) * n), *dx = xmalloc(sizeof(float) * n);
        FdCtx c = {ref, n, xmalloc(sizeof(double) * n), xmalloc(sizeof(double) * n), xmalloc(sizeof(double) * n)};
        double *g = xmalloc(sizeof(double) * n), *tmp = xmalloc(sizeof(double) * n);
        test_fill_uniform(x, n, &seed, -4.0f, 4.0f);
        if (away_from_zero)
            for (size_t i = 0; i < n; i++)
                if (fabsf(x[i]) < RELU_MIN_ABS) x[i] = x[i] < 0 ? -RELU_MIN_ABS : RELU_MIN_ABS;
        test_fill_uniform(r, n, &seed, -1.0f, 1.0f);
        ref_to_double(c.xd, x, n);
        ref_to_double(c.rd, r, n);
        ref_grad_fd(g, c.xd, n, fd_loss, &c, REF_FD_EPS);
        fwd(y, x, n);
        bwd(dx, r, y, n);
        char label[96];
        snprintf(label, sizeof label, "%s dx n=%zu", name, n);
        assert_true(ref_check(label, dx, g, n, atol, rtol, tmp));
        bwd(r, r, y, n);  /* in place: dx == dy */
        snprintf(label, sizeof label, "%s dx in place n=%zu", name, n);
        assert_true(ref_check(label, r, g, n, atol, rtol, tmp));
        free(x); free(y); free(r); free(dx); free(c.xd); free(c.rd); free(c.yd); free(g); free(tmp);
    }
}

static void test_relu_backward_matches_finite_differences(void **state)
{
    (void)state;
    check_backward(relu_forward, relu_backward, ref_relu, 1, RELU_BWD_ATOL, RELU_BWD_RTOL, "relu", 30);
}

static void test_sigmoid_backward_matches_finite_differences(void **state)
{
    (void)state;
    check_backward(sigmoid_forward, sigmoid_backward, ref_sigmoid, 0, SIG_BWD_ATOL, SIG_BWD_RTOL, "sigmoid", 40);
}

/* The large size (OpenMP path) against the closed forms dy*(y>0) and
 * dy*y*(1-y), evaluated in double from the same float y. */
static void test_backward_large_matches_closed_form(void **state)
{
    (void)state;
    const size_t n = SIZES[COUNT(SIZES) - 1];
    uint64_t seed = 50;
    float *x = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
    float *dy = xmalloc(sizeof(float) * n), *dx = xmalloc(sizeof(float) * n);
    double *want = xmalloc(sizeof(double) * n), *tmp = xmalloc(sizeof(double) * n);
    test_fill_uniform(x, n, &seed, -4.0f, 4.0f);
    test_fill_uniform(dy, n, &seed, -1.0f, 1.0f);
    relu_forward(y, x, n);
    relu_backward(dx, dy, y, n);
    for (size_t i = 0; i < n; i++) want[i] = y[i] > 0 ? (double)dy[i] : 0.0;
    assert_true(ref_check("relu dx large", dx, want, n, EXACT_ATOL, EXACT_RTOL, tmp));
    sigmoid_forward(y, x, n);
    sigmoid_backward(dx, dy, y, n);
    for (size_t i = 0; i < n; i++) want[i] = (double)dy[i] * y[i] * (1.0 - y[i]);
    assert_true(ref_check("sigmoid dx large", dx, want, n, SIG_ATOL, SIG_RTOL, tmp));
    free(x); free(y); free(dy); free(dx); free(want); free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relu_forward_matches_naive),
        cmocka_unit_test(test_sigmoid_forward_matches_naive),
        cmocka_unit_test(test_sigmoid_tail_not_flushed),
        cmocka_unit_test(test_relu_backward_matches_finite_differences),
        cmocka_unit_test(test_sigmoid_backward_matches_finite_differences),
        cmocka_unit_test(test_backward_large_matches_closed_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
