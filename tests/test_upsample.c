/*
 * test_upsample.c - 2x nearest-neighbour upsampling against the naive
 * reference in naive_ref.h (forward) and central finite differences of
 * L = sum(r * y) in double on that reference (backward).  Shapes include
 * 1x1 planes, odd H/W, N=1, C=1 and one large enough for the OpenMP path.
 * Issue 6 (AVX-512 kernel): the AVX-512 and scalar implementations give the
 * same bits, forward and backward (backward NaNs: any NaN payload, see
 * same_bits), on inputs with NaNs, infinities and signed zeros, for every row-tail width of the 16-float step; neither
 * writes past its output; and both match a naive float reference written
 * here (forward: copies; backward: ((dy00 + dy01) + dy10) + dy11, the
 * documented order).
 * Issue 6 (ReLU backward fused, upsample2x_backward_relu): for each
 * implementation, the same bits (NaN sums: any payload) as its
 * upsample2x_backward followed by relu_backward (act.h, both of its
 * implementations) and as the naive reference above followed by
 * "x > 0 ? dx : 0", with x special values (NaN, +-inf, +-0, negatives) or
 * ReLU outputs, every row-tail width, with guards; the public function on
 * the OpenMP path; and central finite differences of
 * L = sum(r * upsample(relu(z))) in double with respect to z.
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
#include "naive_ref.h"
#include "testutil.h"
#include "nn/upsample.h"

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

/* ---- issue 6: AVX-512 vs scalar ------------------------------------------ */

/* Input widths covering every tail of the 16-float AVX-512 step (and 2W of
 * the 32-float output step). */
static const int TAIL_WIDTHS[] = {1, 2, 3, 4, 6, 7, 8, 14, 15, 16, 17, 28, 30, 31, 32, 33, 34, 64};
/* (N, C) pairs: odd plane counts. */
static const int PLANE_SHAPES[][2] = {{1, 1}, {3, 5}};
static const int TAIL_HEIGHTS[] = {1, 3};

/* 1 if a and b hold the same bits, except that with any_nan a NaN matches
 * any NaN; otherwise prints the first difference.  Sums use any_nan: which
 * NaN operand's payload an IEEE addition returns is unspecified, and the
 * compiler may swap the operands (clang does; the copies keep payloads). */
static int same_bits(const char *name, const float *a, const float *b, size_t n, int any_nan)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t ua, ub;
        memcpy(&ua, a + i, sizeof ua);
        memcpy(&ub, b + i, sizeof ub);
        if (ua != ub && !(any_nan && isnan(a[i]) && isnan(b[i]))) {
            fprintf(stderr, "  %s: first difference at %zu: 0x%08x (%g) vs 0x%08x (%g)\n", name, i, (unsigned)ua,
                    (double)a[i], (unsigned)ub, (double)b[i]);
            return 0;
        }
    }
    return 1;
}

/* Mostly uniform values, with NaNs (random payload), infinities and signed zeros. */
static float special_value(uint64_t *seed)
{
    const uint64_t r = test_rng_next(seed);
    switch (r % 16) {
    case 0: return from_bits(QNAN_BITS | ((uint32_t)(r >> 8) & NAN_PAYLOAD_MASK));
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0f;
    case 4: return -0.0f;
    default: return test_rng_uniform(seed, -1.0f, 1.0f);
    }
}

/* Naive float references: y[..][i][j] = x[..][i/2][j/2]; dx = the 2x2 block
 * of dy added in row-major order. */
static void naive_up(float *y, const float *x, int N, int C, int H, int W)
{
    for (int p = 0; p < N * C; p++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++)
                y[((size_t)p * 2 * H + i) * 2 * W + j] = x[((size_t)p * H + i / 2) * W + j / 2];
}

static void naive_up_backward(float *dx, const float *dy, int N, int C, int H, int W)
{
    for (int p = 0; p < N * C; p++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                const float *b = dy + ((size_t)p * 2 * H + 2 * i) * 2 * W + 2 * j;
                float sum = b[0];
                sum += b[1];
                sum += b[2 * W];
                sum += b[2 * W + 1];
                dx[((size_t)p * H + i) * W + j] = sum;
            }
}

static void test_avx512_matches_scalar_bitwise(void **state)
{
    (void)state;
    const int vec = upsample_kernel_resolve(UPSAMPLE_KERNEL_AVX512) == UPSAMPLE_KERNEL_AVX512;
    if (!vec) printf("  (no AVX-512F on this CPU/build: only the scalar upsampling is checked)\n");
    uint64_t seed = 600;
    float guard[GUARD_FLOATS];
    fill_bits(guard, GUARD_FLOATS, GUARD_BITS);
    for (size_t pi = 0; pi < COUNT(PLANE_SHAPES); pi++)
        for (size_t hi = 0; hi < COUNT(TAIL_HEIGHTS); hi++)
            for (size_t wi = 0; wi < COUNT(TAIL_WIDTHS); wi++) {
                const int N = PLANE_SHAPES[pi][0], C = PLANE_SHAPES[pi][1];
                const int H = TAIL_HEIGHTS[hi], W = TAIL_WIDTHS[wi];
                const size_t ni = (size_t)N * C * H * W, no = 4 * ni;
                float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
                float *y[2], *dx[2];
                float *yn = xmalloc(sizeof(float) * no), *dxn = xmalloc(sizeof(float) * ni);
                for (size_t i = 0; i < ni; i++) x[i] = special_value(&seed);
                for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
                naive_up(yn, x, N, C, H, W);
                naive_up_backward(dxn, dy, N, C, H, W);
                const UpsampleKernel kernels[2] = {UPSAMPLE_KERNEL_SCALAR, UPSAMPLE_KERNEL_AVX512};
                const uint32_t fills[2] = {FILL_BITS_A, FILL_BITS_B};
                for (int k = 0; k < 1 + vec; k++) {
                    y[k] = xmalloc(sizeof(float) * (no + GUARD_FLOATS));
                    dx[k] = xmalloc(sizeof(float) * (ni + GUARD_FLOATS));
                    fill_bits(y[k], no, fills[k]);
                    fill_bits(y[k] + no, GUARD_FLOATS, GUARD_BITS);
                    fill_bits(dx[k], ni, fills[k]);
                    fill_bits(dx[k] + ni, GUARD_FLOATS, GUARD_BITS);
                    upsample2x_forward_kernel(y[k], x, N, C, H, W, kernels[k]);
                    upsample2x_backward_kernel(dx[k], dy, N, C, H, W, kernels[k]);
                    char name[96];
                    snprintf(name, sizeof name, "y kernel %d vs naive N%d C%d %dx%d", (int)kernels[k], N, C, H, W);
                    assert_true(same_bits(name, y[k], yn, no, 0));
                    snprintf(name, sizeof name, "dx kernel %d vs naive N%d C%d %dx%d", (int)kernels[k], N, C, H, W);
                    assert_true(same_bits(name, dx[k], dxn, ni, 1));
                    assert_true(same_bits("y guard", y[k] + no, guard, GUARD_FLOATS, 0));
                    assert_true(same_bits("dx guard", dx[k] + ni, guard, GUARD_FLOATS, 0));
                }
                if (vec) {
                    assert_true(same_bits("y avx512 vs scalar", y[1], y[0], no, 0));
                    assert_true(same_bits("dx avx512 vs scalar", dx[1], dx[0], ni, 1));
                }
                for (int k = 0; k < 1 + vec; k++) {
                    free(y[k]);
                    free(dx[k]);
                }
                free(x); free(dy); free(yn); free(dxn);
            }
}

/* The public functions (automatic choice) on the large shape (OpenMP path)
 * against the naive float references, bit for bit. */
static void test_public_large_matches_naive_bitwise(void **state)
{
    (void)state;
    const Shape s = SHAPES[COUNT(SHAPES) - 1];
    const size_t ni = in_count(s), no = out_count(s);
    uint64_t seed = 700;
    float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
    float *y = xmalloc(sizeof(float) * no), *dx = xmalloc(sizeof(float) * ni);
    float *yn = xmalloc(sizeof(float) * no), *dxn = xmalloc(sizeof(float) * ni);
    for (size_t i = 0; i < ni; i++) x[i] = special_value(&seed);
    for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
    fill_nan(y, no);
    fill_nan(dx, ni);
    upsample2x_forward(y, x, s.N, s.C, s.H, s.W);
    upsample2x_backward(dx, dy, s.N, s.C, s.H, s.W);
    naive_up(yn, x, s.N, s.C, s.H, s.W);
    naive_up_backward(dxn, dy, s.N, s.C, s.H, s.W);
    assert_true(same_bits("y large vs naive", y, yn, no, 0));
    assert_true(same_bits("dx large vs naive", dx, dxn, ni, 1));
    free(x); free(dy); free(y); free(dx); free(yn); free(dxn);
}

/* ---- issue 6: ReLU backward fused into the upsampling backward ----------- */

/* x for the fused tests: special values (relu_out = 0), or the ReLU of them
 * as the model feeds it (relu_out = 1: many +0, NaN passes). */
static void fill_fused_x(float *x, size_t n, uint64_t *seed, int relu_out)
{
    for (size_t i = 0; i < n; i++) {
        const float v = special_value(seed);
        x[i] = relu_out && !(v > 0.0f) && !isnan(v) ? 0.0f : v;
    }
}

static void test_backward_relu_matches_unfused_bitwise(void **state)
{
    (void)state;
    const UpsampleKernel kernels[2] = {UPSAMPLE_KERNEL_SCALAR, UPSAMPLE_KERNEL_AVX512};
    const ActKernel acts[2] = {ACT_KERNEL_SCALAR, ACT_KERNEL_AVX512};
    const uint32_t fills[2] = {FILL_BITS_A, FILL_BITS_B};
    const int nk = upsample_kernel_resolve(UPSAMPLE_KERNEL_AVX512) == UPSAMPLE_KERNEL_AVX512 ? 2 : 1;
    if (nk == 1) printf("  (no AVX-512F on this CPU/build: only the scalar fused upsampling is checked)\n");
    float guard[GUARD_FLOATS];
    fill_bits(guard, GUARD_FLOATS, GUARD_BITS);
    uint64_t seed = 800;
    for (int relu_out = 0; relu_out < 2; relu_out++)
        for (size_t pi = 0; pi < COUNT(PLANE_SHAPES); pi++)
            for (size_t hi = 0; hi < COUNT(TAIL_HEIGHTS); hi++)
                for (size_t wi = 0; wi < COUNT(TAIL_WIDTHS); wi++) {
                    const int N = PLANE_SHAPES[pi][0], C = PLANE_SHAPES[pi][1];
                    const int H = TAIL_HEIGHTS[hi], W = TAIL_WIDTHS[wi];
                    const size_t ni = (size_t)N * C * H * W, no = 4 * ni;
                    float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
                    float *dxn = xmalloc(sizeof(float) * ni), *ref = xmalloc(sizeof(float) * ni);
                    float *dx = xmalloc(sizeof(float) * (ni + GUARD_FLOATS));
                    fill_fused_x(x, ni, &seed, relu_out);
                    for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
                    naive_up_backward(dxn, dy, N, C, H, W);
                    for (size_t i = 0; i < ni; i++) dxn[i] = x[i] > 0.0f ? dxn[i] : 0.0f;  /* relu_backward's rule */
                    for (int k = 0; k < nk; k++) {
                        fill_bits(dx, ni, fills[k]);
                        fill_bits(dx + ni, GUARD_FLOATS, GUARD_BITS);
                        upsample2x_backward_relu_kernel(dx, dy, x, N, C, H, W, kernels[k]);
                        assert_true(same_bits("fused dx guard", dx + ni, guard, GUARD_FLOATS, 0));
                        char name[128];
                        snprintf(name, sizeof name, "fused dx kernel %d vs naive N%d C%d %dx%d relu_out %d",
                                 (int)kernels[k], N, C, H, W, relu_out);
                        assert_true(same_bits(name, dx, dxn, ni, 1));
                        for (int a = 0; a < nk; a++) {
                            upsample2x_backward_kernel(ref, dy, N, C, H, W, kernels[k]);
                            relu_backward_kernel(ref, ref, x, ni, acts[a]);
                            snprintf(name, sizeof name, "fused vs unfused kernel %d relu %d N%d C%d %dx%d relu_out %d",
                                     (int)kernels[k], (int)acts[a], N, C, H, W, relu_out);
                            assert_true(same_bits(name, dx, ref, ni, 1));
                        }
                    }
                    free(x); free(dy); free(dxn); free(ref); free(dx);
                }
}

/* The public functions on shapes including the OpenMP path: fused ==
 * upsample2x_backward then relu_backward, bit for bit (NaN: any payload). */
static void test_public_backward_relu_matches_unfused(void **state)
{
    (void)state;
    static const Shape FUSED_SHAPES[] = {{1, 1, 1, 1}, {5, 3, 7, 5}, {4, 16, 32, 32}, {3, 7, 16, 33}};
    uint64_t seed = 900;
    for (size_t k = 0; k < COUNT(FUSED_SHAPES); k++) {
        const Shape s = FUSED_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
        float *dx = xmalloc(sizeof(float) * ni), *ref = xmalloc(sizeof(float) * ni);
        fill_fused_x(x, ni, &seed, (int)(k % 2));
        for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
        fill_nan(dx, ni);
        upsample2x_backward_relu(dx, dy, x, s.N, s.C, s.H, s.W);
        upsample2x_backward(ref, dy, s.N, s.C, s.H, s.W);
        relu_backward(ref, ref, x, ni);
        char name[96];
        snprintf(name, sizeof name, "public fused vs unfused N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(same_bits(name, dx, ref, ni, 1));
        free(x); free(dy); free(dx); free(ref);
    }
}

/* Pre-activations z for the finite differences keep |z| >= this
 * (> REF_FD_EPS), away from the ReLU's kink at 0. */
#define FUSED_FD_MIN_ABS 0.01f

typedef struct FusedFdCtx { Shape s; double *zd, *xd, *rd, *yd; } FusedFdCtx;

/* L(z) = sum(r * upsample(relu(z))) in double. */
static double fused_fd_loss(void *ctx)
{
    FusedFdCtx *c = ctx;
    ref_relu(c->xd, c->zd, in_count(c->s));
    ref_upsample2x(c->yd, c->xd, c->s.N, c->s.C, c->s.H, c->s.W);
    return ref_dot(c->rd, c->yd, out_count(c->s));
}

static void test_backward_relu_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(FD_SHAPES); k++) {
        const Shape s = FD_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        uint64_t seed = 1000 + k;
        float *z = xmalloc(sizeof(float) * ni), *x = xmalloc(sizeof(float) * ni);
        float *r = xmalloc(sizeof(float) * no), *dz = xmalloc(sizeof(float) * ni);
        FusedFdCtx c = {s, xmalloc(sizeof(double) * ni), xmalloc(sizeof(double) * ni), xmalloc(sizeof(double) * no),
                        xmalloc(sizeof(double) * no)};
        double *g = xmalloc(sizeof(double) * ni), *tmp = xmalloc(sizeof(double) * ni);
        test_fill_uniform(z, ni, &seed, -1.0f, 1.0f);
        for (size_t i = 0; i < ni; i++)
            if (fabsf(z[i]) < FUSED_FD_MIN_ABS) z[i] = z[i] < 0 ? -FUSED_FD_MIN_ABS : FUSED_FD_MIN_ABS;
        test_fill_uniform(r, no, &seed, -1.0f, 1.0f);
        ref_to_double(c.zd, z, ni);
        ref_to_double(c.rd, r, no);
        ref_grad_fd(g, c.zd, ni, fused_fd_loss, &c, REF_FD_EPS);
        relu_forward(x, z, ni);
        fill_nan(dz, ni);
        upsample2x_backward_relu(dz, r, x, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "fused dz vs finite differences N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, dz, g, ni, BWD_ATOL, BWD_RTOL, tmp));
        free(z); free(x); free(r); free(dz); free(c.zd); free(c.xd); free(c.rd); free(c.yd); free(g); free(tmp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_naive),
        cmocka_unit_test(test_backward_matches_finite_differences),
        cmocka_unit_test(test_backward_large_matches_block_sums),
        cmocka_unit_test(test_avx512_matches_scalar_bitwise),
        cmocka_unit_test(test_public_large_matches_naive_bitwise),
        cmocka_unit_test(test_backward_relu_matches_unfused_bitwise),
        cmocka_unit_test(test_public_backward_relu_matches_unfused),
        cmocka_unit_test(test_backward_relu_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
