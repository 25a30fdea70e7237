/*
 * gemm.c - row-major cblas_sgemm wrappers (see gemm.h).
 * Does no threading of its own; OpenBLAS uses the thread count the program
 * set (1 when the callers run inside OpenMP regions).
 */
#include "nn/gemm.h"

#include <assert.h>
#include <cblas.h>

/* All matrices are packed, so the leading dimension is the stored row length. */
void gemm_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, beta, c, n);
}

void gemm_nt(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, beta, c, n);
}

void gemm_tn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, m, b, n, beta, c, n);
}
