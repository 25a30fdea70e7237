/*
 * whiten.c - PCA whitening of database vectors (see include/whiten.h).
 * No MPI, no threads.
 */
#include "search/whiten.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/npy.h"

int whiten_fit(Whiten *w, const PcaStats *s, int keep, Err *err)
{
    memset(w, 0, sizeof *w);
    Pca p;
    if (pca_fit(&p, s, s->P, err)) return err->code;
    const int D = s->P;
    const double eps = WHITEN_EPS_REL * (p.var[0] > 0 ? p.var[0] : 1.0);
    w->D = D;
    w->mean = xmalloc((size_t)D * sizeof *w->mean);
    w->mat = xmalloc((size_t)D * D * sizeof *w->mat);
    memcpy(w->mean, p.mean, (size_t)D * sizeof *w->mean);
    if (keep <= 0 || keep > D) keep = D;
    for (int i = 0; i < D; i++) {
        const double v = p.var[i] > 0 ? p.var[i] : 0; /* dsyevd can return -1e-17 for a null direction */
        const double f = i < keep ? 1.0 / sqrt(v + eps) : 0.0; /* axes by decreasing variance */
        for (int j = 0; j < D; j++) w->mat[(size_t)i * D + j] = (float)(p.axes[(size_t)i * D + j] * f);
    }
    pca_free(&p);
    return AE_OK;
}

void whiten_free(Whiten *w)
{
    free(w->mean);
    free(w->mat);
    memset(w, 0, sizeof *w);
}

void whiten_apply(const Whiten *w, float *x, int64_t n)
{
    /* y[j] = sum_k (x[k] - mean[k]) mat[j][k], each sum in k order with the
     * same loop for every row: a row's bits never depend on the batch or on
     * its place in it (a GEMM library picks other kernels, and so another
     * rounding, for edge rows and other shapes; measured: 1-2 ULP).  The
     * inner loop runs over j, contiguous in matT, so it vectorises without
     * reordering any sum.  D x D multiply-adds a row: 4,096 for D = 64. */
    const int D = w->D;
    float *matT = xmalloc((size_t)D * D * sizeof *matT), *d = xmalloc((size_t)D * sizeof *d);
    float *y = xmalloc((size_t)D * sizeof *y);
    for (int j = 0; j < D; j++)
        for (int k = 0; k < D; k++) matT[(size_t)k * D + j] = w->mat[(size_t)j * D + k];
    for (int64_t r = 0; r < n; r++) {
        float *xr = x + (size_t)r * D;
        for (int k = 0; k < D; k++) d[k] = xr[k] - w->mean[k];
        for (int j = 0; j < D; j++) y[j] = 0.0f;
        for (int k = 0; k < D; k++) {
            const float dk = d[k];
            const float *m = matT + (size_t)k * D;
            for (int j = 0; j < D; j++) y[j] += dk * m[j];
        }
        memcpy(xr, y, (size_t)D * sizeof *y);
    }
    free(matT);
    free(d);
    free(y);
}

int whiten_save(const Whiten *w, const char *dir, Err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, WHITEN_FILE);
    NpyArray a[2] = {
        { .name = "mean", .dtype = NPY_F32, .ndim = 1, .shape = { w->D }, .data = w->mean },
        { .name = "matrix", .dtype = NPY_F32, .ndim = 2, .shape = { w->D, w->D }, .data = w->mat },
    };
    return npz_write(path, a, 2, err);
}

int whiten_load(Whiten *w, const char *dir, int D, Err *err)
{
    memset(w, 0, sizeof *w);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, WHITEN_FILE);
    NpyArray *a = NULL;
    int n = 0;
    if (npz_read(path, &a, &n, err)) return err->code;
    const NpyArray *mean = NULL, *mat = NULL;
    for (int i = 0; i < n; i++) {
        if (strcmp(a[i].name, "mean") == 0) mean = &a[i];
        if (strcmp(a[i].name, "matrix") == 0) mat = &a[i];
    }
    if (!mean || !mat || mean->dtype != NPY_F32 || mat->dtype != NPY_F32 || mean->ndim != 1 || mean->shape[0] != D ||
        mat->ndim != 2 || mat->shape[0] != D || mat->shape[1] != D) {
        npz_free(a, n);
        return err_set(err, AE_EFORMAT, "%s must hold float32 'mean' [%d] and 'matrix' [%d][%d] (hint: the database "
                                        "was indexed with --whiten and this file is damaged; index again)", path, D,
                       D, D);
    }
    w->D = D;
    w->mean = xmalloc((size_t)D * sizeof *w->mean);
    w->mat = xmalloc((size_t)D * D * sizeof *w->mat);
    memcpy(w->mean, mean->data, (size_t)D * sizeof *w->mean);
    memcpy(w->mat, mat->data, (size_t)D * D * sizeof *w->mat);
    npz_free(a, n);
    return AE_OK;
}
