/*
 * conv_direct.h - direct KxK 'same' convolution kernels for AVX-512 (no
 * im2col): forward, input gradient and weight gradient of conv2d.h, NCHW,
 * float32, stride 1, zero padding K/2.  conv2d.c calls them for
 * CONV_KERNEL_DIRECT; use conv2d_forward/backward rather than these.
 *
 * Why (issue 6, measured in bench/results): with im2col + GEMM, half of the
 * convolution time went to building the K*K-times larger column matrix,
 * col2im and bias passes, and the GEMMs themselves run skinny shapes (3..32
 * output channels).  Here each output vector of 16 consecutive pixels of
 * one plane is accumulated in a register over all input channels and taps,
 * reading the input straight from the NCHW planes:
 *   y[n][oc][p] = b[oc] + sum_{c, t} w[oc][c][t] * x[n][c][p + off(t)]
 * where p = h*W + w is the flat pixel index, tap t = (ky, kx) with
 * off(t) = (ky - K/2)*W + (kx - K/2), and the term is zero where the
 * shifted pixel leaves the image (a 16-bit lane mask per pixel vector and
 * tap, precomputed per call: masked loads read zeros there, including the
 * rows before and after the plane, so no padded copy is made).
 * The input gradient is the same kernel run on dy with the kernel flipped
 * and transposed (dx[c][p] = sum_{oc, t} w[oc][c][K*K-1-t] dy[oc][p+off(t)]);
 * the weight gradient accumulates dy[oc][p] * x[c][p + off(t)] over pixel
 * vectors in registers (dw[oc][c][t]) and sums the 16 lanes once at the end.
 * The register tiling is the classic one of direct convolution on SIMD CPUs
 * (Georganas et al., "Anatomy of High-Performance Deep Learning Convolutions
 * on SIMD Architectures", SC'18), here with the vector along the pixels of
 * an NCHW plane instead of along blocked channels, so that the layout, the
 * checkpoint format and every other layer stay NCHW.
 *
 * Threading: OpenMP over the flat list of pixel vectors of the batch (N
 * images x ceil(H*W/16) vectors), each thread a contiguous range (whole
 * images for the variants fused with max-pooling): owner-writes for y and
 * dx; the weight gradient is summed per thread into a private partial and
 * the partials added in thread order 0..T-1, so a run is reproducible for a
 * given thread count.  The backward runs the weight gradient and then the
 * input gradient chunk by chunk (~512 KiB of g and x), so that the second
 * pass reads them from L2.  Never allocates; no MPI; no
 * BLAS.  Results equal conv2d's other kernels up to float rounding (other
 * summation order).
 * bf16 (Conv2d.bf16 set, issue 16): every entry point runs the VDPBF16PS
 * variants of the tiles (conv_direct_bf16.h) instead, with whole images per
 * thread in chunks as the fused passes do (the plain conv too): per chunk
 * the operands are rounded and packed into bfloat16 pairs in the thread's
 * scratch, then multiplied into the same float32 outputs and lane partials.
 */
#ifndef AESIM_CONV_DIRECT_H
#define AESIM_CONV_DIRECT_H

#include <stddef.h>

#include "nn/conv2d.h"

/* 1 if the running CPU and this build can run these kernels (AVX-512F). */
int conv_direct_supported(void);

/* Floats of scratch conv_direct_forward/backward need for layer l on HxW
 * images with nthreads threads: packed weights for both directions, the lane
 * mask table and each thread's weight-gradient partial or output image
 * (cache-line aligned); when l->bf16 is set or the CPU could run the bf16
 * kernels, also their packed weights, 32-pixel masks and each thread's
 * bfloat16 operands of a chunk (so one size serves both precisions). */
size_t conv_direct_scratch_floats(const Conv2d *l, int H, int W, int nthreads);

/* y[N][OC][H][W] = conv(x[N][C][H][W]) + b, then ReLU (torch.relu: NaN
 * passes) when l->fuse has CONV_FUSE_RELU.  y must not alias x.  scratch:
 * conv_direct_scratch_floats floats (contents ignored).  Only call when
 * conv_direct_supported(). */
void conv_direct_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch,
                         int nthreads);

/* conv_direct_forward followed by maxpool2x2_forward (maxpool.h) of its
 * output, fused (issue 6): the threads take whole images, and each chunk
 * of images' conv output (about 512 KiB with the input, at least one
 * image) is pooled while it is still in the core's cache, instead of a
 * second pass that reads the whole y back from memory.
 *   y[N][OC][H][W]: the conv output (after the fused ReLU) when keep_y is
 *     nonzero, as conv_direct_forward writes it; when keep_y is 0, y is
 *     neither read nor written (may be NULL) and each image goes through a
 *     per-thread buffer in scratch instead (inference: nothing needs y);
 *   yp[N][OC][H/2][W/2] = maxpool2x2_forward(y), bit for bit.
 * H and W even.  y, yp must not alias x or each other.  Same scratch as
 * conv_direct_forward.  Only call when conv_direct_supported(). */
void conv_direct_forward_maxpool(float *y, int keep_y, float *yp, const float *x, const Conv2d *l, int N, int H,
                                 int W, float *scratch, int nthreads);

/* The backward of the fused pair conv (ReLU fused) -> maxpool2x2: given
 * gp[N][OC][H/2][W/2] = dL/d(pooled output) and the conv's output y (after
 * its ReLU, as kept by conv_direct_forward_maxpool with keep_y = 1), each
 * thread takes whole images and, per chunk of images (about 512 KiB of x
 * and g, at least one image), computes g = maxpool2x2_backward_relu(gp, y)
 * (dL/d conv pre-activation) into a per-thread buffer in scratch, then the
 * weight gradient and dx from it while it is in L2 (instead of writing all
 * of g and reading it back twice).  dx, l->dw, l->db as conv_direct_backward
 * on that g: dx bit for bit, dw and db up to float summation order (the
 * weight-gradient groups restart at every chunk); reproducible for a given
 * N and thread count.  H, W even.
 * dx must not alias gp, y or x.  Only call when conv_direct_supported(). */
void conv_direct_backward_maxpool(float *dx, const float *gp, const float *y, const float *x, const Conv2d *l,
                                  int N, int H, int W, float *scratch, int nthreads);

/* conv_direct_forward of the 2x nearest upsampling (upsample.h) of
 * a[N][C][H/2][W/2]: y[N][OC][H][W] = conv(upsample2x(a)) + b (+ ReLU with
 * CONV_FUSE_RELU), bit for bit the two calls, without the [N][C][H][W]
 * upsampled tensor: each thread takes whole images and upsamples a chunk
 * of them (about 512 KiB, bwd_chunk_images) into scratch, in L2, before
 * convolving it.  H, W even; y must not alias a.  Only call when
 * conv_direct_supported(). */
void conv_direct_forward_upsample(float *y, const float *a, const Conv2d *l, int N, int H, int W, float *scratch,
                                  int nthreads);

/* The backward of conv_direct_forward_upsample given g[N][OC][H][W] =
 * dL/d(conv output) and the same a: per chunk of images, upsamples a again
 * into scratch for the weight gradient, computes the input gradient of the
 * upsampled tensor there and sums its 2x2 blocks (upsample2x_backward) into
 * da[N][C][H/2][W/2] (overwritten; NULL to skip); with relu nonzero,
 * da = a > 0 ? that : +0 (upsample2x_backward_relu: a came out of a ReLU).
 * da bit for bit the unfused calls (conv_direct_backward, then
 * upsample2x_backward[_relu]); l->dw, l->db accumulated, up to float
 * summation order (groups restart at every chunk).  l->fuse must not have
 * CONV_FUSE_DX_RELU.  da must not alias g or a.  Only call when
 * conv_direct_supported(). */
void conv_direct_backward_upsample(float *da, const float *g, const float *a, int relu, const Conv2d *l, int N,
                                   int H, int W, float *scratch, int nthreads);

/* Backward given g[N][OC][H][W] = dL/d(conv output) (after any fused
 * activation's backward) and the input x:
 *   dx[N][C][H][W] overwritten with dL/dx, or NULL to skip it; with
 *     CONV_FUSE_DX_RELU in l->fuse, dx[i] = x[i] > 0 ? dL/dx[i] : 0 (the
 *     gradient before the ReLU that produced x);
 *   l->dw, l->db accumulated (+=).
 * dx must not alias g or x.  Only call when conv_direct_supported(). */
void conv_direct_backward(float *dx, const float *g, const float *x, const Conv2d *l, int N, int H, int W,
                          float *scratch, int nthreads);

#endif
