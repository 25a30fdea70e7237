/*
 * pca.h - principal component analysis of float vectors, for the PCA
 * baseline of aesim-search eval: mean and covariance accumulated in double
 * (so the sums can be added over MPI ranks), eigen-decomposition of the
 * covariance with LAPACK dsyevd (divide and conquer, from OpenBLAS's LAPACK),
 * projection of centred vectors on the D leading axes with cblas_sgemm.
 *
 * Covariance: cov = S / n - mu mu^T with S = sum_i x_i x_i^T and
 * mu = (1/n) sum_i x_i (the maximum-likelihood estimate, divided by n; the
 * scale does not change the axes).  S is accumulated with cblas_dsyrk over
 * blocks of rows converted to double, so the cancellation in S/n - mu mu^T
 * costs at most ~1e-16 relative to |x|^2 (pixels in [0,1]: harmless).
 * Axes: eigenvectors of cov for the D largest eigenvalues, largest first
 * (dsyevd returns them ascending); the sign of each axis is LAPACK's.
 * Reference: I. T. Jolliffe, "Principal Component Analysis", 2nd ed., 2002,
 * ch. 1-3; LAPACK Users' Guide, 3rd ed., xSYEVD.
 *
 * Threading: BLAS/LAPACK calls run with OpenBLAS's thread setting (threads.h
 * keeps it at 1), never inside an OpenMP region.  No MPI: the caller adds the
 * PcaStats of several ranks (par_allreduce_sum_f64 / _i64) before pca_fit.
 */
#ifndef AESIM_PCA_H
#define AESIM_PCA_H

#include <stdint.h>

#include "base/err.h"

/* Rows converted to double per dsyrk call in pca_stats_add. */
#define PCA_BLOCK_ROWS 256

/* Sums over the vectors seen so far. */
typedef struct PcaStats {
    int P;          /* input dimension */
    double n;       /* number of vectors (a double, so it can be allreduced with the sums) */
    double *sum;    /* [P] sum of x */
    double *sxx;    /* [P][P] sum of x x^T (row-major, both triangles after pca_stats_add) */
} PcaStats;

/* Zeroed sums for P-dimensional vectors (P >= 1).  Free with pca_stats_free. */
void pca_stats_init(PcaStats *s, int P);
void pca_stats_free(PcaStats *s);

/* Adds the n rows of x[n][P] (float32, row-major) to the sums. */
void pca_stats_add(PcaStats *s, const float *x, int64_t n);

/* A fitted projection. */
typedef struct Pca {
    int P, D;       /* input and output dimensions, 1 <= D <= P */
    float *mean;    /* [P] mu */
    float *axes;    /* [D][P] unit eigenvectors of cov, by decreasing eigenvalue */
    double *var;    /* [D] their eigenvalues (variance along each axis), decreasing */
} Pca;

/* Fits D axes from the sums.  Errors: AE_EARG if D is not in 1..P or n < 2;
 * AE_ENUMERIC if dsyevd fails to converge (info > 0) or a sum is not finite.
 * On error *p holds nothing to free.  Free with pca_free. */
int pca_fit(Pca *p, const PcaStats *s, int D, Err *err);
void pca_free(Pca *p);

/* y[n][D] = (x[n][P] - mean) axes^T, float32 (sgemm on the centred rows,
 * copied block by block; x is not modified). */
void pca_project(float *y, const Pca *p, const float *x, int64_t n);

#endif
