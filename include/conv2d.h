/*
 * conv2d.h - 2-D convolution, KxK kernel (K odd), stride 1, 'same' zero
 * padding K/2, with bias: forward and backward, float32, NCHW.
 * Semantics of PyTorch nn.Conv2d(C, OC, K, stride=1, padding=K//2) (a
 * cross-correlation: no kernel flip).
 *
 * Data layout (written once, here):
 *   x, dx  [N][C][H][W]      input and its gradient
 *   y, dy  [N][OC][H][W]     output and its gradient (same H, W: 'same')
 *   w, dw  [OC][C][K][K]     = row-major matrix Wm[OC][C*K*K]
 *   b, db  [OC]
 *   col    [C*K*K][H*W]      im2col of one image (see im2col.h)
 * GEMMs per image (row-major, C[M][N] = A x B, sizes M/N/K; gemm.h):
 *   forward     y_n[OC][HW]    = Wm[OC][CKK] x col[CKK][HW]          gemm_nn M=OC  N=HW  K=CKK
 *   weight grad dWm[OC][CKK]  += dy_n[OC][HW] x col[CKK][HW]^T       gemm_nt M=OC  N=CKK K=HW
 *   input grad  dcol[CKK][HW]  = Wm[OC][CKK]^T x dy_n[OC][HW]        gemm_tn M=CKK N=HW  K=OC
 *               dx_n           = col2im(dcol)
 * where HW = H*W and CKK = C*K*K (darknet convolutional_layer.c, same scheme).
 *
 * Threading: OpenMP over the N images of a batch (each thread takes a
 * contiguous block of images), with each GEMM single-threaded: the program must call
 * openblas_set_num_threads(1) at start-up whenever it runs with more than
 * one OpenMP thread, because BLAS threads must not nest inside OpenMP ones.
 * T = min(nthreads, N).  Each thread uses its own slice of `scratch` for its
 * col matrix and, in backward, a private dW/db partial; the partials are then
 * added into l->dw/l->db in thread order 0..T-1 (a fixed order, so a run is
 * reproducible for a given T; different T change the rounding only).
 * Kernels never allocate.  No MPI here.
 *
 * Not done here: strides, dilation, groups, even K, a K==1 fast path.
 */
#ifndef AESIM_CONV2D_H
#define AESIM_CONV2D_H

#include <stddef.h>

typedef struct Conv2d {
    int C, OC, K;   /* input channels, output channels, kernel size (odd); stride 1, zero padding K/2 ('same') */
    float *w;       /* [OC][C][K][K]  (PyTorch Conv2d weight layout) */
    float *b;       /* [OC] */
    float *dw;      /* [OC][C][K][K]  accumulated (+=) by backward */
    float *db;      /* [OC]           accumulated (+=) by backward */
} Conv2d;

/* Floats of scratch that conv2d_forward/backward need for images HxW run on
 * nthreads threads (nthreads >= 1; the same size serves both directions and
 * any N).  Per thread: C*K*K*H*W (col) + OC*C*K*K + OC (gradient partial),
 * each rounded up to a 64-byte line so threads never share a cache line. */
size_t conv2d_scratch_floats(const Conv2d *l, int H, int W, int nthreads);

/* y[N][OC][H][W] = conv(x[N][C][H][W]) + b; y overwritten (must not alias x).
 * scratch: conv2d_scratch_floats(l, H, W, nthreads) floats, contents ignored.
 * N, H, W, nthreads >= 1; H*W and C*K*K must fit in an int (BLAS sizes). */
void conv2d_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads);

/* Backward of conv2d_forward given dy[N][OC][H][W] = dL/dy and the forward
 * input x[N][C][H][W]:
 *   dx[N][C][H][W] overwritten with dL/dx (dx may be NULL: input gradient not
 *   needed, e.g. first layer);
 *   l->dw, l->db accumulated (+=) with dL/dw, dL/db summed over the N images.
 * scratch as for conv2d_forward.  dx must not alias dy or x. */
void conv2d_backward(float *dx, const float *dy, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads);

#endif
