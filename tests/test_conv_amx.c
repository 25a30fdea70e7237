/*
 * test_conv_amx.c - the AMX forward convolution (nn/conv_amx.h) against the
 * naive double-precision reference of naive_ref.h on operands pre-rounded
 * to bfloat16 (bf16_round_array), native (AMX) against emulated, 1 against
 * 2 threads, and the weight packing against its definition.
 *
 * Tolerance (per element): the kernel sums n = C*K*K exact products (a
 * bfloat16 product is exact in float32) and the bias in float32, in some
 * order; any order of n + 1 float32 additions is within
 * gamma_(n+1) * sum|terms| <= (n + 2) * 2^-24 * (sum |w*x| + |b|) of the
 * exact sum (Higham, Accuracy and Stability of Numerical Algorithms, 4.2),
 * and the double reference is exact to 2^-53 relative; ReLU is exact.  That
 * bound is loose for large n, so two sharper checks back it: the kernel
 * must be at least VISIBLE times closer to the rounded reference than to
 * the unrounded one (the rounding of x and w happened), and dropping one
 * weight from the reference must make the check fail (the check can see a
 * single missing term).  Native and emulated must each pass and differ by at
 * most twice the bound; 1 and 2 threads must agree bit for bit (each image
 * is computed by one thread the same way).
 * Every output element starts as NaN and scratch is NaN-filled: a pixel
 * left unwritten, or scratch read before being written, fails.  A guard
 * after y must stay untouched (the masked tail stores).
 * Shapes: C = 1, 3, 7 (odd), 16, 32, 33 (two 32-channel chunks); OC = 8,
 * 16, 32, 48 (odd number of 16-blocks), 13; K = 1, 3, 5, 7; planes 1x1, 7x7,
 * 9x13, 5x17 (rows not multiples of 16: pixels on the padded width), 64x64,
 * 3x16, 1x32 (rows of 16k pixels: blocks inside rows, block counts not
 * multiples of 4); N = 1, 2 and 5; with and without bias and ReLU.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/check.h"
#include "nn/bf16.h"
#include "nn/conv_amx.h"
#include "naive_ref.h"
#include "testutil.h"

/* rounding to bf16 moves results by ~2^-9 relative, float32 summation by
 * ~2^-24 * sqrt(n): the kernel must be this many times closer to the
 * rounded reference than to the unrounded one */
#define VISIBLE 8.0
#define GUARD 64
#define GUARD_VALUE 12345.0f

typedef struct Shape { int N, C, OC, H, W, K, bias, relu; } Shape;

static const Shape SHAPES[] = {
    {1, 1, 8, 1, 1, 3, 1, 0},    {5, 3, 16, 7, 7, 3, 1, 1},   {2, 7, 13, 9, 13, 5, 1, 0},
    {5, 16, 16, 64, 64, 3, 1, 1}, {1, 32, 32, 64, 64, 3, 1, 0}, {5, 32, 48, 9, 13, 3, 0, 1},
    {2, 33, 32, 6, 10, 3, 1, 1},  {1, 3, 8, 7, 7, 7, 1, 0},    {2, 16, 32, 7, 7, 7, 1, 1},
    {1, 5, 16, 1, 1, 1, 1, 1},    {2, 32, 16, 5, 17, 1, 0, 0}, {5, 1, 32, 1, 1, 7, 1, 1},
    {2, 5, 48, 3, 16, 5, 1, 1},   {1, 16, 32, 1, 32, 7, 1, 0},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

typedef struct Problem {
    Shape s;
    size_t nx, ny, nw;
    float *x, *w, *b;                   /* unrounded, as the kernel gets them */
    double *xd, *wd, *bd, *xu, *wu, *xa, *wa; /* rounded, unrounded, |rounded| */
    double *yr, *yu, *bound;            /* reference, unrounded reference, per-element tolerance */
    uint16_t *wpk;                      /* conv_amx_pack_weights(w) */
} Problem;

static double *to_double(const float *f, size_t n, int round)
{
    float *t = xmalloc(sizeof(float) * n);
    double *d = xmalloc(sizeof(double) * n);
    if (round)
        bf16_round_array(t, f, n);
    else
        memcpy(t, f, sizeof(float) * n);
    ref_to_double(d, t, n);
    free(t);
    return d;
}

static double *abs_copy(const double *a, size_t n)
{
    double *d = xmalloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) d[i] = fabs(a[i]);
    return d;
}

static void relu_d(double *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = y[i] > 0 ? y[i] : 0;
}

static void problem_init(Problem *p, Shape s, uint64_t seed)
{
    p->s = s;
    p->nx = (size_t)s.N * s.C * s.H * s.W;
    p->ny = (size_t)s.N * s.OC * s.H * s.W;
    p->nw = (size_t)s.OC * s.C * s.K * s.K;
    p->x = xmalloc(sizeof(float) * p->nx);
    p->w = xmalloc(sizeof(float) * p->nw);
    p->b = xmalloc(sizeof(float) * s.OC);
    test_fill_uniform(p->x, p->nx, &seed, -1.0f, 1.0f);
    test_fill_uniform(p->w, p->nw, &seed, -1.0f, 1.0f);
    test_fill_uniform(p->b, s.OC, &seed, -1.0f, 1.0f);
    if (!s.bias) memset(p->b, 0, sizeof(float) * s.OC);
    p->xd = to_double(p->x, p->nx, 1);
    p->wd = to_double(p->w, p->nw, 1);
    p->bd = to_double(p->b, s.OC, 0); /* the bias stays float32 */
    p->xu = to_double(p->x, p->nx, 0);
    p->wu = to_double(p->w, p->nw, 0);
    p->xa = abs_copy(p->xd, p->nx);
    p->wa = abs_copy(p->wd, p->nw);
    double *ba = abs_copy(p->bd, s.OC);
    p->yr = xmalloc(sizeof(double) * p->ny);
    p->yu = xmalloc(sizeof(double) * p->ny);
    p->bound = xmalloc(sizeof(double) * p->ny);
    ref_conv2d(p->yr, p->xd, p->wd, p->bd, s.N, s.C, s.OC, s.H, s.W, s.K);
    ref_conv2d(p->yu, p->xu, p->wu, p->bd, s.N, s.C, s.OC, s.H, s.W, s.K);
    ref_conv2d(p->bound, p->xa, p->wa, ba, s.N, s.C, s.OC, s.H, s.W, s.K);
    const double g = (double)(s.C * s.K * s.K + 2) * ldexp(1.0, -24);
    for (size_t i = 0; i < p->ny; i++) p->bound[i] *= g;
    p->wpk = xmalloc(conv_amx_weight_bytes(s.C, s.OC, s.K));
    conv_amx_pack_weights(p->wpk, p->w, s.C, s.OC, s.K);
    if (s.relu) {
        relu_d(p->yr, p->ny);
        relu_d(p->yu, p->ny);
    }
    free(ba);
}

static void problem_free(Problem *p)
{
    free(p->x); free(p->w); free(p->b);
    free(p->xd); free(p->wd); free(p->bd); free(p->xu); free(p->wu); free(p->xa); free(p->wa);
    free(p->yr); free(p->yu); free(p->bound); free(p->wpk);
}

/* Elements of y farther than bound (times scale) from ref; NaN counts. */
static size_t count_outside(const float *y, const double *ref, const double *bound, double scale, size_t n,
                            const char *what)
{
    size_t bad = 0, worst = 0;
    double worst_e = -1;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)y[i] - ref[i]);
        if (!(e <= scale * bound[i])) {
            bad++;
            if (!(e <= worst_e)) { worst_e = e; worst = i; }
        }
    }
    if (bad && what)
        fprintf(stderr, "  %s: %zu/%zu outside the bound; worst index %zu: got %.9g, ref %.9g, bound %.3g\n", what,
                bad, n, worst, (double)y[worst], ref[worst], scale * bound[worst]);
    return bad;
}

static double max_abs_diff(const float *y, const double *ref, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)y[i] - ref[i]));
    return m;
}

/* Runs the kernel: y (ny + GUARD floats) NaN-filled with a guard after it. */
static void run(float *y, const Problem *p, int threads, int impl)
{
    const Shape s = p->s;
    const size_t sb = conv_amx_scratch_bytes(s.C, s.K, s.H, s.W, threads);
    float *scratch = NULL;
    assert_int_equal(posix_memalign((void **)&scratch, 64, sb), 0);
    test_fill_nan(scratch, sb / sizeof(float));
    test_fill_nan(y, p->ny);
    for (int i = 0; i < GUARD; i++) y[p->ny + i] = GUARD_VALUE;
    conv_amx_forward(y, p->x, p->wpk, s.bias ? p->b : NULL, s.N, s.C, s.OC, s.K, s.H, s.W, s.relu, scratch, threads,
                     impl);
    for (int i = 0; i < GUARD; i++) assert_true(y[p->ny + i] == GUARD_VALUE);
    free(scratch);
}

static void test_available(void **state)
{
    (void)state;
    assert_int_equal(conv_amx_available(CONV_AMX_OFF), 0);
    assert_int_equal(conv_amx_available(7), 0);
    /* the native answer is kept: a second call agrees */
    assert_int_equal(conv_amx_available(CONV_AMX_NATIVE), conv_amx_available(CONV_AMX_NATIVE));
    /* native implies the emulation's AVX-512F/BW */
    if (conv_amx_available(CONV_AMX_NATIVE)) assert_int_equal(conv_amx_available(CONV_AMX_EMULATED), 1);
    print_message("conv_amx: native %d, emulated %d\n", conv_amx_available(CONV_AMX_NATIVE),
                  conv_amx_available(CONV_AMX_EMULATED));
}

/* The packed A tiles against their definition ([ob][t][ch][16][Kc], zero
 * padding), for C = 3 (Kc = 4), 33 (Kc = 32, 2 chunks), OC = 13, 48. */
static void test_pack_weights(void **state)
{
    (void)state;
    static const int CS[] = {3, 33}, OCS[] = {13, 48}, KS[] = {1, 3};
    for (size_t a = 0; a < COUNT(CS); a++)
        for (size_t b = 0; b < COUNT(OCS); b++)
            for (size_t c = 0; c < COUNT(KS); c++) {
                const int C = CS[a], OC = OCS[b], K = KS[c], KK = K * K;
                const int Cp = (C + 1) / 2 * 2, Kc = Cp < 32 ? Cp : 32, nch = (Cp + Kc - 1) / Kc, nob = (OC + 15) / 16;
                const size_t bytes = conv_amx_weight_bytes(C, OC, K);
                assert_int_equal(bytes, (size_t)nob * KK * nch * 16 * Kc * 2);
                float *w = xmalloc(sizeof(float) * OC * C * KK);
                uint64_t seed = 7;
                test_fill_uniform(w, (size_t)OC * C * KK, &seed, -1.0f, 1.0f);
                uint16_t *wa = xmalloc(bytes);
                memset(wa, 0xAB, bytes);
                conv_amx_pack_weights(wa, w, C, OC, K);
                for (int ob = 0; ob < nob; ob++)
                    for (int t = 0; t < KK; t++)
                        for (int ch = 0; ch < nch; ch++)
                            for (int r = 0; r < 16; r++)
                                for (int k = 0; k < Kc; k++) {
                                    const int o = ob * 16 + r, ci = ch * Kc + k;
                                    float want = 0.0f;
                                    if (o < OC && ci < C) want = bf16_round(w[((size_t)o * C + ci) * KK + t]);
                                    const uint32_t bits = (uint32_t)wa[((((size_t)ob * KK + t) * nch + ch) * 16 + r) * Kc + k]
                                                          << 16;
                                    float got;
                                    memcpy(&got, &bits, 4);
                                    assert_true(memcmp(&got, &want, 4) == 0);
                                }
                free(w);
                free(wa);
            }
}

static void test_forward_matches_reference(void **state)
{
    (void)state;
    static const int IMPLS[] = {CONV_AMX_EMULATED, CONV_AMX_NATIVE};
    int ran_native = 0;
    for (size_t si = 0; si < COUNT(SHAPES); si++) {
        const Shape s = SHAPES[si];
        Problem p;
        problem_init(&p, s, 1000 + si);
        float *y[2][2]; /* [impl][threads 1, 2] */
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < 2; t++) y[i][t] = NULL;
        for (size_t ii = 0; ii < COUNT(IMPLS); ii++) {
            const int impl = IMPLS[ii];
            if (!conv_amx_available(impl)) continue;
            if (impl == CONV_AMX_NATIVE) ran_native = 1;
            for (int t = 0; t < 2; t++) {
                float *yy = xmalloc(sizeof(float) * (p.ny + GUARD));
                y[ii][t] = yy;
                run(yy, &p, t + 1, impl);
                char what[160];
                snprintf(what, sizeof what, "%s N=%d C=%d OC=%d %dx%d K=%d bias=%d relu=%d threads=%d",
                         impl == CONV_AMX_NATIVE ? "native" : "emulated", s.N, s.C, s.OC, s.H, s.W, s.K, s.bias,
                         s.relu, t + 1);
                assert_int_equal(count_outside(yy, p.yr, p.bound, 1.0, p.ny, what), 0);
                /* the rounding of x and w is visible */
                const double er = max_abs_diff(yy, p.yr, p.ny), eu = max_abs_diff(yy, p.yu, p.ny);
                if (!(eu >= VISIBLE * er))
                    fprintf(stderr, "  %s: error vs rounded %.3g, vs unrounded %.3g\n", what, er, eu);
                assert_true(eu >= VISIBLE * er);
            }
            /* 1 and 2 threads bit for bit */
            assert_memory_equal(y[ii][0], y[ii][1], sizeof(float) * p.ny);
        }
        if (y[0][0] && y[1][0]) {
            /* native vs emulated: both within the bound, so within twice it */
            double *ye = xmalloc(sizeof(double) * p.ny);
            ref_to_double(ye, y[0][0], p.ny);
            assert_int_equal(count_outside(y[1][0], ye, p.bound, 2.0, p.ny, "native vs emulated"), 0);
            free(ye);
        }
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < 2; t++) free(y[i][t]);
        problem_free(&p);
    }
    if (!ran_native) print_message("conv_amx: no AMX on this CPU: native not run\n");
}

/* The checks above can fail: with one weight dropped from the reference
 * the kernel's output is outside the bound. */
static void test_check_sees_one_term(void **state)
{
    (void)state;
    const int impl = conv_amx_available(CONV_AMX_NATIVE) ? CONV_AMX_NATIVE : CONV_AMX_EMULATED;
    if (!conv_amx_available(impl)) skip();
    const Shape shapes[] = {{2, 32, 32, 9, 13, 7, 1, 0}, {1, 3, 16, 7, 7, 3, 1, 0}};
    for (size_t si = 0; si < COUNT(shapes); si++) {
        const Shape s = shapes[si];
        Problem p;
        problem_init(&p, s, 99 + si);
        float *y = xmalloc(sizeof(float) * (p.ny + GUARD));
        run(y, &p, 1, impl);
        assert_int_equal(count_outside(y, p.yr, p.bound, 1.0, p.ny, "unchanged"), 0);
        /* the last input channel's centre tap of the last output channel, dropped */
        const size_t wi = ((size_t)(s.OC - 1) * s.C + (s.C - 1)) * s.K * s.K + (size_t)(s.K * s.K / 2);
        const double keep = p.wd[wi];
        p.wd[wi] = 0.0;
        ref_conv2d(p.yr, p.xd, p.wd, p.bd, s.N, s.C, s.OC, s.H, s.W, s.K);
        assert_true(count_outside(y, p.yr, p.bound, 1.0, p.ny, NULL) > 0);
        p.wd[wi] = keep;
        free(y);
        problem_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_available),
        cmocka_unit_test(test_pack_weights),
        cmocka_unit_test(test_forward_matches_reference),
        cmocka_unit_test(test_check_sees_one_term),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
