/*
 * upsample.h - 2x nearest-neighbour upsampling, forward and backward,
 * float32, NCHW.  PyTorch nn.Upsample(scale_factor=2, mode='nearest'):
 * y[n][c][i][j] = x[n][c][i/2][j/2] (integer division).
 *
 * Threading: OpenMP over the N*C planes, serial for small inputs.
 * Not done here: other scale factors, bilinear modes.
 */
#ifndef AESIM_UPSAMPLE_H
#define AESIM_UPSAMPLE_H

/* x[N][C][H][W] -> y[N][C][2H][2W] (overwritten). */
void upsample2x_forward(float *y, const float *x, int N, int C, int H, int W);

/* dx[N][C][H][W] overwritten = sum of its 2x2 block of dy[N][C][2H][2W]. */
void upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W);

#endif
