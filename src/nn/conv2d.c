/*
 * conv2d.c - KxK stride-1 'same' convolution via im2col + GEMM (layout and
 * GEMM shapes: conv2d.h); the GEMMs run on OpenBLAS or on aesim's AVX-512
 * kernels as Conv2d.kernel says (resolved once per call).
 *
 * Threading: one OpenMP team of T = min(nthreads, N) threads; each thread
 * takes a contiguous block of images and runs single-threaded GEMMs on its
 * own scratch slice (owner-writes: a thread writes only its images' y/dx and
 * its own slice).  The weight gradient is summed per thread into a private
 * partial and the partials are added into l->dw/l->db afterwards in thread
 * order, so no atomics and a fixed summation order for a given T.
 * Does not allocate; does not call MPI.
 *
 * Performance (measured, issue 6; bench/bench_train --profile): the three
 * GEMMs were ~70% of conv time with OpenBLAS 0.3.21 at ~25 GFLOP/s per core
 * (its DYNAMIC_ARCH picks SSE kernels on this AVX-512 CPU); the AVX-512
 * kernels run the same skinny shapes (M = OC of 3..32 against N = H*W of
 * 64..4096) at 50-130 GFLOP/s per core.  With them (imagenet64 B=128
 * profile) the GEMMs are ~half of conv time; the rest is im2col (a K*K-times
 * larger col matrix written per image), the bias fill, col2im and the db
 * plane sums (the last two vectorised on the AVX-512 path).
 */
#include "nn/conv2d.h"

#include "nn/conv_direct.h"
#include "nn/gemm.h"
#include "nn/gemm_avx512.h"
#include "nn/im2col.h"
#include "nn/maxpool.h"

#include "base/team.h"

#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

int conv2d_kernel_parse(ConvKernel *out, const char *name, Err *err)
{
    if (!name || !*name || strcmp(name, "auto") == 0) {
        *out = CONV_KERNEL_AUTO;
    } else if (strcmp(name, "generic") == 0) {
        *out = CONV_KERNEL_GENERIC;
    } else if (strcmp(name, "avx512") == 0 || strcmp(name, "direct") == 0) {
        if (!gemm_avx512_supported() || !conv_direct_supported())
            return err_set(err, AE_EARG,
                           "%s=%s: this CPU or build has no AVX-512F; use %s=generic or auto (or unset it)",
                           CONV2D_KERNEL_ENV, name, CONV2D_KERNEL_ENV);
        *out = name[0] == 'a' ? CONV_KERNEL_AVX512 : CONV_KERNEL_DIRECT;
    } else {
        return err_set(err, AE_EARG, "%s='%s' is not a conv kernel; use auto, generic, avx512 or direct", CONV2D_KERNEL_ENV,
                       name);
    }
    return AE_OK;
}

ConvKernel conv2d_kernel_resolve(ConvKernel k, int K)
{
    if (k == CONV_KERNEL_GENERIC) return CONV_KERNEL_GENERIC;
    if (!gemm_avx512_supported()) return CONV_KERNEL_GENERIC;
    if (k == CONV_KERNEL_AVX512) return CONV_KERNEL_AVX512;
    if (K * K > CONV_DIRECT_MAX_TAPS || !conv_direct_supported()) return CONV_KERNEL_AVX512;
    return CONV_KERNEL_DIRECT;
}

const char *conv2d_kernel_name(ConvKernel k)
{
    switch (k) {
    case CONV_KERNEL_AUTO: return "auto";
    case CONV_KERNEL_GENERIC: return "generic";
    case CONV_KERNEL_AVX512: return "avx512";
    case CONV_KERNEL_DIRECT: return "direct";
    }
    return "?";
}

/* The three GEMMs of conv2d.h on the resolved kernel kind. */
static void conv_gemm_nn(ConvKernel k, float *c, const float *a, const float *b, int m, int n, int kk, float beta)
{
    if (k == CONV_KERNEL_AVX512) gemm_avx512_nn(c, a, b, m, n, kk, beta);
    else gemm_nn(c, a, b, m, n, kk, beta);
}

static void conv_gemm_nt(ConvKernel k, float *c, const float *a, const float *b, int m, int n, int kk, float beta)
{
    if (k == CONV_KERNEL_AVX512) gemm_avx512_nt(c, a, b, m, n, kk, beta);
    else gemm_nt(c, a, b, m, n, kk, beta);
}

static void conv_gemm_tn(ConvKernel k, float *c, const float *a, const float *b, int m, int n, int kk, float beta)
{
    if (k == CONV_KERNEL_AVX512) gemm_avx512_tn(c, a, b, m, n, kk, beta);
    else gemm_tn(c, a, b, m, n, kk, beta);
}

/* sum(p[0..n)) in double: the bias gradient of one output plane (a plane
 * sum can have thousands of terms). */
static double plane_sum_scalar(const float *p, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += p[i];
    return s;
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

/* Floats converted per step: two groups of 8 into two 8-double accumulators. */
#define SUM_STEP_FLOATS 16

/* plane_sum_scalar with two 8-lane double accumulators (same double
 * precision, different order; the float result differs at most in the last
 * bit, and only when the double sums round differently). */
__attribute__((target("avx512f"))) static double plane_sum_avx512(const float *p, int n)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + SUM_STEP_FLOATS <= n; i += SUM_STEP_FLOATS) {
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(p + i)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_loadu_ps(p + i + SUM_STEP_FLOATS / 2)));
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for (; i < n; i++) s += p[i];
    return s;
}
#else
#define plane_sum_avx512 plane_sum_scalar
#endif

/* Every per-thread scratch slice starts on a 64-byte cache line (16 floats)
 * so two threads never write the same line (false sharing). */
#define SCRATCH_ALIGN_FLOATS 16

static size_t round_up_line(size_t n)
{
    return (n + SCRATCH_ALIGN_FLOATS - 1) / SCRATCH_ALIGN_FLOATS * SCRATCH_ALIGN_FLOATS;
}

/* Floats of one im2col matrix [C*K*K][H*W], rounded up to a cache line. */
static size_t col_floats(const Conv2d *l, int H, int W)
{
    return round_up_line((size_t)l->C * l->K * l->K * H * W);
}

/* Floats of one thread: its col matrix, then its dW [OC][C*K*K] and db [OC] partials. */
static size_t thread_floats(const Conv2d *l, int H, int W)
{
    return col_floats(l, H, W) + round_up_line((size_t)l->OC * l->C * l->K * l->K + (size_t)l->OC);
}

size_t conv2d_scratch_floats(const Conv2d *l, int H, int W, int nthreads)
{
    assert(nthreads >= 1);
    const size_t im2col_need = (size_t)nthreads * thread_floats(l, H, W);
    const size_t direct_need = conv_direct_scratch_floats(l, H, W, nthreads);
    return im2col_need > direct_need ? im2col_need : direct_need;
}

/* torch.relu in place on y[n]: keeps v when v > 0 or NaN, else +0. */
static void relu_inplace(float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const float v = y[i];
        y[i] = (v > 0.0f || v != v) ? v : 0.0f;
    }
}

/* dx[i] = x[i] > 0 ? dx[i] : 0 (CONV_FUSE_DX_RELU). */
static void mask_by_relu_output(float *dx, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dx[i] : 0.0f;
}

/* Shapes must be positive, K odd, and the GEMM sizes must fit BLAS's int. */
static void assert_shapes(const Conv2d *l, int N, int H, int W, int nthreads)
{
    assert(l->C >= 1 && l->OC >= 1 && l->K >= 1 && l->K % 2 == 1);
    assert(N >= 1 && H >= 1 && W >= 1 && nthreads >= 1);
    assert((size_t)H * W <= INT_MAX && (size_t)l->C * l->K * l->K <= INT_MAX);
    (void)l; (void)N; (void)H; (void)W; (void)nthreads;
}

/* Images [*n0, *n1) of thread tid in a team of nt: contiguous, sizes differ by at most 1. */
static void image_range(int N, int tid, int nt, int *n0, int *n1)
{
    *n0 = (int)((int64_t)N * tid / nt);
    *n1 = (int)((int64_t)N * (tid + 1) / nt);
}

void conv2d_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    const int C = l->C, OC = l->OC, K = l->K;
    const int hw = H * W, ckk = C * K * K;
    const size_t x_image = (size_t)C * hw, y_image = (size_t)OC * hw;
    const size_t per_thread = thread_floats(l, H, W);
    const int team = nthreads < N ? nthreads : N;
    const ConvKernel kern = conv2d_kernel_resolve(l->kernel, K);
    if (kern == CONV_KERNEL_DIRECT) {
        conv_direct_forward(y, x, l, N, H, W, scratch, nthreads);
        return;
    }
    (void)team;

#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id();
        float *col = scratch + (size_t)tid * per_thread;
        int n0, n1;
        image_range(N, tid, team_size(), &n0, &n1);
        for (int n = n0; n < n1; n++) {
            float *yn = y + (size_t)n * y_image;
            im2col(col, x + (size_t)n * x_image, C, H, W, K);
            /* Bias first, then y += W x col (beta 1), as PyTorch's slow_conv2d does. */
            for (int oc = 0; oc < OC; oc++) {
                float *plane = yn + (size_t)oc * hw;
                for (int p = 0; p < hw; p++) plane[p] = l->b[oc];
            }
            conv_gemm_nn(kern, yn, l->w, col, OC, hw, ckk, 1.0f);
            if (l->fuse & CONV_FUSE_RELU) relu_inplace(yn, y_image);
        }
    }
}

void conv2d_forward_maxpool(float *y, int keep_y, float *yp, const float *x, const Conv2d *l, int N, int H, int W,
                            float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    assert(H % 2 == 0 && W % 2 == 0);
    if (conv2d_kernel_resolve(l->kernel, l->K) == CONV_KERNEL_DIRECT) {
        conv_direct_forward_maxpool(y, keep_y, yp, x, l, N, H, W, scratch, nthreads);
        return;
    }
    conv2d_forward(y, x, l, N, H, W, scratch, nthreads);
    maxpool2x2_forward(yp, y, N, l->OC, H, W);
}

void conv2d_backward_maxpool(float *dx, const float *gp, const float *y, const float *x, const Conv2d *l, int N,
                             int H, int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    assert(H % 2 == 0 && W % 2 == 0 && conv2d_kernel_resolve(l->kernel, l->K) == CONV_KERNEL_DIRECT);
    conv_direct_backward_maxpool(dx, gp, y, x, l, N, H, W, scratch, nthreads);
}

void conv2d_forward_upsample(float *y, const float *a, const Conv2d *l, int N, int H, int W, float *scratch,
                             int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    assert(H % 2 == 0 && W % 2 == 0 && conv2d_kernel_resolve(l->kernel, l->K) == CONV_KERNEL_DIRECT);
    conv_direct_forward_upsample(y, a, l, N, H, W, scratch, nthreads);
}

void conv2d_backward_upsample(float *da, const float *g, const float *a, int relu, const Conv2d *l, int N, int H,
                              int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    assert(H % 2 == 0 && W % 2 == 0 && conv2d_kernel_resolve(l->kernel, l->K) == CONV_KERNEL_DIRECT);
    conv_direct_backward_upsample(da, g, a, relu, l, N, H, W, scratch, nthreads);
}

void conv2d_backward(float *dx, const float *dy, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    const int C = l->C, OC = l->OC, K = l->K;
    const int hw = H * W, ckk = C * K * K;
    const size_t x_image = (size_t)C * hw, y_image = (size_t)OC * hw;
    const size_t per_thread = thread_floats(l, H, W), col_size = col_floats(l, H, W);
    const size_t w_size = (size_t)OC * ckk;
    const int team = nthreads < N ? nthreads : N;
    int used = 1;  /* threads the runtime actually gave the team (may be < team) */
    const ConvKernel kern = conv2d_kernel_resolve(l->kernel, K);
    if (kern == CONV_KERNEL_DIRECT) {
        conv_direct_backward(dx, dy, x, l, N, H, W, scratch, nthreads);
        return;
    }
    const int avx = kern == CONV_KERNEL_AVX512;  /* also vectorise col2im and the db sums */
    (void)team;

#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id(), nt = team_size();
        if (tid == 0) used = nt;  /* read after the region's closing barrier */
        float *col = scratch + (size_t)tid * per_thread;
        float *dw_part = col + col_size;  /* [OC][C*K*K] */
        float *db_part = dw_part + w_size; /* [OC] */
        memset(dw_part, 0, sizeof(float) * (w_size + (size_t)OC));
        int n0, n1;
        image_range(N, tid, nt, &n0, &n1);
        for (int n = n0; n < n1; n++) {
            const float *dyn = dy + (size_t)n * y_image;
            im2col(col, x + (size_t)n * x_image, C, H, W, K);
            conv_gemm_nt(kern, dw_part, dyn, col, OC, ckk, hw, 1.0f);
            for (int oc = 0; oc < OC; oc++) {
                const float *plane = dyn + (size_t)oc * hw;
                const double s = avx ? plane_sum_avx512(plane, hw) : plane_sum_scalar(plane, hw);
                db_part[oc] += (float)s;
            }
            if (dx) {
                float *dxn = dx + (size_t)n * x_image;
                conv_gemm_tn(kern, col, l->w, dyn, ckk, hw, OC, 0.0f);  /* col now holds dcol */
                memset(dxn, 0, sizeof(float) * x_image);
                if (avx) col2im_avx512(dxn, col, C, H, W, K);
                else col2im(dxn, col, C, H, W, K);
                if (l->fuse & CONV_FUSE_DX_RELU) mask_by_relu_output(dxn, x + (size_t)n * x_image, x_image);
            }
        }
    }

    /* Fixed-order reduction of the thread partials into the layer's gradient. */
    for (int t = 0; t < used; t++) {
        const float *dw_part = scratch + (size_t)t * per_thread + col_size;
        const float *db_part = dw_part + w_size;
        for (size_t i = 0; i < w_size; i++) l->dw[i] += dw_part[i];
        for (int oc = 0; oc < OC; oc++) l->db[oc] += db_part[oc];
    }
}
