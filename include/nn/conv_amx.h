/*
 * conv_amx.h - the forward pass of a KxK convolution (stride 1, "same"
 * zero padding K/2, bias, optional ReLU) on Intel AMX bfloat16 tiles
 * (TDPBF16PS), a first step toward running MODEL_BF16 (model.h) on AMX.
 * The design is bench/bench_amx_conv.c's spike, generalised to any K (odd),
 * any channel counts and any plane.  model.c runs the forward-only passes
 * of MODEL_BF16 on it (model_set_amx); training does not use it yet.
 *
 * TDPBF16PS (Intel SDM Vol. 2, "TDPBF16PS - Dot Product of BF16 Tiles
 * Accumulated into Packed Single Precision Tile"): for every row m of the
 * accumulator tile C (M x N float32), every pair k of A's row m and every
 * column n,
 *     C[m][n] += A[m][2k] * B[k][2n] + A[m][2k+1] * B[k][2n+1]
 * on bfloat16 operands (B in "VNNI" layout: row k holds the pairs (2k, 2k+1)
 * of N columns as 32-bit words), products and sums in float32; the
 * instruction ignores MXCSR, treats bfloat16 subnormal inputs as zero and
 * flushes subnormal results to zero, rounding to nearest even.  A product of
 * two bfloat16 values is exact in float32, so the result is a float32 sum of
 * exact products: what the float32 kernels compute on operands rounded to
 * bfloat16 (nn/bf16.h), up to the order of the float32 additions and to
 * subnormals.
 *
 * The implicit GEMM (no im2col), per image:
 *   B  the input as bfloat16 channel-PAIR planes with a zero border of
 *      K/2 pixels (conv_direct_bf16.h's pack_pairs layout, plus the border):
 *      pair plane j, a padded plane of Hp = H + K - 1 rows of Wp = W + K - 1
 *      32-bit words (low half channel 2j, high half channel 2j+1, 0 for a
 *      missing channel), then zero words up to a plane stride S.  A B tile
 *      (K = up to 32 channels, N = 16 pixels) is one tile load with row
 *      stride S of 16 consecutive words: the input under tap (dy, dx) of 16
 *      output pixels (y, x..x+15) of one row starts at word
 *      (y + dy) * Wp + x + dx.  When W is a multiple of 16 the pixel blocks
 *      are the 16-pixel pieces of the rows; otherwise the output pixels are
 *      numbered q = y * Wp + x on the padded width, a block is 16
 *      consecutive q (crossing row ends), and the pixels with x >= W are
 *      computed and dropped (Wp / W of the work);
 *   A  the weights rounded to bfloat16, conv_amx_pack_weights' layout
 *      [ceil(OC/16)][K*K][nch][16 oc][Kc] (Kc = min(ceil(C/2)*2, 32)
 *      channels per tile, nch = ceil(ceil(C/2)*2 / Kc) chunks; output and
 *      input channels past OC and C are zero);
 *   C  16 output channels x 16 pixels of float32; 4 accumulator tiles stay
 *      in the tile registers over the whole reduction (K*K taps x nch
 *      chunks): 2 oc blocks x 2 pixel blocks when ceil(OC/16) is even,
 *      1 oc block x 4 pixel blocks otherwise; then bias, ReLU and the NCHW
 *      store of the pixels inside the image.
 *
 * Two implementations of the same tile loop (same layouts, same tiles):
 *   CONV_AMX_NATIVE    AMX-TILE + AMX-BF16 instructions;
 *   CONV_AMX_EMULATED  the tile registers as memory and TDPBF16PS emulated
 *                      on AVX-512F/BW (per pair: two float32 FMAs on exact
 *                      products, subnormal inputs and results set to zero),
 *                      so tests cover the layouts and tiling on CPUs without
 *                      AMX (AMD).  The two agree up to the order of the
 *                      float32 additions inside one TDPBF16PS.
 * Built on x86-64 with GCC >= 11 (native tiles need GCC: the AMX
 * intrinsics); elsewhere conv_amx_available() is 0 and the other functions
 * must not be called.
 */
#ifndef AESIM_CONV_AMX_H
#define AESIM_CONV_AMX_H

#include <stddef.h>
#include <stdint.h>

/* The implementations (conv_amx_available, conv_amx_forward's impl). */
enum { CONV_AMX_OFF = 0, CONV_AMX_NATIVE = 1, CONV_AMX_EMULATED = 2 };

/* Largest kernel size conv_amx_forward takes (K odd, 1..CONV_AMX_MAX_K). */
#define CONV_AMX_MAX_K 11

/* 1 if this build and the running CPU (and OS) can run implementation impl,
 * else 0 (also for CONV_AMX_OFF and unknown values):
 *   CONV_AMX_NATIVE    x86-64 GCC >= 11 build, CPUID amx-tile, amx-bf16,
 *                      avx512f and avx512bw, and Linux granting the tile
 *                      data state (arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023,
 *                      XFEATURE_XTILEDATA = 18), which the first call
 *                      requests for the whole process; the answer is kept);
 *   CONV_AMX_EMULATED  x86-64 GCC >= 11 build and AVX-512F and AVX512BW.
 * Thread-safe (the permission is requested once, under pthread_once). */
int conv_amx_available(int impl);

/* Bytes of the packed weights of a layer with C input and OC output
 * channels and KxK taps: ceil(OC/16) * K*K * nch * 16 * Kc * 2 (see above). */
size_t conv_amx_weight_bytes(int C, int OC, int K);

/* Packs the weights w[OC][C][K][K] (float32, PyTorch layout) into wa, the A
 * tiles of conv_amx_forward, rounding them to bfloat16 (nearest even, as
 * bf16_round): wa holds conv_amx_weight_bytes(C, OC, K) bytes, all written
 * (padding 0); any alignment.  C, OC >= 1, K odd in 1..CONV_AMX_MAX_K.
 * Plain C: callable whatever conv_amx_available says. */
void conv_amx_pack_weights(uint16_t *wa, const float *w, int C, int OC, int K);

/* Bytes of scratch conv_amx_forward needs with nthreads threads on HxW
 * planes: per thread, one packed input image (ceil(C/2) rounded up to
 * nch*Kc/2 pair planes of S words) and the 4 KB C-tile buffer, each rounded
 * to 64 bytes. */
size_t conv_amx_scratch_bytes(int C, int K, int H, int W, int nthreads);

/* y[N][OC][H][W] (float32, NCHW) = conv(x; w) + bias[oc], then
 * max(0, .) when relu != 0 (NaN passes, as torch.relu), for a KxK
 * convolution with stride 1 and zero padding K/2 (PyTorch nn.Conv2d with
 * padding=K//2, cross-correlation).
 *   x     float32 [N][C][H][W]; rounded to bfloat16 (nearest even) while
 *         packed, so it need not be rounded beforehand;
 *   wa    conv_amx_pack_weights(w, C, OC, K);
 *   bias  float32 [OC] (added in float32, not rounded), or NULL for none;
 *   scratch  conv_amx_scratch_bytes(C, K, H, W, nthreads) bytes, 64-byte
 *         aligned, contents ignored (overwritten);
 *   nthreads  OpenMP threads (clamped to N; images split between them;
 *         serial without OpenMP); results do not depend on it.
 * N, C, OC, H, W >= 1; K odd, 1..CONV_AMX_MAX_K.  y must not overlap x,
 * wa, bias or scratch.  impl: CONV_AMX_NATIVE or CONV_AMX_EMULATED, only
 * one conv_amx_available() grants (asserted).  Each thread configures the
 * tiles itself and releases them before returning.  No allocation. */
void conv_amx_forward(float *y, const float *x, const uint16_t *wa, const float *bias, int N, int C, int OC, int K,
                      int H, int W, int relu, void *scratch, int nthreads, int impl);

#endif
