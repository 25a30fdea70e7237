/*
 * pca.c - covariance sums, LAPACK dsyevd eigen-decomposition and projection
 * (see include/search/pca.h).  BLAS/LAPACK only, never inside OpenMP; no MPI.
 */
#include "search/pca.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"

/* LAPACK (Fortran ABI, exported by Debian's libopenblas; there is no
 * lapack.h in libopenblas-dev, so the prototype is written here). The two
 * trailing size_t are the hidden lengths of the character arguments. */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
             const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len, size_t uplo_len);

void pca_stats_init(PcaStats *s, int P)
{
    CHECK(P >= 1);
    s->P = P;
    s->n = 0;
    s->sum = xcalloc((size_t)P, sizeof *s->sum);
    s->sxx = xcalloc((size_t)P * (size_t)P, sizeof *s->sxx);
}

void pca_stats_free(PcaStats *s)
{
    free(s->sum);
    free(s->sxx);
    memset(s, 0, sizeof *s);
}

void pca_stats_add(PcaStats *s, const float *x, int64_t n)
{
    const int P = s->P;
    double *blk = xmalloc((size_t)PCA_BLOCK_ROWS * (size_t)P * sizeof *blk);
    for (int64_t r0 = 0; r0 < n; r0 += PCA_BLOCK_ROWS) {
        int nb = (int)(n - r0 < PCA_BLOCK_ROWS ? n - r0 : PCA_BLOCK_ROWS);
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < P; j++) {
                double v = x[(size_t)(r0 + i) * (size_t)P + (size_t)j];
                blk[(size_t)i * (size_t)P + (size_t)j] = v;
                s->sum[j] += v;
            }
        /* Upper triangle of sxx += blk^T blk (row-major: A is nb x P, trans). */
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, P, nb, 1.0, blk, P, 1.0, s->sxx, P);
    }
    s->n += (double)n;
    free(blk);
    /* Mirror the upper triangle so the sums can be added element-wise. */
    for (int i = 0; i < P; i++)
        for (int j = 0; j < i; j++) s->sxx[(size_t)i * (size_t)P + (size_t)j] = s->sxx[(size_t)j * (size_t)P + (size_t)i];
}

int pca_fit(Pca *p, const PcaStats *s, int D, Err *err)
{
    memset(p, 0, sizeof *p);
    const int P = s->P;
    if (D < 1 || D > P) return err_set(err, AE_EARG, "PCA: %d axes asked of %d-dimensional vectors", D, P);
    if (s->n < 2) return err_set(err, AE_EARG, "PCA: needs at least 2 vectors (got %.0f)", s->n);
    double *cov = xmalloc((size_t)P * (size_t)P * sizeof *cov), *w = xmalloc((size_t)P * sizeof *w);
    double *mu = xmalloc((size_t)P * sizeof *mu);
    for (int j = 0; j < P; j++) mu[j] = s->sum[j] / s->n;
    int finite = 1;
    for (int i = 0; i < P; i++)
        for (int j = 0; j < P; j++) {
            double c = s->sxx[(size_t)i * (size_t)P + (size_t)j] / s->n - mu[i] * mu[j];
            finite &= isfinite(c) != 0;
            cov[(size_t)i * (size_t)P + (size_t)j] = c;
        }
    int info = 0;
    if (finite) {
        /* Workspace query, then the decomposition.  cov is symmetric, so the
         * row-major / column-major question does not arise. */
        int lwork = -1, liwork = -1, iwq = 0;
        double wq = 0;
        dsyevd_("V", "U", &P, cov, &P, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
        if (info == 0) {
            lwork = (int)wq;
            liwork = iwq;
            double *work = xmalloc((size_t)lwork * sizeof *work);
            int *iwork = xmalloc((size_t)liwork * sizeof *iwork);
            dsyevd_("V", "U", &P, cov, &P, w, work, &lwork, iwork, &liwork, &info, 1, 1);
            free(work);
            free(iwork);
        }
    }
    int rc = AE_OK;
    if (!finite || info != 0) {
        rc = err_set(err, AE_ENUMERIC, "PCA: %s (dsyevd info %d; hint: check the input vectors for NaN/Inf)",
                     finite ? "the eigen-decomposition did not converge" : "the covariance is not finite", info);
    } else {
        p->P = P;
        p->D = D;
        p->mean = xmalloc((size_t)P * sizeof *p->mean);
        p->axes = xmalloc((size_t)D * (size_t)P * sizeof *p->axes);
        p->var = xmalloc((size_t)D * sizeof *p->var);
        for (int j = 0; j < P; j++) p->mean[j] = (float)mu[j];
        /* Column-major eigenvector e (ascending) is contiguous: cov + e*P. */
        for (int d = 0; d < D; d++) {
            const double *v = cov + (size_t)(P - 1 - d) * (size_t)P;
            for (int j = 0; j < P; j++) p->axes[(size_t)d * (size_t)P + (size_t)j] = (float)v[j];
            p->var[d] = w[P - 1 - d];
        }
    }
    free(cov);
    free(w);
    free(mu);
    return rc;
}

void pca_free(Pca *p)
{
    free(p->mean);
    free(p->axes);
    free(p->var);
    memset(p, 0, sizeof *p);
}

void pca_project(float *y, const Pca *p, const float *x, int64_t n)
{
    const int P = p->P, D = p->D;
    float *blk = xmalloc((size_t)PCA_BLOCK_ROWS * (size_t)P * sizeof *blk);
    for (int64_t r0 = 0; r0 < n; r0 += PCA_BLOCK_ROWS) {
        int nb = (int)(n - r0 < PCA_BLOCK_ROWS ? n - r0 : PCA_BLOCK_ROWS);
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < P; j++)
                blk[(size_t)i * (size_t)P + (size_t)j] = x[(size_t)(r0 + i) * (size_t)P + (size_t)j] - p->mean[j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, D, P, 1.0f, blk, P, p->axes, P, 0.0f,
                    y + (size_t)r0 * (size_t)D, D);
    }
    free(blk);
}
