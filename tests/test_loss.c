/*
 * test_loss.c - MSE: mse_sum against the naive double reference in
 * naive_ref.h, mse_backward against central finite differences in double of
 * L = inv_count * sum (y - t)^2 on that reference.  Sizes include 1 element
 * and one large enough for the OpenMP path; inv_count is 1/n (PyTorch's
 * 'mean') and an arbitrary 1/(3n) (a global count over ranks).
 * Issue 6: mse_sum is the documented order (each thread's range of
 * OpenMP's static schedule in index order, the thread sums in thread
 * order; recomputed here from that description) and the same bits on every
 * call; mse_sigmoid_backward, both implementations (scalar, AVX-512),
 * returns mse_sum's bits and writes the bits of mse_backward followed by
 * sigmoid_backward (both of its implementations; NaN: any payload), on
 * every length 1..40 (all vector tails), odd large lengths (OpenMP path,
 * thread ranges not multiples of the vector width), inputs with NaNs,
 * infinities, signed zeros and subnormals; its dz matches central finite
 * differences in double of L(z) = inv_count * sum (sigmoid(z) - t)^2.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/act.h"
#include "base/check.h"
#include "nn/loss.h"
#include "naive_ref.h"
#include "testutil.h"

#ifdef _OPENMP
#include <omp.h>
#endif

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

/* ---- issue 6: sigmoid backward fused with the loss ---------------------- */

/* Below this many elements mse_sum runs serially (LOSS_OMP_MIN_ELEMS in loss.c). */
#define SERIAL_BELOW ((size_t)32768)
/* Lengths 1..TAIL_MAX cover every tail of the 8- and 16-float vector steps. */
#define TAIL_MAX 40
/* Large odd lengths: the OpenMP path with ranges that are not multiples of 8. */
static const size_t LARGE_SIZES[] = {100003, 1572867};
#define SUBNORMAL_MAX_BITS 0x007fffffu
/* Finite differences of L(z): smooth, central differences with
 * REF_FD_EPS = 1e-3 have O(eps^2) ~ 1e-7 relative error; dz is float. */
#define FUSED_FD_ATOL 1e-9
#define FUSED_FD_RTOL 1e-4

/* Outputs in [0, 1] mostly, with NaNs (random sign and payload), +-inf,
 * signed zeros, subnormals and values outside [0, 1]. */
static float mixed_value(uint64_t *seed)
{
    const uint64_t r = test_rng_next(seed);
    switch (r % 16) {
    case 0: return from_bits(QNAN_BITS | ((uint32_t)(r >> 8) & NAN_PAYLOAD_MASK) | ((r >> 40) & 1 ? SIGN_BIT : 0));
    case 1: return (r >> 8) & 1 ? INFINITY : -INFINITY;
    case 2: return (r >> 8) & 1 ? 0.0f : -0.0f;
    case 3: return from_bits(((uint32_t)(r >> 8) & SUBNORMAL_MAX_BITS) | ((r >> 40) & 1 ? SIGN_BIT : 0));
    case 4: return test_rng_uniform(seed, -3.0f, 3.0f);
    default: return test_rng_uniform(seed, 0.0f, 1.0f);
    }
}

/* 1 if a and b hold the same bits, a NaN matching any NaN (which NaN
 * operand's payload a product returns is unspecified); else prints the
 * first difference. */
static int same_bits_any_nan(const char *name, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(a + i, b + i, sizeof(float)) == 0 || (isnan(a[i]) && isnan(b[i]))) continue;
        fprintf(stderr, "  %s: first difference at %zu: %a vs %a\n", name, i, (double)a[i], (double)b[i]);
        return 0;
    }
    return 1;
}

/* Bitwise equality of two doubles (prints them if not). */
static int same_double(const char *name, double a, double b)
{
    if (memcmp(&a, &b, sizeof a) == 0) return 1;
    fprintf(stderr, "  %s: %a vs %a\n", name, a, b);
    return 0;
}

/* mse_sum's documented order, written out: the static schedule's ranges
 * (n / T each, one more for each of the first n % T threads), each summed
 * in index order, then added in thread order, T = the OpenMP team size
 * (1 below the serial threshold or without OpenMP). */
static double documented_sum(const float *y, const float *t, size_t n)
{
    size_t T = 1;
#ifdef _OPENMP
    if (n >= SERIAL_BELOW) T = (size_t)omp_get_max_threads();
#endif
    double total = 0.0;
    size_t lo = 0;
    for (size_t k = 0; k < T; k++) {
        const size_t len = n / T + (k < n % T ? 1 : 0);
        double s = 0.0;
        for (size_t i = lo; i < lo + len; i++) {
            const double d = (double)y[i] - (double)t[i];
            s += d * d;
        }
        total += s;
        lo += len;
    }
    return total;
}

/* The fused function, both implementations, against the unfused passes on
 * y[n], t[n] (dz compared bitwise, NaN: any payload; sum bitwise). */
static void check_fused(const float *y, const float *t, size_t n, double inv_count)
{
    const ActKernel kernels[2] = {ACT_KERNEL_SCALAR, ACT_KERNEL_AVX512};
    const int nk = act_kernel_resolve(ACT_KERNEL_AVX512) == ACT_KERNEL_AVX512 ? 2 : 1;
    float *dz = xmalloc(sizeof(float) * n), *ref = xmalloc(sizeof(float) * n);
    const double sum = mse_sum(y, t, n);
    char name[96];
    snprintf(name, sizeof name, "mse_sum repeat n=%zu", n);
    assert_true(same_double(name, mse_sum(y, t, n), sum));
    snprintf(name, sizeof name, "mse_sum vs documented order n=%zu", n);
    assert_true(same_double(name, sum, documented_sum(y, t, n)));
    for (int k = 0; k < nk; k++) {
        for (size_t i = 0; i < n; i++) dz[i] = NAN;
        const double s = mse_sigmoid_backward_kernel(dz, y, t, n, inv_count, kernels[k]);
        snprintf(name, sizeof name, "fused sum kernel %d n=%zu", (int)kernels[k], n);
        assert_true(same_double(name, s, sum));
        for (int a = 0; a < nk; a++) {
            mse_backward(ref, y, t, n, inv_count);
            sigmoid_backward_kernel(ref, ref, y, n, kernels[a]);
            snprintf(name, sizeof name, "fused dz kernel %d vs unfused (sigmoid %d) n=%zu", (int)kernels[k],
                     (int)kernels[a], n);
            assert_true(same_bits_any_nan(name, dz, ref, n));
        }
    }
    free(dz);
    free(ref);
}

static void test_fused_matches_unfused_bitwise(void **state)
{
    (void)state;
    if (act_kernel_resolve(ACT_KERNEL_AVX512) != ACT_KERNEL_AVX512)
        printf("  (no AVX-512F on this CPU/build: only the scalar fused loss is checked)\n");
    uint64_t seed = 40;
    for (size_t r = 0; r < TAIL_MAX + COUNT(LARGE_SIZES); r++) {
        const size_t n = r < TAIL_MAX ? r + 1 : LARGE_SIZES[r - TAIL_MAX];
        float *y = xmalloc(sizeof(float) * n), *t = xmalloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++) {
            y[i] = mixed_value(&seed);
            t[i] = mixed_value(&seed);
        }
        check_fused(y, t, n, 1.0 / (double)n);
        /* Model-like data: outputs and targets in [0, 1), a global count. */
        test_fill_uniform(y, n, &seed, 0.0f, 1.0f);
        test_fill_uniform(t, n, &seed, 0.0f, 1.0f);
        check_fused(y, t, n, 1.0 / (3.0 * (double)n));
        free(y);
        free(t);
    }
}

typedef struct FusedFdCtx { size_t n; double inv_count; double *zd, *yd, *td; } FusedFdCtx;

/* L(z) = inv_count * sum (sigmoid(z) - t)^2 in double. */
static double fused_fd_loss(void *ctx)
{
    FusedFdCtx *c = ctx;
    ref_sigmoid(c->yd, c->zd, c->n);
    return c->inv_count * ref_sq_err_sum(c->yd, c->td, c->n);
}

static void test_fused_matches_finite_differences(void **state)
{
    (void)state;
    const ActKernel kernels[2] = {ACT_KERNEL_SCALAR, ACT_KERNEL_AVX512};
    const int nk = act_kernel_resolve(ACT_KERNEL_AVX512) == ACT_KERNEL_AVX512 ? 2 : 1;
    for (size_t k = 0; k < COUNT(FD_SIZES); k++) {
        const size_t n = FD_SIZES[k];
        uint64_t seed = 50 + k;
        float *z = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
        float *t = xmalloc(sizeof(float) * n), *dz = xmalloc(sizeof(float) * n);
        FusedFdCtx c = {n, 1.0 / (double)n, xmalloc(sizeof(double) * n), xmalloc(sizeof(double) * n),
                        xmalloc(sizeof(double) * n)};
        double *g = xmalloc(sizeof(double) * n), *tmp = xmalloc(sizeof(double) * n);
        test_fill_uniform(z, n, &seed, -4.0f, 4.0f);
        test_fill_uniform(t, n, &seed, 0.0f, 1.0f);
        ref_to_double(c.zd, z, n);
        ref_to_double(c.td, t, n);
        ref_grad_fd(g, c.zd, n, fused_fd_loss, &c, REF_FD_EPS);
        sigmoid_forward(y, z, n);
        for (int kk = 0; kk < nk; kk++) {
            for (size_t i = 0; i < n; i++) dz[i] = NAN;
            (void)mse_sigmoid_backward_kernel(dz, y, t, n, c.inv_count, kernels[kk]);
            char name[96];
            snprintf(name, sizeof name, "fused dz vs finite differences kernel %d n=%zu", (int)kernels[kk], n);
            assert_true(ref_check(name, dz, g, n, FUSED_FD_ATOL, FUSED_FD_RTOL, tmp));
        }
        free(z); free(y); free(t); free(dz); free(c.zd); free(c.yd); free(c.td); free(g); free(tmp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mse_sum_matches_naive),
        cmocka_unit_test(test_mse_backward_matches_finite_differences),
        cmocka_unit_test(test_mse_backward_large_matches_closed_form),
        cmocka_unit_test(test_fused_matches_unfused_bitwise),
        cmocka_unit_test(test_fused_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
