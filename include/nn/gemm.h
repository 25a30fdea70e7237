/*
 * gemm.h - thin row-major wrappers over OpenBLAS cblas_sgemm.
 *
 * Every matrix is row-major float32 and densely packed (leading dimension =
 * number of columns), so each wrapper only needs M, N, K:
 *   C[M][N] = op(A) x op(B) + beta * C[M][N]      (alpha is always 1)
 * The name gives op(A), op(B): n = as stored, t = transposed.
 *
 * Not done here: no blocking, no threading decisions and no allocation.
 * Threading: each call runs on however many threads OpenBLAS is set to.  The
 * conv kernels call these from inside OpenMP parallel regions, so the program
 * must call openblas_set_num_threads(1) whenever it uses more than one OpenMP
 * thread (BLAS and OpenMP never nest).  Reference: BLAS sgemm (netlib).
 */
#ifndef AESIM_GEMM_H
#define AESIM_GEMM_H

/* C[m][n] = A[m][k] x B[k][n] + beta*C.  m, n, k >= 1.  With beta == 0, C
 * may hold anything (even NaN) on entry. */
void gemm_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* C[m][n] = A[m][k] x B[n][k]^T + beta*C  (B is stored [n][k]). */
void gemm_nt(float *c, const float *a, const float *b, int m, int n, int k, float beta);

/* C[m][n] = A[k][m]^T x B[k][n] + beta*C  (A is stored [k][m]). */
void gemm_tn(float *c, const float *a, const float *b, int m, int n, int k, float beta);

#endif
