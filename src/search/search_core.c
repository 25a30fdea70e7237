/*
 * search_core.c - encoder loading and encoding, local shard preparation,
 * sharded k-NN / range search and result metadata for aesim-search (see
 * include/search/search_core.h).  MPI through par.h only; rank 0 does the merges.
 */
#include "search/search_core.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/check.h"
#include "base/fileio.h"
#include "model/ckpt.h"
#include "nn/conv_amx.h"
#include "nn/conv_direct_bf16.h"
#include "data/image_convert.h"
#include "search/whiten.h"
#include "data/sheet.h"

int search_auto_runs_bf16(void)
{
    return conv_bf16_auto_runs_bf16() || conv_amx_available(CONV_AMX_NATIVE);
}

ModelPrecision search_precision(const ParCtx *ctx, int request)
{
    if ((ModelPrecision)request != MODEL_PRECISION_AUTO) return (ModelPrecision)request;
    const int slowest = -par_allreduce_max_int(ctx, -(int)(1000.0 * conv_bf16_dot_speedup() + 0.5));
    /* encoding is forward only: AMX tiles run it (model_set_precision turns them on) */
    const int lacking = par_allreduce_max_int(ctx, !search_auto_runs_bf16());
    char note[256];
    if (model_precision_auto_note(note, sizeof note, !lacking, slowest / 1000.0, ctx->size))
        par_err0(ctx, "aesim-search: --precision %s\n", note);
    return model_precision_resolve(MODEL_PRECISION_AUTO, !lacking);
}

int search_load_encoder(const ParCtx *ctx, const char *path, int batch, int nthreads, int precision, Model *m,
                        uint32_t *crc, Err *err)
{
    memset(m, 0, sizeof *m);
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    if (ctx->rank == 0) ckpt_read(&ck, path, err);
    if (par_agree(ctx, err)) return err->code;
    /* The scalar part goes to every rank; the arrays stay on rank 0. */
    Checkpoint meta = ck;
    meta.arrays = NULL;
    meta.n_arrays = 0;
    par_bcast(ctx, &meta, sizeof meta, 0);
    if (ctx->rank != 0) ck = meta;
    ModelSpec spec;
    model_parse(&spec, ck.arch, ck.C, ck.H, ck.W, err);
    if (par_agree(ctx, err)) {
        ckpt_free(&ck);
        return err->code;
    }
    model_build(m, &spec, batch, nthreads);
    if (ctx->rank == 0) ckpt_restore(&ck, m, NULL, err);
    ckpt_free(&ck);
    if (par_agree(ctx, err)) {
        model_free(m);
        memset(m, 0, sizeof *m);
        return err->code;
    }
    par_bcast(ctx, m->params, m->n_params * sizeof(float), 0);
    *crc = ckpt_params_crc32(m);
    model_set_precision(m, search_precision(ctx, precision));
    return AE_OK;
}

int search_check_model(const VecDb *db, const Model *m, uint32_t crc, const char *ckpt, Err *err)
{
    int D = model_embedding_dim(m);
    if (D != db->D)
        return err_set(err, AE_ESHAPE,
                       "the model %s gives D = %d vectors but the database %s holds D = %d (manifest 'dim') (hint: "
                       "query with the checkpoint that built the database)",
                       ckpt, D, db->dir, db->D);
    if (crc != db->model_crc)
        return err_set(err, AE_EARG,
                       "the model %s (weights crc32 %08x) is not the one that built the database %s (crc32 %08x) "
                       "(hint: query with that checkpoint, or rebuild the database with this one)",
                       ckpt, (unsigned)crc, db->dir, (unsigned)db->model_crc);
    if (db->C != m->spec.C || db->H != m->spec.H || db->W != m->spec.W)
        return err_set(err, AE_ESHAPE,
                       "the database %s records input images of %dx%dx%d (CxHxW, manifest model.input_shape) but the "
                       "model %s takes %dx%dx%d (hint: the manifest was edited; it must say [%d, %d, %d])", db->dir,
                       db->C, db->H, db->W, ckpt, m->spec.C, m->spec.H, m->spec.W, m->spec.C, m->spec.H, m->spec.W);
    return AE_OK;
}

/* View v (0 <= v < vecdb_tta_views(t)) of the images x[n][C][H][W] into
 * y: v = mirror * (1 + 4 shifts) + s, mirror in {0, flip}, s = 0 for no
 * translation, 1..4 for (+S, 0), (-S, 0), (0, +S), (0, -S) in (x, y), zero
 * fill: y[c][h][w] = m[c][h - dy][w - dx], m = x or x mirrored along W. */
static void tta_view(float *y, const float *x, int64_t n, int C, int H, int W, const VecDbTta *t, int v)
{
    const int per = t->shift > 0 ? 5 : 1, mirror = v / per, s = v % per, S = t->shift;
    static const int DX[5] = { 0, 1, -1, 0, 0 }, DY[5] = { 0, 0, 0, 1, -1 };
    const int dx = DX[s] * S, dy = DY[s] * S;
    for (int64_t r = 0; r < n * C; r++) {
        const float *xi = x + (size_t)r * (size_t)H * (size_t)W;
        float *yi = y + (size_t)r * (size_t)H * (size_t)W;
        for (int h = 0; h < H; h++) {
            const int hs = h - dy;
            for (int w = 0; w < W; w++) {
                const int ws = w - dx;
                float val = 0.0f;
                if (hs >= 0 && hs < H && ws >= 0 && ws < W) val = xi[(size_t)hs * W + (size_t)(mirror ? W - 1 - ws : ws)];
                yi[(size_t)h * W + (size_t)w] = val;
            }
        }
    }
}

int64_t search_encode(float *out, Model *m, const ImageSet *set, const float *imgs, int64_t lo, int64_t n,
                      const VecDbTta *tta)
{
    const int D = model_embedding_dim(m), C = m->spec.C, H = m->spec.H, W = m->spec.W;
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    const int views = tta ? vecdb_tta_views(tta) : 1;
    /* With views, the batch's images are kept apart and each view is made
     * from them into m->input. */
    float *raw = views > 1 ? xmalloc((size_t)m->max_batch * chw * sizeof *raw) : NULL;
    for (int64_t b0 = 0; b0 < n; b0 += m->max_batch) {
        int nb = (int)(n - b0 < m->max_batch ? n - b0 : m->max_batch);
        float *dst = raw ? raw : m->input;
        for (int i = 0; i < nb; i++) {
            if (set) imgset_get_f32(dst + (size_t)i * chw, set, lo + b0 + i);
            else memcpy(dst + (size_t)i * chw, imgs + (size_t)(b0 + i) * chw, chw * sizeof(float));
        }
        float *o = out + (size_t)b0 * (size_t)D;
        const size_t nd = (size_t)nb * (size_t)D;
        for (int v = 0; v < views; v++) {
            if (raw) tta_view(m->input, raw, nb, C, H, W, tta, v);
            const float *z = model_encode(m, m->input, nb);
            if (v == 0) memcpy(o, z, nd * sizeof(float));
            else
                for (size_t j = 0; j < nd; j++) o[j] += z[j];
        }
        if (views > 1)
            for (size_t j = 0; j < nd; j++) o[j] /= (float)views;
    }
    free(raw);
    for (int64_t i = 0; i < n; i++)
        for (int d = 0; d < D; d++)
            if (!isfinite(out[(size_t)i * (size_t)D + (size_t)d])) return i;
    return -1;
}

/* ------------------------------------------------------------- shards */

static uint8_t *build_mask(const VecShard *s, const SearchFilter *f)
{
    uint8_t *mask = xmalloc((size_t)(s->count > 0 ? s->count : 1));
    for (int64_t j = 0; j < s->count; j++) {
        int ok = f->n_labels == 0;
        for (int l = 0; l < f->n_labels && !ok; l++) ok = s->labels[j] == f->labels[l];
        mask[j] = (uint8_t)(ok && !f->has_ids);
    }
    if (f->has_ids)
        for (int64_t i = 0; i < f->n_ids; i++) {
            int64_t j = f->ids[i] - s->first_id;
            if (j < 0 || j >= s->count) continue;
            int ok = f->n_labels == 0;
            for (int l = 0; l < f->n_labels && !ok; l++) ok = s->labels[j] == f->labels[l];
            mask[j] = (uint8_t)ok;
        }
    return mask;
}

int search_shards_open(const ParCtx *ctx, LocalShards *ls, const VecDb *db, KnnMetric metric,
                       const SearchFilter *filter, Err *err)
{
    memset(ls, 0, sizeof *ls);
    int owned = 0;
    for (int s = 0; s < db->n_shards; s++) owned += vecdb_shard_owner(s, ctx->size) == ctx->rank;
    ls->maps = xcalloc((size_t)(owned ? owned : 1), sizeof *ls->maps);
    ls->dbs = xcalloc((size_t)(owned ? owned : 1), sizeof *ls->dbs);
    ls->copies = xcalloc((size_t)(owned ? owned : 1), sizeof *ls->copies);
    ls->masks = xcalloc((size_t)(owned ? owned : 1), sizeof *ls->masks);
    ls->norms = xcalloc((size_t)(owned ? owned : 1), sizeof *ls->norms);
    const int filtered = filter && (filter->n_labels > 0 || filter->has_ids);
    /* Labels whenever a filter is given, so search_shards_set_filter can
     * change it later (mmap: pages load only when a mask is built). */
    unsigned want = VECDB_MAP_VECTORS | VECDB_MAP_IDS | (filter ? VECDB_MAP_LABELS : 0);
    for (int s = 0; s < db->n_shards && err->code == AE_OK; s++) {
        if (vecdb_shard_owner(s, ctx->size) != ctx->rank) continue;
        VecShard *m = &ls->maps[ls->n];
        if (vecdb_shard_map(m, db, s, want, err)) break;
        KnnDb *k = &ls->dbs[ls->n];
        k->x = m->x;
        k->M = m->count;
        k->D = db->D;
        k->id_offset = m->first_id;
        k->ids = NULL;
        if (metric == KNN_IP && m->count > 0) {
            size_t bytes = (size_t)m->count * (size_t)db->D * sizeof(float);
            ls->copies[ls->n] = xmalloc(bytes);
            memcpy(ls->copies[ls->n], m->x, bytes);
            knn_normalize(ls->copies[ls->n], m->count, db->D);
            k->x = ls->copies[ls->n];
        }
        if (filtered) {
            ls->masks[ls->n] = build_mask(m, filter);
            k->mask = ls->masks[ls->n];
        }
        ls->n++;
    }
    if (par_agree(ctx, err)) {
        search_shards_close(ls);
        return err->code;
    }
    return AE_OK;
}

void search_shards_close(LocalShards *ls)
{
    for (int i = 0; i < ls->n; i++) {
        vecdb_shard_unmap(&ls->maps[i]);
        free(ls->copies[i]);
        free(ls->masks[i]);
        free(ls->norms[i]);
    }
    free(ls->norms);
    free(ls->maps);
    free(ls->dbs);
    free(ls->copies);
    free(ls->masks);
    memset(ls, 0, sizeof *ls);
}

void search_shards_cache_norms(LocalShards *ls, int nthreads)
{
    for (int i = 0; i < ls->n; i++) {
        KnnDb *k = &ls->dbs[i];
        if (k->norms || k->M == 0) continue;
        float *nr = xmalloc((size_t)k->M * sizeof *nr);
        double mx;
        if (knn_row_norms(nr, &mx, k, nthreads)) {
            ls->norms[i] = nr;
            k->norms = nr;
            k->norms_max2 = mx;
        } else {
            free(nr);
        }
    }
}

void search_shards_set_filter(LocalShards *ls, const SearchFilter *filter)
{
    const int filtered = filter && (filter->n_labels > 0 || filter->has_ids);
    for (int i = 0; i < ls->n; i++) {
        free(ls->masks[i]);
        ls->masks[i] = NULL;
        ls->dbs[i].mask = NULL;
        if (!filtered) continue;
        assert(ls->maps[i].labels || ls->maps[i].count == 0);
        ls->masks[i] = build_mask(&ls->maps[i], filter);
        ls->dbs[i].mask = ls->masks[i];
    }
}

/* *p[n] grown to n + 1 elements of `size` bytes (xmalloc + copy). */
static void grow_by_one(void **p, int n, size_t size)
{
    void *q = xmalloc((size_t)(n + 1) * size);
    if (n) memcpy(q, *p, (size_t)n * size);
    free(*p);
    *p = q;
}

int search_shards_add(const ParCtx *ctx, LocalShards *ls, const VecDb *db, int shard, KnnMetric metric, Err *err)
{
    if (vecdb_shard_owner(shard, ctx->size) != ctx->rank) return AE_OK;
    grow_by_one((void **)&ls->maps, ls->n, sizeof *ls->maps);
    grow_by_one((void **)&ls->dbs, ls->n, sizeof *ls->dbs);
    grow_by_one((void **)&ls->copies, ls->n, sizeof *ls->copies);
    grow_by_one((void **)&ls->masks, ls->n, sizeof *ls->masks);
    grow_by_one((void **)&ls->norms, ls->n, sizeof *ls->norms);
    VecShard *m = &ls->maps[ls->n];
    if (vecdb_shard_map(m, db, shard, VECDB_MAP_ALL, err)) return err->code;
    KnnDb *k = &ls->dbs[ls->n];
    memset(k, 0, sizeof *k);
    k->x = m->x;
    k->M = m->count;
    k->D = db->D;
    k->id_offset = m->first_id;
    ls->copies[ls->n] = NULL;
    ls->masks[ls->n] = NULL;
    ls->norms[ls->n] = NULL;
    if (metric == KNN_IP && m->count > 0) {
        size_t bytes = (size_t)m->count * (size_t)db->D * sizeof(float);
        ls->copies[ls->n] = xmalloc(bytes);
        memcpy(ls->copies[ls->n], m->x, bytes);
        knn_normalize(ls->copies[ls->n], m->count, db->D);
        k->x = ls->copies[ls->n];
    }
    ls->n++;
    return AE_OK;
}

/* ------------------------------------------------------------- search */

/* This rank's top k over its KnnDbs (all padding when it has none). */
static int local_knn(TopK *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs, int k, KnnMetric metric,
                     int nthreads, Err *err)
{
    memset(out, 0, sizeof *out);
    if (n_dbs == 0) {
        topk_alloc(out, Q, k, knn_metric_order(metric));
        return AE_OK;
    }
    if (n_dbs == 1) return knn_search_local(out, q, Q, &dbs[0], k, metric, nthreads, err);
    TopK *parts = xcalloc((size_t)n_dbs, sizeof *parts);
    int rc = AE_OK;
    for (int i = 0; i < n_dbs && rc == AE_OK; i++) rc = knn_search_local(&parts[i], q, Q, &dbs[i], k, metric, nthreads, err);
    if (rc == AE_OK) knn_merge(out, parts, n_dbs, k, metric);
    for (int i = 0; i < n_dbs; i++) topk_free(&parts[i]);
    free(parts);
    return rc;
}

int search_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs, int k,
               KnnMetric metric, int nthreads, Err *err)
{
    memset(out, 0, sizeof *out);
    TopK local;
    local_knn(&local, q, Q, dbs, n_dbs, k, metric, nthreads, err);
    if (par_agree(ctx, err)) {
        topk_free(&local);
        return err->code;
    }
    search_merge_topk(ctx, out, &local, Q, k, metric);
    topk_free(&local);
    return AE_OK;
}

void search_merge_topk(const ParCtx *ctx, TopK *out, const TopK *local, int64_t Q, int k, KnnMetric metric)
{
    memset(out, 0, sizeof *out);
    const int P = ctx->size, root = ctx->rank == 0;
    const TopKOrder order = knn_metric_order(metric);
    if (root) topk_alloc(out, Q, k, order);
    /* Queries per gather: one rank's ids (the larger array) <= the chunk. */
    int64_t qc = (int64_t)(SEARCH_GATHER_CHUNK_BYTES / ((size_t)k * sizeof(int64_t)));
    if (qc < 1) qc = 1;
    if (qc > Q) qc = Q;
    float *gd = NULL;
    int64_t *gi = NULL;
    TopK *views = NULL;
    if (root && Q > 0) {
        gd = xmalloc((size_t)P * (size_t)qc * (size_t)k * sizeof *gd); /* [P][qc][k] */
        gi = xmalloc((size_t)P * (size_t)qc * (size_t)k * sizeof *gi);
        views = xcalloc((size_t)P, sizeof *views);
    }
    for (int64_t i0 = 0; i0 < Q; i0 += qc) {
        const int64_t nq = Q - i0 < qc ? Q - i0 : qc;
        const size_t n = (size_t)nq * (size_t)k;
        par_gather(ctx, local->dist + (size_t)i0 * (size_t)k, gd, n * sizeof *gd, 0);
        par_gather(ctx, local->ids + (size_t)i0 * (size_t)k, gi, n * sizeof *gi, 0);
        if (!root) continue;
        for (int p = 0; p < P; p++)
            views[p] = (TopK){ .Q = nq, .k = k, .order = order, .dist = gd + (size_t)p * n, .ids = gi + (size_t)p * n };
        TopK merged;
        knn_merge(&merged, views, P, k, metric);
        memcpy(out->dist + (size_t)i0 * (size_t)k, merged.dist, n * sizeof *gd);
        memcpy(out->ids + (size_t)i0 * (size_t)k, merged.ids, n * sizeof *gi);
        topk_free(&merged);
    }
    free(gd);
    free(gi);
    free(views);
}

void search_query_expand(const ParCtx *ctx, float *q, int64_t Q, int D, const TopK *first, const KnnDb *dbs,
                         int n_dbs, int n, double alpha)
{
    if (Q <= 0 || n <= 0) return;
    const size_t qn = (size_t)Q * (size_t)n;
    int64_t *ids = xmalloc(qn * sizeof *ids);
    float *w = xmalloc(qn * sizeof *w);
    if (ctx->rank == 0) {
        assert(first->k >= n);
        for (int64_t i = 0; i < Q; i++)
            for (int j = 0; j < n; j++) {
                const size_t e = (size_t)i * (size_t)first->k + (size_t)j, o = (size_t)i * (size_t)n + (size_t)j;
                ids[o] = first->ids[e];
                const double s = first->dist[e] > 0 ? first->dist[e] : 0.0;
                w[o] = ids[o] == TOPK_NO_ID ? 0.0f : (float)pow(s, alpha);
            }
    }
    par_bcast(ctx, ids, qn * sizeof *ids, 0);
    par_bcast(ctx, w, qn * sizeof *w, 0);
    const size_t row = (size_t)n * (size_t)D * sizeof(float);
    int64_t qc = (int64_t)(SEARCH_GATHER_CHUNK_BYTES / row);
    if (qc < 1) qc = 1;
    if (qc > Q) qc = Q;
    float *buf = xmalloc((size_t)qc * row);
    for (int64_t i0 = 0; i0 < Q; i0 += qc) {
        const int64_t nq = Q - i0 < qc ? Q - i0 : qc;
        memset(buf, 0, (size_t)nq * row);
        for (int64_t i = 0; i < nq; i++)
            for (int j = 0; j < n; j++) {
                const int64_t id = ids[(size_t)(i0 + i) * (size_t)n + (size_t)j];
                if (id == TOPK_NO_ID) continue;
                for (int b = 0; b < n_dbs; b++) {
                    const KnnDb *k = &dbs[b];
                    assert(k->ids == NULL);
                    if (id < k->id_offset || id >= k->id_offset + k->M) continue;
                    memcpy(buf + ((size_t)i * (size_t)n + (size_t)j) * (size_t)D,
                           k->x + (size_t)(id - k->id_offset) * (size_t)D, (size_t)D * sizeof(float));
                    break;
                }
            }
        par_allreduce_sum_f32(ctx, buf, (size_t)nq * (size_t)n * (size_t)D);
        for (int64_t i = 0; i < nq; i++) {
            float *qi = q + (size_t)(i0 + i) * (size_t)D;
            for (int j = 0; j < n; j++) {
                const float wj = w[(size_t)(i0 + i) * (size_t)n + (size_t)j];
                const float *x = buf + ((size_t)i * (size_t)n + (size_t)j) * (size_t)D;
                if (wj != 0.0f)
                    for (int d = 0; d < D; d++) qi[d] += wj * x[d];
            }
        }
    }
    knn_normalize(q, Q, D);
    free(buf);
    free(ids);
    free(w);
}

/* One range hit on the wire. */
typedef struct Hit {
    int64_t q, id;
    float d;
    int32_t pad; /* keeps the struct 24 bytes with no uninitialised hole */
} Hit;

static int hit_cmp_smallest(const void *a, const void *b)
{
    const Hit *x = a, *y = b;
    if (x->q != y->q) return x->q < y->q ? -1 : 1;
    if (topk_better(TOPK_SMALLEST, x->d, x->id, y->d, y->id)) return -1;
    if (topk_better(TOPK_SMALLEST, y->d, y->id, x->d, x->id)) return 1;
    return 0;
}

static int hit_cmp_largest(const void *a, const void *b)
{
    const Hit *x = a, *y = b;
    if (x->q != y->q) return x->q < y->q ? -1 : 1;
    if (topk_better(TOPK_LARGEST, x->d, x->id, y->d, y->id)) return -1;
    if (topk_better(TOPK_LARGEST, y->d, y->id, x->d, x->id)) return 1;
    return 0;
}

int search_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                 float radius, KnnMetric metric, int nthreads, Err *err)
{
    memset(out, 0, sizeof *out);
    KnnRange *parts = xcalloc((size_t)(n_dbs ? n_dbs : 1), sizeof *parts);
    for (int i = 0; i < n_dbs && err->code == AE_OK; i++)
        knn_range_search_local(&parts[i], q, Q, &dbs[i], radius, metric, nthreads, err);
    int rc = search_merge_range(ctx, out, parts, n_dbs, Q, metric, err);
    for (int i = 0; i < n_dbs; i++) knn_range_free(&parts[i]);
    free(parts);
    return rc;
}

int search_merge_range(const ParCtx *ctx, KnnRange *out, const KnnRange *parts, int n_dbs, int64_t Q,
                       KnnMetric metric, Err *err)
{
    memset(out, 0, sizeof *out);
    const int P = ctx->size, root = ctx->rank == 0;
    int64_t mine = 0;
    for (int i = 0; i < n_dbs && err->code == AE_OK; i++) mine += parts[i].lims[Q];
    if (err->code == AE_OK && mine > SEARCH_RANGE_MAX_HITS)
        err_set(err, AE_EARG, "--radius matches %lld vectors of this rank, more than %lld (hint: lower --radius or "
                              "give --k)", (long long)mine, (long long)SEARCH_RANGE_MAX_HITS);
    int rc = par_agree(ctx, err);
    int64_t *counts = xcalloc((size_t)P, sizeof *counts);
    Hit *send = NULL, *recv = NULL;
    if (rc) goto done;
    counts[ctx->rank] = mine;
    par_allreduce_sum_i64(ctx, counts, (size_t)P);
    int64_t most = 0;
    for (int p = 0; p < P; p++) most = counts[p] > most ? counts[p] : most;
    send = xcalloc((size_t)(most > 0 ? most : 1), sizeof *send);
    int64_t t = 0;
    for (int i = 0; i < n_dbs; i++)
        for (int64_t qi = 0; qi < Q; qi++)
            for (int64_t h = parts[i].lims[qi]; h < parts[i].lims[qi + 1]; h++)
                send[t++] = (Hit){ .q = qi, .id = parts[i].ids[h], .d = parts[i].dist[h], .pad = 0 };
    if (root) recv = xmalloc((size_t)P * (size_t)(most > 0 ? most : 1) * sizeof *recv);
    /* most * 24 bytes <= SEARCH_RANGE_MAX_HITS * 24 < INT_MAX: one gather. */
    if (most > 0) par_gather(ctx, send, recv, (size_t)most * sizeof *send, 0);
    if (root) {
        int64_t total = 0;
        for (int p = 0; p < P; p++) {
            memmove(recv + total, recv + (size_t)p * (size_t)most, (size_t)counts[p] * sizeof *recv);
            total += counts[p];
        }
        qsort(recv, (size_t)total, sizeof *recv, metric == KNN_IP ? hit_cmp_largest : hit_cmp_smallest);
        out->Q = Q;
        out->lims = xcalloc((size_t)Q + 1, sizeof *out->lims);
        out->ids = xmalloc((size_t)(total > 0 ? total : 1) * sizeof *out->ids);
        out->dist = xmalloc((size_t)(total > 0 ? total : 1) * sizeof *out->dist);
        for (int64_t h = 0; h < total; h++) {
            out->ids[h] = recv[h].id;
            out->dist[h] = recv[h].d;
            out->lims[recv[h].q + 1]++;
        }
        for (int64_t qi = 0; qi < Q; qi++) out->lims[qi + 1] += out->lims[qi];
    }
done:
    free(counts);
    free(send);
    free(recv);
    return rc;
}

/* ------------------------------------------------------------ results */

void search_topk_to_range(KnnRange *r, const TopK *t, KnnMetric metric, int has_radius, double radius)
{
    r->Q = t->Q;
    r->lims = xcalloc((size_t)t->Q + 1, sizeof *r->lims);
    size_t cap = (size_t)t->Q * (size_t)t->k;
    r->ids = xmalloc((cap ? cap : 1) * sizeof *r->ids);
    r->dist = xmalloc((cap ? cap : 1) * sizeof *r->dist);
    int64_t at = 0;
    for (int64_t i = 0; i < t->Q; i++) {
        for (int j = 0; j < t->k; j++) {
            size_t e = (size_t)i * (size_t)t->k + (size_t)j;
            if (t->ids[e] == TOPK_NO_ID) break;
            if (has_radius && !(search_out_dist(metric, t->dist[e]) <= radius)) break;
            r->ids[at] = t->ids[e];
            r->dist[at++] = t->dist[e];
        }
        r->lims[i + 1] = at;
    }
}

/* ------------------------------------------------------------ sources */

int search_polarity_suspect(double q, double d)
{
    return fabs(q - d) > SEARCH_POLARITY_DIFF && fabs((1.0 - q) - d) < fabs(q - d);
}

void search_data_options(DatasetOptions *o, int C, int H, int W, int allow_gaps)
{
    dataset_options_default(o);
    o->C = C;
    o->H = H;
    o->W = W;
    o->allow_gaps = allow_gaps;
}

void search_note_stale_temps(const char *dir)
{
    const int n = vecdb_remove_stale_temps(dir);
    if (n) fprintf(stderr, "note: removed %d temporary file(s) an interrupted writer left in %s\n", n, dir);
}

int search_lock_db(const ParCtx *ctx, const char *dir, const char *who, int *fd, Err *err)
{
    *fd = -1;
    struct stat st;
    if (ctx->rank == 0 && stat(dir, &st) == 0 && S_ISDIR(st.st_mode) &&
        fileio_lock_dir(dir, VECDB_LOCK_NAME, who, fd, err) == AE_EARG) {
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof err->msg - len, ": one program at a time may change a database (hint: wait "
                 "for it to end)");
    }
    return par_agree(ctx, err);
}

/* Items inside the database folder are joined to its path, which the
 * source syntax would split or parse when it holds a comma, a '?' or a
 * "KIND:" prefix (a folder named "my,db"): then they are reached through a
 * descriptor of the folder instead (/proc/self/fd/N/ITEM).  Returns that
 * descriptor (close it once the items are open), or -1 when the plain path
 * is safe (or the folder cannot be opened: the plain path then fails with
 * the reason). */
static int db_dir_fd(const VecDb *db)
{
    const char *slash = strchr(db->dir, '/'), *colon = strchr(db->dir, ':');
    if (strpbrk(db->dir, ",?") || (colon && (!slash || colon < slash)))
        return open(db->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return -1;
}

/* The path that opens item `item` of db into out[cap]: a relative item
 * through dirfd when db_dir_fd gave one, else vecdb_item_path's. */
static int item_open_path(char *out, size_t cap, const VecDb *db, int dirfd, const char *item, Err *err)
{
    if (dirfd >= 0 && item[0] != '/') {
        snprintf(out, cap, "/proc/self/fd/%d/%s", dirfd, item);
        return AE_OK;
    }
    return vecdb_item_path(out, cap, db, item, err);
}

int search_open_db_file(ImageSet *set, const VecDb *db, const char *rel, Err *err)
{
    char path[VECDB_PATH_BYTES];
    int dirfd = db_dir_fd(db);
    if (!item_open_path(path, sizeof path, db, dirfd, rel, err)) imgset_open(set, path, err);
    if (dirfd >= 0) close(dirfd);
    return err->code;
}

int search_open_source(ImageSet *set, const VecDb *db, int i, Err *err)
{
    memset(set, 0, sizeof *set);
    const VecDbSource *src = &db->sources[i];
    char item[VECDB_PATH_BYTES];
    int dirfd = db_dir_fd(db);
    size_t len = 1;
    for (int j = 0; j < src->n_items; j++) len += strlen(src->items[j].path) + strlen(db->dir) + 32;
    char *spec = xmalloc(len);
    spec[0] = '\0';
    for (int j = 0; j < src->n_items; j++) {
        if (item_open_path(item, sizeof item, db, dirfd, src->items[j].path, err)) {
            free(spec);
            if (dirfd >= 0) close(dirfd);
            return err->code;
        }
        if (j) strcat(spec, ",");
        strcat(spec, item);
    }
    DatasetOptions opts;
    search_data_options(&opts, db->C, db->H, db->W, 1);
    int rc = imgset_open_opts(set, spec, &opts, err);
    free(spec);
    if (dirfd >= 0) close(dirfd); /* the items are open */
    if (rc) return rc;
    if (set->n_items != src->n_items)
        rc = err_set(err, AE_EFORMAT, "the source of %s cannot be split back into its %d files (a path holds a "
                                      "comma?)", db->dir, src->n_items);
    for (int j = 0; j < set->n_items && rc == AE_OK; j++)
        if (set->first[j + 1] - set->first[j] != src->items[j].count)
            rc = err_set(err, AE_EFORMAT,
                         "%s now holds %lld images but held %lld when the database %s was built (hint: the source "
                         "changed; rebuild the database)",
                         src->items[j].path, (long long)(set->first[j + 1] - set->first[j]),
                         (long long)src->items[j].count, db->dir);
    if (rc == AE_OK && (set->C != db->C || set->H != db->H || set->W != db->W))
        rc = err_set(err, AE_ESHAPE, "the images of %s are %dx%dx%d (CxHxW) but the database was built for %dx%dx%d",
                     src->spec, set->C, set->H, set->W, db->C, db->H, db->W);
    if (rc) imgset_free(set);
    return rc;
}

int search_source_of(const VecDb *db, int64_t id)
{
    for (int i = 0; i < db->n_sources; i++)
        if (id >= db->sources[i].first_id && id < db->sources[i].first_id + db->sources[i].count) return i;
    return -1;
}

/* Class names for the results' `class` column and the sheet's captions
 * (class_names.h): --class-names FILE when given, else the names the
 * database recorded for the id's source (image folders' class sub-folders,
 * aesim-pack stores), else Fashion-MNIST's ten (sheet.h) when the source's
 * path names it, as Debian's dataset-fashion-mnist
 * (/usr/share/datasets/fashion-mnist) does: its files are IDX files like
 * MNIST's, so the path is the only sign. */
static int is_fashion_mnist(const char *spec)
{
    return strstr(spec, "fashion-mnist") || strstr(spec, "fashion_mnist") || strstr(spec, "Fashion-MNIST");
}

/* The name source src gives label (folder names, or Fashion-MNIST's), or NULL. */
static const char *source_class_name(const VecDbSource *src, int32_t label)
{
    if (src->n_classes > 0) return label < src->n_classes && src->classes[label][0] ? src->classes[label] : NULL;
    if (is_fashion_mnist(src->spec) && label < 10) return SHEET_FASHION_MNIST_CLASSES[label];
    return NULL;
}

const char *search_class_name(const ClassNames *given, const VecDb *db, int64_t id, int32_t label)
{
    if (label < 0) return NULL;
    if (given && given->n > 0) return class_names_get(given, label);
    int s = search_source_of(db, id);
    if (s < 0) return NULL;
    const char *own = source_class_name(&db->sources[s], label);
    if (own || db->sources[s].n_classes > 0 || is_fashion_mnist(db->sources[s].spec)) return own;
    /* A source without names of its own (images added through serve's POST
     * /images?label=L): the name the other sources give L, if they agree. */
    const char *agreed = NULL;
    for (int i = 0; i < db->n_sources; i++) {
        const char *n = i == s ? NULL : source_class_name(&db->sources[i], label);
        if (!n) continue;
        if (agreed && strcmp(agreed, n) != 0) return NULL;
        agreed = n;
    }
    return agreed;
}

/* ------------------------------------------------------------ metadata */

void search_meta_init(SearchMeta *sm, const VecDb *db)
{
    sm->db = db;
    size_t n = (size_t)(db->n_shards ? db->n_shards : 1);
    sm->maps = xcalloc(n, sizeof *sm->maps);
    sm->names = xcalloc(n, sizeof *sm->names);
    sm->name_offs = xcalloc(n, sizeof *sm->name_offs);
    sm->state = xcalloc(n, sizeof *sm->state);
    sm->n = db->n_shards;
}

void search_meta_sync(SearchMeta *sm)
{
    const int n = sm->db->n_shards;
    if (n <= sm->n) return;
    VecShard *maps = xcalloc((size_t)n, sizeof *maps);
    char **names = xcalloc((size_t)n, sizeof *names);
    int64_t **offs = xcalloc((size_t)n, sizeof *offs);
    uint8_t *state = xcalloc((size_t)n, sizeof *state);
    memcpy(maps, sm->maps, (size_t)sm->n * sizeof *maps);
    memcpy(names, sm->names, (size_t)sm->n * sizeof *names);
    memcpy(offs, sm->name_offs, (size_t)sm->n * sizeof *offs);
    memcpy(state, sm->state, (size_t)sm->n * sizeof *state);
    free(sm->maps);
    free(sm->names);
    free(sm->name_offs);
    free(sm->state);
    sm->maps = maps;
    sm->names = names;
    sm->name_offs = offs;
    sm->state = state;
    sm->n = n;
}

void search_meta_free(SearchMeta *sm)
{
    for (int s = 0; sm->db && s < sm->n; s++) {
        vecdb_shard_unmap(&sm->maps[s]);
        free(sm->names[s]);
        free(sm->name_offs[s]);
    }
    free(sm->maps);
    free(sm->names);
    free(sm->name_offs);
    free(sm->state);
    memset(sm, 0, sizeof *sm);
}

/* search_meta state bits. */
enum { META_LABELS = 1, META_NAMES = 2 };

int search_meta_get(SearchMeta *sm, int64_t id, int32_t *label, const char **name, Err *err)
{
    int s = vecdb_shard_of(sm->db, id);
    if (s < 0)
        return err_set(err, AE_EARG, "id %lld is not in the database %s (ids 0..%lld)", (long long)id, sm->db->dir,
                       (long long)sm->db->count - 1);
    if (!(sm->state[s] & META_LABELS)) {
        int rc = vecdb_shard_map(&sm->maps[s], sm->db, s, VECDB_MAP_LABELS, err);
        if (rc) return rc;
        sm->state[s] |= META_LABELS;
    }
    *label = sm->maps[s].labels[id - sm->maps[s].first_id];
    if (name) {
        if (!(sm->state[s] & META_NAMES)) {
            int rc = vecdb_read_names_packed(&sm->names[s], &sm->name_offs[s], sm->db, s, err);
            if (rc) return rc;
            sm->state[s] |= META_NAMES;
        }
        *name = sm->names[s] + sm->name_offs[s][id - sm->db->shards[s].first_id];
    }
    return AE_OK;
}

int search_whiten_queries(const VecDb *db, float *q, int64_t Q, Err *err)
{
    if (!db->whiten) return AE_OK;
    Whiten w;
    if (whiten_load(&w, db->dir, db->D, err)) return err->code;
    whiten_apply(&w, q, Q);
    whiten_free(&w);
    return AE_OK;
}
