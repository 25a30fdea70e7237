/*
 * gemm_avx512.h - aesim's own AVX-512 SGEMM kernels for the convolution
 * GEMMs (issue 6), used instead of OpenBLAS where the CPU has AVX-512F.
 *
 * Same contract as gemm.h (row-major, densely packed, alpha 1):
 *   gemm_avx512_nn  C[m][n] = A[m][k]   x B[k][n]   + beta*C
 *   gemm_avx512_tn  C[m][n] = A[k][m]^T x B[k][n]   + beta*C
 *   gemm_avx512_nt  C[m][n] = A[m][k]   x B[n][k]^T + beta*C
 * m, n, k >= 1.  With beta == 0, C may hold anything (even NaN) on entry.
 * Sums are float32 FMAs in a different order from BLAS (nn/tn: sequential
 * over k within blocks of GEMM_AVX512_KC; nt: 16 interleaved partial sums
 * per dot product), so results differ from cblas_sgemm by rounding only.
 *
 * Method (GotoBLAS / BLIS scheme, reduced): nn and tn keep an 8x32 block of
 * C in 16 zmm registers; each k step loads 32 floats of a packed B panel
 * (kc x 32, copied once and reused for every 8-row block of A) and
 * broadcasts 8 A values.  nt (dot products along contiguous rows) keeps
 * 8x3 dot products in 24 zmm registers and reduces them at the end of each
 * k block.  Edges use masked loads/stores; no reads outside the matrices.
 *
 * nt_packed_a (the kNN distance GEMM, issue 16) takes A packed once by
 * gemm_avx512_pack_a_nt and keeps a 12x32 block of C in 24 registers.
 *
 * Only call these when gemm_avx512_supported() is true.  The functions are
 * compiled with GCC target("avx512f") attributes, so the rest of the program
 * needs no -mavx512f; on other compilers/architectures they are absent and
 * gemm_avx512_supported() returns 0 (callers keep the cblas path).
 * Threading: serial (called from inside OpenMP regions, one per thread).
 * Does not allocate (the packed B panel, 8-16 KiB, 64 KiB for
 * gemm_avx512_nt_packed_a, is on the stack; packed A is the caller's).
 */
#ifndef AESIM_GEMM_AVX512_H
#define AESIM_GEMM_AVX512_H

#include <stddef.h>

/* 1 if this build has the kernels and the running CPU has AVX-512F, else 0.
 * Pure CPU query (no state). */
int gemm_avx512_supported(void);

/* C[m][n] = A[m][k] x B[k][n] + beta*C. */
void gemm_avx512_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* C[m][n] = A[k][m]^T x B[k][n] + beta*C  (A is stored [k][m]). */
void gemm_avx512_tn(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* C[m][n] = A[m][k] x B[n][k]^T + beta*C  (B is stored [n][k]). */
void gemm_avx512_nt(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* C[m][n] = A[m][k] x B[n][k]^T + beta*C, by the nn method: each kc x 32
 * panel of B^T is packed (transposed) once and reused by every 8-row block
 * of A, so the sums run sequentially over k within blocks of
 * GEMM_AVX512_KC, as gemm_avx512_nn's (not the order of gemm_avx512_nt).
 * For large m and n (the kNN distance tiles, issue 16), where it runs ~3x
 * faster than gemm_avx512_nt, whose tiles re-read A from L2 for every 3
 * rows of B and reduce 24 vectors per tile and k block. */
void gemm_avx512_nt_bcast(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* Floats of the packed copy of A[m][k] that gemm_avx512_pack_a_nt writes:
 * m rounded up to the 12-row register block, times k.  m, k >= 1. */
size_t gemm_avx512_pack_a_nt_floats(int m, int k);

/* ap = A[m][k] (row-major) packed for gemm_avx512_nt_packed_a: per k block
 * of 512 and block of 12 rows, the 12 rows interleaved ([p][r]), rows past
 * m repeating row m - 1 (their products are computed and dropped).  ap has
 * gemm_avx512_pack_a_nt_floats(m, k) floats, owned by the caller; A is
 * not kept.  For an A multiplied with many B (the kNN query block times
 * every database tile, issue 16): packing costs m*k copies once. */
void gemm_avx512_pack_a_nt(float *ap, const float *a, int m, int k);

/* C[m][n] = A[m][k] x B[n][k]^T (C overwritten, may hold anything on
 * entry) with A given packed (ap from gemm_avx512_pack_a_nt with the same
 * m, k).  Method as gemm_avx512_nt_bcast (kc x 32 panels of B^T packed once
 * per 32 rows of B and k block), with 12 x 32 register tiles (24
 * accumulators) reading A sequentially and a k block of 512, so C is
 * written once for k <= 512: 20-25% faster than nt_bcast on the kNN tiles
 * (figures in gemm_avx512.c).  Sums run sequentially over k within each k
 * block, block partial sums added in order.  The panel is 64 KiB of stack. */
void gemm_avx512_nt_packed_a(float *c, const float *ap, const float *b, int m, int n, int k);

#endif
