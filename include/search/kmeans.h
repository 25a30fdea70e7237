/*
 * kmeans.h - Lloyd's k-means of float32 vectors spread over MPI ranks: the
 * coarse quantizer of the IVF index (ivf.h).
 *
 * Follows faiss/Clustering.cpp (written from its description, not copied):
 *   - the training set is a seeded sample of at most KMEANS_MAX_PER_CENTROID
 *     x k points (faiss max_points_per_centroid = 256; fewer than
 *     KMEANS_MIN_PER_CENTROID x k points, faiss's 39, only earns a warning);
 *   - the initial centroids are the first k points of the seeded sample order;
 *   - each iteration assigns every point to its nearest centroid, recomputes
 *     the centroids as the means of their points, and re-seeds every empty
 *     cluster by splitting a large one: cluster j is picked with probability
 *     (size_j - 1) / (n - k) by a seeded walk over the clusters, its
 *     centroid copied and both copies moved by a relative +-1/1024 in
 *     alternate dimensions, and its count shared (faiss split_clusters);
 *   - a fixed number of iterations (faiss niter: 25 for a plain Clustering,
 *     10 for the coarse quantizer of an IVF index, faiss Level1Quantizer);
 *   - spherical (faiss ClusteringParameters.spherical, which faiss's IndexIVF
 *     sets for METRIC_INNER_PRODUCT): after each update and split every
 *     centroid is L2-normalised (faiss fvec_renorm_L2), for points that are
 *     themselves unit vectors (the cosine IVF, ivf.c).  The assignment stays
 *     the nearest centroid by L2, which for unit points and unit centroids
 *     is the largest inner product (||x - c||^2 = 2 - 2 x.c): faiss's
 *     IndexFlatIP assignment, up to the rounding of near ties.
 *
 * Across ranks: every rank holds its own part of the sample (any split).
 * Assignment: kmeans_assign (the kNN GEMM, then exact re-scoring of the
 * centroids the GEMM's error bound cannot exclude: knn.h "Exactness"), so a
 * point's cluster is a pure function of the point and the centroids, ties to
 * the smaller centroid number.  Sums: each coordinate is turned into a 64-bit fixed-point integer
 * with one scale for the whole sample (2^s, s chosen so that the sum of the
 * whole sample cannot overflow), so the per-cluster sums are exact integer
 * sums that do not depend on the order or the split; one
 * par_allreduce_sum_i64 per iteration carries the sums and the counts.  The
 * centroids are therefore the same bits for any number of ranks P and any
 * thread count (the quantisation step is 2^-s, about 1e-11 of the largest
 * coordinate for a 262,144-point sample: far below float32's resolution).
 *
 * Threading: knn_search_local's OpenMP threads; the fixed-point sums run
 * OpenMP over dimensions (each thread owns its columns).  MPI through par.h
 * only: every function marked collective must be called by all ranks.
 */
#ifndef AESIM_KMEANS_H
#define AESIM_KMEANS_H

#include <stdint.h>

#include "base/err.h"
#include "par/par.h"

/* faiss ClusteringParameters defaults: points per centroid of the training
 * sample (more are subsampled, fewer only warned about), iterations, and the
 * seed of the sample and of the cluster splits. */
#define KMEANS_MAX_PER_CENTROID 256
#define KMEANS_MIN_PER_CENTROID 39
#define KMEANS_DEFAULT_ITERS 25
#define KMEANS_DEFAULT_SEED 1234

/* Relative move of the two halves of a split cluster (faiss EPS = 1/1024). */
#define KMEANS_SPLIT_EPS (1.0f / 1024.0f)

/* What a training run did (valid on every rank). */
typedef struct KmeansStats {
    int iters;           /* iterations run */
    int64_t splits;      /* empty clusters re-seeded, over all iterations */
    double objective;    /* sum of squared distances at the last assignment */
} KmeansStats;

/* The training sample: n_sample distinct ids of [0, count), in sample order
 * (ids[0..k) are the initial centroids), from a partial Fisher-Yates shuffle
 * seeded with seed (same on every rank).  n_sample = min(count,
 * KMEANS_MAX_PER_CENTROID x k).  ids has room for that many.  Memory: one
 * int64 per id of [0, count) during the call.  Local. */
int64_t kmeans_sample_size(int64_t count, int k);
void kmeans_sample(int64_t *ids, int64_t n_sample, int64_t count, uint64_t seed);

/* Local.  assign[i] = number of the centroid nearest to x[i] (x[n][D],
 * centroids c[k][D]) by the exact distance of knn.h "Exactness" (double
 * accumulation, rounded to float), ties to the smaller number: the same
 * answer as knn_search_local with k = 1, for less work.  Float sgemm
 * distances ||x||^2 + ||c||^2 - 2 x.c of blocks of points (gemm.h) give the
 * smallest value f; only centroids within twice the GEMM rounding-error
 * bound of f (knn.c's bound, Higham ch. 3) are re-scored exactly (usually
 * one or two); a point whose norms could overflow the GEMM formula is
 * re-scored against every centroid.  dist (may be NULL) gets the exact
 * distances.  Points must be valid (knn_check_vectors).  OpenMP over blocks
 * of points (BLAS single-threaded inside, threads.h). */
void kmeans_assign(int64_t *assign, float *dist, const float *x, int64_t n, const float *c, int k, int D,
                   int nthreads);

/* Collective.  k-means of the sample held by all ranks together.
 *   centroids  out [k][D], the same bits on every rank
 *   x          [n][D] this rank's sample points (any rows of the sample)
 *   pos        [n] each point's position in the sample order (0..n_total-1);
 *              the points at positions 0..k-1 are the initial centroids
 *   n_total    sample size over all ranks (= sum of n), >= k
 *   iters      iterations (>= 1), seed: seed of the splits
 *   spherical  1: centroids renormalised to unit length every iteration
 *              (above); 0: plain means
 * Errors (agreed over ranks): AE_EARG for k < 1 or n_total < k (hint: fewer
 * lists), AE_ENUMERIC for a NaN/Inf or too large point (knn.h). */
int kmeans_train(const ParCtx *ctx, float *centroids, const float *x, const int64_t *pos, int64_t n, int64_t n_total,
                 int D, int k, int iters, uint64_t seed, int spherical, int nthreads, KmeansStats *stats,
                 Err *err);

#endif
