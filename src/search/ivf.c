/*
 * ivf.c - IVF index of a vector database: training over the ranks, list
 * files, and nprobe search (see include/search/ivf.h).  Does not: parse
 * options or print results (search_ivf.c and search.c do), encode images.
 */
#include "search/ivf.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "base/check.h"
#include "data/npy.h"
#include "search/knn_scan.h"

/* OpenMP pragmas through _Pragma, so an OMP=0 build has no unknown-pragma
 * warnings (as knn.c). */
#ifdef _OPENMP
#define IVF_OMP(directive) _Pragma(directive)
#else
#define IVF_OMP(directive)
#endif

/* Hint ending every message about a damaged or mismatched IVF file. */
#define IVF_HINT "hint: the IVF index is damaged or from another training; rebuild it with aesim-search train-ivf"

/* Largest chunk passed to one zlib crc32 call (its length is a uInt). */
#define IVF_CRC_CHUNK ((size_t)1 << 30)

/* zlib CRC-32 of n bytes. */
static uint32_t crc_bytes(const void *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const unsigned char *b = p;
    while (n > 0) {
        size_t m = n < IVF_CRC_CHUNK ? n : IVF_CRC_CHUNK;
        c = crc32(c, b, (uInt)m);
        b += m;
        n -= m;
    }
    return (uint32_t)c;
}

int ivf_centroids_path(char *out, size_t cap, const VecDb *db, Err *err)
{
    int n = snprintf(out, cap, "%s/ivf-%08" PRIx32 ".centroids.npy", db->dir, db->ivf_crc);
    if (n < 0 || (size_t)n >= cap) return err_set(err, AE_EARG, "path of the IVF centroids in %s is too long", db->dir);
    return AE_OK;
}

int ivf_lists_path(char *out, size_t cap, const VecDb *db, int shard, Err *err)
{
    int n = snprintf(out, cap, "%s/shard-%05d.ivf-%08" PRIx32 ".lists.npy", db->dir, shard, db->ivf_crc);
    if (n < 0 || (size_t)n >= cap) return err_set(err, AE_EARG, "path of the IVF lists in %s is too long", db->dir);
    return AE_OK;
}

int ivf_read_centroids(float **c, const VecDb *db, Err *err)
{
    *c = NULL;
    char path[VECDB_PATH_BYTES];
    if (ivf_centroids_path(path, sizeof path, db, err)) return err->code;
    if (db->metric == KNN_IP && !db->ivf_normalized)
        return err_set(err, AE_EFORMAT, "%s: the IVF index of this cosine database was built by an older aesim-search "
                                        "on the unnormalised vectors, so its lists do not match the normalised "
                                        "queries (most neighbours would be missed) (hint: retrain it: aesim-search "
                                        "train-ivf --db %s --nlist %d --overwrite; or search with --exact)",
                       path, db->dir, db->ivf_nlist);
    NpyArray a;
    if (npy_read(path, &a, err)) {
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "IVF centroids: %.900s (%s)", err->msg, IVF_HINT);
        snprintf(err->msg, sizeof err->msg, "%s", msg);
        return err->code;
    }
    int rc = AE_OK;
    if (a.dtype != NPY_F32 || a.ndim != 2 || a.shape[0] != db->ivf_nlist || a.shape[1] != db->D)
        rc = err_set(err, AE_EFORMAT, "%s: IVF centroids are %s with %d dimension(s) (%lld x %lld) but the manifest "
                                      "says float32 [%d][%d] (%s)", path, npy_dtype_descr(a.dtype), a.ndim,
                     (long long)(a.ndim > 0 ? a.shape[0] : 0), (long long)(a.ndim > 1 ? a.shape[1] : 0),
                     db->ivf_nlist, db->D, IVF_HINT);
    else if (crc_bytes(a.data, (size_t)db->ivf_nlist * (size_t)db->D * sizeof(float)) != db->ivf_crc)
        rc = err_set(err, AE_EFORMAT, "%s: CRC-32 of the centroids is %08" PRIx32 ", the manifest says %08" PRIx32
                                      " (%s)", path, crc_bytes(a.data, (size_t)db->ivf_nlist * (size_t)db->D * 4),
                     db->ivf_crc, IVF_HINT);
    if (rc) {
        npy_array_free(&a);
        return rc;
    }
    *c = a.data;
    return AE_OK;
}

void ivf_lists_free(IvfLists *l)
{
    if (!l) return;
    free(l->data);
    memset(l, 0, sizeof *l);
}

int ivf_read_lists(IvfLists *l, const VecDb *db, int shard, Err *err)
{
    memset(l, 0, sizeof *l);
    char path[VECDB_PATH_BYTES];
    if (ivf_lists_path(path, sizeof path, db, shard, err)) return err->code;
    NpyArray a;
    if (npy_read(path, &a, err)) {
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "IVF lists of shard %d: %.900s (%s)", shard, err->msg, IVF_HINT);
        snprintf(err->msg, sizeof err->msg, "%s", msg);
        return err->code;
    }
    const int nlist = db->ivf_nlist;
    const int64_t n = db->shards[shard].count, want = (int64_t)nlist + 1 + n;
    const int64_t *v = a.data;
    int rc = AE_OK;
    if (a.dtype != NPY_I64 || a.ndim != 1 || a.shape[0] != want) {
        rc = err_set(err, AE_EFORMAT, "%s: holds %s with %d dimension(s) and %lld elements, expected int64 "
                                      "[nlist + 1 + rows] = [%d + 1 + %lld] = %lld (%s)", path,
                     npy_dtype_descr(a.dtype), a.ndim, (long long)npy_numel(&a), nlist, (long long)n,
                     (long long)want, IVF_HINT);
    } else if (v[0] != 0 || v[nlist] != n) {
        rc = err_set(err, AE_EFORMAT, "%s: list offsets start at %lld and end at %lld, expected 0 and %lld rows (%s)",
                     path, (long long)v[0], (long long)v[nlist], (long long)n, IVF_HINT);
    } else {
        /* offsets first (non-decreasing, within 0..n), so no row index below
         * can point outside the array */
        for (int j = 0; j < nlist && rc == AE_OK; j++)
            if (v[j + 1] < v[j] || v[j + 1] > n)
                rc = err_set(err, AE_EFORMAT, "%s: offset of list %d (%lld) is below that of list %d (%lld) or above "
                                              "the %lld rows (%s)", path, j + 1, (long long)v[j + 1], j,
                             (long long)v[j], (long long)n, IVF_HINT);
        uint8_t *seen = xcalloc((size_t)(n > 0 ? n : 1), 1);
        for (int j = 0; j < nlist && rc == AE_OK; j++) {
            const int64_t *rows = v + nlist + 1;
            for (int64_t t = v[j]; t < v[j + 1]; t++) {
                int64_t r = rows[t];
                if (r < 0 || r >= n || seen[r] || (t > v[j] && r <= rows[t - 1])) {
                    rc = err_set(err, AE_EFORMAT, "%s: list %d holds row %lld, which is out of 0..%lld, repeated or "
                                                  "out of order (%s)", path, j, (long long)r, (long long)n - 1,
                                 IVF_HINT);
                    break;
                }
                seen[r] = 1;
            }
        }
        free(seen);
    }
    if (rc) {
        npy_array_free(&a);
        return rc;
    }
    l->nlist = nlist;
    l->n = n;
    l->data = a.data;
    l->lims = v;
    l->rows = v + nlist + 1;
    return AE_OK;
}

/* Vectors normalised at a time by ivf_assign (a copy of this many rows). */
#define IVF_ASSIGN_BLOCK ((int64_t)1 << 14)

int ivf_assign(int32_t *list, const float *x, int64_t n, const float *centroids, int nlist, int D, int normalized,
               int nthreads, Err *err)
{
    if (knn_check_vectors(x, n, D, "vector to assign to an IVF list", err)) return err->code;
    if (!normalized) {
        int64_t *a = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *a);
        kmeans_assign(a, NULL, x, n, centroids, nlist, D, nthreads);
        for (int64_t i = 0; i < n; i++) list[i] = (int32_t)a[i];
        free(a);
        return AE_OK;
    }
    /* Cosine: the largest inner product of the normalised vector with the
     * (unit) centroids, knn_search_local's exact score and tie rule, the
     * same call that probe_lists makes for a query. */
    const KnnDb cdb = { .x = centroids, .M = nlist, .D = D, .id_offset = 0, .ids = NULL, .mask = NULL };
    const int64_t bn = n < IVF_ASSIGN_BLOCK ? n : IVF_ASSIGN_BLOCK;
    float *u = xmalloc((size_t)(bn > 0 ? bn : 1) * (size_t)D * sizeof *u);
    for (int64_t i0 = 0; i0 < n; i0 += bn) {
        const int64_t m = n - i0 < bn ? n - i0 : bn;
        memcpy(u, x + (size_t)i0 * (size_t)D, (size_t)m * (size_t)D * sizeof *u);
        knn_normalize(u, m, D);
        TopK t;
        if (knn_search_local(&t, u, m, &cdb, 1, KNN_IP, nthreads, err)) break;
        for (int64_t i = 0; i < m; i++) list[i0 + i] = (int32_t)t.ids[i];
        topk_free(&t);
    }
    free(u);
    return err->code;
}

int ivf_write_lists(const VecDb *db, int shard, const int32_t *list, int64_t n, Err *err)
{
    const int nlist = db->ivf_nlist;
    char path[VECDB_PATH_BYTES];
    if (ivf_lists_path(path, sizeof path, db, shard, err)) return err->code;
    int64_t *v = xcalloc((size_t)nlist + 1 + (size_t)n, sizeof *v);
    /* Counting sort, stable: rows ascend within each list. */
    for (int64_t j = 0; j < n; j++) v[list[j] + 1]++;
    for (int l = 0; l < nlist; l++) v[l + 1] += v[l];
    int64_t *next = xmalloc((size_t)nlist * sizeof *next);
    memcpy(next, v, (size_t)nlist * sizeof *next);
    for (int64_t j = 0; j < n; j++) v[nlist + 1 + next[list[j]]++] = j;
    free(next);
    NpyArray a = { .dtype = NPY_I64, .ndim = 1, .shape = { (int64_t)nlist + 1 + n }, .data = v };
    int rc = npy_write(path, &a, err);
    free(v);
    return rc;
}

/* Assigns and writes the lists of the shards this rank owns among
 * first..db->n_shards-1 (local; the caller agrees). */
static int write_owned_lists(const ParCtx *ctx, const VecDb *db, const float *centroids, int first, int nthreads,
                             Err *err)
{
    for (int s = first; s < db->n_shards; s++) {
        if (vecdb_shard_owner(s, ctx->size) != ctx->rank) continue;
        VecShard m;
        if (vecdb_shard_map(&m, db, s, VECDB_MAP_VECTORS, err)) return err->code;
        int32_t *list = xmalloc((size_t)(m.count > 0 ? m.count : 1) * sizeof *list);
        int rc = ivf_assign(list, m.x, m.count, centroids, db->ivf_nlist, db->D, db->ivf_normalized, nthreads, err);
        if (rc == AE_OK) rc = ivf_write_lists(db, s, list, m.count, err);
        free(list);
        vecdb_shard_unmap(&m);
        if (rc) return rc;
    }
    return AE_OK;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int ivf_train_db(const ParCtx *ctx, VecDb *db, int nlist, int iters, int nthreads, KmeansStats *stats, Err *err)
{
    memset(stats, 0, sizeof *stats);
    if (nlist < 1 || nlist > IVF_MAX_NLIST || (int64_t)nlist > db->count)
        err_set(err, AE_EARG, "--nlist %d: the database %s holds %lld vectors; nlist must be in 1..%lld (hint: about "
                              "sqrt(count) to 16 sqrt(count) lists; k-means wants %d+ vectors per list)",
                nlist, db->dir, (long long)db->count,
                (long long)(db->count < IVF_MAX_NLIST ? db->count : IVF_MAX_NLIST), KMEANS_MIN_PER_CENTROID);
    if (par_agree(ctx, err)) return err->code;
    const int D = db->D;
    const int64_t ns = kmeans_sample_size(db->count, nlist);
    if (ns < (int64_t)KMEANS_MIN_PER_CENTROID * nlist)
        par_err0(ctx, "train-ivf: warning: %lld training vectors for %d lists, fewer than the %d per list k-means "
                      "wants (faiss warns too)\n", (long long)ns, nlist, KMEANS_MIN_PER_CENTROID);
    /* Every rank draws the same sample; each keeps the rows of its shards,
     * visited in id order so every shard is read sequentially. */
    int64_t *ids = xmalloc((size_t)ns * sizeof *ids);
    kmeans_sample(ids, ns, db->count, KMEANS_DEFAULT_SEED);
    int64_t *pairs = xmalloc((size_t)ns * 2 * sizeof *pairs); /* (id, position) sorted by id */
    for (int64_t i = 0; i < ns; i++) {
        pairs[2 * i] = ids[i];
        pairs[2 * i + 1] = i;
    }
    free(ids);
    qsort(pairs, (size_t)ns, 2 * sizeof *pairs, cmp_i64);
    int64_t n = 0;
    for (int64_t i = 0; i < ns; i++) n += vecdb_shard_owner(vecdb_shard_of(db, pairs[2 * i]), ctx->size) == ctx->rank;
    float *x = xmalloc((size_t)(n > 0 ? n : 1) * (size_t)D * sizeof *x);
    int64_t *pos = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *pos);
    VecShard m;
    memset(&m, 0, sizeof m);
    int cur = -1;
    int64_t t = 0;
    for (int64_t i = 0; i < ns && err->code == AE_OK; i++) {
        int s = vecdb_shard_of(db, pairs[2 * i]);
        if (vecdb_shard_owner(s, ctx->size) != ctx->rank) continue;
        if (s != cur) {
            vecdb_shard_unmap(&m);
            if (vecdb_shard_map(&m, db, s, VECDB_MAP_VECTORS, err)) break;
            cur = s;
        }
        memcpy(x + (size_t)t * (size_t)D, m.x + (size_t)(pairs[2 * i] - m.first_id) * (size_t)D,
               (size_t)D * sizeof *x);
        pos[t++] = pairs[2 * i + 1];
    }
    vecdb_shard_unmap(&m);
    free(pairs);
    /* Cosine: the index is built on the normalised vectors (ivf.h), checked
     * first so that a bad stored vector is named as in l2 training. */
    const int normalized = db->metric == KNN_IP;
    if (normalized && !err->code && !knn_check_vectors(x, n, D, "k-means training vector", err)) knn_normalize(x, n, D);
    float *cent = xmalloc((size_t)nlist * (size_t)D * sizeof *cent);
    if (par_agree(ctx, err) == AE_OK && kmeans_train(ctx, cent, x, pos, n, ns, D, nlist, iters, KMEANS_DEFAULT_SEED,
                                                     normalized, nthreads, stats, err) == AE_OK) {
        db->ivf_nlist = nlist;
        db->ivf_normalized = normalized;
        db->ivf_crc = crc_bytes(cent, (size_t)nlist * (size_t)D * sizeof *cent);
        if (ctx->rank == 0) {
            char path[VECDB_PATH_BYTES];
            NpyArray a = { .dtype = NPY_F32, .ndim = 2, .shape = { nlist, D }, .data = cent };
            if (!ivf_centroids_path(path, sizeof path, db, err)) npy_write(path, &a, err);
        }
        if (par_agree(ctx, err) == AE_OK) {
            write_owned_lists(ctx, db, cent, 0, nthreads, err);
            par_agree(ctx, err);
        }
    }
    free(x);
    free(pos);
    free(cent);
    return err->code;
}

int ivf_add_shards(const ParCtx *ctx, const VecDb *db, int first_shard, int nthreads, Err *err)
{
    float *cent = NULL;
    if (!ivf_read_centroids(&cent, db, err)) write_owned_lists(ctx, db, cent, first_shard, nthreads, err);
    free(cent);
    return par_agree(ctx, err);
}

/* ---------------------------------------------------------------- search */

int ivf_local_open(const ParCtx *ctx, IvfLocal *il, const VecDb *db, const LocalShards *ls, Err *err)
{
    memset(il, 0, sizeof *il);
    il->nlist = db->ivf_nlist;
    il->D = db->D;
    il->normalized = db->ivf_normalized;
    il->lists = xcalloc((size_t)(ls->n > 0 ? ls->n : 1), sizeof *il->lists);
    if (!ivf_read_centroids(&il->centroids, db, err))
        for (int i = 0; i < ls->n; i++) {
            if (ivf_read_lists(&il->lists[i], db, ls->maps[i].shard, err)) break;
            il->n++;
        }
    if (par_agree(ctx, err)) {
        ivf_local_close(il);
        return err->code;
    }
    return AE_OK;
}

int ivf_local_add(IvfLocal *il, const VecDb *db, const LocalShards *ls, Err *err)
{
    if (ls->n <= il->n) return AE_OK;
    IvfLists *grown = xcalloc((size_t)ls->n, sizeof *grown);
    if (il->n) memcpy(grown, il->lists, (size_t)il->n * sizeof *grown);
    free(il->lists);
    il->lists = grown;
    while (il->n < ls->n) {
        if (ivf_read_lists(&il->lists[il->n], db, ls->maps[il->n].shard, err)) return err->code;
        il->n++;
    }
    return AE_OK;
}

void ivf_local_close(IvfLocal *il)
{
    if (!il) return;
    for (int i = 0; i < il->n; i++) ivf_lists_free(&il->lists[i]);
    free(il->lists);
    free(il->centroids);
    memset(il, 0, sizeof *il);
}

/* The exact distance of knn.h "Exactness": double accumulation in the order
 * d = 0..D-1, rounded once to float.  knn.c's dist_exact computes the same
 * bits (IEEE double, no FMA contraction under -std=c11), which is what makes
 * nprobe = nlist equal to exact search. */
static float dist_exact(KnnMetric metric, const float *a, const float *b, int D)
{
    double s = 0.0;
    if (metric == KNN_L2) {
        for (int d = 0; d < D; d++) {
            double t = (double)a[d] - (double)b[d];
            s += t * t;
        }
    } else {
        for (int d = 0; d < D; d++) s += (double)a[d] * (double)b[d];
    }
    return (float)s;
}

/* A thread's scratch for scanning the probed lists of one query. */
typedef struct Scratch {
    float f[KNN_SCAN_BLOCK], nf[KNN_SCAN_BLOCK];
    int64_t rows[KNN_SCAN_BLOCK];
    float *hd;      /* [kc] float pre-scan heap of one shard (kNN) */
    int64_t *hi;    /* [kc] its local rows */
    float *sd;      /* [k] exact heap of one shard */
    int64_t *si;    /* [k] its global ids */
} Scratch;

/* What one query's scan needs. */
typedef struct ProbeJob {
    const float *q;         /* [D] the query */
    double qn2;             /* its squared norm in double (IP bound) */
    const int64_t *probe;   /* [nprobe] lists, -1 = none */
    int nprobe, k, kc;
    KnnMetric metric;
    KnnScanBound bound;
    float radius;           /* range search */
} ProbeJob;

/* Growing list of range hits of one query. */
typedef struct Hits {
    float *dist;
    int64_t *ids;
    int64_t n, cap;
} Hits;

static void hits_add(Hits *h, float d, int64_t id)
{
    if (h->n == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 64;
        float *nd = xmalloc((size_t)cap * sizeof *nd);
        int64_t *ni = xmalloc((size_t)cap * sizeof *ni);
        if (h->n) {
            memcpy(nd, h->dist, (size_t)h->n * sizeof *nd);
            memcpy(ni, h->ids, (size_t)h->n * sizeof *ni);
        }
        free(h->dist);
        free(h->ids);
        h->dist = nd;
        h->ids = ni;
        h->cap = cap;
    }
    h->dist[h->n] = d;
    h->ids[h->n] = id;
    h->n++;
}

static int64_t row_gid(const KnnDb *db, int64_t r) { return db->ids ? db->ids[r] : db->id_offset + r; }

/* Calls the block function on the eligible rows of the probed lists of
 * shard db, KNN_SCAN_BLOCK at a time, with their pre-scan values in sc->f
 * and float norms in sc->nf.  *nfmax = largest float norm (INFINITY after a
 * NaN). */
typedef void (*BlockFn)(Scratch *sc, int nb, const KnnDb *db, const ProbeJob *job, void *state);

static void scan_flush(Scratch *sc, int nb, const KnnDb *db, const ProbeJob *job, BlockFn fn, void *state,
                       float *nfmax)
{
    knn_scan_rows(sc->f, sc->nf, job->q, 1, db->x, sc->rows, nb, db->D, job->metric);
    for (int c = 0; c < nb; c++)
        if (!(sc->nf[c] <= *nfmax)) *nfmax = isnan(sc->nf[c]) ? INFINITY : sc->nf[c];
    fn(sc, nb, db, job, state);
}

static void scan_lists(Scratch *sc, const KnnDb *db, const IvfLists *l, const ProbeJob *job, BlockFn fn, void *state,
                       float *nfmax)
{
    int nb = 0;
    for (int p = 0; p < job->nprobe; p++) {
        if (job->probe[p] < 0) continue;
        for (int64_t t = l->lims[job->probe[p]]; t < l->lims[job->probe[p] + 1]; t++) {
            const int64_t r = l->rows[t];
            if (db->mask && !db->mask[r]) continue;
            sc->rows[nb++] = r;
            if (nb == KNN_SCAN_BLOCK) {
                scan_flush(sc, nb, db, job, fn, state, nfmax);
                nb = 0;
            }
        }
    }
    if (nb > 0) scan_flush(sc, nb, db, job, fn, state, nfmax);
}

static void block_knn(Scratch *sc, int nb, const KnnDb *db, const ProbeJob *job, void *state)
{
    (void)db;
    (void)state;
    const TopKOrder order = knn_metric_order(job->metric);
    for (int c = 0; c < nb; c++) {
        if (order == TOPK_SMALLEST ? sc->f[c] > sc->hd[0] : sc->f[c] < sc->hd[0]) continue;
        topk_heap_push(sc->hd, sc->hi, job->kc, order, sc->f[c], sc->rows[c]);
    }
}

static void block_exact(Scratch *sc, int nb, const KnnDb *db, const ProbeJob *job, void *state)
{
    (void)state;
    const TopKOrder order = knn_metric_order(job->metric);
    for (int c = 0; c < nb; c++) {
        float d = dist_exact(job->metric, job->q, db->x + (size_t)sc->rows[c] * (size_t)db->D, db->D);
        int64_t id = row_gid(db, sc->rows[c]);
        if (topk_better(order, d, id, sc->sd[0], sc->si[0])) topk_heap_push(sc->sd, sc->si, job->k, order, d, id);
    }
}

static void block_range(Scratch *sc, int nb, const KnnDb *db, const ProbeJob *job, void *state)
{
    Hits *h = state;
    for (int c = 0; c < nb; c++) {
        if (job->metric == KNN_L2 ? knn_scan_l2_lower(&job->bound, sc->f[c]) > job->radius
                                  : knn_scan_ip_upper(&job->bound, sc->f[c], job->qn2, sc->nf[c]) < job->radius)
            continue;
        float d = dist_exact(job->metric, job->q, db->x + (size_t)sc->rows[c] * (size_t)db->D, db->D);
        if (job->metric == KNN_L2 ? d <= job->radius : d >= job->radius) hits_add(h, d, row_gid(db, sc->rows[c]));
    }
}

/* A flagged norm (NaN, Inf or above KNN_MAX_NORM2 in float): checks the
 * probed rows exactly and names the first bad one (knn.h "Valid input"). */
static int check_probed(const KnnDb *db, const IvfLists *l, const ProbeJob *job, Err *err)
{
    for (int p = 0; p < job->nprobe; p++) {
        if (job->probe[p] < 0) continue;
        for (int64_t t = l->lims[job->probe[p]]; t < l->lims[job->probe[p] + 1]; t++) {
            const int64_t r = l->rows[t];
            if (db->mask && !db->mask[r]) continue;
            char what[64];
            snprintf(what, sizeof what, "database vector id %lld", (long long)row_gid(db, r));
            if (knn_check_vectors(db->x + (size_t)r * (size_t)db->D, 1, db->D, what, err)) return err->code;
        }
    }
    return AE_OK;
}

/* Exact top k of one query over the probed lists of one shard into sc->sd,
 * sc->si (a heap): float pre-scan keeping the best kc rows, exact re-score,
 * and the proof of knn.c's pre-scan (knn.h "Exactness"); if it fails, every
 * probed row is re-scored. */
static int shard_finish(Scratch *sc, const KnnDb *db, const IvfLists *l, const ProbeJob *job, float nfmax,
                        Err *err);

static int shard_knn(Scratch *sc, const KnnDb *db, const IvfLists *l, const ProbeJob *job, Err *err)
{
    topk_heap_init(sc->hd, sc->hi, job->kc, knn_metric_order(job->metric));
    float nfmax = 0.0f;
    scan_lists(sc, db, l, job, block_knn, NULL, &nfmax);
    return shard_finish(sc, db, l, job, nfmax, err);
}

/* The second half of shard_knn, given the float pre-scan heap sc->hd/hi of
 * every probed row of the shard and the largest float norm among them:
 * exact re-score, the proof, and the full re-score when it fails. */
static int shard_finish(Scratch *sc, const KnnDb *db, const IvfLists *l, const ProbeJob *job, float nfmax,
                        Err *err)
{
    const TopKOrder order = knn_metric_order(job->metric);
    topk_heap_init(sc->sd, sc->si, job->k, order);
    if (!(nfmax <= (float)KNN_MAX_NORM2) && check_probed(db, l, job, err)) return err->code;
    for (int c = 0; c < job->kc; c++) {
        if (sc->hi[c] == TOPK_NO_ID) continue;
        float d = dist_exact(job->metric, job->q, db->x + (size_t)sc->hi[c] * (size_t)db->D, db->D);
        int64_t id = row_gid(db, sc->hi[c]);
        if (topk_better(order, d, id, sc->sd[0], sc->si[0])) topk_heap_push(sc->sd, sc->si, job->k, order, d, id);
    }
    if (sc->hi[0] == TOPK_NO_ID) return AE_OK; /* every probed row was a candidate */
    const double kth = sc->sd[0];
    const int safe = job->metric == KNN_L2 ? knn_scan_l2_lower(&job->bound, sc->hd[0]) > kth
                                           : knn_scan_ip_upper(&job->bound, sc->hd[0], job->qn2, nfmax) < kth;
    if (safe) return AE_OK;
    topk_heap_init(sc->sd, sc->si, job->k, order);
    float unused = 0.0f;
    scan_lists(sc, db, l, job, block_exact, NULL, &unused);
    return AE_OK;
}

/* The nprobe nearest lists of each query: probe[Q][nprobe] (exact L2, ties
 * to the smaller list number).  A normalised (cosine) index: the largest
 * inner products of the normalised query with the centroids, as ivf_assign
 * placed the vectors; queries of metric KNN_IP arrive normalised (callers
 * normalise them with knn_normalize, as ivf_assign does the vectors, so a
 * stored vector searched with itself probes its own list first), others
 * are normalised here on a copy. */
static int probe_lists(int64_t **probe, const float *q, int64_t Q, const IvfLocal *il, int nprobe, KnnMetric metric,
                       int nthreads, Err *err)
{
    *probe = xmalloc((size_t)(Q > 0 ? Q : 1) * (size_t)nprobe * sizeof **probe);
    KnnDb cdb = { .x = il->centroids, .M = il->nlist, .D = il->D, .id_offset = 0, .ids = NULL, .mask = NULL };
    float *qn = NULL;
    if (il->normalized && metric != KNN_IP && Q > 0) {
        qn = xmalloc((size_t)Q * (size_t)il->D * sizeof *qn);
        memcpy(qn, q, (size_t)Q * (size_t)il->D * sizeof *qn);
        knn_normalize(qn, Q, il->D);
        q = qn;
    }
    TopK t;
    int rc = knn_search_local(&t, q, Q, &cdb, nprobe, il->normalized ? KNN_IP : KNN_L2, nthreads, err);
    free(qn);
    if (rc) return rc;
    memcpy(*probe, t.ids, (size_t)Q * (size_t)nprobe * sizeof **probe);
    topk_free(&t);
    return AE_OK;
}

static void scratch_init(Scratch *sc, int k, int kc)
{
    sc->hd = xmalloc((size_t)kc * sizeof *sc->hd);
    sc->hi = xmalloc((size_t)kc * sizeof *sc->hi);
    sc->sd = xmalloc((size_t)k * sizeof *sc->sd);
    sc->si = xmalloc((size_t)k * sizeof *sc->si);
}

static void scratch_free(Scratch *sc)
{
    free(sc->hd);
    free(sc->hi);
    free(sc->sd);
    free(sc->si);
}

static double sq_norm(const float *v, int D)
{
    double n2 = 0.0;
    for (int d = 0; d < D; d++) n2 += (double)v[d] * (double)v[d];
    return n2;
}

static int resolve_threads(int nthreads)
{
#ifdef _OPENMP
    return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    (void)nthreads;
    return 1;
#endif
}

/* Adds the entries of the exact list sd/si[k] (padding skipped) to the
 * heap od/oi[k]: a shard's or a part's answer into a query's. */
static void heap_add_exact(float *od, int64_t *oi, int k, TopKOrder order, const float *sd, const int64_t *si)
{
    for (int c = 0; c < k; c++)
        if (si[c] != TOPK_NO_ID) topk_heap_push(od, oi, k, order, sd[c], si[c]);
}

/* Queries handed to one knn_scan_rows call of the batched scan: their f
 * values (IVF_GROUP x KNN_SCAN_BLOCK floats) and the 4 rows the kernel holds
 * stay in L1 while every query of the group passes over them. */
#define IVF_GROUP 8
/* Queries of one pass of the batched scan: at most IVF_BATCH_QUERIES, and
 * at most IVF_BATCH_HEAP_ENTRIES / (k + KNN_RESCORE_MARGIN), which bounds its
 * per-thread heaps to 12 x IVF_BATCH_HEAP_ENTRIES bytes (24 MiB) per thread
 * for any k. */
#define IVF_BATCH_QUERIES 4096
#define IVF_BATCH_HEAP_ENTRIES ((int64_t)1 << 21)
/* From this many queries on, ivf_local_knn scans list by list. */
#define IVF_BATCH_MIN_QUERIES 16

/* Batched scan of queries q[Q] (one pass, see IVF_BATCH_QUERIES) with their probes
 * probe[Q][nprobe], list by list: each block of a probed list's rows is
 * read once and scanned for every query that probes the list, IVF_GROUP at
 * a time (knn_scan_rows with nq > 1: the same float values, lane for lane,
 * as one query at a time).  Each thread keeps a float pre-scan heap per
 * query; per shard the threads' heaps are merged (the kc best of the union
 * of the threads' kc best are the kc best of all rows, and every row left
 * out is no better than the merged root, so shard_finish's proof holds as
 * for one thread), then every query is finished as shard_knn finishes it.
 * Adds each query's exact top k to the heaps od/oi [Q][k]. */
static int knn_batched(float *od, int64_t *oi, const float *q, int64_t Q, const int64_t *probe, int nprobe,
                       const KnnDb *dbs, const IvfLocal *il, int k, KnnMetric metric, int T, Err *err)
{
    const int nlist = il->nlist, D = il->D, kc = k + KNN_RESCORE_MARGIN;
    const TopKOrder order = knn_metric_order(metric);
    /* The queries of each list, ascending (CSR). */
    int64_t *qlim = xcalloc((size_t)nlist + 1, sizeof *qlim);
    int32_t *qof = xmalloc((size_t)(Q * nprobe > 0 ? Q * nprobe : 1) * sizeof *qof);
    for (int64_t t = 0; t < Q * nprobe; t++)
        if (probe[t] >= 0) qlim[probe[t] + 1]++;
    for (int L = 0; L < nlist; L++) qlim[L + 1] += qlim[L];
    int64_t *fill = xmalloc((size_t)nlist * sizeof *fill);
    memcpy(fill, qlim, (size_t)nlist * sizeof *fill);
    for (int64_t i = 0; i < Q; i++)
        for (int p = 0; p < nprobe; p++) {
            const int64_t L = probe[(size_t)i * (size_t)nprobe + (size_t)p];
            if (L >= 0) qof[fill[L]++] = (int32_t)i;
        }
    free(fill);
    const size_t per_t = (size_t)Q * (size_t)kc;
    float *hd = xmalloc((size_t)T * per_t * sizeof *hd);
    int64_t *hi = xmalloc((size_t)T * per_t * sizeof *hi);
    float *nfm = xmalloc((size_t)T * (size_t)Q * sizeof *nfm);
    KnnScanBound bound;
    knn_scan_bound_init(&bound, D);
    int64_t bad = -1; /* lowest query with an error */
    Err first;
    err_clear(&first);
    for (int s = 0; s < il->n && bad < 0; s++) {
        const KnnDb *db = &dbs[s];
        const IvfLists *l = &il->lists[s];
        IVF_OMP("omp parallel num_threads(T)")
        {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            float *th = hd + (size_t)t * per_t, *tn = nfm + (size_t)t * (size_t)Q;
            int64_t *ti = hi + (size_t)t * per_t;
            for (int64_t i = 0; i < Q; i++) {
                topk_heap_init(th + (size_t)i * (size_t)kc, ti + (size_t)i * (size_t)kc, kc, order);
                tn[i] = 0.0f;
            }
            float *qb = xmalloc((size_t)IVF_GROUP * (size_t)D * sizeof *qb);
            float *f = xmalloc((size_t)IVF_GROUP * KNN_SCAN_BLOCK * sizeof *f);
            float nf[KNN_SCAN_BLOCK];
            int64_t rows[KNN_SCAN_BLOCK];
            IVF_OMP("omp for schedule(dynamic, 1)")
            for (int L = 0; L < nlist; L++) {
                const int64_t q0 = qlim[L], nqL = qlim[L + 1] - q0;
                if (nqL == 0) continue;
                int64_t t0 = l->lims[L];
                const int64_t t1 = l->lims[L + 1];
                while (t0 < t1) {
                    int nb = 0;
                    for (; t0 < t1 && nb < KNN_SCAN_BLOCK; t0++) {
                        const int64_t r = l->rows[t0];
                        if (!db->mask || db->mask[r]) rows[nb++] = r;
                    }
                    if (nb == 0) break;
                    float bmax = 0.0f;
                    for (int64_t g0 = 0; g0 < nqL; g0 += IVF_GROUP) {
                        const int ng = (int)(nqL - g0 < IVF_GROUP ? nqL - g0 : IVF_GROUP);
                        for (int j = 0; j < ng; j++)
                            memcpy(qb + (size_t)j * (size_t)D, q + (size_t)qof[q0 + g0 + j] * (size_t)D,
                                   (size_t)D * sizeof *qb);
                        knn_scan_rows(f, g0 == 0 ? nf : NULL, qb, ng, db->x, rows, nb, D, metric);
                        if (g0 == 0)
                            for (int c = 0; c < nb; c++)
                                if (!(nf[c] <= bmax)) bmax = isnan(nf[c]) ? INFINITY : nf[c];
                        for (int j = 0; j < ng; j++) {
                            const int64_t i = qof[q0 + g0 + j];
                            float *h = th + (size_t)i * (size_t)kc;
                            int64_t *hr = ti + (size_t)i * (size_t)kc;
                            const float *fj = f + (size_t)j * (size_t)nb;
                            if (!(bmax <= tn[i])) tn[i] = bmax;
                            for (int c = 0; c < nb; c++) {
                                if (order == TOPK_SMALLEST ? fj[c] > h[0] : fj[c] < h[0]) continue;
                                topk_heap_push(h, hr, kc, order, fj[c], rows[c]);
                            }
                        }
                    }
                }
            }
            free(qb);
            free(f);
            /* implicit barrier: every thread's heaps are complete */
            Scratch sc;
            scratch_init(&sc, k, kc);
            Err e;
            err_clear(&e);
            IVF_OMP("omp for schedule(dynamic, 16)")
            for (int64_t i = 0; i < Q; i++) {
                /* merge the threads' heaps into sc.hd/hi */
                memcpy(sc.hd, hd + (size_t)i * (size_t)kc, (size_t)kc * sizeof *sc.hd);
                memcpy(sc.hi, hi + (size_t)i * (size_t)kc, (size_t)kc * sizeof *sc.hi);
                float nfmax = nfm[i];
                for (int u = 1; u < T; u++) {
                    const float *uh = hd + (size_t)u * per_t + (size_t)i * (size_t)kc;
                    const int64_t *ui = hi + (size_t)u * per_t + (size_t)i * (size_t)kc;
                    for (int c = 0; c < kc; c++) {
                        if (ui[c] == TOPK_NO_ID) continue;
                        if (order == TOPK_SMALLEST ? uh[c] > sc.hd[0] : uh[c] < sc.hd[0]) continue;
                        topk_heap_push(sc.hd, sc.hi, kc, order, uh[c], ui[c]);
                    }
                    const float un = nfm[(size_t)u * (size_t)Q + (size_t)i];
                    if (!(un <= nfmax)) nfmax = un;
                }
                const float *qi = q + (size_t)i * (size_t)D;
                ProbeJob job = { .q = qi, .qn2 = sq_norm(qi, D), .probe = probe + (size_t)i * (size_t)nprobe,
                                 .nprobe = nprobe, .k = k, .kc = kc, .metric = metric, .bound = bound };
                if (shard_finish(&sc, db, l, &job, nfmax, &e)) {
                    IVF_OMP("omp critical(ivf_err)")
                    if (bad < 0 || i < bad) {
                        bad = i;
                        first = e;
                    }
                    err_clear(&e);
                    continue;
                }
                heap_add_exact(od + (size_t)i * (size_t)k, oi + (size_t)i * (size_t)k, k, order, sc.sd, sc.si);
            }
            scratch_free(&sc);
        }
    }
    free(hd);
    free(hi);
    free(nfm);
    free(qlim);
    free(qof);
    if (bad >= 0) {
        *err = first;
        return err->code;
    }
    return AE_OK;
}

/* This rank's IVF top k of every query (local, sorted; padding where fewer). */
static int ivf_local_knn(TopK *out, const float *q, int64_t Q, const KnnDb *dbs, const IvfLocal *il, int nprobe,
                         int k, KnnMetric metric, int nthreads, Err *err)
{
    const TopKOrder order = knn_metric_order(metric);
    topk_alloc(out, Q, k, order);
    int64_t *probe = NULL;
    if (Q == 0 || il->n == 0) return AE_OK;
    if (probe_lists(&probe, q, Q, il, nprobe, metric, nthreads, err)) {
        free(probe);
        return err->code;
    }
    const int T = resolve_threads(nthreads);
    if (Q >= IVF_BATCH_MIN_QUERIES) {
        int rc = AE_OK;
        for (int64_t i = 0; i < Q; i++)
            topk_heap_init(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k, order);
        int64_t pass = IVF_BATCH_HEAP_ENTRIES / (k + KNN_RESCORE_MARGIN);
        if (pass > IVF_BATCH_QUERIES) pass = IVF_BATCH_QUERIES;
        if (pass < IVF_BATCH_MIN_QUERIES) pass = IVF_BATCH_MIN_QUERIES;
        for (int64_t b = 0; b < Q && rc == AE_OK; b += pass) {
            const int64_t nb = Q - b < pass ? Q - b : pass;
            rc = knn_batched(out->dist + (size_t)b * (size_t)k, out->ids + (size_t)b * (size_t)k,
                             q + (size_t)b * (size_t)il->D, nb, probe + (size_t)b * (size_t)nprobe, nprobe, dbs, il,
                             k, metric, T, err);
        }
        for (int64_t i = 0; i < Q && rc == AE_OK; i++)
            topk_heap_sort(out->dist + (size_t)i * (size_t)k, out->ids + (size_t)i * (size_t)k, k, order);
        free(probe);
        return rc;
    }
    /* Work items: (query, part).  With fewer queries than threads, a query's
     * probes are dealt over `parts` items (probe j to part j % parts), each
     * searched exactly on its own (the proof holds for any subset of rows),
     * then merged: the same result as one part. */
    const int parts = Q >= T ? 1 : (T < nprobe ? T : nprobe);
    const int64_t items = Q * parts;
    float *pd = xmalloc((size_t)items * (size_t)k * sizeof *pd);
    int64_t *pi = xmalloc((size_t)items * (size_t)k * sizeof *pi);
    int64_t bad = -1; /* lowest item with an error */
    Err first;
    err_clear(&first);
    KnnScanBound bound;
    knn_scan_bound_init(&bound, il->D);
    IVF_OMP("omp parallel num_threads(T) if (items > 1)")
    {
        Scratch sc;
        scratch_init(&sc, k, k + KNN_RESCORE_MARGIN);
        int64_t *sub = xmalloc((size_t)nprobe * sizeof *sub);
        Err e;
        err_clear(&e);
        IVF_OMP("omp for schedule(dynamic, 1)")
        for (int64_t it = 0; it < items; it++) {
            const int64_t i = it / parts;
            const int part = (int)(it % parts);
            const float *qi = q + (size_t)i * (size_t)il->D;
            int ns = 0;
            for (int j = part; j < nprobe; j += parts) sub[ns++] = probe[(size_t)i * (size_t)nprobe + (size_t)j];
            ProbeJob job = { .q = qi, .qn2 = sq_norm(qi, il->D), .probe = sub, .nprobe = ns, .k = k,
                             .kc = k + KNN_RESCORE_MARGIN, .metric = metric, .bound = bound };
            float *od = pd + (size_t)it * (size_t)k;
            int64_t *oi = pi + (size_t)it * (size_t)k;
            topk_heap_init(od, oi, k, order);
            for (int s = 0; s < il->n; s++) {
                if (shard_knn(&sc, &dbs[s], &il->lists[s], &job, &e)) {
                    IVF_OMP("omp critical(ivf_err)")
                    if (bad < 0 || it < bad) {
                        bad = it;
                        first = e;
                    }
                    err_clear(&e);
                    break;
                }
                heap_add_exact(od, oi, k, order, sc.sd, sc.si);
            }
        }
        free(sub);
        scratch_free(&sc);
    }
    for (int64_t i = 0; i < Q && bad < 0; i++) {
        float *od = out->dist + (size_t)i * (size_t)k;
        int64_t *oi = out->ids + (size_t)i * (size_t)k;
        for (int part = 0; part < parts; part++) {
            const size_t at = ((size_t)i * (size_t)parts + (size_t)part) * (size_t)k;
            heap_add_exact(od, oi, k, order, pd + at, pi + at);
        }
        topk_heap_sort(od, oi, k, order);
    }
    free(pd);
    free(pi);
    free(probe);
    if (bad >= 0) {
        *err = first;
        return err->code;
    }
    return AE_OK;
}

int ivf_search_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                   const IvfLocal *il, int nprobe, int k, KnnMetric metric, int nthreads, Err *err)
{
    memset(out, 0, sizeof *out);
    assert(n_dbs == il->n);
    (void)n_dbs;
    if (nprobe > il->nlist) nprobe = il->nlist;
    TopK local;
    memset(&local, 0, sizeof local);
    ivf_local_knn(&local, q, Q, dbs, il, nprobe, k, metric, nthreads, err);
    if (par_agree(ctx, err)) {
        topk_free(&local);
        return err->code;
    }
    search_merge_topk(ctx, out, &local, Q, k, metric);
    topk_free(&local);
    return AE_OK;
}

int ivf_search_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                     const IvfLocal *il, int nprobe, float radius, KnnMetric metric, int nthreads, Err *err)
{
    memset(out, 0, sizeof *out);
    assert(n_dbs == il->n);
    (void)n_dbs;
    if (nprobe > il->nlist) nprobe = il->nlist;
    KnnRange local = { .Q = Q };
    local.lims = xcalloc((size_t)Q + 1, sizeof *local.lims);
    Hits *hits = xcalloc((size_t)(Q > 0 ? Q : 1), sizeof *hits);
    int64_t *probe = NULL;
    if (!isfinite(radius)) err_set(err, AE_EARG, "range search: radius %g is not finite", (double)radius);
    else if (Q > 0 && il->n > 0 && !probe_lists(&probe, q, Q, il, nprobe, metric, nthreads, err)) {
        KnnScanBound bound;
        knn_scan_bound_init(&bound, il->D);
        int64_t bad = -1;
        Err first;
        err_clear(&first);
        IVF_OMP("omp parallel num_threads(resolve_threads(nthreads)) if (Q > 1)")
        {
            Scratch sc;
            scratch_init(&sc, 1, 1);
            Err e;
            err_clear(&e);
            IVF_OMP("omp for schedule(dynamic, 1)")
            for (int64_t i = 0; i < Q; i++) {
                const float *qi = q + (size_t)i * (size_t)il->D;
                ProbeJob job = { .q = qi, .qn2 = sq_norm(qi, il->D), .probe = probe + (size_t)i * (size_t)nprobe,
                                 .nprobe = nprobe, .k = 1, .kc = 1, .metric = metric, .bound = bound,
                                 .radius = radius };
                for (int s = 0; s < il->n; s++) {
                    float nfmax = 0.0f;
                    scan_lists(&sc, &dbs[s], &il->lists[s], &job, block_range, &hits[i], &nfmax);
                    if (!(nfmax <= (float)KNN_MAX_NORM2) && check_probed(&dbs[s], &il->lists[s], &job, &e)) {
                        IVF_OMP("omp critical(ivf_err)")
                        if (bad < 0 || i < bad) {
                            bad = i;
                            first = e;
                        }
                        err_clear(&e);
                        break;
                    }
                }
            }
            scratch_free(&sc);
        }
        if (bad >= 0) *err = first;
    }
    free(probe);
    for (int64_t i = 0; i < Q; i++) local.lims[i + 1] = local.lims[i] + hits[i].n;
    local.ids = xmalloc((size_t)(local.lims[Q] > 0 ? local.lims[Q] : 1) * sizeof *local.ids);
    local.dist = xmalloc((size_t)(local.lims[Q] > 0 ? local.lims[Q] : 1) * sizeof *local.dist);
    for (int64_t i = 0; i < Q; i++) {
        if (hits[i].n) {
            memcpy(local.ids + local.lims[i], hits[i].ids, (size_t)hits[i].n * sizeof *local.ids);
            memcpy(local.dist + local.lims[i], hits[i].dist, (size_t)hits[i].n * sizeof *local.dist);
        }
        free(hits[i].ids);
        free(hits[i].dist);
    }
    free(hits);
    int rc = search_merge_range(ctx, out, &local, 1, Q, metric, err);
    knn_range_free(&local);
    return rc;
}
