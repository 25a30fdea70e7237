/*
 * test_gemm_avx512.c - aesim's AVX-512 SGEMM kernels (gemm_avx512.h) against
 * a naive double-precision triple loop written here, for nn, tn, nt,
 * nt_bcast (kmeans' GEMM, issue 16: B^T packed, same shapes as nt) and
 * nt_packed_a (the kNN GEMM: A packed by gemm_avx512_pack_a_nt, beta 0).
 *
 * Shapes straddle every blocking edge of the kernels: m around the 8-row
 * register blocks (1, 7, 8, 9, 17; 12, 13, 25 for nt_packed_a's 12), n around the 32-column panel (1, 31,
 * 32, 33) and the 3-row dot block, k past the 256 k block of nn/tn (300,
 * 513), the 512 k block of nt_packed_a (511, 512, 513, 1025) and the 2048
 * k block of nt (2100).  Each runs with beta 0 on a C
 * full of NaN (C must be overwritten, never read), beta 1 and beta 0.5.
 * Skipped (passes) on CPUs without AVX-512F; the generic path is OpenBLAS,
 * covered by test_conv2d.  Serial.
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
#include "nn/gemm_avx512.h"
#include "testutil.h"

/* Float sums of up to 2100 products of values in [-1, 1]: error ~ sqrt(k) * 6e-8 * |terms|. */
#define GEMM_ATOL 1e-4
#define GEMM_RTOL 1e-5

typedef enum { OP_NN, OP_TN, OP_NT, OP_NTB, OP_NTP } Op;
typedef struct GemmShape { int m, n, k; } GemmShape;

static const GemmShape SHAPES[] = {
    {1, 1, 1}, {7, 31, 5}, {8, 32, 16}, {9, 33, 17}, {17, 1, 300}, {3, 65, 513}, {16, 100, 144},
    {5, 7, 2100}, {9, 4, 2100}, {1, 3, 2049}, {40, 70, 130}, {12, 33, 512}, {13, 64, 1025}, {25, 31, 511},
};
static const float BETAS[] = {0.0f, 1.0f, 0.5f};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ref[m][n] = op(A) x op(B) + beta * c0, in double. */
static void ref_gemm(double *ref, Op op, const float *a, const float *b, const float *c0, int m, int n, int k,
                     float beta)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                const double av = op == OP_TN ? a[(size_t)p * m + i] : a[(size_t)i * k + p];
                const double bv = op == OP_NT || op == OP_NTB || op == OP_NTP ? b[(size_t)j * k + p] : b[(size_t)p * n + j];
                s += av * bv;
            }
            ref[(size_t)i * n + j] = s + (beta != 0.0f ? (double)beta * c0[(size_t)i * n + j] : 0.0);
        }
}

static void run_op(Op op, const char *opname)
{
    if (!gemm_avx512_supported()) {
        printf("  (no AVX-512F on this CPU: %s kernels not run)\n", opname);
        return;
    }
    uint64_t seed = 600 + (uint64_t)op;
    for (size_t si = 0; si < COUNT(SHAPES); si++) {
        const GemmShape s = SHAPES[si];
        const size_t na = (size_t)s.m * s.k, nb = (size_t)s.k * s.n, nc = (size_t)s.m * s.n;
        float *a = xmalloc(sizeof(float) * na), *b = xmalloc(sizeof(float) * nb);
        float *c0 = xmalloc(sizeof(float) * nc), *c = xmalloc(sizeof(float) * nc);
        double *ref = xmalloc(sizeof(double) * nc), *got = xmalloc(sizeof(double) * nc);
        test_fill_uniform(a, na, &seed, -1.0f, 1.0f);
        test_fill_uniform(b, nb, &seed, -1.0f, 1.0f);
        test_fill_uniform(c0, nc, &seed, -1.0f, 1.0f);
        /* nt_packed_a has no beta: C = A B^T only */
        for (size_t bi = 0; bi < (op == OP_NTP ? 1 : COUNT(BETAS)); bi++) {
            const float beta = BETAS[bi];
            for (size_t i = 0; i < nc; i++) c[i] = beta == 0.0f ? NAN : c0[i];
            if (op == OP_NN) gemm_avx512_nn(c, a, b, s.m, s.n, s.k, beta);
            else if (op == OP_TN) gemm_avx512_tn(c, a, b, s.m, s.n, s.k, beta);
            else if (op == OP_NT) gemm_avx512_nt(c, a, b, s.m, s.n, s.k, beta);
            else if (op == OP_NTB) gemm_avx512_nt_bcast(c, a, b, s.m, s.n, s.k, beta);
            else {
                float *ap = xmalloc(sizeof(float) * gemm_avx512_pack_a_nt_floats(s.m, s.k));
                gemm_avx512_pack_a_nt(ap, a, s.m, s.k);
                gemm_avx512_nt_packed_a(c, ap, b, s.m, s.n, s.k);
                free(ap);
            }
            ref_gemm(ref, op, a, b, c0, s.m, s.n, s.k, beta);
            for (size_t i = 0; i < nc; i++) got[i] = c[i];
            char name[128];
            snprintf(name, sizeof name, "%s m%d n%d k%d beta %g", opname, s.m, s.n, s.k, (double)beta);
            assert_true(check_tensor_d(name, got, ref, nc, GEMM_ATOL, GEMM_RTOL));
        }
        free(a); free(b); free(c0); free(c); free(ref); free(got);
    }
}

static void test_nn_matches_naive(void **state) { (void)state; run_op(OP_NN, "nn"); }
static void test_tn_matches_naive(void **state) { (void)state; run_op(OP_TN, "tn"); }
static void test_nt_matches_naive(void **state) { (void)state; run_op(OP_NT, "nt"); }
static void test_nt_bcast_matches_naive(void **state) { (void)state; run_op(OP_NTB, "nt_bcast"); }
static void test_nt_packed_a_matches_naive(void **state) { (void)state; run_op(OP_NTP, "nt_packed_a"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nn_matches_naive),
        cmocka_unit_test(test_tn_matches_naive),
        cmocka_unit_test(test_nt_matches_naive),
        cmocka_unit_test(test_nt_bcast_matches_naive),
        cmocka_unit_test(test_nt_packed_a_matches_naive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
