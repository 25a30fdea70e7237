/*
 * maxpool.h - 2x2 max-pooling with stride 2, forward and backward, float32,
 * NCHW.  PyTorch nn.MaxPool2d(2) semantics: a window's output is its first
 * maximum in row-major order ((0,0), (0,1), (1,0), (1,1)); a NaN in a window
 * wins (propagates), as in PyTorch's CPU kernel.
 *
 * H and W must be even (asserted): the model checks shapes when it parses
 * its spec.  No index buffer is kept: backward recomputes each window's
 * winner from x, with the same rule as forward.
 *
 * Threading: OpenMP over the N*C planes, serial for small inputs.
 * Not done here: other window sizes, strides, padding, ceil mode.
 */
#ifndef AESIM_MAXPOOL_H
#define AESIM_MAXPOOL_H

/* y[N][C][H/2][W/2] = max over each 2x2 window of x[N][C][H][W] (overwritten). */
void maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W);

/* dx[N][C][H][W] overwritten: each window's dy[N][C][H/2][W/2] goes to its
 * winner (first maximum in row-major order, PyTorch CPU's choice), the other
 * three entries get 0.  x is the forward input. */
void maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H, int W);

#endif
