/*
 * kmeans.c - k-means over MPI ranks with exact fixed-point sums (see
 * include/search/kmeans.h for the algorithm and why the centroids do not
 * depend on P).  Does not: choose which rank holds which point (ivf.c), read
 * or write files.
 */
#include "search/kmeans.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/check.h"
#include "base/rng.h"
#include "search/knn_gemm.h"
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

/* Points per GEMM block of kmeans_assign (the block's distances to all
 * centroids, KMEANS_ASSIGN_BLOCK x k floats, are kept at once). */
#define KMEANS_ASSIGN_BLOCK 256

/* The GEMM rounding-error bound of knn.c (gemm_err_bound): float32 unit
 * roundoff, the safety factor and the largest scale without overflow. */
#define KMEANS_U_F32 ((double)FLT_EPSILON / 2.0)
#define KMEANS_ERR_SAFETY 2.0
#define KMEANS_GEMM_MAX_SCALE ((double)FLT_MAX / 16.0)

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

/* knn.h's exact distance: double accumulation in order d = 0..D-1, rounded
 * once to float (bit for bit knn.c's dist_exact). */
static float dist_exact_l2(const float *a, const float *b, int D)
{
    double s = 0.0;
    for (int d = 0; d < D; d++) {
        double t = (double)a[d] - (double)b[d];
        s += t * t;
    }
    return (float)s;
}

static double sq_norm(const float *v, int D)
{
    double s = 0.0;
    for (int d = 0; d < D; d++) s += (double)v[d] * (double)v[d];
    return s;
}

void kmeans_assign(int64_t *assign, float *dist, const float *x, int64_t n, const float *c, int k, int D,
                   int nthreads)
{
    float *cn = xmalloc((size_t)k * sizeof *cn);
    double cmax2 = 0.0;
    for (int j = 0; j < k; j++) {
        double v = sq_norm(c + (size_t)j * (size_t)D, D);
        cn[j] = (float)v;
        if (v > cmax2) cmax2 = v;
    }
    const int64_t nblocks = (n + KMEANS_ASSIGN_BLOCK - 1) / KMEANS_ASSIGN_BLOCK;
    /* The kNN search's GEMM (knn_gemm.h: aesim's AVX-512 kernel where the CPU
     * has AVX-512F; AESIM_KNN_GEMM forces one, an invalid value means auto
     * here as the search itself reports it).  The assignment does not depend
     * on the kernel: the candidates within the rounding bound are re-scored
     * exactly below. */
    KnnGemm g = KNN_GEMM_AUTO;
    Err ge;
    if (knn_gemm_from_env(&g, &ge)) g = KNN_GEMM_AUTO;
#ifdef _OPENMP
    const int T = nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    const int T = 1;
    (void)nthreads;
    (void)T;
#endif
    KMEANS_OMP("omp parallel num_threads(T) if (nblocks > 1)")
    {
        float *ip = xmalloc((size_t)KMEANS_ASSIGN_BLOCK * (size_t)k * sizeof *ip);
        KMEANS_OMP("omp for schedule(dynamic, 1)")
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t i0 = b * KMEANS_ASSIGN_BLOCK;
            const int nb = (int)(n - i0 < KMEANS_ASSIGN_BLOCK ? n - i0 : KMEANS_ASSIGN_BLOCK);
            const float *xb = x + (size_t)i0 * (size_t)D;
            knn_gemm_nt(g, ip, xb, c, nb, k, D); /* ip[i][j] = x_i . c_j */
            for (int i = 0; i < nb; i++) {
                const float *xi = xb + (size_t)i * (size_t)D;
                const double xn2 = sq_norm(xi, D);
                const float xn = (float)xn2;
                float *f = ip + (size_t)i * (size_t)k;
                float fmin = INFINITY;
                for (int j = 0; j < k; j++) {
                    f[j] = xn + cn[j] - 2.0f * f[j];
                    if (f[j] < fmin) fmin = f[j];
                }
                /* |f_j - r_j| <= bound for every centroid j (knn.c's
                 * gemm_err_bound); r* <= fmin + bound, so any j with f_j >
                 * fmin + 2 bound is strictly worse than the best */
                const double scale = (sqrt(xn2) + sqrt(cmax2)) * (sqrt(xn2) + sqrt(cmax2));
                const double bound =
                    scale < KMEANS_GEMM_MAX_SCALE
                        ? KMEANS_ERR_SAFETY * ((D + 4.0) * KMEANS_U_F32 * scale + (D + 4.0) * (double)FLT_MIN)
                        : INFINITY;
                const double cut = (double)fmin + 2.0 * bound;
                int best = -1;
                float rbest = INFINITY;
                for (int j = 0; j < k; j++) {
                    if (!((double)f[j] <= cut) && isfinite(cut)) continue;
                    float r = dist_exact_l2(xi, c + (size_t)j * (size_t)D, D);
                    if (best < 0 || r < rbest) {
                        best = j;
                        rbest = r;
                    }
                }
                assign[i0 + i] = best;
                if (dist) dist[i0 + i] = rbest;
            }
        }
        free(ip);
    }
    free(cn);
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
                 int D, int k, int iters, uint64_t seed, int spherical, int nthreads, KmeansStats *stats,
                 Err *err)
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
    float *dist = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *dist);
    double *counts = xmalloc((size_t)k * sizeof *counts);
    const double scale = ldexp(1.0, s), unscale = ldexp(1.0, -s); /* powers of 2: exact products */
    Rng r;
    rng_seed(&r, seed, KMEANS_STREAM_SPLIT);
    const int T = kmeans_threads(nthreads, n, D);
    int64_t *part = T > 1 ? xmalloc((size_t)(T - 1) * (kd + (size_t)k) * sizeof *part) : NULL;
    for (int it = 0; it < iters; it++) {
        const int last = it == iters - 1;
        kmeans_assign(assign, last ? dist : NULL, x, n, centroids, k, D, nthreads);
        fixed_sums(acc, part, T, x, assign, n, D, k, scale);
        par_allreduce_sum_i64(ctx, acc, kd + (size_t)k); /* the one collective of an iteration */
        if (last) {
            double obj = 0;
            for (int64_t i = 0; i < n; i++) obj += dist[i];
            par_allreduce_sum_f64(ctx, &obj, 1);
            stats->objective = obj;
        }
        for (int c = 0; c < k; c++) {
            counts[c] = (double)acc[kd + (size_t)c];
            if (acc[kd + (size_t)c] == 0) continue;
            for (int d = 0; d < D; d++)
                centroids[(size_t)c * (size_t)D + (size_t)d] =
                    (float)((double)acc[(size_t)c * (size_t)D + (size_t)d] * unscale / counts[c]);
        }
        stats->splits += split_empty(centroids, counts, k, D, n_total, &r);
        if (spherical) knn_normalize(centroids, k, D); /* faiss post_process_centroids */
        stats->iters = it + 1;
    }
    free(acc);
    free(part);
    free(assign);
    free(dist);
    free(counts);
    return AE_OK;
}
