/*
 * test_act.c - ReLU and sigmoid, forward against the naive double reference
 * in naive_ref.h (including large |x|, +-inf and NaN), backward against
 * central finite differences of L = sum(r * y) in double on that reference.
 * Sizes include 1 element and one large enough for the OpenMP path; the
 * in-place forms (y == x, dx == dy) are checked too.
 * Issue 6 (AVX-512 kernel): the AVX-512 and scalar implementations give the
 * same bits for all four functions (sigmoid backward NaNs: any payload), out of place and in place, on every
 * tail length 1..40 and a large size, with NaNs (random payloads),
 * infinities, signed zeros, subnormals and values around expf's
 * thresholds (88, -88, -103.3, -104), and sigmoid on a sweep of every
 * SWEEP_STRIDE-th float bit pattern (the full 2^32 sweep was run once by
 * hand, see act.h); neither writes past its output.
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

/* ---- issue 6: AVX-512 vs scalar ------------------------------------------ */

/* Largest subnormal float's bits. */
#define SUBNORMAL_MAX_BITS 0x007fffffu
/* Tail lengths 1..TAIL_MAX cover every remainder of the 16-float step. */
#define TAIL_MAX 40
/* Bit-pattern stride of the sigmoid sweep: prime, ~1M of the 2^32 floats. */
#define SWEEP_STRIDE 4093u
/* The sweep in pieces of this many floats. */
#define SWEEP_PIECE ((size_t)1 << 16)

typedef enum Op { OP_RELU_FWD, OP_RELU_BWD, OP_SIG_FWD, OP_SIG_BWD, OP_COUNT } Op;
static const char *const OP_NAMES[OP_COUNT] = {"relu fwd", "relu bwd", "sigmoid fwd", "sigmoid bwd"};

/* 1 if a and b hold the same bits, except that with any_nan a NaN matches
 * any NaN; otherwise prints the first difference, the input there and the
 * max abs difference over the non-NaN pairs.  Products of two NaNs use
 * any_nan: which payload IEEE arithmetic returns is unspecified and the
 * compiler may swap operands; ReLU and sigmoid forward keep their one
 * NaN's payload. */
static int same_bits(const char *name, const float *a, const float *b, const float *in, size_t n, int any_nan)
{
    size_t first = n;
    double max_abs = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(a + i, b + i, sizeof(float)) == 0 || (any_nan && isnan(a[i]) && isnan(b[i]))) continue;
        if (first == n) first = i;
        const double d = fabs((double)a[i] - (double)b[i]);
        if (d > max_abs) max_abs = d;
    }
    if (first == n) return 1;
    uint32_t ua, ub;
    memcpy(&ua, a + first, sizeof ua);
    memcpy(&ub, b + first, sizeof ub);
    fprintf(stderr, "  %s: first difference at %zu (input %a): 0x%08x (%a) vs 0x%08x (%a); max abs diff %.3e\n", name,
            first, (double)in[first], (unsigned)ua, (double)a[first], (unsigned)ub, (double)b[first], max_abs);
    return 0;
}

/* Values around the places where the code paths change. */
static const float EDGE_VALUES[] = {
    0.0f, -0.0f, 1.0f, -1.0f, 20.0f, -20.0f, 87.99999f, -87.99999f, 88.0f, -88.0f, 88.72283f, -88.72283f,
    89.0f, -89.0f, -103.27893f, -103.28f, -103.97208f, -104.0f, -150.0f, 1e30f, -1e30f, 0x1p-126f, -0x1p-126f,
    INFINITY, -INFINITY,
};

/* Inputs: uniform in [-30, 30), edge values, NaNs with random sign and
 * payload, subnormals. */
static float mixed_value(uint64_t *seed)
{
    const uint64_t r = test_rng_next(seed);
    switch (r % 10) {
    case 0: return from_bits(QNAN_BITS | ((uint32_t)(r >> 8) & NAN_PAYLOAD_MASK) | ((r >> 40) & 1 ? SIGN_BIT : 0));
    case 1: case 2: return EDGE_VALUES[(r >> 8) % COUNT(EDGE_VALUES)];
    case 3: return from_bits(((uint32_t)(r >> 8) & SUBNORMAL_MAX_BITS) | ((r >> 40) & 1 ? SIGN_BIT : 0));
    default: return test_rng_uniform(seed, -30.0f, 30.0f);
    }
}

/* out[0..n) = op(a, b) with kernel k (forward: a = x; backward: a = dy, b = y). */
static void run_op(Op op, float *out, const float *a, const float *b, size_t n, ActKernel k)
{
    switch (op) {
    case OP_RELU_FWD: relu_forward_kernel(out, a, n, k); break;
    case OP_RELU_BWD: relu_backward_kernel(out, a, b, n, k); break;
    case OP_SIG_FWD: sigmoid_forward_kernel(out, a, n, k); break;
    case OP_SIG_BWD: sigmoid_backward_kernel(out, a, b, n, k); break;
    default: break;
    }
}

/* Scalar vs AVX-512, out of place and in place, for one input set a / b of
 * n values; checks the guard after each output. */
static void compare_kernels(const float *a, const float *b, size_t n)
{
    float *s = xmalloc(sizeof(float) * (n + GUARD_FLOATS)), *v = xmalloc(sizeof(float) * (n + GUARD_FLOATS));
    float *inplace = xmalloc(sizeof(float) * (n + GUARD_FLOATS));
    float guard[GUARD_FLOATS];
    fill_bits(guard, GUARD_FLOATS, GUARD_BITS);
    for (int op = 0; op < OP_COUNT; op++) {
        fill_bits(s, n, FILL_BITS_A);
        fill_bits(v, n, FILL_BITS_B);
        fill_bits(s + n, GUARD_FLOATS, GUARD_BITS);
        fill_bits(v + n, GUARD_FLOATS, GUARD_BITS);
        fill_bits(inplace + n, GUARD_FLOATS, GUARD_BITS);
        run_op((Op)op, s, a, b, n, ACT_KERNEL_SCALAR);
        run_op((Op)op, v, a, b, n, ACT_KERNEL_AVX512);
        memcpy(inplace, a, sizeof(float) * n);
        run_op((Op)op, inplace, inplace, b, n, ACT_KERNEL_AVX512);  /* y == x, dx == dy */
        char name[96];
        snprintf(name, sizeof name, "%s avx512 vs scalar n=%zu", OP_NAMES[op], n);
        assert_true(same_bits(name, v, s, a, n, op == OP_SIG_BWD));
        snprintf(name, sizeof name, "%s avx512 in place vs scalar n=%zu", OP_NAMES[op], n);
        assert_true(same_bits(name, inplace, s, a, n, op == OP_SIG_BWD));
        assert_true(same_bits("guard", s + n, guard, guard, GUARD_FLOATS, 0));
        assert_true(same_bits("guard", v + n, guard, guard, GUARD_FLOATS, 0));
        assert_true(same_bits("guard in place", inplace + n, guard, guard, GUARD_FLOATS, 0));
    }
    free(s); free(v); free(inplace);
}

static int have_avx512(void)
{
    if (act_kernel_resolve(ACT_KERNEL_AVX512) == ACT_KERNEL_AVX512) return 1;
    printf("  (no AVX-512F on this CPU/build: AVX-512 activations not run)\n");
    return 0;
}

static void test_avx512_matches_scalar_bitwise(void **state)
{
    (void)state;
    if (!have_avx512()) return;
    uint64_t seed = 600;
    const size_t large = SIZES[COUNT(SIZES) - 1];
    for (size_t n = 1; n <= TAIL_MAX + 1; n++) {
        const size_t len = n <= TAIL_MAX ? n : large;  /* last round: the OpenMP path */
        float *a = xmalloc(sizeof(float) * len), *b = xmalloc(sizeof(float) * len);
        for (size_t i = 0; i < len; i++) a[i] = mixed_value(&seed);
        /* Backward's y: outputs of the forward (in [0, 1] for sigmoid, >= 0 for
         * ReLU) mixed with the same special values. */
        sigmoid_forward_kernel(b, a, len, ACT_KERNEL_SCALAR);
        for (size_t i = 0; i < len; i += 7) b[i] = mixed_value(&seed);
        compare_kernels(a, b, len);
        free(a);
        free(b);
    }
}

/* Sigmoid on every SWEEP_STRIDE-th bit pattern (all signs and exponents,
 * NaNs, infinities, subnormals): AVX-512 vs scalar, bit for bit. */
static void test_sigmoid_avx512_sweep(void **state)
{
    (void)state;
    if (!have_avx512()) return;
    float *x = xmalloc(sizeof(float) * SWEEP_PIECE), *s = xmalloc(sizeof(float) * SWEEP_PIECE);
    float *v = xmalloc(sizeof(float) * SWEEP_PIECE);
    uint64_t bits = 0;
    const uint64_t end = (uint64_t)1 << 32;
    while (bits < end) {
        size_t n = 0;
        for (; n < SWEEP_PIECE && bits < end; n++, bits += SWEEP_STRIDE) x[n] = from_bits((uint32_t)bits);
        sigmoid_forward_kernel(s, x, n, ACT_KERNEL_SCALAR);
        sigmoid_forward_kernel(v, x, n, ACT_KERNEL_AVX512);
        assert_true(same_bits("sigmoid sweep avx512 vs scalar", v, s, x, n, 0));
    }
    free(x); free(s); free(v);
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
        cmocka_unit_test(test_avx512_matches_scalar_bitwise),
        cmocka_unit_test(test_sigmoid_avx512_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
