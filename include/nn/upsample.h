/*
 * upsample.h - 2x nearest-neighbour upsampling, forward and backward,
 * float32, NCHW.  PyTorch nn.Upsample(scale_factor=2, mode='nearest'):
 * y[n][c][i][j] = x[n][c][i/2][j/2] (integer division).
 *
 * Two implementations, bitwise identical on every input (tests/test_upsample.c
 * checks it): portable C, and AVX-512F (forward: 16 inputs duplicated into
 * 32 outputs with a permute, stored to both output rows; backward: even/odd
 * columns of two dy rows split with a permute and summed in the same order
 * as the C code), used when the running CPU has AVX-512F.  The plain
 * functions pick automatically; the *_kernel variants let tests and
 * benchmarks choose.
 *
 * Threading: OpenMP over the N*C planes (each thread writes whole planes),
 * serial for small inputs.
 * Not done here: other scale factors, bilinear modes; the ReLU itself (act.h;
 * only its backward can be fused, upsample2x_backward_relu).
 */
#ifndef AESIM_UPSAMPLE_H
#define AESIM_UPSAMPLE_H

typedef enum UpsampleKernel {
    UPSAMPLE_KERNEL_AUTO = 0,   /* AVX-512 if the running CPU has AVX-512F, else scalar */
    UPSAMPLE_KERNEL_SCALAR = 1, /* portable C */
    UPSAMPLE_KERNEL_AVX512 = 2  /* AVX-512F (GCC/Clang on x86 only) */
} UpsampleKernel;

/* The implementation the *_kernel functions run for choice k on this CPU and
 * build: UPSAMPLE_KERNEL_SCALAR or UPSAMPLE_KERNEL_AVX512 (AUTO resolved;
 * AVX512 without AVX-512F falls back to SCALAR).  Pure CPU query, no state. */
UpsampleKernel upsample_kernel_resolve(UpsampleKernel k);

/* x[N][C][H][W] -> y[N][C][2H][2W] (overwritten; must not overlap x).
 * Same as upsample2x_forward_kernel(..., AUTO). */
void upsample2x_forward(float *y, const float *x, int N, int C, int H, int W);

/* dx[N][C][H][W] overwritten = sum of its 2x2 block of dy[N][C][2H][2W],
 * added in row-major order ((dy00 + dy01) + dy10) + dy11, as PyTorch's CPU
 * backward; dx must not overlap dy.  Same as upsample2x_backward_kernel(..., AUTO). */
void upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W);

/* upsample2x_backward fused with the backward of the ReLU that produced the
 * forward input x[N][C][H][W] (issue 6): when x = relu(z), dx[N][C][H][W]
 * receives dL/dz instead of dL/dx, in one pass:
 *   dx[i] = x[i] > 0 ? (sum of its 2x2 block of dy, order above) : +0
 * (NaN, +-0 and negative x give +0).  Bit for bit the same as
 * upsample2x_backward followed by relu_backward(dx, dx, x, N*C*H*W) (act.h:
 * dx = y > 0 ? dy : +0), for any x (x >= 0 is not assumed); a NaN sum may
 * carry either NaN operand's payload, as in upsample2x_backward.  dx must
 * not overlap dy or x.
 * Same as upsample2x_backward_relu_kernel(..., AUTO). */
void upsample2x_backward_relu(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

/* upsample2x_forward, and upsample2x_backward (x NULL) or
 * upsample2x_backward_relu (x the forward input), on the calling thread
 * only (never open an OpenMP region), AVX-512 when the CPU has it: for
 * callers inside their own parallel region (the convolutions fused with
 * upsampling, conv2d.h).  Same results, bit for bit. */
void upsample2x_forward_serial(float *y, const float *x, int N, int C, int H, int W);
void upsample2x_backward_serial(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

/* upsample2x_forward / upsample2x_backward / upsample2x_backward_relu run
 * with implementation k (resolved by upsample_kernel_resolve).  For tests
 * and benchmarks. */
void upsample2x_forward_kernel(float *y, const float *x, int N, int C, int H, int W, UpsampleKernel k);
void upsample2x_backward_kernel(float *dx, const float *dy, int N, int C, int H, int W, UpsampleKernel k);
void upsample2x_backward_relu_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                     UpsampleKernel k);

#endif
