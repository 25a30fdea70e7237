/*
 * search_ivf.c - aesim-search train-ivf, the IVF/exact choice of query and
 * eval, and eval --recall (see include/search/search_ivf.h).  MPI through
 * par.h only; rank 0 writes the manifest and prints.
 */
#include "search/search_ivf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/fileio.h"
#include "base/timer.h"
#include "data/imgset.h"
#include "data/npy.h"
#include "model/model.h"

/* Most queries of eval --recall (the exact answers are kept in memory). */
#define RECALL_MAX_QUERIES ((int64_t)1 << 20)

/* After a retraining is committed: the files of the previous index (named
 * by its CRC, no longer in the manifest) are removed; a failure only leaves
 * an unused file behind. */
static void remove_ivf_files(const VecDb *db, int nlist, uint32_t crc)
{
    VecDb old = *db;
    old.ivf_nlist = nlist;
    old.ivf_crc = crc;
    char path[VECDB_PATH_BYTES];
    Err e;
    err_clear(&e);
    if (!ivf_centroids_path(path, sizeof path, &old, &e)) remove(path);
    for (int s = 0; s < old.n_shards; s++)
        if (!ivf_lists_path(path, sizeof path, &old, s, &e)) remove(path);
}

int search_train_ivf(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    const double t0 = timer_now();
    VecDb db;
    vecdb_read(&db, cfg->db, err);
    if (par_agree(ctx, err)) return err->code;
    par_err0(ctx, "train-ivf: %s: %lld vectors, D = %d, %d shard(s) over %d rank(s) | nlist %d, sample %lld, %d "
                  "iterations\n", cfg->db, (long long)db.count, db.D, db.n_shards, ctx->size, cfg->nlist,
             (long long)kmeans_sample_size(db.count, cfg->nlist), IVF_KMEANS_ITERS);
    KmeansStats st;
    if (ctx->rank == 0 && !err->code) search_note_stale_temps(cfg->db); /* under the lock, before any write */
    const int old_nlist = db.ivf_nlist;
    const uint32_t old_crc = db.ivf_crc;
    if (ivf_train_db(ctx, &db, cfg->nlist, IVF_KMEANS_ITERS, nthreads, &st, err) == AE_OK) {
        if (ctx->rank == 0 && vecdb_write_manifest(&db, err) == AE_OK && old_nlist > 0 && old_crc != db.ivf_crc)
            remove_ivf_files(&db, old_nlist, old_crc);
        if (par_agree(ctx, err) == AE_OK)
            par_err0(ctx, "train-ivf: done in %.2f s | %d iterations, %lld cluster split(s), objective %.6g | "
                          "centroids crc32 %08x\n", timer_now() - t0, st.iters, (long long)st.splits, st.objective,
                     (unsigned)db.ivf_crc);
    }
    vecdb_free(&db);
    return err->code;
}

int search_ivf_open(const ParCtx *ctx, SearchIvf *si, const SearchConfig *cfg, const VecDb *db,
                    const LocalShards *ls, Err *err)
{
    memset(si, 0, sizeof *si);
    if (cfg->exact) return AE_OK;
    if (db->ivf_nlist == 0) {
        if (cfg->nprobe)
            err_set(err, AE_EARG, "--nprobe: the database %s has no IVF index (hint: build one with aesim-search "
                                  "train-ivf --db %s --nlist N, or drop --nprobe)", db->dir, db->dir);
        return par_agree(ctx, err);
    }
    /* Cosine queries on an l2 index: its lists hold raw vectors around raw
     * centroids, which a normalised query cannot probe (recall@10 0.03 at
     * nprobe 1 where l2 gets 0.77): the exact scan, or a refusal when the
     * user asked for --nprobe. */
    const KnnMetric metric = cfg->metric == SEARCH_METRIC_DEFAULT ? db->metric : (KnnMetric)cfg->metric;
    if (metric == KNN_IP && db->metric != KNN_IP) {
        if (cfg->nprobe)
            err_set(err, AE_EARG, "--nprobe with --metric cosine: the IVF index of %s was built for l2 (lists of "
                                  "raw vectors), which normalised queries cannot probe (hint: --exact, or index "
                                  "with --metric cosine --ivf N)", db->dir);
        else
            par_err0(ctx, "note: %s has an l2 IVF index, which cosine queries cannot probe: scanning every vector "
                          "(exact)\n", db->dir);
        return par_agree(ctx, err);
    }
    if (ivf_local_open(ctx, &si->il, db, ls, err)) return err->code;
    si->nprobe = cfg->nprobe ? cfg->nprobe : IVF_DEFAULT_NPROBE;
    if (si->nprobe > db->ivf_nlist) si->nprobe = db->ivf_nlist;
    return AE_OK;
}

void search_ivf_close(SearchIvf *si)
{
    if (!si) return;
    ivf_local_close(&si->il);
    memset(si, 0, sizeof *si);
}

int search_ivf_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const LocalShards *ls,
                   const SearchIvf *si, int k, KnnMetric metric, int nthreads, Err *err)
{
    if (si && si->nprobe > 0)
        return ivf_search_knn(ctx, out, q, Q, ls->dbs, ls->n, &si->il, si->nprobe, k, metric, nthreads, err);
    return search_knn(ctx, out, q, Q, ls->dbs, ls->n, k, metric, nthreads, err);
}

int search_qe_resolve(SearchQe *qe, const SearchConfig *cfg, const VecDb *db, KnnMetric metric, Err *err)
{
    qe->n = cfg->qe >= 0 ? cfg->qe : db->qe_n;
    if (cfg->qe_alpha >= 0 && cfg->qe < 0 && db->qe_n == 0)
        return err_set(err, AE_EARG, "--qe-alpha: the database %s records no query expansion (hint: add --qe N)",
                       db->dir);
    qe->alpha = cfg->qe_alpha >= 0 ? cfg->qe_alpha : db->qe_n > 0 ? db->qe_alpha : SEARCH_DEFAULT_QE_ALPHA;
    if (qe->n > 0 && metric != KNN_IP)
        return err_set(err, AE_EARG, "query expansion (n = %d, %s) needs the cosine metric, not %s (hint: --qe 0, "
                                     "or --metric cosine)", qe->n, cfg->qe >= 0 ? "--qe" : "the database's default",
                       vecdb_metric_name(metric));
    return AE_OK;
}

/* First round, expansion, second round (qe->n > 0); search(k) is one of the
 * two searches below. */
typedef struct QeSearch {
    const LocalShards *ls;
    const SearchIvf *si;
    const KnnDb *dbs;
    int n_dbs;
    int D;            /* the same on every rank (a rank may own no shard) */
} QeSearch;

static int qe_round(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const QeSearch *s, int k,
                    KnnMetric metric, int nthreads, Err *err)
{
    if (s->ls) return search_ivf_knn(ctx, out, q, Q, s->ls, s->si, k, metric, nthreads, err);
    return search_knn(ctx, out, q, Q, s->dbs, s->n_dbs, k, metric, nthreads, err);
}

static int knn_qe(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const QeSearch *s, int k,
                  KnnMetric metric, const SearchQe *qe, int nthreads, Err *err)
{
    if (!qe || qe->n <= 0) return qe_round(ctx, out, q, Q, s, k, metric, nthreads, err);
    memset(out, 0, sizeof *out);
    TopK first;
    const int k1 = k > qe->n ? k : qe->n;
    if (qe_round(ctx, &first, q, Q, s, k1, metric, nthreads, err)) return err->code;
    float *qx = xmalloc((size_t)(Q > 0 ? Q : 1) * (size_t)s->D * sizeof *qx);
    memcpy(qx, q, (size_t)Q * (size_t)s->D * sizeof *qx);
    search_query_expand(ctx, qx, Q, s->D, &first, s->dbs, s->n_dbs, qe->n, qe->alpha);
    topk_free(&first);
    int rc = qe_round(ctx, out, qx, Q, s, k, metric, nthreads, err);
    free(qx);
    return rc;
}

int search_ivf_knn_qe(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, int D, const LocalShards *ls,
                      const SearchIvf *si, int k, KnnMetric metric, const SearchQe *qe, int nthreads, Err *err)
{
    const QeSearch s = { ls, si, ls->dbs, ls->n, D };
    return knn_qe(ctx, out, q, Q, &s, k, metric, qe, nthreads, err);
}

int search_knn_qe(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, int D, const KnnDb *dbs, int n_dbs,
                  int k, KnnMetric metric, const SearchQe *qe, int nthreads, Err *err)
{
    const QeSearch s = { NULL, NULL, dbs, n_dbs, D };
    return knn_qe(ctx, out, q, Q, &s, k, metric, qe, nthreads, err);
}

int search_ivf_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const LocalShards *ls,
                     const SearchIvf *si, float radius, KnnMetric metric, int nthreads, Err *err)
{
    if (si && si->nprobe > 0)
        return ivf_search_range(ctx, out, q, Q, ls->dbs, ls->n, &si->il, si->nprobe, radius, metric, nthreads, err);
    return search_range(ctx, out, q, Q, ls->dbs, ls->n, radius, metric, nthreads, err);
}

/* ---------------------------------------------------------------- recall */

/* Rank 0: the query vectors of eval --recall as given (.npy) or encoded
 * (--model) into *qv[*Q][D]. */
static int recall_queries_raw(float **qv, int64_t *Q, const ParCtx *ctx, const SearchConfig *cfg, const VecDb *db,
                              int nthreads, Err *err)
{
    *qv = NULL;
    *Q = 0;
    const int64_t cap = cfg->max_queries > 0 && cfg->max_queries < RECALL_MAX_QUERIES ? cfg->max_queries
                                                                                       : RECALL_MAX_QUERIES;
    if (!cfg->model[0]) {
        if (ctx->rank != 0) return AE_OK;
        NpyArray a;
        if (npy_read(cfg->queries, &a, err)) return err->code;
        if (a.dtype != NPY_F32 || a.ndim != 2 || a.shape[1] != db->D || a.shape[0] < 1) {
            npy_array_free(&a);
            return err_set(err, AE_ESHAPE, "%s must hold float32 query vectors of shape (Q, %d), the database's D "
                                           "(hint: numpy.save(f, x.astype('float32')), or give --model to encode "
                                           "images)", cfg->queries, db->D);
        }
        *Q = a.shape[0] < cap ? a.shape[0] : cap;
        *qv = xmalloc((size_t)*Q * (size_t)db->D * sizeof **qv);
        memcpy(*qv, a.data, (size_t)*Q * (size_t)db->D * sizeof **qv);
        npy_array_free(&a);
        return knn_check_vectors(*qv, *Q, db->D, cfg->queries, err);
    }
    Model m;
    uint32_t crc = 0;
    if (search_load_encoder(ctx, cfg->model, cfg->batch, nthreads, cfg->precision, &m, &crc, err)) return err->code;
    search_check_model(db, &m, crc, cfg->model, err);
    if (ctx->rank == 0 && !err->code) {
        ImageSet set;
        if (!imgset_open(&set, cfg->queries, err)) {
            if (set.C != m.spec.C || set.H != m.spec.H || set.W != m.spec.W)
                err_set(err, AE_ESHAPE, "%s has %dx%dx%d images (CxHxW) but the model takes %dx%dx%d", cfg->queries,
                        set.C, set.H, set.W, m.spec.C, m.spec.H, m.spec.W);
            else {
                *Q = set.n < cap ? set.n : cap;
                *qv = xmalloc((size_t)(*Q > 0 ? *Q : 1) * (size_t)db->D * sizeof **qv);
                const int64_t bad = search_encode(*qv, &m, &set, NULL, 0, *Q, &db->tta);
                if (imgset_read_error(&set, err) == AE_OK && bad >= 0)
                    err_set(err, AE_ENUMERIC, "the encoder gives NaN or Inf for a query of %s", cfg->queries);
            }
            imgset_free(&set);
        }
        /* A vectors file given with --model reads as rows of S*S pixels:
         * its values fail the image range check, or its rows make images of
         * another size than the model's.  Say what to do instead. */
        const size_t len = strlen(cfg->queries);
        if ((err->code == AE_EFORMAT || err->code == AE_ESHAPE) && len > 4 &&
            strcmp(cfg->queries + len - 4, ".npy") == 0)
            err_set(err, AE_EFORMAT, "%s (and if %s holds query vectors (Q, %d), drop --model: --model encodes "
                    "images)", err->msg, cfg->queries, db->D);
    }
    model_free(&m);
    return err->code;
}

/* Rank 0: those queries whitened when the database is, as query whitens its
 * queries (before the metric's normalisation), so that they are in the space
 * of the stored vectors and of the IVF index. */
static int recall_queries(float **qv, int64_t *Q, const ParCtx *ctx, const SearchConfig *cfg, const VecDb *db,
                          int nthreads, Err *err)
{
    if (recall_queries_raw(qv, Q, ctx, cfg, db, nthreads, err) || ctx->rank != 0) return err->code;
    return search_whiten_queries(db, *qv, *Q, err);
}

int search_ivf_recall(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    VecDb db;
    vecdb_read(&db, cfg->db, err);
    if (!err->code && db.ivf_nlist == 0)
        err_set(err, AE_EARG, "eval --recall: the database %s has no IVF index (hint: aesim-search train-ivf --db %s "
                              "--nlist N)", cfg->db, cfg->db);
    if (!err->code && db.count == 0) err_set(err, AE_EARG, "the database %s is empty", cfg->db);
    if (par_agree(ctx, err)) {
        vecdb_free(&db);
        return err->code;
    }
    const KnnMetric metric = cfg->metric == SEARCH_METRIC_DEFAULT ? db.metric : (KnnMetric)cfg->metric;
    if (metric == KNN_IP && db.metric != KNN_IP) {
        err_set(err, AE_EARG, "eval --recall --metric cosine: the IVF index of %s was built for l2 (lists of raw "
                              "vectors), which normalised queries cannot probe (hint: --metric l2, or index with "
                              "--metric cosine --ivf N)", cfg->db);
        vecdb_free(&db);
        return par_agree(ctx, err);
    }
    float *qv = NULL;
    int64_t Q = 0;
    LocalShards ls;
    memset(&ls, 0, sizeof ls);
    SearchIvf si;
    memset(&si, 0, sizeof si);
    TopK exact, approx;
    memset(&exact, 0, sizeof exact);
    memset(&approx, 0, sizeof approx);
    FILE *f = stdout;
    AtomicFile af;
    recall_queries(&qv, &Q, ctx, cfg, &db, nthreads, err);
    if (par_agree(ctx, err)) goto done;
    par_bcast(ctx, &Q, sizeof Q, 0);
    if (ctx->rank != 0) qv = xmalloc((size_t)(Q > 0 ? Q : 1) * (size_t)db.D * sizeof *qv);
    if (ctx->rank == 0 && metric == KNN_IP) knn_normalize(qv, Q, db.D);
    par_bcast(ctx, qv, (size_t)Q * (size_t)db.D * sizeof *qv, 0);
    const int k = (int64_t)cfg->k > db.count ? (int)db.count : cfg->k;
    if (search_shards_open(ctx, &ls, &db, metric, NULL, err)) goto done;
    SearchConfig c2 = *cfg;
    c2.nprobe = 0;
    if (search_ivf_open(ctx, &si, &c2, &db, &ls, err)) goto done;
    par_err0(ctx, "eval --recall: %lld queries, recall@%d | %s: %lld vectors, D = %d, nlist %d, %d shard(s) over %d "
                  "rank(s) | metric %s\n", (long long)Q, k, cfg->db, (long long)db.count, db.D, db.ivf_nlist,
             db.n_shards, ctx->size, vecdb_metric_name(metric));
    par_barrier(ctx);
    double t0 = timer_now();
    if (search_knn(ctx, &exact, qv, Q, ls.dbs, ls.n, k, metric, nthreads, err)) goto done;
    const double t_exact = timer_now() - t0;
    int probes[64], n_probes = 0;
    for (int p = 1; p < db.ivf_nlist && n_probes < 62; p *= 2) probes[n_probes++] = p;
    probes[n_probes++] = db.ivf_nlist;
    if (cfg->nprobe && cfg->nprobe < db.ivf_nlist) {
        int at = 0;
        while (at < n_probes && probes[at] < cfg->nprobe) at++;
        if (probes[at] != cfg->nprobe) {
            memmove(probes + at + 1, probes + at, (size_t)(n_probes - at) * sizeof *probes);
            probes[at] = cfg->nprobe;
            n_probes++;
        }
    }
    if (ctx->rank == 0 && cfg->out[0]) {
        if (atomic_open(&af, cfg->out, err) == AE_OK) f = af.f;
    }
    if (par_agree(ctx, err)) goto done;
    if (ctx->rank == 0) {
        if (cfg->json) fprintf(f, "{\"k\": %d, \"queries\": %lld, \"nlist\": %d, \"exact_qps\": %.6g, \"rows\": [", k,
                               (long long)Q, db.ivf_nlist, (double)Q / (t_exact > 0 ? t_exact : 1e-9));
        else fprintf(f, "nprobe\trecall@%d\tqueries_per_s\nexact\t1.0000\t%.1f\n", k,
                     (double)Q / (t_exact > 0 ? t_exact : 1e-9));
    }
    for (int p = 0; p < n_probes; p++) {
        si.nprobe = probes[p];
        par_barrier(ctx);
        t0 = timer_now();
        if (search_ivf_knn(ctx, &approx, qv, Q, &ls, &si, k, metric, nthreads, err)) goto done;
        const double t = timer_now() - t0;
        if (ctx->rank == 0) {
            /* recall@k: exact top-k ids found in the IVF top k (faiss's
             * "k-recall@k"). */
            int64_t hit = 0, want = 0;
            for (int64_t i = 0; i < Q; i++)
                for (int a = 0; a < k; a++) {
                    int64_t id = exact.ids[(size_t)i * (size_t)k + (size_t)a];
                    if (id == TOPK_NO_ID) continue;
                    want++;
                    for (int b = 0; b < k; b++)
                        if (approx.ids[(size_t)i * (size_t)k + (size_t)b] == id) {
                            hit++;
                            break;
                        }
                }
            double rec = want ? (double)hit / (double)want : 1.0, qps = (double)Q / (t > 0 ? t : 1e-9);
            if (cfg->json) fprintf(f, "%s{\"nprobe\": %d, \"recall\": %.6f, \"qps\": %.6g}", p ? ", " : "", probes[p],
                                   rec, qps);
            else fprintf(f, "%d\t%.4f\t%.1f\n", probes[p], rec, qps);
        }
        topk_free(&approx);
    }
    if (ctx->rank == 0) {
        if (cfg->json) fprintf(f, "]}\n");
        if (cfg->out[0]) {
            f = stdout;
            atomic_commit(&af, err);
        } else {
            fflush(stdout);
        }
    }
    par_agree(ctx, err);
done:
    if (f != stdout) atomic_abort(&af);
    free(qv);
    topk_free(&exact);
    topk_free(&approx);
    search_ivf_close(&si);
    search_shards_close(&ls);
    vecdb_free(&db);
    return err->code;
}
