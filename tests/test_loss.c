/*
 * test_loss.c - MSE: mse_sum against the naive double reference in
 * naive_ref.h, mse_backward against central finite differences in double of
 * L = inv_count * sum (y - t)^2 on that reference.  Sizes include 1 element
 * and one large enough for the OpenMP path; inv_count is 1/n (PyTorch's
 * 'mean') and an arbitrary 1/(3n) (a global count over ranks).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "check.h"
#include "loss.h"
#include "naive_ref.h"
#include "testutil.h"

/* mse_sum differs from the serial double reference only by the order of a
 * double sum (thread partials): ~n * 1e-16 relative. */
#define SUM_RTOL 1e-10
/* Backward: one float subtraction and product vs a double finite difference
 * of a quadratic (exact up to rounding). */
#define BWD_ATOL 1e-9
#define BWD_RTOL 1e-6

static const size_t SIZES[] = {1, 1000, 100003};
/* Finite differences evaluate all n terms per element (n^2 work). */
static const size_t FD_SIZES[] = {1, 17, 1500};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void test_mse_sum_matches_naive(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(SIZES); k++) {
        const size_t n = SIZES[k];
        uint64_t seed = 10 + k;
        float *y = xmalloc(sizeof(float) * n), *t = xmalloc(sizeof(float) * n);
        double *yd = xmalloc(sizeof(double) * n), *td = xmalloc(sizeof(double) * n);
        test_fill_uniform(y, n, &seed, 0.0f, 1.0f);
        test_fill_uniform(t, n, &seed, 0.0f, 1.0f);
        ref_to_double(yd, y, n);
        ref_to_double(td, t, n);
        const double got = mse_sum(y, t, n), want = ref_sq_err_sum(yd, td, n);
        assert_true(check_tensor_d("mse_sum", &got, &want, 1, 0.0, SUM_RTOL));
        free(y); free(t); free(yd); free(td);
    }
}

typedef struct FdCtx { size_t n; double inv_count; double *yd, *td; } FdCtx;

static double fd_loss(void *ctx)
{
    FdCtx *c = ctx;
    return c->inv_count * ref_sq_err_sum(c->yd, c->td, c->n);
}

static void test_mse_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(FD_SIZES); k++) {
        for (int scale = 1; scale <= 3; scale += 2) {
            const size_t n = FD_SIZES[k];
            uint64_t seed = 20 + k;
            float *y = xmalloc(sizeof(float) * n), *t = xmalloc(sizeof(float) * n);
            float *dy = xmalloc(sizeof(float) * n);
            FdCtx c = {n, 1.0 / ((double)scale * (double)n), xmalloc(sizeof(double) * n),
                       xmalloc(sizeof(double) * n)};
            double *g = xmalloc(sizeof(double) * n), *tmp = xmalloc(sizeof(double) * n);
            test_fill_uniform(y, n, &seed, 0.0f, 1.0f);
            test_fill_uniform(t, n, &seed, 0.0f, 1.0f);
            ref_to_double(c.yd, y, n);
            ref_to_double(c.td, t, n);
            ref_grad_fd(g, c.yd, n, fd_loss, &c, REF_FD_EPS);
            for (size_t i = 0; i < n; i++) dy[i] = NAN;  /* must be overwritten */
            mse_backward(dy, y, t, n, c.inv_count);
            char name[96];
            snprintf(name, sizeof name, "mse dy n=%zu inv_count=1/(%d n)", n, scale);
            assert_true(ref_check(name, dy, g, n, BWD_ATOL, BWD_RTOL, tmp));
            free(y); free(t); free(dy); free(c.yd); free(c.td); free(g); free(tmp);
        }
    }
}

/* The large size (OpenMP path) against the closed form 2 (y - t) / n in double. */
static void test_mse_backward_large_matches_closed_form(void **state)
{
    (void)state;
    const size_t n = SIZES[COUNT(SIZES) - 1];
    uint64_t seed = 30;
    float *y = xmalloc(sizeof(float) * n), *t = xmalloc(sizeof(float) * n), *dy = xmalloc(sizeof(float) * n);
    double *want = xmalloc(sizeof(double) * n), *tmp = xmalloc(sizeof(double) * n);
    test_fill_uniform(y, n, &seed, 0.0f, 1.0f);
    test_fill_uniform(t, n, &seed, 0.0f, 1.0f);
    mse_backward(dy, y, t, n, 1.0 / (double)n);
    for (size_t i = 0; i < n; i++) want[i] = 2.0 * ((double)y[i] - (double)t[i]) / (double)n;
    assert_true(ref_check("mse dy large", dy, want, n, 1e-12, BWD_RTOL, tmp));
    free(y); free(t); free(dy); free(want); free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mse_sum_matches_naive),
        cmocka_unit_test(test_mse_backward_matches_finite_differences),
        cmocka_unit_test(test_mse_backward_large_matches_closed_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
