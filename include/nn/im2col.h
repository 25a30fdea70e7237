/*
 * im2col.h - unfold one image into the column matrix of a KxK, stride 1,
 * 'same' (zero padding K/2) convolution, and fold it back.
 *
 * Layout (one image, no batch dimension):
 *   x    [C][H][W]                       (NCHW slice of one image)
 *   col  [C*K*K][H*W]                    row r = (c*K + ki)*K + kj,
 *                                        column p = oh*W + ow,
 *   col[r][p] = x[c][oh + ki - K/2][ow + kj - K/2], or 0 outside the image.
 * Row order matches the PyTorch weight layout [OC][C][K][K], so the weight
 * viewed as a [OC][C*K*K] matrix multiplies col directly (darknet im2col_cpu
 * uses the same scheme).
 *
 * Not done here: strides, dilation, other paddings, allocation.
 * Threading: serial; callers run one image per OpenMP thread.
 */
#ifndef AESIM_IM2COL_H
#define AESIM_IM2COL_H

/* col[C*K*K][H*W] = unfolded x[C][H][W] (overwritten).  K odd, all sizes >= 1. */
void im2col(float *col, const float *x, int C, int H, int W, int K);

/* x[C][H][W] += folded col[C*K*K][H*W]: the adjoint of im2col (each column
 * entry is added to the pixel it was copied from; padding entries are
 * dropped).  Accumulates: zero x first for a plain fold. */
void col2im(float *x, const float *col, int C, int H, int W, int K);

/* col2im with each row's additions done 16 floats at a time in AVX-512:
 * the same float additions in the same order, so bit-identical to col2im.
 * Call only when gemm_avx512_supported() (gemm_avx512.h); on builds without
 * the x86 target attributes it is col2im. */
void col2im_avx512(float *x, const float *col, int C, int H, int W, int K);

#endif
