/*
 * naive_ref.h - naive direct-loop references of the numerical kernels, in
 * double, for the unit tests (never used by src/).
 *
 * Each reference is the textbook definition written as plain loops, with no
 * im2col, no BLAS and no shared code with src/: PyTorch semantics for
 * nn.Conv2d (cross-correlation, stride 1, zero padding K/2), nn.MaxPool2d(2)
 * (first maximum in row-major order), nn.Upsample(scale_factor=2,
 * mode='nearest'), relu, sigmoid and the squared-error sum.  Also here: central
 * finite differences in double of a scalar loss, and float<->double helpers.
 * Serial; test-only.
 */
#ifndef AESIM_NAIVE_REF_H
#define AESIM_NAIVE_REF_H

#include <math.h>
#include <stddef.h>

#include "testutil.h"

/* y[N][OC][H][W] = b[oc] + sum_{c,ki,kj} w[oc][c][ki][kj] * x[n][c][h+ki-K/2][w+kj-K/2]
 * (terms outside the image are zero). */
static inline void ref_conv2d(double *y, const double *x, const double *w, const double *b,
                              int N, int C, int OC, int H, int W, int K)
{
    const int pad = K / 2;
    for (int n = 0; n < N; n++)
        for (int oc = 0; oc < OC; oc++)
            for (int h = 0; h < H; h++)
                for (int v = 0; v < W; v++) {
                    double s = b[oc];
                    for (int c = 0; c < C; c++)
                        for (int ki = 0; ki < K; ki++)
                            for (int kj = 0; kj < K; kj++) {
                                const int ih = h + ki - pad, iw = v + kj - pad;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += w[((size_t)(oc * C + c) * K + ki) * K + kj] *
                                     x[((size_t)(n * C + c) * H + ih) * W + iw];
                            }
                    y[((size_t)(n * OC + oc) * H + h) * W + v] = s;
                }
}

/* y[N][C][H/2][W/2] = max of each 2x2 window (H, W even). */
static inline void ref_maxpool2x2(double *y, const double *x, int N, int C, int H, int W)
{
    for (int p = 0; p < N * C; p++)
        for (int oh = 0; oh < H / 2; oh++)
            for (int ow = 0; ow < W / 2; ow++) {
                double m = -INFINITY;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) {
                        const double v = x[((size_t)p * H + 2 * oh + i) * W + 2 * ow + j];
                        if (v > m) m = v;
                    }
                y[((size_t)p * (H / 2) + oh) * (W / 2) + ow] = m;
            }
}

/* dx[N][C][H][W] = 0 except at each window's first maximum (row-major), which gets dy. */
static inline void ref_maxpool2x2_backward(double *dx, const double *dy, const double *x,
                                           int N, int C, int H, int W)
{
    for (size_t i = 0; i < (size_t)N * C * H * W; i++) dx[i] = 0.0;
    for (int p = 0; p < N * C; p++)
        for (int oh = 0; oh < H / 2; oh++)
            for (int ow = 0; ow < W / 2; ow++) {
                size_t best = ((size_t)p * H + 2 * oh) * W + 2 * ow;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) {
                        const size_t k = ((size_t)p * H + 2 * oh + i) * W + 2 * ow + j;
                        if (x[k] > x[best]) best = k;
                    }
                dx[best] = dy[((size_t)p * (H / 2) + oh) * (W / 2) + ow];
            }
}

/* y[N][C][2H][2W]: y[..][i][j] = x[..][i/2][j/2]. */
static inline void ref_upsample2x(double *y, const double *x, int N, int C, int H, int W)
{
    for (int p = 0; p < N * C; p++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++)
                y[((size_t)p * 2 * H + i) * 2 * W + j] = x[((size_t)p * H + i / 2) * W + j / 2];
}

static inline void ref_relu(double *y, const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0 ? x[i] : 0.0;
}

/* 1/(1+exp(-x)) in double: exp(-x) overflows only for x < -709, where the
 * result 0 is within any float tolerance anyway. */
static inline void ref_sigmoid(double *y, const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = 1.0 / (1.0 + exp(-x[i]));
}

static inline double ref_sq_err_sum(const double *y, const double *t, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (y[i] - t[i]) * (y[i] - t[i]);
    return s;
}

static inline double ref_dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Central finite differences: grad[i] = (L(theta + eps e_i) - L(theta - eps e_i)) / (2 eps)
 * for i < n, where loss(ctx) evaluates L reading theta (which lives inside ctx). */
static inline void ref_grad_fd(double *grad, double *theta, size_t n, double (*loss)(void *ctx),
                               void *ctx, double eps)
{
    for (size_t i = 0; i < n; i++) {
        const double saved = theta[i];
        theta[i] = saved + eps;
        const double lp = loss(ctx);
        theta[i] = saved - eps;
        const double lm = loss(ctx);
        theta[i] = saved;
        grad[i] = (lp - lm) / (2.0 * eps);
    }
}

/* Step of the finite differences, in the units of the perturbed value: small
 * enough for the O(eps^2) truncation error of smooth functions to be ~1e-7,
 * large enough for the double rounding of L to stay ~1e-12. */
#define REF_FD_EPS 1e-3

static inline void ref_to_double(double *d, const float *f, size_t n)
{
    for (size_t i = 0; i < n; i++) d[i] = f[i];
}

/* check_tensor_d of a float result against a double reference. `scratch` holds n doubles. */
static inline int ref_check(const char *name, const float *got, const double *ref, size_t n,
                            double atol, double rtol, double *scratch)
{
    ref_to_double(scratch, got, n);
    return check_tensor_d(name, scratch, ref, n, atol, rtol);
}

#endif
