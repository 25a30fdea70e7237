/*
 * bf16.h - bfloat16 rounding of float32 arrays (issue 16: bf16 mixed
 * precision), the operand rounding of aesim-train/aesim-search --precision bf16.
 *
 * bfloat16 keeps float32's sign and 8-bit exponent and the top 7 bits of its
 * 23-bit fraction.  bf16_round returns the float32 value of the NEAREST
 * bfloat16, ties to even (IEEE round-to-nearest-even, as PyTorch's
 * tensor.to(torch.bfloat16) and the VCVTNEPS2BF16 instruction do):
 * for a finite v with bits u, (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000;
 * values that round past the largest bfloat16 become +/-inf; NaN stays NaN
 * (quiet); subnormals round like normals (no flush to zero).  Rounding is
 * monotone (a <= b implies round(a) <= round(b)) and keeps the sign, so it
 * commutes with ReLU, max-pooling and upsampling: rounding a tensor before
 * or after them gives the same values (model.c relies on it).
 *
 * A bfloat16 x bfloat16 product has at most 16 significant bits, so it is
 * EXACT in float32: a float32 FMA of two rounded operands computes what a
 * bf16 dot-product instruction (VDPBF16PS) computes per pair; only the
 * order of the float32 additions differs.
 *
 * Two implementations, bitwise identical (tests/test_bf16.c): portable C
 * and AVX-512F (16 floats per step) when the running CPU has it.
 * Threading: OpenMP over elements, serial below a size threshold.
 * Does not allocate; no state.
 */
#ifndef AESIM_BF16_H
#define AESIM_BF16_H

#include <stddef.h>

/* The float32 value of the bfloat16 nearest to v (ties to even). */
float bf16_round(float v);

/* dst[i] = bf16_round(src[i]) for i < n; dst == src (in place) is allowed,
 * other overlaps are not.  n >= 0. */
void bf16_round_array(float *dst, const float *src, size_t n);

/* The same on the portable C path only (tests compare the two). */
void bf16_round_array_portable(float *dst, const float *src, size_t n);

/* 1 if the running CPU has AVX512_BF16 (VDPBF16PS, VCVTNEPS2BF16) and this
 * build can use it, else 0.  Pure CPU query. */
int bf16_cpu_native(void);

#endif
