/*
 * test_conv2d.c - conv2d forward/backward (im2col + BLAS, OpenMP over images)
 * against the naive double-precision reference in naive_ref.h and central
 * finite differences of L = sum(r * y) computed on that reference.
 *
 * Shapes cover 1x1 images (all padding), odd H/W, C=1, OC=1, N=1 and 5,
 * K=3 and 5 (padding wider than the image), 28x28x1, 7x7x8 and 64x64x3, each
 * run with nthreads 1 and 3 (3 > N exercises the team-size clamp) and with
 * every GEMM kernel this CPU can run (generic OpenBLAS; AVX-512 if present).
 * 4x32x8 at 9x9 gives C*K*K = 288, past the AVX-512 kernels' k block.
 * For the direct kernels (pixel vectors of 16 lanes, tiles of 6 vectors x 4
 * channels): planes that are not a multiple of 16 pixels (vectors cross
 * rows and end in a tail), channel counts that leave tails in every tile
 * dimension (5, 6, 7, 9, 13), K = 7 on 8x8 (taps reaching past rows), and
 * widths of 16, 32 and 48 (rows of whole vectors: the row-structured
 * weight-gradient tiles, K = 3 and 5).
 * Fused ReLU (forward) and the ReLU mask of dx (backward) are checked
 * against the unfused results with every kernel, and the forward and
 * backward fused with 2x2 max-pooling or 2x upsampling against the separate
 * calls.  Scratch
 * is allocated with exactly conv2d_scratch_floats floats and filled with NaN,
 * so a sanitizer build catches overruns and any read of stale scratch shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cmocka.h>

#include "base/check.h"
#include "nn/conv2d.h"
#include "nn/maxpool.h"
#include "naive_ref.h"
#include "nn/upsample.h"
#include "testutil.h"

/* Forward: float sums of <= C*K*K = 144 products of values in [-1, 1]. */
#define FWD_ATOL 1e-5
#define FWD_RTOL 1e-5
/* Backward: float sums of up to N*H*W = 784 products (dw), compared with a
 * double finite difference that is exact up to ~1e-11 (L is linear). */
#define BWD_ATOL 1e-4
#define BWD_RTOL 1e-4

typedef struct Shape { int N, C, OC, H, W, K; } Shape;

static const Shape FWD_SHAPES[] = {
    {1, 1, 1, 1, 1, 3}, {1, 1, 1, 5, 7, 3}, {5, 3, 4, 7, 5, 3}, {2, 1, 16, 28, 28, 3},
    {3, 8, 8, 7, 7, 3}, {2, 3, 16, 64, 64, 3}, {2, 2, 3, 6, 9, 5}, {1, 2, 2, 2, 3, 5},
    {4, 16, 1, 9, 4, 3}, {2, 32, 9, 9, 9, 3}, {3, 7, 13, 14, 14, 3}, {2, 5, 6, 32, 32, 3},
    {3, 4, 5, 8, 8, 7},
};
static const Shape BWD_SHAPES[] = {
    {1, 1, 1, 1, 1, 3}, {1, 1, 1, 5, 7, 3}, {5, 3, 4, 7, 5, 3}, {2, 2, 3, 6, 9, 5},
    {1, 2, 2, 2, 3, 5}, {3, 8, 8, 7, 7, 3}, {2, 1, 4, 28, 28, 3}, {3, 5, 6, 5, 5, 3},
    {2, 7, 9, 4, 4, 3}, {2, 3, 5, 4, 16, 3}, {1, 7, 6, 3, 32, 3}, {1, 2, 3, 5, 48, 5},
    /* the direct weight gradient's row tile (C >= 6, W a multiple of 16) with
     * 5x5 taps: 3 vectors per row (first / last masked), and 1 (one mask) */
    {1, 7, 3, 5, 48, 5}, {2, 7, 6, 5, 16, 5},
};
static const int NTHREADS[] = {1, 3};
static const ConvKernel KERNELS[] = {CONV_KERNEL_GENERIC, CONV_KERNEL_AVX512, CONV_KERNEL_DIRECT};

/* 1 if this CPU runs kernel k as asked (AVX-512 only where supported). */
static int kernel_runs(ConvKernel k)
{
    return conv2d_kernel_resolve(k, 3) == k;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* One problem: float tensors for the kernel, double copies for the reference. */
typedef struct Problem {
    Shape s;
    size_t nx, ny, nw, nb;
    float *x, *w, *b, *r;          /* r = dL/dy of L = sum(r * y) */
    double *xd, *wd, *bd, *rd, *yd; /* reference copies, yd scratch output */
} Problem;

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
    p->xd = xmalloc(sizeof(double) * p->nx);
    p->wd = xmalloc(sizeof(double) * p->nw);
    p->bd = xmalloc(sizeof(double) * p->nb);
    p->rd = xmalloc(sizeof(double) * p->ny);
    p->yd = xmalloc(sizeof(double) * p->ny);
    ref_to_double(p->xd, p->x, p->nx);
    ref_to_double(p->wd, p->w, p->nw);
    ref_to_double(p->bd, p->b, p->nb);
    ref_to_double(p->rd, p->r, p->ny);
}

static void problem_free(Problem *p)
{
    free(p->x); free(p->w); free(p->b); free(p->r);
    free(p->xd); free(p->wd); free(p->bd); free(p->rd); free(p->yd);
}

/* L = sum(r * conv(x; w, b)) on the double reference. */
static double problem_loss(void *ctx)
{
    Problem *p = ctx;
    const Shape s = p->s;
    ref_conv2d(p->yd, p->xd, p->wd, p->bd, s.N, s.C, s.OC, s.H, s.W, s.K);
    return ref_dot(p->rd, p->yd, p->ny);
}

static float *alloc_scratch(const Conv2d *l, int H, int W, int nthreads)
{
    const size_t n = conv2d_scratch_floats(l, H, W, nthreads);
    float *s = xmalloc(sizeof(float) * n);
    test_fill_nan(s, n);
    return s;
}

static Conv2d layer_of(const Problem *p, float *dw, float *db)
{
    Conv2d l = {.C = p->s.C, .OC = p->s.OC, .K = p->s.K, .w = p->w, .b = p->b, .dw = dw, .db = db};
    return l;
}

static void test_forward_matches_naive(void **state)
{
    (void)state;
    for (size_t i = 0; i < COUNT(FWD_SHAPES); i++) {
        Problem p;
        const Shape s = FWD_SHAPES[i];
        problem_init(&p, s, 1000 + i);
        ref_conv2d(p.yd, p.xd, p.wd, p.bd, s.N, s.C, s.OC, s.H, s.W, s.K);
        float *y = xmalloc(sizeof(float) * p.ny);
        double *tmp = xmalloc(sizeof(double) * p.ny);
        for (size_t t = 0; t < COUNT(NTHREADS) * COUNT(KERNELS); t++) {
            const ConvKernel kern = KERNELS[t / COUNT(NTHREADS)];
            const int nthreads = NTHREADS[t % COUNT(NTHREADS)];
            if (!kernel_runs(kern)) continue;
            Conv2d l = layer_of(&p, NULL, NULL);
            l.kernel = kern;
            float *scratch = alloc_scratch(&l, s.H, s.W, nthreads);
            test_fill_nan(y, p.ny);  /* y must be overwritten */
            conv2d_forward(y, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
            char name[128];
            snprintf(name, sizeof name, "y N%d C%d OC%d %dx%d K%d nthreads %d kernel %s", s.N, s.C, s.OC, s.H, s.W,
                     s.K, nthreads, conv2d_kernel_name(kern));
            assert_true(ref_check(name, y, p.yd, p.ny, FWD_ATOL, FWD_RTOL, tmp));
            free(scratch);
        }
        free(y);
        free(tmp);
        problem_free(&p);
    }
}

static void test_backward_matches_finite_differences(void **state)
{
    (void)state;
    for (size_t i = 0; i < COUNT(BWD_SHAPES); i++) {
        Problem p;
        const Shape s = BWD_SHAPES[i];
        problem_init(&p, s, 2000 + i);
        double *gx = xmalloc(sizeof(double) * p.nx), *gw = xmalloc(sizeof(double) * p.nw);
        double *gb = xmalloc(sizeof(double) * p.nb);
        ref_grad_fd(gx, p.xd, p.nx, problem_loss, &p, REF_FD_EPS);
        ref_grad_fd(gw, p.wd, p.nw, problem_loss, &p, REF_FD_EPS);
        ref_grad_fd(gb, p.bd, p.nb, problem_loss, &p, REF_FD_EPS);
        float *dx = xmalloc(sizeof(float) * p.nx), *dw = xmalloc(sizeof(float) * p.nw);
        float *db = xmalloc(sizeof(float) * p.nb);
        double *tmp = xmalloc(sizeof(double) * (p.nx + p.nw + p.nb));
        for (size_t t = 0; t < COUNT(NTHREADS) * COUNT(KERNELS); t++) {
            const ConvKernel kern = KERNELS[t / COUNT(NTHREADS)];
            const int nthreads = NTHREADS[t % COUNT(NTHREADS)];
            if (!kernel_runs(kern)) continue;
            Conv2d l = layer_of(&p, dw, db);
            l.kernel = kern;
            float *scratch = alloc_scratch(&l, s.H, s.W, nthreads);
            memset(dw, 0, sizeof(float) * p.nw);
            memset(db, 0, sizeof(float) * p.nb);
            test_fill_nan(dx, p.nx);  /* dx must be overwritten */
            conv2d_backward(dx, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
            char name[3][128];
            const char *what[3] = {"dx", "dw", "db"};
            for (int k = 0; k < 3; k++)
                snprintf(name[k], sizeof name[k], "%s N%d C%d OC%d %dx%d K%d nthreads %d kernel %s", what[k], s.N,
                         s.C, s.OC, s.H, s.W, s.K, nthreads, conv2d_kernel_name(kern));
            assert_true(ref_check(name[0], dx, gx, p.nx, BWD_ATOL, BWD_RTOL, tmp));
            assert_true(ref_check(name[1], dw, gw, p.nw, BWD_ATOL, BWD_RTOL, tmp));
            assert_true(ref_check(name[2], db, gb, p.nb, BWD_ATOL, BWD_RTOL, tmp));
            free(scratch);
        }
        free(gx); free(gw); free(gb); free(dx); free(dw); free(db); free(tmp);
        problem_free(&p);
    }
}

/* dw/db are accumulated: start from nonzero values P, one call gives P + G,
 * a second call P + 2G; dx is overwritten, not accumulated, and dx == NULL
 * gives the same dw/db. */
static void test_backward_accumulates_and_dx_null(void **state)
{
    (void)state;
    const Shape s = {5, 3, 4, 7, 5, 3};
    const int nthreads = 3;
    Problem p;
    problem_init(&p, s, 3000);
    const size_t np = p.nw + p.nb;
    float *g1 = xcalloc(np, sizeof(float)), *acc = xmalloc(sizeof(float) * np);
    float *init = xmalloc(sizeof(float) * np), *want = xmalloc(sizeof(float) * np);
    float *dx1 = xmalloc(sizeof(float) * p.nx), *dx2 = xmalloc(sizeof(float) * p.nx);
    uint64_t seed = 3001;
    test_fill_uniform(init, np, &seed, -1.0f, 1.0f);

    Conv2d l = layer_of(&p, g1, g1 + p.nw);
    float *scratch = alloc_scratch(&l, s.H, s.W, nthreads);
    conv2d_backward(dx1, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);  /* G from zero */

    memcpy(acc, init, sizeof(float) * np);
    l.dw = acc;
    l.db = acc + p.nw;
    conv2d_backward(dx2, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
    for (size_t i = 0; i < np; i++) want[i] = init[i] + g1[i];
    assert_true(check_tensor("P + G", acc, want, np, 1e-6, 1e-6));
    assert_true(check_tensor("dx overwritten", dx2, dx1, p.nx, 0.0, 0.0));

    conv2d_backward(NULL, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
    for (size_t i = 0; i < np; i++) want[i] = init[i] + 2.0f * g1[i];
    assert_true(check_tensor("P + 2G (dx NULL)", acc, want, np, 1e-5, 1e-5));

    memset(acc, 0, sizeof(float) * np);
    conv2d_backward(NULL, p.r, p.x, &l, s.N, s.H, s.W, scratch, nthreads);
    conv2d_backward(NULL, p.r, p.x, &l, s.N, s.H, s.W, scratch, 1);
    for (size_t i = 0; i < np; i++) want[i] = 2.0f * g1[i];
    assert_true(check_tensor("2G from zero", acc, want, np, 1e-5, 1e-5));

    free(scratch); free(g1); free(acc); free(init); free(want); free(dx1); free(dx2);
    problem_free(&p);
}

/* Kernel names parse to their enum; unknown names are AE_EARG with the
 * variable named; "avx512" is accepted exactly when the CPU can run it. */
static void test_kernel_parse(void **state)
{
    (void)state;
    ConvKernel k = CONV_KERNEL_GENERIC;
    Err err;
    assert_int_equal(conv2d_kernel_parse(&k, NULL, &err), AE_OK);
    assert_int_equal(k, CONV_KERNEL_AUTO);
    assert_int_equal(conv2d_kernel_parse(&k, "generic", &err), AE_OK);
    assert_int_equal(k, CONV_KERNEL_GENERIC);
    assert_int_equal(conv2d_kernel_parse(&k, "auto", &err), AE_OK);
    assert_int_equal(k, CONV_KERNEL_AUTO);
    assert_int_equal(conv2d_kernel_parse(&k, "avx9000", &err), AE_EARG);
    assert_non_null(strstr(err.msg, CONV2D_KERNEL_ENV));
    assert_int_equal(k, CONV_KERNEL_AUTO);
    const int rc = conv2d_kernel_parse(&k, "avx512", &err);
    assert_int_equal(rc, kernel_runs(CONV_KERNEL_AVX512) ? AE_OK : AE_EARG);
    assert_int_equal(conv2d_kernel_resolve(CONV_KERNEL_GENERIC, 3), CONV_KERNEL_GENERIC);
    assert_int_not_equal(conv2d_kernel_resolve(CONV_KERNEL_AUTO, 3), CONV_KERNEL_AUTO);
}

/* CONV_FUSE_RELU gives torch.relu of the plain output (NaN excepted: none
 * here) and CONV_FUSE_DX_RELU gives x > 0 ? dx : 0 of the plain dx, bit for
 * bit, with every kernel; dw and db do not change. */
static void test_fused_relu(void **state)
{
    (void)state;
    const Shape shapes[] = {{3, 5, 6, 9, 7, 3}, {2, 16, 8, 16, 16, 3}};
    for (size_t i = 0; i < COUNT(shapes); i++) {
        const Shape s = shapes[i];
        Problem p;
        problem_init(&p, s, 4000 + i);
        float *y = xmalloc(sizeof(float) * p.ny), *yf = xmalloc(sizeof(float) * p.ny);
        float *dx = xmalloc(sizeof(float) * p.nx), *dxf = xmalloc(sizeof(float) * p.nx);
        float *g = xcalloc(p.nw + p.nb, sizeof(float)), *gf = xcalloc(p.nw + p.nb, sizeof(float));
        for (size_t k = 0; k < COUNT(KERNELS); k++) {
            if (!kernel_runs(KERNELS[k])) continue;
            Conv2d l = layer_of(&p, g, g + p.nw), lf = layer_of(&p, gf, gf + p.nw);
            l.kernel = lf.kernel = KERNELS[k];
            lf.fuse = CONV_FUSE_RELU | CONV_FUSE_DX_RELU;
            float *scratch = alloc_scratch(&l, s.H, s.W, 2);
            conv2d_forward(y, p.x, &l, s.N, s.H, s.W, scratch, 2);
            conv2d_forward(yf, p.x, &lf, s.N, s.H, s.W, scratch, 2);
            for (size_t j = 0; j < p.ny; j++) y[j] = y[j] > 0.0f ? y[j] : 0.0f;
            assert_true(check_tensor(conv2d_kernel_name(KERNELS[k]), yf, y, p.ny, 0.0, 0.0));
            memset(g, 0, sizeof(float) * (p.nw + p.nb));
            memset(gf, 0, sizeof(float) * (p.nw + p.nb));
            conv2d_backward(dx, p.r, p.x, &l, s.N, s.H, s.W, scratch, 2);
            conv2d_backward(dxf, p.r, p.x, &lf, s.N, s.H, s.W, scratch, 2);
            for (size_t j = 0; j < p.nx; j++) dx[j] = p.x[j] > 0.0f ? dx[j] : 0.0f;
            assert_true(check_tensor("dx relu mask", dxf, dx, p.nx, 0.0, 0.0));
            assert_true(check_tensor("dw db unchanged by fusion", gf, g, p.nw + p.nb, 0.0, 0.0));
            free(scratch);
        }
        free(y); free(yf); free(dx); free(dxf); free(g); free(gf);
        problem_free(&p);
    }
}

/* conv2d_forward_maxpool = conv2d_forward then maxpool2x2_forward, bit for
 * bit, with the ReLU fused as the model runs it; keep_y = 1 also gives y
 * bit for bit, keep_y = 0 leaves y untouched with the direct kernel.
 * Shapes: planes not a multiple of 16 pixels (28x28, 14x8: vectors cross
 * rows), 64x64 (4 vectors per row), N = 1 with 3 threads (team clamp),
 * N = 5 split unevenly over 3 threads, K = 5, 1 and 3 output channels. */
static void test_fused_maxpool(void **state)
{
    (void)state;
    const Shape shapes[] = {{5, 16, 8, 28, 28, 3}, {1, 3, 16, 64, 64, 3}, {3, 5, 6, 14, 8, 3},
                            {2, 4, 3, 6, 6, 5}, {4, 16, 1, 2, 2, 3}};
    for (size_t i = 0; i < COUNT(shapes); i++) {
        const Shape s = shapes[i];
        Problem p;
        problem_init(&p, s, 5000 + i);
        const size_t np = p.ny / 4;
        float *y = xmalloc(sizeof(float) * p.ny), *yf = xmalloc(sizeof(float) * p.ny);
        float *yp = xmalloc(sizeof(float) * np), *ypf = xmalloc(sizeof(float) * np);
        for (size_t k = 0; k < COUNT(KERNELS); k++) {
            if (!kernel_runs(KERNELS[k])) continue;
            for (size_t t = 0; t < COUNT(NTHREADS); t++) {
                const int nt = NTHREADS[t];
                Conv2d l = layer_of(&p, NULL, NULL);
                l.kernel = KERNELS[k];
                l.fuse = CONV_FUSE_RELU;
                float *scratch = alloc_scratch(&l, s.H, s.W, nt);
                conv2d_forward(y, p.x, &l, s.N, s.H, s.W, scratch, nt);
                maxpool2x2_forward(yp, y, s.N, s.OC, s.H, s.W);
                for (int keep = 1; keep >= 0; keep--) {
                    test_fill_nan(yf, p.ny);
                    test_fill_nan(ypf, np);
                    conv2d_forward_maxpool(yf, keep, ypf, p.x, &l, s.N, s.H, s.W, scratch, nt);
                    assert_true(check_tensor("pooled", ypf, yp, np, 0.0, 0.0));
                    if (keep || KERNELS[k] != CONV_KERNEL_DIRECT) {
                        assert_true(check_tensor("conv output kept", yf, y, p.ny, 0.0, 0.0));
                    } else {
                        size_t written = 0;
                        for (size_t j = 0; j < p.ny; j++) written += yf[j] == yf[j];
                        assert_int_equal(written, 0);
                    }
                }
                free(scratch);
            }
        }
        free(y); free(yf); free(yp); free(ypf);
        problem_free(&p);
    }
}

/* conv2d_backward_maxpool = maxpool2x2_backward_relu then conv2d_backward
 * (direct kernel): dx bit for bit (with and without the ReLU mask of dx),
 * dw and db (accumulated onto nonzero values) up to float summation order;
 * dx = NULL leaves dx alone and gives the same dw. */
static void test_fused_maxpool_backward(void **state)
{
    (void)state;
    if (!kernel_runs(CONV_KERNEL_DIRECT)) skip();
    const Shape shapes[] = {{5, 16, 8, 28, 28, 3}, {1, 3, 16, 64, 64, 3}, {3, 5, 6, 14, 8, 3},
                            {2, 4, 3, 6, 6, 5}, {4, 16, 1, 2, 2, 3}, {3, 8, 16, 16, 32, 3},
                            {7, 8, 8, 48, 48, 3}}; /* chunks of 3 images: 3 + 3 + 1 on one thread */
    for (size_t i = 0; i < COUNT(shapes); i++) {
        const Shape s = shapes[i];
        Problem p;
        problem_init(&p, s, 6000 + i);
        const size_t np = p.ny / 4, ng = p.nw + p.nb;
        float *y = xmalloc(sizeof(float) * p.ny), *yp = xmalloc(sizeof(float) * np);
        float *g = xmalloc(sizeof(float) * p.ny);
        float *dx = xmalloc(sizeof(float) * p.nx), *dxf = xmalloc(sizeof(float) * p.nx);
        float *grad = xmalloc(sizeof(float) * ng), *gradf = xmalloc(sizeof(float) * ng);
        for (size_t t = 0; t < COUNT(NTHREADS); t++)
            for (int dx_relu = 0; dx_relu <= 1; dx_relu++) {
                const int nt = NTHREADS[t];
                Conv2d l = layer_of(&p, grad, grad + p.nw), lf = layer_of(&p, gradf, gradf + p.nw);
                l.kernel = lf.kernel = CONV_KERNEL_DIRECT;
                l.fuse = lf.fuse = CONV_FUSE_RELU | (dx_relu ? CONV_FUSE_DX_RELU : 0);
                float *scratch = alloc_scratch(&l, s.H, s.W, nt);
                conv2d_forward_maxpool(y, 1, yp, p.x, &l, s.N, s.H, s.W, scratch, nt);
                /* the pooled gradient: r's first np values */
                for (size_t j = 0; j < ng; j++) grad[j] = gradf[j] = 0.25f * (float)(j % 7) - 0.5f;
                maxpool2x2_backward_relu(g, p.r, y, s.N, s.OC, s.H, s.W);
                conv2d_backward(dx, g, p.x, &l, s.N, s.H, s.W, scratch, nt);
                test_fill_nan(dxf, p.nx);
                conv2d_backward_maxpool(dxf, p.r, y, p.x, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("fused dx", dxf, dx, p.nx, 0.0, 0.0));
                assert_true(check_tensor("fused dw db", gradf, grad, ng, 1e-5, 1e-5));
                for (size_t j = 0; j < ng; j++) gradf[j] = 0.25f * (float)(j % 7) - 0.5f;
                test_fill_nan(dxf, p.nx);
                conv2d_backward_maxpool(NULL, p.r, y, p.x, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("fused dw db, dx NULL", gradf, grad, ng, 1e-5, 1e-5));
                size_t written = 0;
                for (size_t j = 0; j < p.nx; j++) written += dxf[j] == dxf[j];
                assert_int_equal(written, 0);
                free(scratch);
            }
        free(y); free(yp); free(g); free(dx); free(dxf); free(grad); free(gradf);
        problem_free(&p);
    }
}

/* conv2d_forward_upsample / conv2d_backward_upsample (direct kernel) =
 * upsample2x_forward + conv2d_forward, and conv2d_backward + upsample2x_backward
 * (_relu): y and da bit for bit, dw/db (accumulated onto nonzero values) up
 * to float summation order; da = NULL gives the same dw. */
static void test_fused_upsample(void **state)
{
    (void)state;
    if (!kernel_runs(CONV_KERNEL_DIRECT)) skip();
    /* H, W of the conv (upsampled); a is H/2 x W/2 */
    const Shape shapes[] = {{5, 16, 1, 28, 28, 3}, {2, 32, 16, 32, 32, 3}, {3, 5, 6, 14, 8, 3},
                            {2, 4, 3, 6, 6, 5}, {4, 16, 16, 2, 2, 3}, {7, 8, 8, 48, 48, 3}};
    for (size_t i = 0; i < COUNT(shapes); i++) {
        const Shape s = shapes[i];
        Problem p;
        problem_init(&p, s, 7000 + i);
        const size_t na = p.nx / 4, ng = p.nw + p.nb;
        /* a = a quarter-size input with some negative values (ReLU mask) */
        float *a = xmalloc(sizeof(float) * na), *xup = xmalloc(sizeof(float) * p.nx);
        for (size_t j = 0; j < na; j++) a[j] = p.x[j];
        float *y = xmalloc(sizeof(float) * p.ny), *yf = xmalloc(sizeof(float) * p.ny);
        float *dxup = xmalloc(sizeof(float) * p.nx);
        float *da = xmalloc(sizeof(float) * na), *daf = xmalloc(sizeof(float) * na);
        float *grad = xmalloc(sizeof(float) * ng), *gradf = xmalloc(sizeof(float) * ng);
        upsample2x_forward(xup, a, s.N, s.C, s.H / 2, s.W / 2);
        for (size_t t = 0; t < COUNT(NTHREADS); t++)
            for (int relu = 0; relu <= 1; relu++) {
                const int nt = NTHREADS[t];
                Conv2d l = layer_of(&p, grad, grad + p.nw), lf = layer_of(&p, gradf, gradf + p.nw);
                l.kernel = lf.kernel = CONV_KERNEL_DIRECT;
                l.fuse = lf.fuse = relu ? CONV_FUSE_RELU : 0;
                float *scratch = alloc_scratch(&l, s.H, s.W, nt);
                conv2d_forward(y, xup, &l, s.N, s.H, s.W, scratch, nt);
                test_fill_nan(yf, p.ny);
                conv2d_forward_upsample(yf, a, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("fused upsample y", yf, y, p.ny, 0.0, 0.0));
                for (size_t j = 0; j < ng; j++) grad[j] = gradf[j] = 0.25f * (float)(j % 7) - 0.5f;
                conv2d_backward(dxup, p.r, xup, &l, s.N, s.H, s.W, scratch, nt);
                if (relu)
                    upsample2x_backward_relu(da, dxup, a, s.N, s.C, s.H / 2, s.W / 2);
                else
                    upsample2x_backward(da, dxup, s.N, s.C, s.H / 2, s.W / 2);
                test_fill_nan(daf, na);
                conv2d_backward_upsample(daf, p.r, a, relu, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("fused upsample da", daf, da, na, 0.0, 0.0));
                assert_true(check_tensor("fused upsample dw db", gradf, grad, ng, BWD_ATOL, BWD_RTOL));
                for (size_t j = 0; j < ng; j++) gradf[j] = 0.25f * (float)(j % 7) - 0.5f;
                conv2d_backward_upsample(NULL, p.r, a, relu, &lf, s.N, s.H, s.W, scratch, nt);
                assert_true(check_tensor("fused upsample dw db, da NULL", gradf, grad, ng, BWD_ATOL, BWD_RTOL));
                free(scratch);
            }
        free(a); free(xup); free(y); free(yf); free(dxup); free(da); free(daf); free(grad); free(gradf);
        problem_free(&p);
    }
}

/* The scratch size grows with the thread count and covers a col matrix per thread. */
static void test_scratch_size(void **state)
{
    (void)state;
    const Conv2d l = {.C = 3, .OC = 16, .K = 3};
    const size_t one = conv2d_scratch_floats(&l, 64, 64, 1);
    assert_true(one >= (size_t)3 * 9 * 64 * 64 + 16 * 3 * 9 + 16);
    /* per-thread slices plus shared packed weights and masks (direct kernels) */
    const size_t four = conv2d_scratch_floats(&l, 64, 64, 4);
    assert_true(four > 3 * one && four <= 4 * one);
}

int main(void)
{
    /* BLAS must be single-threaded inside the OpenMP image loop (conv2d.h). */
    openblas_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_naive),
        cmocka_unit_test(test_backward_matches_finite_differences),
        cmocka_unit_test(test_backward_accumulates_and_dx_null),
        cmocka_unit_test(test_scratch_size),
        cmocka_unit_test(test_fused_relu),
        cmocka_unit_test(test_fused_maxpool),
        cmocka_unit_test(test_fused_maxpool_backward),
        cmocka_unit_test(test_fused_upsample),
        cmocka_unit_test(test_kernel_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
