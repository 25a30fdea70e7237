/*
 * maxpool.h - 2x2 max-pooling with stride 2, forward and backward, float32,
 * NCHW.  PyTorch nn.MaxPool2d(2) semantics, from the CPU kernel's loop
 * (aten/src/ATen/native/cpu/MaxPoolKernel.cpp: max starts at -inf, a value
 * is taken if it is > the max so far or NaN), visiting the window in
 * row-major order ((0,0), (0,1), (1,0), (1,1)):
 *   - ties go to the FIRST maximum;
 *   - a NaN wins (propagates): the output is the LAST NaN of the window and
 *     backward routes the gradient to it (checked against PyTorch 1.13:
 *     window [NaN 1 / NaN 2] sends its gradient to (1,0));
 *   - a window of -inf gives -inf with the gradient at (0,0);
 *   - the output is one of the window's values, bit for bit (-0.0 stays -0.0).
 *
 * H and W must be even (asserted): the model checks shapes when it parses
 * its spec.  No index buffer is kept: backward recomputes each window's
 * winner from x, with the same rule as forward.
 *
 * Two implementations, bitwise identical on every input (tests/test_maxpool.c
 * checks it): portable C, and AVX-512F (16 windows per step: two rows of 32
 * floats, even/odd columns split with a permute, winners chosen with compare
 * masks in the order above), used when the running CPU has AVX-512F.  The
 * plain functions pick automatically; the *_kernel variants let tests and
 * benchmarks choose.
 *
 * Threading: OpenMP over the N*C planes (each thread writes whole planes),
 * serial for small inputs.
 * Not done here: other window sizes, strides, padding, ceil mode; the ReLU
 * itself (act.h; only its backward can be fused, maxpool2x2_backward_relu).
 */
#ifndef AESIM_MAXPOOL_H
#define AESIM_MAXPOOL_H

typedef enum MaxpoolKernel {
    MAXPOOL_KERNEL_AUTO = 0,   /* AVX-512 if the running CPU has AVX-512F, else scalar */
    MAXPOOL_KERNEL_SCALAR = 1, /* portable C */
    MAXPOOL_KERNEL_AVX512 = 2  /* AVX-512F (GCC/Clang on x86 only) */
} MaxpoolKernel;

/* The implementation the *_kernel functions run for choice k on this CPU and
 * build: MAXPOOL_KERNEL_SCALAR or MAXPOOL_KERNEL_AVX512 (AUTO resolved;
 * AVX512 without AVX-512F falls back to SCALAR).  Pure CPU query, no state. */
MaxpoolKernel maxpool_kernel_resolve(MaxpoolKernel k);

/* y[N][C][H/2][W/2] = max over each 2x2 window of x[N][C][H][W] (overwritten;
 * must not overlap x).  Same as maxpool2x2_forward_kernel(..., AUTO). */
void maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W);

/* dx[N][C][H][W] overwritten (not accumulated): each window's
 * dy[N][C][H/2][W/2] goes to its winner (rules above), the other three
 * entries get +0.  x is the forward input.  dx must not overlap dy or x.
 * Same as maxpool2x2_backward_kernel(..., AUTO). */
void maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

/* maxpool2x2_backward fused with the backward of the ReLU that produced x
 * (issue 6): when the forward input is x = relu(z), dx[N][C][H][W] receives
 * dL/dz instead of dL/dx, in one pass.  Each window's dy goes to its winner
 * (rules above) only if the winner's value is > 0; NaN, +-0 and negative
 * winners give +0, as every other entry does.  Bit for bit the same as
 * maxpool2x2_backward followed by relu_backward(dx, dx, x, N*C*H*W) (act.h:
 * dx = y > 0 ? dy : +0), for any x (x >= 0 is not assumed).  dx must not
 * overlap dy or x.  Same as maxpool2x2_backward_relu_kernel(..., AUTO). */
void maxpool2x2_backward_relu(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

/* maxpool2x2_forward on the calling thread only (never opens an OpenMP
 * region), AVX-512 when the CPU has it: for callers that already run inside
 * their own parallel region, e.g. the fused convolution + max-pooling of
 * conv2d_forward_maxpool.  Same results, bit for bit. */
void maxpool2x2_forward_serial(float *y, const float *x, int N, int C, int H, int W);

/* maxpool2x2_backward_relu on the calling thread only, likewise (the fused
 * convolution backward, conv2d_backward_maxpool).  Same results. */
void maxpool2x2_backward_relu_serial(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

/* maxpool2x2_forward / maxpool2x2_backward / maxpool2x2_backward_relu run
 * with implementation k (resolved by maxpool_kernel_resolve).  For tests
 * and benchmarks. */
void maxpool2x2_forward_kernel(float *y, const float *x, int N, int C, int H, int W, MaxpoolKernel k);
void maxpool2x2_backward_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                MaxpoolKernel k);
void maxpool2x2_backward_relu_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                     MaxpoolKernel k);

#endif
