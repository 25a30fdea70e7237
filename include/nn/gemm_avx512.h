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
 * Only call these when gemm_avx512_supported() is true.  The functions are
 * compiled with GCC target("avx512f") attributes, so the rest of the program
 * needs no -mavx512f; on other compilers/architectures they are absent and
 * gemm_avx512_supported() returns 0 (callers keep the cblas path).
 * Threading: serial (called from inside OpenMP regions, one per thread).
 * Does not allocate (the packed B panel, 8 KiB, is on the stack).
 */
#ifndef AESIM_GEMM_AVX512_H
#define AESIM_GEMM_AVX512_H

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

#endif
