/*
 * whiten.h - PCA whitening of database vectors (aesim-search index
 * --whiten): y = diag(1 / sqrt(var + eps)) A (x - mu), with mu, A (the D
 * principal axes, as rows) and var (their variances) fitted on the indexed
 * vectors (pca.h).  Every direction of the codes then has unit variance
 * (with --whiten-dim K, below, only the K kept ones; the others are 0), so
 * L2 / cosine distances weigh all of them equally instead of being
 * dominated by the few directions of largest variance (A. Hyvarinen,
 * E. Oja, "Independent component analysis", Neural Networks 13, 2000,
 * sec. 5.1; for retrieval, H. Jegou, O. Chum, "Negative evidences and
 * co-occurrences in image retrieval", ECCV 2012).
 * eps = WHITEN_EPS_REL * the largest variance keeps directions without
 * variance (dead ReLU units) from being blown up.
 * Dimension reduction (index --whiten-dim K): only the K axes of largest
 * variance are kept, the rows of the others are zero, so distances between
 * whitened vectors are those of PCA-whitening with dimension reduction to
 * K components (as in Jegou and Chum), while the vectors keep their D
 * floats (the last D - K are 0).
 *
 * Stored as DIR/whiten.npz (mean [D], matrix [D][D] = the scaled axes by
 * decreasing variance, row i = axis i / sqrt(var_i + eps); with
 * --whiten-dim K the rows i >= K are 0), written atomically before the
 * manifest, which then says "transform": "whiten" (and "whiten_dim": K,
 * vecdb.h); queries go through the same transform before the search.  No
 * MPI (the caller sums the PcaStats of all ranks); matrix products with
 * cblas_sgemm.
 */
#ifndef AESIM_WHITEN_H
#define AESIM_WHITEN_H

#include <stdint.h>

#include "base/err.h"
#include "search/pca.h"

/* Floor of the variances, relative to the largest one. */
#define WHITEN_EPS_REL 1e-3
/* File name inside the database folder. */
#define WHITEN_FILE "whiten.npz"

typedef struct Whiten {
    int D;
    float *mean;   /* [D] */
    float *mat;    /* [D][D] row i = axis i / sqrt(var_i + eps), 0 for i >= keep (whiten_fit) */
} Whiten;

/* Fits from the summed statistics of D-dimensional vectors: the `keep` axes
 * of largest variance (keep <= 0 or >= D: all D); the rows of the others
 * are zero.  eps comes from the largest variance either way.  Errors as
 * pca_fit.  Free with whiten_free. */
int whiten_fit(Whiten *w, const PcaStats *s, int keep, Err *err);
void whiten_free(Whiten *w);

/* x[n][D] <- (x - mean) mat^T, in place.  A row's result does not depend on
 * n, on the other rows or on its place among them (one fixed-order loop per
 * row, not a GEMM), so index, query and serve's batches agree to the bit. */
void whiten_apply(const Whiten *w, float *x, int64_t n);

/* dir/WHITEN_FILE (npz_write: temp file, fsync, rename). */
int whiten_save(const Whiten *w, const char *dir, Err *err);

/* Reads dir/WHITEN_FILE and checks it holds mean [D] and matrix [D][D]
 * float32.  AE_EIO / AE_EFORMAT with the path and a hint otherwise. */
int whiten_load(Whiten *w, const char *dir, int D, Err *err);

#endif
