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
 * Kernels (issue 6), chosen per layer by Conv2d.kernel (explicit state, no
 * global knobs): CONV_KERNEL_GENERIC runs the three GEMMs above with
 * OpenBLAS cblas_sgemm; CONV_KERNEL_AVX512 the same GEMMs with aesim's own
 * AVX-512 kernels (gemm_avx512.h; OpenBLAS 0.3.21's DYNAMIC_ARCH picks SSE
 * kernels on this CPU); CONV_KERNEL_DIRECT skips im2col altogether: direct
 * KxK kernels that accumulate 16-pixel vectors of an NCHW plane in
 * registers (conv_direct.h; measured fastest, bench/results/latest.md);
 * CONV_KERNEL_AUTO (0, what a zeroed Conv2d holds) = DIRECT when the running
 * CPU has AVX-512F, else GENERIC.  All kernels give the same results up to
 * float rounding (other summation orders).  The benchmarks and test tools
 * (bench/bench_train.c, tests/tool_model_ref.c) read a forced choice ONCE
 * at start-up (conv2d_kernel_parse of the AESIM_KERNEL environment
 * variable, CONV2D_KERNEL_ENV) and store it in each Conv2d; aesim-train and
 * aesim-search do not read it and run CONV_KERNEL_AUTO.
 * The direct kernels split the batch's pixel vectors (not whole images)
 * between threads, so they also use every thread when N < nthreads; the
 * variants fused with pooling or upsampling take whole images, so they use
 * min(N, nthreads) threads.
 *
 * Not done here: strides, dilation, groups, even K, a K==1 fast path.
 */
#ifndef AESIM_CONV2D_H
#define AESIM_CONV2D_H

#include <stddef.h>

#include "base/err.h"

/* Environment variable a benchmark or test tool may read once at start-up to
 * force a kernel (the aesim programs ignore it). */
#define CONV2D_KERNEL_ENV "AESIM_KERNEL"

typedef enum ConvKernel {
    CONV_KERNEL_AUTO = 0,    /* direct if the running CPU has AVX-512F, else generic */
    CONV_KERNEL_GENERIC = 1, /* im2col + OpenBLAS cblas_sgemm (portable) */
    CONV_KERNEL_AVX512 = 2,  /* im2col + aesim's AVX-512 GEMMs (gemm_avx512.h) */
    CONV_KERNEL_DIRECT = 3   /* direct KxK kernels on AVX-512, no im2col (conv_direct.h) */
} ConvKernel;

/* Largest K*K the direct kernels take (K = 11, MODEL_MAX_KERNEL); larger K
 * run the im2col kernels. */
#define CONV_DIRECT_MAX_TAPS 121

/* Operations fused into the convolution (bits of Conv2d.fuse; 0 = none).
 *   CONV_FUSE_RELU     forward: y = relu(conv(x) + b), torch.relu semantics
 *                      (NaN passes, -0 and negatives give +0);
 *   CONV_FUSE_DX_RELU  backward: dx[i] = x[i] > 0 ? dL/dx[i] : 0, i.e. the
 *                      gradient before the ReLU that produced x (x must be
 *                      a ReLU output), which saves a pass over dx. */
enum { CONV_FUSE_RELU = 1u, CONV_FUSE_DX_RELU = 2u };

typedef struct Conv2d {
    int C, OC, K;   /* input channels, output channels, kernel size (odd); stride 1, zero padding K/2 ('same') */
    float *w;       /* [OC][C][K][K]  (PyTorch Conv2d weight layout) */
    float *b;       /* [OC] */
    float *dw;      /* [OC][C][K][K]  accumulated (+=) by backward */
    float *db;      /* [OC]           accumulated (+=) by backward */
    ConvKernel kernel; /* kernel choice; 0 = CONV_KERNEL_AUTO */
    unsigned fuse;     /* CONV_FUSE_* bits; 0 = plain convolution */
    int bf16;          /* CONV_BF16_* (conv_direct_bf16.h): nonzero, the direct kernels
                        * multiply in bfloat16 (operands rounded to nearest even, float32
                        * accumulation; MODEL_BF16) on VDPBF16PS (NATIVE) or on its
                        * AVX-512F emulation (EMULATED, tests); set only to an
                        * implementation conv_bf16_available() grants; the im2col kernels
                        * ignore it.  0 = float32 */
} Conv2d;

/* *out = the kernel named by `name`: NULL, "" or "auto" -> CONV_KERNEL_AUTO,
 * "generic" -> CONV_KERNEL_GENERIC, "avx512" -> CONV_KERNEL_AVX512,
 * "direct" -> CONV_KERNEL_DIRECT.
 * Returns AE_OK, or AE_EARG (*out unchanged) for an unknown name or for
 * "avx512"/"direct" on a CPU/build without AVX-512F; the message names the
 * value, the variable CONV2D_KERNEL_ENV and the accepted values. */
int conv2d_kernel_parse(ConvKernel *out, const char *name, Err *err);

/* The kernel conv2d_forward/backward actually run for choice k on this CPU
 * for layer l: CONV_KERNEL_GENERIC, CONV_KERNEL_AVX512 or CONV_KERNEL_DIRECT
 * (AUTO resolved to DIRECT; DIRECT with K*K > CONV_DIRECT_MAX_TAPS runs
 * AVX512; AVX512 and DIRECT on a CPU without AVX-512F fall back to GENERIC).
 * Pure CPU query, no state. */
ConvKernel conv2d_kernel_resolve(ConvKernel k, int K);

/* "auto", "generic", "avx512" or "direct" (static string; "?" otherwise). */
const char *conv2d_kernel_name(ConvKernel k);

/* Floats of scratch that conv2d_forward/backward need for images HxW run on
 * nthreads threads (nthreads >= 1; the same size serves both directions,
 * any N and every kernel choice).  im2col kernels, per thread: C*K*K*H*W
 * (col) + OC*C*K*K + OC (gradient partial), each rounded up to a 64-byte
 * line so threads never share a cache line; the direct kernels need
 * conv_direct_scratch_floats; this is the larger of the two. */
size_t conv2d_scratch_floats(const Conv2d *l, int H, int W, int nthreads);

/* y[N][OC][H][W] = conv(x[N][C][H][W]) + b; y overwritten (must not alias x).
 * scratch: conv2d_scratch_floats(l, H, W, nthreads) floats, contents ignored.
 * N, H, W, nthreads >= 1; H*W and C*K*K must fit in an int (BLAS sizes). */
void conv2d_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads);

/* conv2d_forward followed by maxpool2x2_forward (maxpool.h) of y into
 * yp[N][OC][H/2][W/2], bit for bit the two calls (H, W even).  The direct
 * kernel fuses them (conv_direct_forward_maxpool: each image pooled while
 * in cache) and, when keep_y is 0, never writes y at all: pass keep_y = 0
 * when nothing will read the conv output (inference), 1 when backward
 * needs it.  Other kernels make the two calls and always write y.  y must
 * be a full [N][OC][H][W] buffer either way; y, yp must not alias x or each
 * other.  Same scratch as conv2d_forward. */
void conv2d_forward_maxpool(float *y, int keep_y, float *yp, const float *x, const Conv2d *l, int N, int H, int W,
                            float *scratch, int nthreads);

/* Backward of conv2d_forward_maxpool (with CONV_FUSE_RELU) given
 * gp[N][OC][H/2][W/2] = dL/d(pooled output) and the kept conv output y:
 * the same as maxpool2x2_backward_relu(g, gp, y, ...) then
 * conv2d_backward(dx, g, x, ...) without the [N][OC][H][W] buffer g, one
 * image at a time in cache (conv_direct_backward_maxpool): dx bit for bit,
 * dw/db up to float summation order.  Direct kernel only (asserts
 * conv2d_kernel_resolve(l->kernel, l->K) == CONV_KERNEL_DIRECT): callers
 * using another kernel make the two calls.  dx may be NULL; same scratch as
 * conv2d_forward; dx must not alias gp, y or x. */
void conv2d_backward_maxpool(float *dx, const float *gp, const float *y, const float *x, const Conv2d *l, int N,
                             int H, int W, float *scratch, int nthreads);

/* conv2d_forward on the 2x nearest upsampling of a[N][C][H/2][W/2]
 * (upsample.h), and its backward into da[N][C][H/2][W/2] (NULL: skip; with
 * relu, masked by a > 0 as upsample2x_backward_relu), without storing the
 * upsampled [N][C][H][W] tensor or its gradient (conv_direct_forward_upsample
 * / conv_direct_backward_upsample: chunks of images in cache).  y and da bit
 * for bit the unfused calls, dw/db up to float summation order.  Direct
 * kernel only (asserts conv2d_kernel_resolve(l->kernel, l->K) ==
 * CONV_KERNEL_DIRECT); H, W even; l->fuse without CONV_FUSE_DX_RELU for the
 * backward.  Same scratch as conv2d_forward. */
void conv2d_forward_upsample(float *y, const float *a, const Conv2d *l, int N, int H, int W, float *scratch,
                             int nthreads);
void conv2d_backward_upsample(float *da, const float *g, const float *a, int relu, const Conv2d *l, int N, int H,
                              int W, float *scratch, int nthreads);

/* Backward of conv2d_forward given dy[N][OC][H][W] = dL/dy and the forward
 * input x[N][C][H][W]:
 *   dx[N][C][H][W] overwritten with dL/dx (dx may be NULL: input gradient not
 *   needed, e.g. first layer);
 *   l->dw, l->db accumulated (+=) with dL/dw, dL/db summed over the N images.
 * scratch as for conv2d_forward.  dx must not alias dy or x. */
void conv2d_backward(float *dx, const float *dy, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads);

#endif
