/*
 * kmeans.c - k-means over MPI ranks with exact fixed-point sums (see
 * include/search/kmeans.h for the algorithm and why the centroids do not
 * depend on P).  Does not: choose which rank holds which point (ivf.c), read
 * or write files.
 */
#include "search/kmeans.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/check.h"
#include "base/rng.h"
#include "search/knn.h"
#include "search/topk.h"

/* OpenMP pragmas through _Pragma, so an OMP=0 build has no unknown-pragma
 * warnings (as knn.c). */
#ifdef _OPENMP
#define KMEANS_OMP(directive) _Pragma(directive)
#else
#define KMEANS_OMP(directive)
#endif

/* Rng streams of the sample and of the cluster splits (rng.h: small numbers). */
#define KMEANS_STREAM_SAMPLE 0x6b6d31u
#define KMEANS_STREAM_SPLIT 0x6b6d32u

/* Bits of an int64 the fixed-point sums may use: 2^62 leaves one bit of
 * headroom below INT64_MAX for the rounding of each term. */
#define KMEANS_FIXED_BITS 62

/* Terms (points x dimensions) per thread of the fixed-point sums, below
 * which fewer threads are used (a thread's own accumulator costs k*D
 * int64 to clear and add). */
#define KMEANS_SUM_MIN_WORK ((int64_t)1 << 20)

/* Largest scale exponent (keeps ldexp finite for all-zero or tiny data). */
#define KMEANS_MAX_SHIFT 900

int64_t kmeans_sample_size(int64_t count, int k)
{
    int64_t cap = (int64_t)KMEANS_MAX_PER_CENTROID * k;
    return count < cap ? count : cap;
}

void kmeans_sample(int64_t *ids, int64_t n_sample, int64_t count, uint64_t seed)
{
    assert(n_sample >= 0 && n_sample <= count);
    int64_t *perm = xmalloc((size_t)(count > 0 ? count : 1) * sizeof *perm);
    for (int64_t i = 0; i < count; i++) perm[i] = i;
    Rng r;
    rng_seed(&r, seed, KMEANS_STREAM_SAMPLE);
    for (int64_t i = 0; i < n_sample; i++) {
        int64_t j = i + (int64_t)rng_below(&r, (uint64_t)(count - i));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        ids[i] = perm[i];
    }
    free(perm);
}

/* Empty clusters get half of a large one (faiss split_clusters).  counts[k]
 * are the global cluster sizes (updated), c[k][D] the centroids. */
static int64_t split_empty(float *c, double *counts, int k, int D, int64_t n, Rng *r)
{
    int64_t splits = 0;
    const double spare = n > k ? (double)(n - k) : 1.0;
    for (int ci = 0; ci < k; ci++) {
        if (counts[ci] != 0) continue;
        int cj = 0;
        for (;; cj = (cj + 1) % k) {
            double p = (counts[cj] - 1.0) / spare;
            if (rng_uniform_f64(r) < p) break;
        }
        float *a = c + (size_t)ci * (size_t)D, *b = c + (size_t)cj * (size_t)D;
        memcpy(a, b, (size_t)D * sizeof *a);
        for (int d = 0; d < D; d++) {
            float up = 1.0f + KMEANS_SPLIT_EPS, down = 1.0f - KMEANS_SPLIT_EPS;
            a[d] *= d % 2 == 0 ? up : down;
            b[d] *= d % 2 == 0 ? down : up;
        }
        counts[ci] = floor(counts[cj] / 2);
        counts[cj] -= counts[ci];
        splits++;
    }
    return splits;
}

/* Scale exponent s of the fixed-point sums: |x| < 2^e for every point, and
 * n_total terms of magnitude < 2^(e+s) must sum below 2^KMEANS_FIXED_BITS. */
static int fixed_shift(const ParCtx *ctx, const float *x, int64_t n, int D, int64_t n_total)
{
    int e_max = INT32_MIN / 2;
    for (size_t i = 0; i < (size_t)n * (size_t)D; i++) {
        if (x[i] == 0.0f) continue;
        int e;
        frexpf(x[i], &e);
        if (e > e_max) e_max = e;
    }
    e_max = par_allreduce_max_int(ctx, e_max);
    if (e_max == INT32_MIN / 2) e_max = 0;
    int bits = 0;
    while (bits < 63 && ((int64_t)1 << bits) <= n_total) bits++;
    int s = KMEANS_FIXED_BITS - bits - e_max;
    return s > KMEANS_MAX_SHIFT ? KMEANS_MAX_SHIFT : s;
}

/* Threads of the fixed-point sums: one per KMEANS_SUM_MIN_WORK terms. */
static int kmeans_threads(int nthreads, int64_t n, int D)
{
#ifdef _OPENMP
    int T = nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    int T = 1;
    (void)nthreads;
#endif
    int64_t most = (n * (int64_t)D) / KMEANS_SUM_MIN_WORK + 1;
    return most < T ? (int)most : T;
}

/* acc[k][D] sums then acc[k][D..] counts of the points of each cluster, as
 * fixed-point integers x * scale rounded to nearest (exact integer sums, so
 * any order and split gives the same bits).  T threads: thread 0 sums into
 * acc, thread t > 0 into its own block of part[T-1][k*D + k]; then the
 * blocks are added (owner-writes, no atomics). */
static void fixed_sums(int64_t *acc, int64_t *part, int T, const float *x, const int64_t *assign, int64_t n, int D,
                       int k, double scale)
{
    const size_t kd = (size_t)k * (size_t)D, w = kd + (size_t)k;
    memset(acc, 0, w * sizeof *acc);
    if (T > 1) memset(part, 0, (size_t)(T - 1) * w * sizeof *part);
    KMEANS_OMP("omp parallel num_threads(T) if (T > 1)")
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        int64_t *a = t == 0 ? acc : part + (size_t)(t - 1) * w;
        KMEANS_OMP("omp for schedule(static)")
        for (int64_t i = 0; i < n; i++) {
            int64_t *row = a + (size_t)assign[i] * (size_t)D;
            const float *xi = x + (size_t)i * (size_t)D;
            for (int d = 0; d < D; d++) row[d] += (int64_t)llrint((double)xi[d] * scale);
            a[kd + (size_t)assign[i]]++;
        }
    }
    for (int t = 1; t < T; t++) {
        const int64_t *p = part + (size_t)(t - 1) * w;
        for (size_t j = 0; j < w; j++) acc[j] += p[j];
    }
}

int kmeans_train(const ParCtx *ctx, float *centroids, const float *x, const int64_t *pos, int64_t n, int64_t n_total,
                 int D, int k, int iters, uint64_t seed, int nthreads, KmeansStats *stats, Err *err)
{
    memset(stats, 0, sizeof *stats);
    if (k < 1 || n_total < k || iters < 1)
        err_set(err, AE_EARG, "k-means: %d lists need at least as many training vectors, the database has %lld "
                              "(hint: choose a smaller --nlist)", k, (long long)n_total);
    else
        knn_check_vectors(x, n, D, "k-means training vector", err);
    if (par_agree(ctx, err)) return err->code;

    /* Initial centroids: sample positions 0..k-1, wherever they live; every
     * other rank adds zeros, which is exact. */
    const size_t kd = (size_t)k * (size_t)D;
    memset(centroids, 0, kd * sizeof *centroids);
    for (int64_t i = 0; i < n; i++)
        if (pos[i] < k) memcpy(centroids + (size_t)pos[i] * (size_t)D, x + (size_t)i * (size_t)D, (size_t)D * sizeof(float));
    par_allreduce_sum_f32(ctx, centroids, kd);

    const int s = fixed_shift(ctx, x, n, D, n_total);
    int64_t *acc = xmalloc((kd + (size_t)k) * sizeof *acc); /* [k][D] sums, then [k] counts */
    int64_t *assign = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *assign);
    double *counts = xmalloc((size_t)k * sizeof *counts);
    const double scale = ldexp(1.0, s), unscale = ldexp(1.0, -s); /* powers of 2: exact products */
    Rng r;
    rng_seed(&r, seed, KMEANS_STREAM_SPLIT);
    const int T = kmeans_threads(nthreads, n, D);
    int64_t *part = T > 1 ? xmalloc((size_t)(T - 1) * (kd + (size_t)k) * sizeof *part) : NULL;
    int rc = AE_OK;
    for (int it = 0; it < iters; it++) {
        KnnDb cdb = { .x = centroids, .M = k, .D = D, .id_offset = 0, .ids = NULL, .mask = NULL };
        TopK nn;
        rc = knn_search_local(&nn, x, n, &cdb, 1, KNN_L2, nthreads, err);
        if (par_agree(ctx, err)) {
            rc = err->code;
            break;
        }
        double obj = 0;
        for (int64_t i = 0; i < n; i++) {
            assign[i] = nn.ids[i];
            obj += nn.dist[i];
        }
        topk_free(&nn);
        fixed_sums(acc, part, T, x, assign, n, D, k, scale);
        par_allreduce_sum_i64(ctx, acc, kd + (size_t)k);
        par_allreduce_sum_f64(ctx, &obj, 1);
        for (int c = 0; c < k; c++) {
            counts[c] = (double)acc[kd + (size_t)c];
            if (acc[kd + (size_t)c] == 0) continue;
            for (int d = 0; d < D; d++)
                centroids[(size_t)c * (size_t)D + (size_t)d] =
                    (float)((double)acc[(size_t)c * (size_t)D + (size_t)d] * unscale / counts[c]);
        }
        stats->splits += split_empty(centroids, counts, k, D, n_total, &r);
        stats->iters = it + 1;
        stats->objective = obj;
    }
    free(acc);
    free(part);
    free(assign);
    free(counts);
    return rc;
}
