/*
 * test_gemm_bf16.c - the VDPBF16PS GEMM (gemm_bf16.h) against a naive
 * double-precision triple loop written here over the operands rounded to
 * bfloat16 by nn/bf16.h's bf16_round (itself checked against the IEEE
 * definition in test_bf16.c), and against the emulation (gemm_avx512_nn on
 * rounded copies).  Shapes straddle the 8-row and 32-column register
 * blocks, the 128-value k block, and odd k (a half-filled last pair); beta
 * 0 on a C full of NaN, 1 and 0.5.  The rounding must be visible: against
 * the unrounded operands the error is far above the float32 tolerance.
 * Skipped (passes) on CPUs without AVX512_BF16.  Serial.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "base/check.h"
#include "nn/bf16.h"
#include "nn/gemm_avx512.h"
#include "nn/gemm_bf16.h"
#include "testutil.h"

/* Float32 sums of up to 513 exact products of values in [-1, 1]. */
#define GEMM_ATOL 1e-4
#define GEMM_RTOL 1e-5

typedef struct GemmShape { int m, n, k; } GemmShape;

static const GemmShape SHAPES[] = {
    {1, 1, 1}, {7, 31, 5}, {8, 32, 16}, {9, 33, 17}, {17, 1, 300}, {3, 65, 513}, {16, 100, 144},
    {32, 1024, 288}, {5, 7, 129}, {1, 3, 2},
};
static const float BETAS[] = {0.0f, 1.0f, 0.5f};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void ref_gemm(double *ref, const float *a, const float *b, const float *c0, int m, int n, int k, float beta)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) s += (double)a[(size_t)i * k + p] * (double)b[(size_t)p * n + j];
            ref[(size_t)i * n + j] = s + (beta != 0.0f ? (double)beta * c0[(size_t)i * n + j] : 0.0);
        }
}

static void test_nn_matches_rounded_naive(void **state)
{
    (void)state;
    if (!gemm_bf16_supported()) {
        printf("  (no AVX512_BF16 on this CPU: the bf16 GEMM not run)\n");
        return;
    }
    uint64_t seed = 1600;
    for (size_t si = 0; si < COUNT(SHAPES); si++) {
        const GemmShape s = SHAPES[si];
        const size_t na = (size_t)s.m * s.k, nb = (size_t)s.k * s.n, nc = (size_t)s.m * s.n;
        float *a = xmalloc(sizeof(float) * na), *b = xmalloc(sizeof(float) * nb);
        float *ar = xmalloc(sizeof(float) * na), *br = xmalloc(sizeof(float) * nb);
        float *c0 = xmalloc(sizeof(float) * nc), *c = xmalloc(sizeof(float) * nc), *ce = xmalloc(sizeof(float) * nc);
        double *ref = xmalloc(sizeof(double) * nc), *raw = xmalloc(sizeof(double) * nc);
        double *got = xmalloc(sizeof(double) * nc), *emu = xmalloc(sizeof(double) * nc);
        test_fill_uniform(a, na, &seed, -1.0f, 1.0f);
        test_fill_uniform(b, nb, &seed, -1.0f, 1.0f);
        test_fill_uniform(c0, nc, &seed, -1.0f, 1.0f);
        bf16_round_array(ar, a, na);
        bf16_round_array(br, b, nb);
        for (size_t bi = 0; bi < COUNT(BETAS); bi++) {
            const float beta = BETAS[bi];
            for (size_t i = 0; i < nc; i++) c[i] = beta == 0.0f ? NAN : c0[i];
            for (size_t i = 0; i < nc; i++) ce[i] = c0[i];
            gemm_bf16_nn(c, a, b, s.m, s.n, s.k, beta);
            gemm_avx512_nn(ce, ar, br, s.m, s.n, s.k, beta);
            ref_gemm(ref, ar, br, c0, s.m, s.n, s.k, beta);
            ref_gemm(raw, a, b, c0, s.m, s.n, s.k, beta);
            for (size_t i = 0; i < nc; i++) got[i] = c[i];
            for (size_t i = 0; i < nc; i++) emu[i] = ce[i];
            char name[128];
            snprintf(name, sizeof name, "bf16 nn m%d n%d k%d beta %g", s.m, s.n, s.k, (double)beta);
            assert_true(check_tensor_d(name, got, ref, nc, GEMM_ATOL, GEMM_RTOL));
            snprintf(name, sizeof name, "bf16 nn vs emulation m%d n%d k%d beta %g", s.m, s.n, s.k, (double)beta);
            assert_true(check_tensor_d(name, got, emu, nc, 2 * GEMM_ATOL, 2 * GEMM_RTOL));
            if (s.k >= 16) { /* the rounding is there: far from the unrounded product */
                double worst = 0.0;
                for (size_t i = 0; i < nc; i++) worst = fmax(worst, fabs(got[i] - raw[i]));
                if (!(worst > 10 * GEMM_ATOL)) fail_msg("%s: max |bf16 - fp32| %g, rounding not visible", name, worst);
            }
        }
        free(a); free(b); free(ar); free(br); free(c0); free(c); free(ce);
        free(ref); free(raw); free(got); free(emu);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nn_matches_rounded_naive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
