/*
 * test_maxpool.c - 2x2 stride-2 max-pooling against the naive reference in
 * naive_ref.h (forward), central finite differences of L = sum(r * y) in
 * double on that reference (backward, inputs without ties), and PyTorch's
 * documented CPU rules for ties (first maximum in row-major order) and NaN
 * (propagates).  Shapes include N=1, C=1, non-square planes and one large
 * enough for the OpenMP path.
 * Issue 6 (AVX-512 kernel): the AVX-512 and scalar implementations give the
 * same bits (outputs, NaN payloads, signed zeros) on inputs full of ties,
 * NaNs, infinities and signed zeros, for every row-tail width; neither
 * writes past its output; the public functions match a naive float
 * reference written here from PyTorch's CPU loop (max starts at -inf, take
 * a value if it is > the max or NaN); and windows hand-checked with PyTorch
 * 1.13 (two NaNs: the gradient goes to the LAST one; signed zeros) hold for
 * both implementations.
 * Issue 6 (ReLU backward fused, maxpool2x2_backward_relu): for each
 * implementation, the same bits as its maxpool2x2_backward followed by
 * relu_backward (act.h, both of its implementations) and as the naive
 * reference above followed by "x > 0 ? dx : 0", on the special-value inputs
 * (NaN, +-inf, +-0, ties, negatives) and on ReLU outputs (windows of zeros),
 * every row-tail width, with guards; the public function on the OpenMP
 * path; and central finite differences of L = sum(r * maxpool(relu(z))) in
 * double with respect to z.
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
#include "nn/maxpool.h"
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

        test_fill_nan(y, no);
        maxpool2x2_forward(y, x, s.N, s.C, s.H, s.W);
        ref_maxpool2x2(yd, xd, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "y (%s) N%d C%d %dx%d", what, s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, y, yd, no, EXACT_ATOL, EXACT_RTOL, tmp));

        test_fill_nan(dx, ni);
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
        test_fill_nan(dx, ni);
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

/* ---- issue 6: AVX-512 vs scalar, NaN / inf / signed-zero rules ---------- */

/* Widths covering every row tail of the 16-window (32-float) AVX-512 step:
 * W/2 = 1..4, 7, 8, 14..17, 32. */
static const int TAIL_WIDTHS[] = {2, 4, 6, 8, 14, 16, 28, 30, 32, 34, 64};
/* (N, C) pairs: odd plane counts, so threads get unequal shares. */
static const int PLANE_SHAPES[][2] = {{1, 1}, {1, 3}, {3, 5}};
/* Heights: one window row, and several. */
static const int TAIL_HEIGHTS[] = {2, 6};

/* Index of the first element whose bits differ, or n. */
static size_t first_bit_difference(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float)) != 0) return i;
    return n;
}

/* 1 if a and b hold the same bits; otherwise prints the first difference. */
static int same_bits(const char *name, const float *a, const float *b, size_t n)
{
    const size_t i = first_bit_difference(a, b, n);
    if (i == n) return 1;
    uint32_t ua, ub;
    memcpy(&ua, a + i, sizeof ua);
    memcpy(&ub, b + i, sizeof ub);
    fprintf(stderr, "  %s: first difference at %zu: 0x%08x (%g) vs 0x%08x (%g)\n", name, i, (unsigned)ua,
            (double)a[i], (unsigned)ub, (double)b[i]);
    return 0;
}

/* A mix where most windows hold ties, NaNs (random sign and payload),
 * infinities or signed zeros. */
static float special_value(uint64_t *seed)
{
    const uint64_t r = test_rng_next(seed);
    switch (r % 12) {
    case 0: return from_bits(QNAN_BITS | ((uint32_t)(r >> 8) & NAN_PAYLOAD_MASK) | ((r >> 40) & 1 ? SIGN_BIT : 0));
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0f;
    case 4: return -0.0f;
    case 5: case 6: case 7: return (float)((r >> 8) % 3);  /* ties */
    default: return test_rng_uniform(seed, -2.0f, 2.0f);
    }
}

/* PyTorch's CPU max-pool loop for one window, written out: index (0..3) of
 * the winner of the window whose entries are v[0..3] in row-major order. */
static int naive_winner(const float v[4])
{
    float maxval = -INFINITY;
    int maxindex = 0;
    for (int i = 0; i < 4; i++)
        if (v[i] > maxval || isnan(v[i])) {
            maxval = v[i];
            maxindex = i;
        }
    return maxindex;
}

/* Naive float reference of forward (y) and backward (dx) from that loop; the
 * output is the winner's value (the -inf start is never returned: an all
 * -inf window's winner (0,0) is -inf itself). */
static void naive_pool(float *y, float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    for (size_t i = 0; i < (size_t)N * C * H * W; i++) dx[i] = 0.0f;
    for (int p = 0; p < N * C; p++)
        for (int oh = 0; oh < H / 2; oh++)
            for (int ow = 0; ow < W / 2; ow++) {
                size_t at[4];
                float v[4];
                for (int i = 0; i < 4; i++) {
                    at[i] = ((size_t)p * H + 2 * oh + i / 2) * W + 2 * ow + i % 2;
                    v[i] = x[at[i]];
                }
                const int w = naive_winner(v);
                const size_t o = ((size_t)p * (H / 2) + oh) * (W / 2) + ow;
                y[o] = v[w];
                dx[at[w]] = dy[o];
            }
}

/* Runs forward and backward with kernel k into y / dx (each followed by a
 * guard, and pre-filled with fill bits); checks the guards. */
static void run_kernel(float *y, float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                       MaxpoolKernel k, uint32_t fill)
{
    const size_t ni = (size_t)N * C * H * W, no = ni / 4;
    fill_bits(y, no, fill);
    fill_bits(y + no, GUARD_FLOATS, GUARD_BITS);
    fill_bits(dx, ni, fill);
    fill_bits(dx + ni, GUARD_FLOATS, GUARD_BITS);
    maxpool2x2_forward_kernel(y, x, N, C, H, W, k);
    maxpool2x2_backward_kernel(dx, dy, x, N, C, H, W, k);
    float guard[GUARD_FLOATS];
    fill_bits(guard, GUARD_FLOATS, GUARD_BITS);
    assert_true(same_bits("y guard", y + no, guard, GUARD_FLOATS));
    assert_true(same_bits("dx guard", dx + ni, guard, GUARD_FLOATS));
}

static void test_avx512_matches_scalar_bitwise(void **state)
{
    (void)state;
    if (maxpool_kernel_resolve(MAXPOOL_KERNEL_AVX512) != MAXPOOL_KERNEL_AVX512) {
        printf("  (no AVX-512F on this CPU/build: AVX-512 max-pool not run)\n");
        return;
    }
    uint64_t seed = 600;
    for (size_t pi = 0; pi < COUNT(PLANE_SHAPES); pi++)
        for (size_t hi = 0; hi < COUNT(TAIL_HEIGHTS); hi++)
            for (size_t wi = 0; wi < COUNT(TAIL_WIDTHS); wi++) {
                const int N = PLANE_SHAPES[pi][0], C = PLANE_SHAPES[pi][1];
                const int H = TAIL_HEIGHTS[hi], W = TAIL_WIDTHS[wi];
                const size_t ni = (size_t)N * C * H * W, no = ni / 4;
                float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
                float *ys = xmalloc(sizeof(float) * (no + GUARD_FLOATS)), *yv = xmalloc(sizeof(float) * (no + GUARD_FLOATS));
                float *dxs = xmalloc(sizeof(float) * (ni + GUARD_FLOATS)), *dxv = xmalloc(sizeof(float) * (ni + GUARD_FLOATS));
                float *yn = xmalloc(sizeof(float) * no), *dxn = xmalloc(sizeof(float) * ni);
                for (size_t i = 0; i < ni; i++) x[i] = special_value(&seed);
                for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
                run_kernel(ys, dxs, dy, x, N, C, H, W, MAXPOOL_KERNEL_SCALAR, FILL_BITS_A);
                run_kernel(yv, dxv, dy, x, N, C, H, W, MAXPOOL_KERNEL_AVX512, FILL_BITS_B);
                naive_pool(yn, dxn, dy, x, N, C, H, W);
                char name[96];
                snprintf(name, sizeof name, "y avx512 vs scalar N%d C%d %dx%d", N, C, H, W);
                assert_true(same_bits(name, yv, ys, no));
                snprintf(name, sizeof name, "dx avx512 vs scalar N%d C%d %dx%d", N, C, H, W);
                assert_true(same_bits(name, dxv, dxs, ni));
                snprintf(name, sizeof name, "y scalar vs naive N%d C%d %dx%d", N, C, H, W);
                assert_true(same_bits(name, ys, yn, no));
                snprintf(name, sizeof name, "dx scalar vs naive N%d C%d %dx%d", N, C, H, W);
                assert_true(same_bits(name, dxs, dxn, ni));
                free(x); free(dy); free(ys); free(yv); free(dxs); free(dxv); free(yn); free(dxn);
            }
}

/* The public functions (automatic choice) against the naive float reference
 * on special-value inputs, including the OpenMP path. */
static void test_public_matches_naive_special_values(void **state)
{
    (void)state;
    static const Shape SPECIAL_SHAPES[] = {{1, 1, 2, 2}, {2, 3, 10, 34}, {4, 8, 64, 64}, {3, 7, 32, 32}};
    uint64_t seed = 700;
    for (size_t k = 0; k < COUNT(SPECIAL_SHAPES); k++) {
        const Shape s = SPECIAL_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
        float *y = xmalloc(sizeof(float) * no), *dx = xmalloc(sizeof(float) * ni);
        float *yn = xmalloc(sizeof(float) * no), *dxn = xmalloc(sizeof(float) * ni);
        for (size_t i = 0; i < ni; i++) x[i] = special_value(&seed);
        for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
        test_fill_nan(y, no);
        test_fill_nan(dx, ni);
        maxpool2x2_forward(y, x, s.N, s.C, s.H, s.W);
        maxpool2x2_backward(dx, dy, x, s.N, s.C, s.H, s.W);
        naive_pool(yn, dxn, dy, x, s.N, s.C, s.H, s.W);
        char name[96];
        snprintf(name, sizeof name, "y vs naive N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(same_bits(name, y, yn, no));
        snprintf(name, sizeof name, "dx vs naive N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(same_bits(name, dx, dxn, ni));
        free(x); free(dy); free(y); free(dx); free(yn); free(dxn);
    }
}

/* Windows checked with PyTorch 1.13 on this machine
 * (torch.nn.functional.max_pool2d on a 1x1x2x2 tensor, backward of sum):
 *   [NaN 1 / NaN 2]   -> NaN, gradient at (1,0): the LAST NaN
 *   [0 -0 / -0 0]     -> +0, gradient at (0,0)
 *   [-0 0 / 0 -0]     -> -0, gradient at (0,0)
 *   [3 inf / inf NaN] -> NaN, gradient at (1,1)
 * laid out as one 2x8 plane, for each implementation this CPU has. */
static void test_nan_and_signed_zero_match_pytorch(void **state)
{
    (void)state;
    const float x[16] = {
        NAN, 1,   0.0f,  -0.0f, -0.0f, 0.0f,  3,        INFINITY,
        NAN, 2,   -0.0f, 0.0f,  0.0f,  -0.0f, INFINITY, NAN,
    };
    const float dy[4] = {10, 20, 30, 40};
    const float want_dx[16] = {
        0,  0, 20, 0, 30, 0, 0, 0,
        10, 0, 0,  0, 0,  0, 0, 40,
    };
    const MaxpoolKernel kernels[] = {MAXPOOL_KERNEL_SCALAR, MAXPOOL_KERNEL_AVX512};
    for (size_t k = 0; k < COUNT(kernels); k++) {
        if (maxpool_kernel_resolve(kernels[k]) != kernels[k]) continue;
        float y[4], dx[16];
        maxpool2x2_forward_kernel(y, x, 1, 1, 2, 8, kernels[k]);
        assert_true(isnan(y[0]) && isnan(y[3]));
        assert_true(y[1] == 0.0f && !signbit(y[1]) && y[2] == 0.0f && signbit(y[2]));
        maxpool2x2_backward_kernel(dx, dy, x, 1, 1, 2, 8, kernels[k]);
        assert_true(same_bits("dx NaN/signed zeros", dx, want_dx, 16));
    }
}

/* ---- issue 6: ReLU backward fused into the max-pooling backward ---------- */

/* dx = relu_backward(maxpool backward) the unfused way with kernel k and
 * ReLU implementation a: two passes. */
static void unfused_relu_backward(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                  MaxpoolKernel k, ActKernel a)
{
    maxpool2x2_backward_kernel(dx, dy, x, N, C, H, W, k);
    relu_backward_kernel(dx, dx, x, (size_t)N * C * H * W, a);
}

/* Runs maxpool2x2_backward_relu_kernel into dx (pre-filled with fill bits,
 * followed by a guard) and checks the guard. */
static void run_fused(float *dx, const float *dy, const float *x, int N, int C, int H, int W, MaxpoolKernel k,
                      uint32_t fill)
{
    const size_t ni = (size_t)N * C * H * W;
    fill_bits(dx, ni, fill);
    fill_bits(dx + ni, GUARD_FLOATS, GUARD_BITS);
    maxpool2x2_backward_relu_kernel(dx, dy, x, N, C, H, W, k);
    float guard[GUARD_FLOATS];
    fill_bits(guard, GUARD_FLOATS, GUARD_BITS);
    assert_true(same_bits("fused dx guard", dx + ni, guard, GUARD_FLOATS));
}

/* x for the fused tests: special values (relu_out = 0), or the ReLU of them
 * as the model feeds it (relu_out = 1: many windows of +0, ties at 0, NaN). */
static void fill_fused_x(float *x, size_t n, uint64_t *seed, int relu_out)
{
    for (size_t i = 0; i < n; i++) {
        const float v = special_value(seed);
        x[i] = relu_out && !(v > 0.0f) && !isnan(v) ? 0.0f : v;  /* torch.relu: NaN passes */
    }
}

static void test_backward_relu_matches_unfused_bitwise(void **state)
{
    (void)state;
    const MaxpoolKernel kernels[2] = {MAXPOOL_KERNEL_SCALAR, MAXPOOL_KERNEL_AVX512};
    const ActKernel acts[2] = {ACT_KERNEL_SCALAR, ACT_KERNEL_AVX512};
    const uint32_t fills[2] = {FILL_BITS_A, FILL_BITS_B};
    const int nk = maxpool_kernel_resolve(MAXPOOL_KERNEL_AVX512) == MAXPOOL_KERNEL_AVX512 ? 2 : 1;
    if (nk == 1) printf("  (no AVX-512F on this CPU/build: only the scalar fused max-pool is checked)\n");
    uint64_t seed = 800;
    for (int relu_out = 0; relu_out < 2; relu_out++)
        for (size_t pi = 0; pi < COUNT(PLANE_SHAPES); pi++)
            for (size_t hi = 0; hi < COUNT(TAIL_HEIGHTS); hi++)
                for (size_t wi = 0; wi < COUNT(TAIL_WIDTHS); wi++) {
                    const int N = PLANE_SHAPES[pi][0], C = PLANE_SHAPES[pi][1];
                    const int H = TAIL_HEIGHTS[hi], W = TAIL_WIDTHS[wi];
                    const size_t ni = (size_t)N * C * H * W, no = ni / 4;
                    float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
                    float *yn = xmalloc(sizeof(float) * no), *dxn = xmalloc(sizeof(float) * ni);
                    float *ref = xmalloc(sizeof(float) * ni), *dx = xmalloc(sizeof(float) * (ni + GUARD_FLOATS));
                    fill_fused_x(x, ni, &seed, relu_out);
                    for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
                    /* Naive: PyTorch's loop, then relu_backward's rule written out. */
                    naive_pool(yn, dxn, dy, x, N, C, H, W);
                    for (size_t i = 0; i < ni; i++) dxn[i] = x[i] > 0.0f ? dxn[i] : 0.0f;
                    for (int k = 0; k < nk; k++) {
                        run_fused(dx, dy, x, N, C, H, W, kernels[k], fills[k]);
                        char name[128];
                        snprintf(name, sizeof name, "fused dx kernel %d vs naive N%d C%d %dx%d relu_out %d",
                                 (int)kernels[k], N, C, H, W, relu_out);
                        assert_true(same_bits(name, dx, dxn, ni));
                        for (int a = 0; a < nk; a++) {
                            unfused_relu_backward(ref, dy, x, N, C, H, W, kernels[k], acts[a]);
                            snprintf(name, sizeof name, "fused vs unfused kernel %d relu %d N%d C%d %dx%d relu_out %d",
                                     (int)kernels[k], (int)acts[a], N, C, H, W, relu_out);
                            assert_true(same_bits(name, dx, ref, ni));
                        }
                    }
                    free(x); free(dy); free(yn); free(dxn); free(ref); free(dx);
                }
}

/* The public functions on shapes including the OpenMP path: fused ==
 * maxpool2x2_backward then relu_backward, bit for bit. */
static void test_public_backward_relu_matches_unfused(void **state)
{
    (void)state;
    static const Shape FUSED_SHAPES[] = {{1, 1, 2, 2}, {2, 3, 10, 34}, {4, 8, 64, 64}, {3, 7, 32, 32}};
    uint64_t seed = 900;
    for (size_t k = 0; k < COUNT(FUSED_SHAPES); k++) {
        const Shape s = FUSED_SHAPES[k];
        const size_t ni = in_count(s), no = out_count(s);
        float *x = xmalloc(sizeof(float) * ni), *dy = xmalloc(sizeof(float) * no);
        float *dx = xmalloc(sizeof(float) * ni), *ref = xmalloc(sizeof(float) * ni);
        fill_fused_x(x, ni, &seed, (int)(k % 2));
        for (size_t i = 0; i < no; i++) dy[i] = special_value(&seed);
        test_fill_nan(dx, ni);
        maxpool2x2_backward_relu(dx, dy, x, s.N, s.C, s.H, s.W);
        maxpool2x2_backward(ref, dy, x, s.N, s.C, s.H, s.W);
        relu_backward(ref, ref, x, ni);
        char name[96];
        snprintf(name, sizeof name, "public fused vs unfused N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(same_bits(name, dx, ref, ni));
        free(x); free(dy); free(dx); free(ref);
    }
}

/* Pre-activations z for the finite differences: distinct values, none
 * within FUSED_FD_MIN_ABS of the ReLU's kink at 0 (> REF_FD_EPS). */
#define FUSED_FD_MIN_ABS 0.005f

typedef struct FusedFdCtx { Shape s; double *zd, *xd, *rd, *yd; } FusedFdCtx;

/* L(z) = sum(r * maxpool(relu(z))) in double. */
static double fused_fd_loss(void *ctx)
{
    FusedFdCtx *c = ctx;
    const size_t ni = in_count(c->s);
    ref_relu(c->xd, c->zd, ni);
    ref_maxpool2x2(c->yd, c->xd, c->s.N, c->s.C, c->s.H, c->s.W);
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
        fill_distinct(z, ni, &seed);  /* about half negative: whole windows of relu(z) = 0 */
        for (size_t i = 0; i < ni; i++) z[i] += FUSED_FD_MIN_ABS;
        test_fill_uniform(r, no, &seed, -1.0f, 1.0f);
        ref_to_double(c.zd, z, ni);
        ref_to_double(c.rd, r, no);
        ref_grad_fd(g, c.zd, ni, fused_fd_loss, &c, REF_FD_EPS);
        relu_forward(x, z, ni);
        test_fill_nan(dz, ni);
        maxpool2x2_backward_relu(dz, r, x, s.N, s.C, s.H, s.W);
        char name[128];
        snprintf(name, sizeof name, "fused dz vs finite differences N%d C%d %dx%d", s.N, s.C, s.H, s.W);
        assert_true(ref_check(name, dz, g, ni, FD_ATOL, FD_RTOL, tmp));
        free(z); free(x); free(r); free(dz); free(c.zd); free(c.xd); free(c.rd); free(c.yd); free(g); free(tmp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_backward_match_naive_distinct),
        cmocka_unit_test(test_forward_backward_match_naive_ties),
        cmocka_unit_test(test_backward_matches_finite_differences),
        cmocka_unit_test(test_ties_nan_and_infinity),
        cmocka_unit_test(test_avx512_matches_scalar_bitwise),
        cmocka_unit_test(test_public_matches_naive_special_values),
        cmocka_unit_test(test_nan_and_signed_zero_match_pytorch),
        cmocka_unit_test(test_backward_relu_matches_unfused_bitwise),
        cmocka_unit_test(test_public_backward_relu_matches_unfused),
        cmocka_unit_test(test_backward_relu_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
