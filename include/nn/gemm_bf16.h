/*
 * gemm_bf16.h - a bf16 GEMM on the AVX512_BF16 dot-product instruction
 * VDPBF16PS (issue 16): the first building block of native bf16
 * convolutions, kept for tests and measurement; the model does not call it
 * (its convolutions are direct kernels, and their VDPBF16PS variants are
 * conv_direct_bf16.h).
 *
 *   gemm_bf16_nn  C[m][n] = bf16(A)[m][k] x bf16(B)[k][n] + beta*C
 * row-major, densely packed, alpha 1, m, n, k >= 1; with beta == 0, C may
 * hold anything on entry.  A and B are float32 and are rounded to bfloat16
 * (round to nearest even, VCVTNE2PS2BF16, the rounding of nn/bf16.h) while
 * packed; each product of two bfloat16 values is exact in float32, and
 * VDPBF16PS adds two of them per lane into a float32 accumulator, treating
 * subnormal inputs as zero and flushing subnormal results to zero (Intel
 * SDM, VDPBF16PS).  So the result equals the float32 GEMM of the rounded
 * operands (gemm_avx512_nn on bf16_round_array copies, the emulation) up
 * to summation order and subnormals.
 *
 * Method: gemm_avx512.h's 8x32 register block with k taken two at a time:
 * each kc x 32 panel of B is packed once as kc/2 pairs of zmm (lane j of a
 * zmm holds columns j's two k values as the low and high bfloat16 of one
 * 32-bit word, the operand layout VDPBF16PS multiplies), each 8-row block
 * of A as 32-bit pairs broadcast per row; the 16 float32 accumulators stay
 * in registers.  Double the multiply-adds per instruction of the float32
 * kernel.
 *
 * Measured (2026-12-03, this 2-core Intel Xeon with AVX512_BF16 but no
 * AMX, one thread, best of 60 calls, machine shared, load average ~14):
 * conv-forward shapes m x n x k = 16 x 4096 x 144: float32 gemm_avx512_nn
 * 82 GFLOP/s, gemm_bf16_nn 55; 32 x 1024 x 288: 115 vs 70; 256 x 1024 x
 * 512: 125 vs 73.  A register-only loop of 12 independent VDPBF16PS runs
 * at about the same FLOP rate as one of 12 float32 FMAs (60-105 vs 55-110
 * GFLOP/s, noisy): on this Intel core VDPBF16PS issues at half the FMA
 * rate, so bf16 dot products bring no compute gain here (they would on
 * AMD Zen 4, where the issue measured PyTorch autocast's 1.24x); AMX is
 * Intel's bf16 path.  On AMD Zen 5 (2026-12-04) the same register-only
 * loop ran VDPBF16PS at 430 GFLOP/s per core against 233 for FMA (1.85x),
 * which conv_direct_bf16.h uses.
 *
 * Only call gemm_bf16_nn when gemm_bf16_supported() is true (GCC/Clang
 * target attributes; elsewhere the function is absent from the dispatch and
 * supported() returns 0).  Serial; no allocation (packed panels on the
 * stack).
 */
#ifndef AESIM_GEMM_BF16_H
#define AESIM_GEMM_BF16_H

/* 1 if this build has the kernel and the running CPU has AVX512_BF16 (and
 * AVX-512F/BW), else 0.  Pure CPU query. */
int gemm_bf16_supported(void);

/* C[m][n] = bf16(A[m][k]) x bf16(B[k][n]) + beta*C (see above). */
void gemm_bf16_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta);

#endif
