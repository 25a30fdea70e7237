/*
 * test_conv_bf16.c - the bf16 direct convolution kernels (conv_direct_bf16.h,
 * Conv2d.bf16) against the naive double-precision reference of naive_ref.h
 * on bfloat16-rounded operands, and against central finite differences of
 * L = sum(bf16(r) * conv(bf16(x); bf16(w), b)) for the gradients.
 *
 * The layers get the UNROUNDED float32 x, w and r: the kernels round while
 * packing, so each check also asserts that the rounding happened (the result
 * is much farther from the unrounded reference than from the rounded one).
 * Both implementations run where the CPU allows: VDPBF16PS emulated on
 * AVX-512F/BW (every AVX-512 CPU here) and native (AVX512_BF16); the two must
 * agree bit for bit (the products are exact and the additions happen in the
 * same order; no subnormals occur with these inputs).
 * Shapes: odd channel counts (pairs with an empty half), C = 1 and 3 (the
 * (channel, tap) weight-gradient tiles) and >= 6, planes that are not a
 * multiple of 16 or 32 pixels, K = 1, 3, 5, 7 (taps past whole rows), 1x1
 * images, 64-wide rows; 1 and 3 threads (3 > N clamps the team).  The passes
 * fused with 2x2 max-pooling and 2x upsampling against the unfused bf16
 * calls: outputs and dx bit for bit, dw and db up to summation order.
 * Scratch is exactly conv2d_scratch_floats floats, filled with NaN.
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
#include "nn/conv2d.h"
#include "nn/conv_direct_bf16.h"
#include "nn/maxpool.h"
#include "nn/upsample.h"
#include "model/model.h"
#include "naive_ref.h"
#include "testutil.h"

/* float32 sums of exact bf16 products: the tolerances of test_conv2d.c */
#define FWD_ATOL 1e-5
#define FWD_RTOL 1e-5
#define BWD_ATOL 1e-4
#define BWD_RTOL 1e-4
/* bf16 rounding moves results by ~2^-9 relative, float32 summation order
 * by ~2^-24: a result must be at least this many times farther from the
 * unrounded reference than from the rounded one */
#define VISIBLE 8.0

typedef struct Shape { int N, C, OC, H, W, K; } Shape;

static const Shape SHAPES[] = {
    {1, 1, 1, 1, 1, 3}, {2, 1, 3, 5, 7, 3}, {3, 3, 4, 7, 5, 3},  {2, 3, 16, 4, 64, 3}, {2, 2, 3, 6, 9, 5},
    {3, 7, 13, 9, 9, 3}, {2, 16, 3, 6, 14, 3}, {1, 6, 9, 4, 64, 1}, {2, 5, 6, 8, 8, 7}, {1, 12, 8, 12, 10, 3},
};
static const int NTHREADS[] = {1, 3};
static const int IMPLS[] = {CONV_BF16_EMULATED, CONV_BF16_NATIVE};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

typedef struct Problem {
    Shape s;
    size_t nx, ny, nw, nb;
    float *x, *w, *b, *r;           /* unrounded, as the layer gets them */
    double *xd, *wd, *bd, *rd, *yd; /* the reference's copies: x, w, r rounded to bf16 */
    double *xu, *wu, *ru;           /* unrounded copies (the rounding must be visible) */
} Problem;

static double *rounded_copy(const float *f, size_t n)
{
    float *t = xmalloc(sizeof(float) * n);
    double *d = xmalloc(sizeof(double) * n);
    bf16_round_array(t, f, n);
    ref_to_double(d, t, n);
    free(t);
    return d;
}

static double *plain_copy(const float *f, size_t n)
{
    double *d = xmalloc(sizeof(double) * n);
    ref_to_double(d, f, n);
    return d;
}

static void problem_init(Problem *p, Shape s, uint64_t seed)
{
    p->s = s;
    p->nx = (size_t)s.N * s.C * s.H * s.W;
    p->ny = (size_t)s.N * s.OC * s.H * s.W;
    p->nw = (size_t)s.OC * s.C * s.K * s.K;
    p->nb = (size_t)s.OC;
    p->x = xmalloc(sizeof(float) * p->nx);
    p->w = xmalloc(sizeof(float) * p->nw);
    p->b = xmalloc(sizeof(float) * p->nb);
    p->r = xmalloc(sizeof(float) * p->ny);
    test_fill_uniform(p->x, p->nx, &seed, -1.0f, 1.0f);
    test_fill_uniform(p->w, p->nw, &seed, -1.0f, 1.0f);
    test_fill_uniform(p->b, p->nb, &seed, -1.0f, 1.0f);
    test_fill_uniform(p->r, p->ny, &seed, -1.0f, 1.0f);
    p->xd = rounded_copy(p->x, p->nx);
    p->wd = rounded_copy(p->w, p->nw);
    p->rd = rounded_copy(p->r, p->ny);
    p->bd = plain_copy(p->b, p->nb); /* biases stay float32 (model.h MODEL_BF16) */
    p->xu = plain_copy(p->x, p->nx);
    p->wu = plain_copy(p->w, p->nw);
    p->ru = plain_copy(p->r, p->ny);
    p->yd = xmalloc(sizeof(double) * p->ny);
}

static void problem_free(Problem *p)
{
    free(p->x); free(p->w); free(p->b); free(p->r);
    free(p->xd); free(p->wd); free(p->bd); free(p->rd); free(p->yd);
    free(p->xu); free(p->wu); free(p->ru);
}

/* L = sum(rd * conv(xd; wd, bd)) on the double reference. */
static double problem_loss(void *ctx)
{
    Problem *p = ctx;
    const Shape s = p->s;
    ref_conv2d(p->yd, p->xd, p->wd, p->bd, s.N, s.C, s.OC, s.H, s.W, s.K);
    return ref_dot(p->rd, p->yd, p->ny);
}

/* The same L on the unrounded operands. */
static double problem_loss_unrounded(void *ctx)
{
    Problem *p = ctx;
    const Shape s = p->s;
    ref_conv2d(p->yd, p->xu, p->wu, p->bd, s.N, s.C, s.OC, s.H, s.W, s.K);
    return ref_dot(p->ru, p->yd, p->ny);
}

static float *alloc_scratch(const Conv2d *l, int H, int W, int nthreads)
{
    const size_t n = conv2d_scratch_floats(l, H, W, nthreads);
    float *s = xmalloc(sizeof(float) * n);
    test_fill_nan(s, n);
    return s;
}

/* max |got - ref| over n */
static double max_diff(const float *got, const double *ref, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - ref[i]);
        if (d > m) m = d;
    }
    return m;
}

static int skip_all(void)
{
    if (conv2d_kernel_resolve(CONV_KERNEL_DIRECT, 3) != CONV_KERNEL_DIRECT || !conv_bf16_available(CONV_BF16_EMULATED)) {
        printf("skipped: this CPU has no AVX-512F/BW (the bf16 kernels never run here)\n");
        return 1;
    }
    return 0;
}

static void test_forward_backward_match_reference(void **state)
{
    (void)state;
    if (skip_all()) return;
    for (size_t i = 0; i < COUNT(SHAPES); i++) {
        Problem p;
        const Shape s = SHAPES[i];
        problem_init(&p, s, 4000 + i);
        double *yref = xmalloc(sizeof(double) * p.ny), *yun = xmalloc(sizeof(double) * p.ny);
        ref_conv2d(yref, p.xd, p.wd, p.bd, s.N, s.C, s.OC, s.H, s.W, s.K);
        ref_conv2d(yun, p.xu, p.wu, p.bd, s.N, s.C, s.OC, s.H, s.W, s.K);
        double *gx = xmalloc(sizeof(double) * p.nx), *gw = xmalloc(sizeof(double) * p.nw);
        double *gb = xmalloc(sizeof(double) * p.nb), *gwu = xmalloc(sizeof(double) * p.nw);
        ref_grad_fd(gx, p.xd, p.nx, problem_loss, &p, REF_FD_EPS);
        ref_grad_fd(gw, p.wd, p.nw, problem_loss, &p, REF_FD_EPS);
        ref_grad_fd(gb, p.bd, p.nb, problem_loss, &p, REF_FD_EPS);
        ref_grad_fd(gwu, p.wu, p.nw, problem_loss_unrounded, &p, REF_FD_EPS);
        const size_t nout = p.ny + p.nx + p.nw + p.nb; /* y, dx, dw, db of one run */
        float *out = xmalloc(sizeof(float) * nout), *first = xmalloc(sizeof(float) * nout);
        double *tmp = xmalloc(sizeof(double) * nout);
        for (size_t t = 0; t < COUNT(NTHREADS); t++) {
            const int nthreads = NTHREADS[t];
            int have_first = 0;
            for (size_t k = 0; k < COUNT(IMPLS); k++) {
                const int impl = IMPLS[k];
                if (!conv_bf16_available(impl)) continue;
                float *y = out, *dx = out + p.ny, *dw = dx + p.nx, *db = dw + p.nw;
                Conv2d l = {.C = s.C, .OC = s.OC, .K = s.K, .w = p.w, .b = p.b, .dw = dw, .db = db,
                            .kernel = CONV_KERNEL_DIRECT, .bf16 = impl};
                float *scratch = alloc_scratch(&l, s.H, s.W, nthreads);
                test_fill_nan(out, nout);
                memset(dw, 0, sizeof(float) * (p.nw + p.nb));
                conv2d_forward(y, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
                conv2d_backward(dx, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
                char name[160];
                snprintf(name, sizeof name, "N%d C%d OC%d %dx%d K%d nthreads %d bf16 %s", s.N, s.C, s.OC, s.H,
                         s.W, s.K, nthreads, impl == CONV_BF16_NATIVE ? "native" : "emulated");
                printf("%s\n", name);
                assert_true(ref_check("y", y, yref, p.ny, FWD_ATOL, FWD_RTOL, tmp));
                assert_true(ref_check("dx", dx, gx, p.nx, BWD_ATOL, BWD_RTOL, tmp));
                assert_true(ref_check("dw", dw, gw, p.nw, BWD_ATOL, BWD_RTOL, tmp));
                assert_true(ref_check("db", db, gb, p.nb, BWD_ATOL, BWD_RTOL, tmp));
                /* the operands really were rounded */
                assert_true(max_diff(y, yun, p.ny) > VISIBLE * max_diff(y, yref, p.ny));
                assert_true(max_diff(dw, gwu, p.nw) > VISIBLE * max_diff(dw, gw, p.nw));
                if (!have_first) {
                    memcpy(first, out, sizeof(float) * nout);
                    have_first = 1;
                } else { /* native == emulated, bit for bit */
                    assert_true(check_tensor("native vs emulated (y, dx, dw, db)", out, first, nout, 0.0, 0.0));
                }
                free(scratch);
            }
        }
        free(yref); free(yun); free(gx); free(gw); free(gb); free(gwu); free(out); free(first); free(tmp);
        problem_free(&p);
    }
}

/* The fused passes with bf16 = the unfused bf16 calls. */
static void test_fused_match_unfused(void **state)
{
    (void)state;
    if (skip_all()) return;
    static const Shape FUSED[] = {{3, 3, 5, 8, 6, 3}, {2, 16, 16, 16, 64, 3}, {2, 7, 2, 10, 14, 5}, {4, 8, 9, 2, 2, 3}};
    for (size_t i = 0; i < COUNT(FUSED); i++) {
        const Shape s = FUSED[i];
        Problem p;
        problem_init(&p, s, 5000 + i);
        const size_t ng = p.nw + p.nb, npool = p.ny / 4, nsmall = p.nx / 4;
        float *y = xmalloc(sizeof(float) * p.ny), *yf = xmalloc(sizeof(float) * p.ny);
        float *yp = xmalloc(sizeof(float) * npool), *ypf = xmalloc(sizeof(float) * npool);
        float *g = xmalloc(sizeof(float) * p.ny), *dx = xmalloc(sizeof(float) * p.nx);
        float *dxf = xmalloc(sizeof(float) * p.nx), *grad = xmalloc(sizeof(float) * ng);
        float *gradf = xmalloc(sizeof(float) * ng), *a = xmalloc(sizeof(float) * nsmall);
        float *xup = xmalloc(sizeof(float) * p.nx), *da = xmalloc(sizeof(float) * nsmall);
        float *daf = xmalloc(sizeof(float) * nsmall);
        uint64_t seed = 6000 + i;
        test_fill_uniform(a, nsmall, &seed, -1.0f, 1.0f);
        for (size_t k = 0; k < COUNT(IMPLS); k++) {
            const int impl = IMPLS[k];
            if (!conv_bf16_available(impl)) continue;
            for (size_t t = 0; t < COUNT(NTHREADS); t++) {
                const int nt = NTHREADS[t];
                Conv2d l = {.C = s.C, .OC = s.OC, .K = s.K, .w = p.w, .b = p.b, .dw = grad, .db = grad + p.nw,
                            .kernel = CONV_KERNEL_DIRECT, .fuse = CONV_FUSE_RELU, .bf16 = impl};
                Conv2d lf = l;
                lf.dw = gradf;
                lf.db = gradf + p.nw;
                float *scratch = alloc_scratch(&l, s.H, s.W, nt);
                /* conv (ReLU) -> max-pool */
                conv2d_forward(y, p.x, &l, s.N, s.H, s.W, scratch, nt);
                maxpool2x2_forward(yp, y, s.N, s.OC, s.H, s.W);
                conv2d_forward_maxpool(yf, 1, ypf, p.x, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("bf16 fused maxpool y", yf, y, p.ny, 0.0, 0.0));
                assert_true(check_tensor("bf16 fused maxpool yp", ypf, yp, npool, 0.0, 0.0));
                test_fill_uniform(yp, npool, &seed, -1.0f, 1.0f); /* dL/d(pooled output) */
                maxpool2x2_backward_relu(g, yp, y, s.N, s.OC, s.H, s.W);
                memset(grad, 0, sizeof(float) * ng);
                memset(gradf, 0, sizeof(float) * ng);
                conv2d_backward(dx, g, p.x, &l, s.N, s.H, s.W, scratch, nt);
                conv2d_backward_maxpool(dxf, yp, y, p.x, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("bf16 fused maxpool dx", dxf, dx, p.nx, 0.0, 0.0));
                assert_true(check_tensor("bf16 fused maxpool dw db", gradf, grad, ng, BWD_ATOL, BWD_RTOL));
                /* upsample -> conv (no ReLU on the conv), a from a ReLU */
                l.fuse = lf.fuse = 0;
                upsample2x_forward(xup, a, s.N, s.C, s.H / 2, s.W / 2);
                conv2d_forward(y, xup, &l, s.N, s.H, s.W, scratch, nt);
                conv2d_forward_upsample(yf, a, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("bf16 fused upsample y", yf, y, p.ny, 0.0, 0.0));
                memset(grad, 0, sizeof(float) * ng);
                memset(gradf, 0, sizeof(float) * ng);
                conv2d_backward(dx, p.r, xup, &l, s.N, s.H, s.W, scratch, nt);
                upsample2x_backward_relu(da, dx, a, s.N, s.C, s.H / 2, s.W / 2);
                conv2d_backward_upsample(daf, p.r, a, 1, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("bf16 fused upsample da", daf, da, nsmall, 0.0, 0.0));
                assert_true(check_tensor("bf16 fused upsample dw db", gradf, grad, ng, BWD_ATOL, BWD_RTOL));
                free(scratch);
            }
        }
        free(y); free(yf); free(yp); free(ypf); free(g); free(dx); free(dxf); free(grad); free(gradf);
        free(a); free(xup); free(da); free(daf);
        problem_free(&p);
    }
}

/* CONV_FUSE_DX_RELU with bf16: dx masked by x > 0 equals the unmasked dx
 * masked afterwards, bit for bit. */
static void test_dx_relu_mask(void **state)
{
    (void)state;
    if (skip_all()) return;
    const Shape s = {3, 6, 5, 9, 7, 3};
    Problem p;
    problem_init(&p, s, 7000);
    for (size_t i = 0; i < p.nx; i++) p.x[i] = p.x[i] > 0.3f ? p.x[i] : 0.0f; /* a ReLU output */
    float *dx = xmalloc(sizeof(float) * p.nx), *dxm = xmalloc(sizeof(float) * p.nx);
    float *grad = xcalloc(p.nw + p.nb, sizeof(float));
    for (size_t k = 0; k < COUNT(IMPLS); k++) {
        if (!conv_bf16_available(IMPLS[k])) continue;
        Conv2d l = {.C = s.C, .OC = s.OC, .K = s.K, .w = p.w, .b = p.b, .dw = grad, .db = grad + p.nw,
                    .kernel = CONV_KERNEL_DIRECT, .bf16 = IMPLS[k]};
        float *scratch = alloc_scratch(&l, s.H, s.W, 2);
        conv2d_backward(dx, p.r, p.x, &l, s.N, s.H, s.W, scratch, 2);
        for (size_t i = 0; i < p.nx; i++) dx[i] = p.x[i] > 0.0f ? dx[i] : 0.0f;
        l.fuse = CONV_FUSE_DX_RELU;
        conv2d_backward(dxm, p.r, p.x, &l, s.N, s.H, s.W, scratch, 2);
        assert_true(check_tensor("bf16 dx with the ReLU mask", dxm, dx, p.nx, 0.0, 0.0));
        free(scratch);
    }
    free(dx); free(dxm); free(grad);
    problem_free(&p);
}

/* conv_bf16_dot_speedup: 0 without AVX512_BF16; else a plausible rate
 * (about 0.5 on the Intel Xeons, 2.0 on AMD Zen 4 and 5 measured here),
 * measured once (the same value again), and conv_bf16_auto_runs_bf16 is
 * exactly "native and at least CONV_BF16_AUTO_MIN_SPEEDUP". */
static void test_dot_speedup_probe(void **state)
{
    (void)state;
    const double s = conv_bf16_dot_speedup();
    if (!conv_bf16_available(CONV_BF16_NATIVE)) {
        assert_true(s == 0.0);
        assert_int_equal(conv_bf16_auto_runs_bf16(), 0);
        return;
    }
    print_message("VDPBF16PS multiply-adds per second / float32 FMA's: %.3f\n", s);
    assert_true(s >= 0.2 && s <= 4.0);
    assert_true(conv_bf16_dot_speedup() == s);
    assert_int_equal(conv_bf16_auto_runs_bf16(), s >= CONV_BF16_AUTO_MIN_SPEEDUP);
}

/* --precision auto from the ranks' agreement, and the log line that says
 * why it runs fp32 on CPUs with AVX512_BF16. */
static void test_auto_precision_and_note(void **state)
{
    (void)state;
    assert_int_equal(model_precision_resolve(MODEL_PRECISION_AUTO, 1), MODEL_BF16);
    assert_int_equal(model_precision_resolve(MODEL_PRECISION_AUTO, 0), MODEL_FP32);
    assert_int_equal(model_precision_resolve(MODEL_FP32, 1), MODEL_FP32);
    assert_int_equal(model_precision_resolve(MODEL_BF16, 0), MODEL_BF16);
    char note[256];
    assert_int_equal(model_precision_auto_note(note, sizeof note, 0, 0.5015, 1), 1);
    assert_string_equal(note, "auto runs fp32: VDPBF16PS does 0.50x the multiply-adds per second of float32 FMAs on "
                              "this CPU (bf16 pays from 1.4x); --precision bf16 runs it anyway");
    assert_int_equal(model_precision_auto_note(note, sizeof note, 0, 1.2, 4), 1);
    assert_non_null(strstr(note, "1.20x the multiply-adds per second of float32 FMAs on the slowest rank's CPU"));
    assert_int_equal(model_precision_auto_note(note, sizeof note, 1, 2.0, 1), 0); /* bf16 runs */
    assert_string_equal(note, "");
    assert_int_equal(model_precision_auto_note(note, sizeof note, 0, 0.0, 2), 0); /* a rank lacks AVX512_BF16 */
    assert_string_equal(note, "");
    char small[16];
    assert_int_equal(model_precision_auto_note(small, sizeof small, 0, 0.5, 1), 1);
    assert_int_equal(strlen(small), sizeof small - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dot_speedup_probe),
        cmocka_unit_test(test_auto_precision_and_note),
        cmocka_unit_test(test_forward_backward_match_reference),
        cmocka_unit_test(test_fused_match_unfused),
        cmocka_unit_test(test_dx_relu_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
