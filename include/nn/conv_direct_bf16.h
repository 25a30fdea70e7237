/*
 * conv_direct_bf16.h - the VDPBF16PS (AVX512_BF16) variants of the direct
 * KxK convolution kernels (conv_direct.h), issue 16: the convolutions of
 * MODEL_BF16 (model.h) on CPUs that have the instruction.  conv_direct.c
 * calls them when Conv2d.bf16 is set; use conv2d.h rather than these.
 *
 * VDPBF16PS (Intel SDM, "VDPBF16PS - Dot Product of BF16 Pairs Accumulated
 * into Packed Single Precision") multiplies, per 32-bit lane i, the two
 * bfloat16 halves of lane i of one operand with those of the other and adds
 * both products to the float32 accumulator lane i: twice the multiply-adds
 * of a float32 FMA per instruction.  Each product of two bfloat16 values is
 * exact in float32, so these kernels compute what the float32 kernels
 * compute on operands rounded to bfloat16 (the emulation, bf16.h), up to the
 * order of the float32 additions and to subnormals (VDPBF16PS treats
 * subnormal inputs as zero and flushes subnormal results).  The operands are
 * rounded to nearest even while packed (VCVTNE2PS2BF16, bf16_round's
 * rounding), so float32 inputs need not be rounded beforehand.
 *
 * The pair each kernel multiplies is taken along its reduction:
 *   forward and input gradient (the same pass on g with the flipped,
 *     transposed kernel): pairs of input channels.  The input is packed as
 *     in[n][ceil(CI/2)][H*W] 32-bit words (low half channel 2c, high half
 *     channel 2c+1, zero for a missing odd channel), the weights as
 *     [ceil(CO/8)][K*K][ceil(CI/2)][8] words; then the float32 kernel's
 *     register tiles (16 pixels x 8 output channels, lane masks per 16-pixel
 *     vector and tap) run unchanged on words instead of floats, half as
 *     many input-channel steps;
 *   weight gradient: pairs of neighbouring pixels.  g and x are packed as
 *     plain bfloat16 planes; a 32-pixel vector of g times the same vector
 *     of x shifted by the tap's offset gives, per lane, the sum over two
 *     pixels of dw[oc][c][t]'s terms; lane masks are per 32-pixel vector.
 * The accumulators are float32 throughout, the outputs (y, dx, the
 * weight-gradient lane partials) float32 as in conv_direct.c.
 *
 * Only call the kernels of an implementation conv_bf16_available() grants.
 * Serial (conv_direct.c runs them per thread on its own images); no
 * allocation; no state.
 */
#ifndef AESIM_CONV_DIRECT_BF16_H
#define AESIM_CONV_DIRECT_BF16_H

#include <stddef.h>
#include <stdint.h>

/* What a pass does with a finished output vector (conv_direct.c's modes):
 * store it, store relu(it) (torch.relu: NaN passes), or store it where the
 * mask tensor xm is > 0 and 0 elsewhere (CONV_FUSE_DX_RELU). */
enum { CONV_OUT_PLAIN = 0, CONV_OUT_RELU = 1, CONV_OUT_MASK_BY_X = 2 };

/* The values of Conv2d.bf16: which arithmetic the direct kernels use.
 *   CONV_BF16_OFF       float32 kernels (conv_direct.c)
 *   CONV_BF16_NATIVE    the kernels below on VDPBF16PS / VCVTNE2PS2BF16
 *   CONV_BF16_EMULATED  the same kernels with those two instructions
 *                       emulated on AVX-512F/BW (same results up to
 *                       subnormals; slower): tests the kernels' layouts and
 *                       tiles on CPUs without AVX512_BF16. */
enum { CONV_BF16_OFF = 0, CONV_BF16_NATIVE = 1, CONV_BF16_EMULATED = 2 };

/* 1 if the running CPU and this build can run implementation impl
 * (CONV_BF16_NATIVE: AVX512_BF16 and AVX512BW, GCC >= 11 or Clang on
 * x86-64; CONV_BF16_EMULATED: AVX-512F and AVX512BW), else 0 (also for
 * CONV_BF16_OFF).  Pure CPU query. */
int conv_bf16_available(int impl);

/* How much faster this core multiplies bfloat16 pairs than float32, measured:
 * the multiply-adds per second of VDPBF16PS (2 per lane) over those of a
 * float32 FMA (1 per lane), each timed on 16 independent zmm accumulators
 * (register-only loops, best of 7 interleaved trials of about 0.1 ms; about
 * 2 ms in all).  The instruction's rate, not the CPU's flags, decides whether
 * bf16 pays: AMD Zen 4 and 5 issue VDPBF16PS as fast as an FMA (about 2.0
 * here), Intel Xeons with AVX512_BF16 on one port only (about 1.0: the bf16
 * kernels are then slower than float32 for their packing; measured
 * 2026-12-06, bench/results/HISTORY.md).  The first call measures (call it
 * from one thread; later calls return the same value); 0 when
 * !conv_bf16_available(CONV_BF16_NATIVE). */
double conv_bf16_dot_speedup(void);

/* The speedup conv_bf16_dot_speedup() must reach for --precision auto to
 * pick bf16: between Intel's 1.0 and AMD's 2.0, far from both. */
#define CONV_BF16_AUTO_MIN_SPEEDUP 1.4

/* 1 when --precision auto should run bf16 on this CPU:
 * conv_bf16_available(CONV_BF16_NATIVE) and conv_bf16_dot_speedup() >=
 * CONV_BF16_AUTO_MIN_SPEEDUP (model_precision_resolve's all_native asks every
 * rank this).  Measures on the first call, as conv_bf16_dot_speedup. */
int conv_bf16_auto_runs_bf16(void);

/* 32-bit words of a packed weight block for a pass with CI input and CO
 * output channels and kk taps: ceil(CO/8) * kk * ceil(CI/2) * 8. */
size_t conv_bf16_weight_words(int CI, int CO, int kk);

/* Packs the weights w[OC][C][kk] (float32, PyTorch layout) of a layer for
 * conv_bf16_pass, rounding them to bfloat16:
 *   input_grad == 0: the forward pass (CI = C, CO = OC);
 *   input_grad != 0: the input-gradient pass (CI = OC, CO = C), the kernel
 *     flipped (tap kk-1-t) and transposed.
 * wp: conv_bf16_weight_words(CI, CO, kk) words, overwritten (padding 0). */
void conv_bf16_pack_weights(uint32_t *wp, const float *w, int C, int OC, int kk, int input_grad);

/* 32-bit words of the weight-gradient lane-mask table for KxK taps on HxW
 * planes: ceil(H*W/32) * K*K. */
size_t conv_bf16_mask_words(int K, int H, int W);

/* mask[v*K*K + t] bit l set when pixel p = 32 v + l exists (p < H*W) and
 * its tap-t neighbour is inside the image. */
void conv_bf16_build_masks(uint32_t *mask, int K, int H, int W);

/* src[n][CI][hw] plain bfloat16 (pack_plain's output) -> dst[n][ceil(CI/2)][hw]
 * channel pairs, as pack_pairs of the float32 values would give (no
 * rounding left to do; either implementation's tables may follow it).  Only
 * call when conv_bf16_available(CONV_BF16_EMULATED). */
void conv_bf16_pairs_from_plain(uint32_t *dst, const uint16_t *src, int n, int CI, size_t hw);

/* The SIMD kernels of one implementation (conv_bf16_kernels).  All serial,
 * no allocation. */
typedef struct ConvBf16Kernels {
    /* src[n][CI][hw] float32 -> dst[n][ceil(CI/2)][hw] channel pairs (see
     * above), rounded to bfloat16.  dst must not overlap src. */
    void (*pack_pairs)(uint32_t *dst, const float *src, int n, int CI, size_t hw);

    /* dst[i] = the bfloat16 bits of src[i] rounded to nearest even, i < count. */
    void (*pack_plain)(uint16_t *dst, const float *src, size_t count);

    /* The forward / input-gradient pass over pixel vectors [v0, v1) of the
     * flat list of the n packed images (vector j: image j / nv, plane vector
     * j % nv, nv = ceil(H*W/16)):
     *   out[img][CO][H*W] (float32) = conv(in) (+ bias[CO] when bias is not
     *   NULL), finished by `mode` (CONV_OUT_*; xm: float32 [img][CO][H*W] for
     *   CONV_OUT_MASK_BY_X, else NULL).
     * in: pack_pairs of the input [img][CI][H*W]; wp: the packed
     * weights (conv_bf16_pack_weights); mask16: conv_direct.c's 16-pixel lane
     * masks [nv][K*K].  out must not alias in or xm. */
    void (*pass)(float *out, const uint32_t *in, const uint32_t *wp, const float *bias, const float *xm, int CI,
                 int CO, int K, int H, int W, const uint16_t *mask16, int64_t v0, int64_t v1, int mode);

    /* Weight-gradient lane partials of n images: for every tap t, output
     * channel o and input channel c,
     *   part[((t*OC + o)*C + c)*16 + lane] += the float32 sum, over the
     *   lane's pixel pairs, of g[img][o][p] * x[img][c][p + off(t)]
     * (zero where the neighbour leaves the image), i.e. the 16 lanes of one
     * entry sum to dw[o][c][t]'s contribution of these images.  g: plain
     * bfloat16 [n][OC][H*W], x: plain bfloat16 [n][C][H*W]
     * (pack_plain); mask32: conv_bf16_build_masks.  part must be
     * 64-byte aligned. */
    void (*wgrad)(float *part, const uint16_t *g, const uint16_t *x, int C, int OC, int K, int H, int W,
                  const uint32_t *mask32, int n);
} ConvBf16Kernels;

/* The kernels of implementation impl (CONV_BF16_NATIVE or
 * CONV_BF16_EMULATED); only call when conv_bf16_available(impl).  Static
 * table, never NULL. */
const ConvBf16Kernels *conv_bf16_kernels(int impl);

#endif
