/*
 * search_eval.c - aesim-search eval (declared in include/search/search.h):
 * precision@k by label of the aesim encoder's database, and of two
 * baselines built in memory from the database's own source images with the
 * same shard ownership (shard s -> rank s % P):
 *   pixels  the image scaled to [0,1] as a C*H*W vector;
 *   pca     the pixels projected on the D leading principal axes of the
 *           database images (pca.h; sums over all ranks, dsyevd on rank 0).
 * When the database is whitened (index --whiten), each baseline is
 * whitened the same way (fitted on its own database vectors), so the
 * comparison stays like for like; with --whiten-dim K a baseline keeps
 * min(K, its dimension) directions, reported per method.
 * Precision@k of a query = (neighbours with the query's label) / (neighbours
 * returned), over its k nearest database vectors; the query's own image is
 * left out when the queries are the database's source (leave-one-out).
 * Average precision@k (the retrieval literature's mAP@k, e.g. the hashing
 * benchmarks of Cao et al., HashNet, ICCV 2017): AP@k = sum over ranks j <= k
 * of rel_j * precision@j, divided by the number of relevant neighbours in
 * the top k (0 when there is none); mAP@k is its mean over queries.  1-NN
 * accuracy: the share of queries whose nearest neighbour has their label.
 * Rank 0 computes the table; MPI through par.h only.
 */
#include "search/search.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/fileio.h"
#include "data/imgset.h"
#include "search/pca.h"
#include "search/search_core.h"
#include "search/search_ivf.h"
#include "base/timer.h"
#include "search/vecdb.h"
#include "search/whiten.h"

/* Methods compared: the encoder and the two baselines. */
enum { METHOD_AESIM = 0, METHOD_PIXELS = 1, METHOD_PCA = 2, METHOD_COUNT = 3 };
static const char *const METHOD_NAME[METHOD_COUNT] = { "aesim", "pixels", "pca" };

/* Directions that whitening keeps of a method's dim-dimensional vectors on
 * this database: min(whiten_dim, dim) with --whiten-dim, all dim with
 * --whiten, 0 when the database is not whitened. */
static int whiten_kept(const VecDb *db, int dim)
{
    if (!db->whiten) return 0;
    return db->whiten_dim > 0 && db->whiten_dim < dim ? db->whiten_dim : dim;
}

typedef struct EvalState {
    int64_t Q;            /* queries used */
    int32_t *qlabel;      /* [Q] rank 0 */
    int64_t self_first;   /* id of query 0 when the queries are a database source, else -1 */
    int k, kk;            /* neighbours asked, and searched (k + 1 with self, at most count) */
    double *prec[METHOD_COUNT]; /* [Q] rank 0, NULL when the method did not run */
    double *ap[METHOD_COUNT];   /* [Q] rank 0: average precision@k */
    double *nn1[METHOD_COUNT];  /* [Q] rank 0: 1 if the nearest neighbour has the query's label */
    int dim[METHOD_COUNT];
    int white[METHOD_COUNT];  /* directions kept by whitening (min(K, dim) for --whiten-dim K), 0 = not whitened */
    double secs[METHOD_COUNT];
    SearchQe qe;          /* query expansion of every method (n = 0: none) */
} EvalState;

/* Rank 0: precision of every query from its result list. */
static int score(EvalState *es, int method, const TopK *res, SearchMeta *meta, Err *err)
{
    es->prec[method] = xcalloc((size_t)es->Q, sizeof(double));
    es->ap[method] = xcalloc((size_t)es->Q, sizeof(double));
    es->nn1[method] = xcalloc((size_t)es->Q, sizeof(double));
    for (int64_t i = 0; i < es->Q; i++) {
        int taken = 0, hits = 0;
        double ap = 0;
        for (int j = 0; j < res->k && taken < es->k; j++) {
            int64_t id = res->ids[(size_t)i * (size_t)res->k + (size_t)j];
            if (id == TOPK_NO_ID) break;
            if (es->self_first >= 0 && id == es->self_first + i) continue;
            int32_t label;
            if (search_meta_get(meta, id, &label, NULL, err)) return err->code;
            const int rel = label == es->qlabel[i];
            if (taken == 0) es->nn1[method][i] = rel;
            hits += rel;
            taken++;
            if (rel) ap += (double)hits / taken; /* precision at this rank */
        }
        es->prec[method][i] = taken ? (double)hits / taken : 0.0;
        es->ap[method][i] = hits ? ap / hits : 0.0;
    }
    return AE_OK;
}

/* Rank 0: the query source, its labels, and whether it is a database source. */
static int open_queries(ImageSet *qset, EvalState *es, const SearchConfig *cfg, const VecDb *db, Err *err)
{
    DatasetOptions opts;
    search_data_options(&opts, db->C, db->H, db->W, cfg->allow_gaps);
    if (imgset_open_opts(qset, cfg->queries, &opts, err)) return err->code;
    if (qset->warning[0]) fprintf(stderr, "eval: warning: --queries %s\n", qset->warning);
    if (qset->n_resized)
        fprintf(stderr, "eval: %lld of %lld query images resized to %dx%d (box filter; see --help, Images)\n",
                (long long)qset->n_resized, (long long)qset->n, db->H, db->W);
    if (qset->C != db->C || qset->H != db->H || qset->W != db->W)
        return err_set(err, AE_ESHAPE, "%s has %dx%dx%d images (CxHxW) but the database holds %dx%dx%d ones",
                       cfg->queries, qset->C, qset->H, qset->W, db->C, db->H, db->W);
    es->Q = cfg->max_queries > 0 && cfg->max_queries < qset->n ? cfg->max_queries : qset->n;
    es->qlabel = xmalloc((size_t)es->Q * sizeof *es->qlabel);
    for (int64_t i = 0; i < es->Q; i++)
        if ((es->qlabel[i] = imgset_label(qset, i)) < 0) {
            char name[IMGSET_NAME_BYTES];
            imgset_name(name, sizeof name, qset, i);
            return err_set(err, AE_EFORMAT, "query image %s has no label: eval needs labelled queries (hint: an IDX "
                                            "file with its labels-idx1 file next to it, or an npz with 'labels')",
                           name);
        }
    for (int s = 0; s < db->n_sources && es->self_first < 0; s++) {
        const VecDbSource *src = &db->sources[s];
        int same = src->n_items == qset->n_items;
        for (int j = 0; same && j < src->n_items; j++) {
            /* Item paths are absolute, or relative to the database folder
             * (vecdb_item_path); the query set's are real paths. */
            char item[VECDB_PATH_BYTES], real[PATH_MAX];
            same = vecdb_item_path(item, sizeof item, db, src->items[j].path, err) == AE_OK &&
                   strcmp(realpath(item, real) ? real : item, qset->paths[j]) == 0 &&
                   src->items[j].count == qset->first[j + 1] - qset->first[j];
            if (err->code) return err->code;
        }
        if (same) es->self_first = src->first_id;
    }
    return AE_OK;
}

/* Collective: the aesim row: encode the queries on rank 0, search the shards. */
static int eval_aesim(const ParCtx *ctx, EvalState *es, Model *m, const ImageSet *qset, const VecDb *db,
                      KnnMetric metric, SearchMeta *meta, const SearchConfig *cfg, int nthreads, Err *err)
{
    const double t0 = timer_now();
    float *qv = xmalloc((size_t)es->Q * (size_t)db->D * sizeof *qv);
    LocalShards ls;
    memset(&ls, 0, sizeof ls);
    TopK res;
    memset(&res, 0, sizeof res);
    SearchIvf si;
    memset(&si, 0, sizeof si);
    if (ctx->rank == 0) {
        const int64_t bad = search_encode(qv, m, qset, NULL, 0, es->Q, &db->tta);
        if (imgset_read_error(qset, err) == AE_OK) { /* else a damaged store block: agreed below */
            if (bad >= 0)
                err_set(err, AE_ENUMERIC, "the encoder gives NaN or Inf for a query (hint: the checkpoint holds NaN "
                        "weights)");
            else
                search_whiten_queries(db, qv, es->Q, err);
        }
    }
    if (par_agree(ctx, err)) goto done;
    if (metric == KNN_IP) knn_normalize(qv, es->Q, db->D);
    par_bcast(ctx, qv, (size_t)es->Q * (size_t)db->D * sizeof *qv, 0);
    if (search_shards_open(ctx, &ls, db, metric, NULL, err)) goto done;
    if (search_ivf_open(ctx, &si, cfg, db, &ls, err)) goto done;
    if (si.nprobe > 0)
        par_err0(ctx, "eval: aesim row searched with the IVF index, %d lists, nprobe %d (--exact: full scan)\n",
                 db->ivf_nlist, si.nprobe);
    if (search_ivf_knn_qe(ctx, &res, qv, es->Q, db->D, &ls, &si, es->kk, metric, &es->qe, nthreads, err)) goto done;
    if (ctx->rank == 0) score(es, METHOD_AESIM, &res, meta, err);
    par_agree(ctx, err);
    es->dim[METHOD_AESIM] = db->D;
    es->white[METHOD_AESIM] = whiten_kept(db, db->D);
    es->secs[METHOD_AESIM] = timer_now() - t0;
done:
    free(qv);
    topk_free(&res);
    search_ivf_close(&si);
    search_shards_close(&ls);
    return err->code;
}

/* The baselines' vectors of this rank's shards, one block per owned shard. */
typedef struct Owned {
    int n;
    KnnDb *dbs;   /* [n], x points into vec[i] */
    float **vec;  /* [n] [count][dim] */
} Owned;

static void owned_free(Owned *o)
{
    for (int i = 0; i < o->n; i++) free(o->vec[i]);
    free(o->vec);
    free(o->dbs);
    memset(o, 0, sizeof *o);
}

/* Pixel vectors of the owned shards' ids, from the opened sources. */
static void owned_pixels(Owned *o, const ParCtx *ctx, const VecDb *db, const ImageSet *sets)
{
    memset(o, 0, sizeof *o);
    const int Pd = db->C * db->H * db->W;
    o->dbs = xcalloc((size_t)(db->n_shards ? db->n_shards : 1), sizeof *o->dbs);
    o->vec = xcalloc((size_t)(db->n_shards ? db->n_shards : 1), sizeof *o->vec);
    for (int s = 0; s < db->n_shards; s++) {
        if (vecdb_shard_owner(s, ctx->size) != ctx->rank) continue;
        const VecDbShard *sh = &db->shards[s];
        float *x = xmalloc((size_t)(sh->count > 0 ? sh->count : 1) * (size_t)Pd * sizeof *x);
        for (int64_t j = 0; j < sh->count; j++) {
            int64_t id = sh->first_id + j;
            int src = search_source_of(db, id);
            imgset_get_f32(x + (size_t)j * (size_t)Pd, &sets[src], id - db->sources[src].first_id);
        }
        o->vec[o->n] = x;
        o->dbs[o->n] = (KnnDb){ .x = x, .M = sh->count, .D = Pd, .id_offset = sh->first_id };
        o->n++;
    }
}

/* Collective: PCA-whitens the owned baseline vectors and the queries
 * qv[Q][dim] (every rank holds the same qv) with a transform fitted on the
 * vectors of all ranks, as index --whiten does for the codes, so that the
 * baselines get the same treatment as a whitened database: the `keep` axes
 * of largest variance (the database's --whiten-dim; 0 = all). */
static int whiten_owned(const ParCtx *ctx, Owned *o, float *qv, int64_t Q, int dim, int keep, Err *err)
{
    PcaStats st;
    pca_stats_init(&st, dim);
    for (int i = 0; i < o->n; i++) pca_stats_add(&st, o->vec[i], o->dbs[i].M);
    par_allreduce_sum_f64(ctx, &st.n, 1);
    par_allreduce_sum_f64(ctx, st.sum, (size_t)dim);
    par_allreduce_sum_f64(ctx, st.sxx, (size_t)dim * (size_t)dim);
    Whiten w;
    memset(&w, 0, sizeof w);
    if (ctx->rank == 0) whiten_fit(&w, &st, keep, err);
    pca_stats_free(&st);
    if (par_agree(ctx, err)) return err->code;
    if (ctx->rank != 0) {
        w.D = dim;
        w.mean = xmalloc((size_t)dim * sizeof *w.mean);
        w.mat = xmalloc((size_t)dim * dim * sizeof *w.mat);
    }
    par_bcast(ctx, w.mean, (size_t)dim * sizeof *w.mean, 0);
    par_bcast(ctx, w.mat, (size_t)dim * dim * sizeof *w.mat, 0);
    for (int i = 0; i < o->n; i++) whiten_apply(&w, o->vec[i], o->dbs[i].M);
    whiten_apply(&w, qv, Q);
    whiten_free(&w);
    return AE_OK;
}

/* Collective: search the baseline vectors (whitened when the database is,
 * to min(whiten_dim, dim) directions; normalised for cosine) and score. */
static int eval_vectors(const ParCtx *ctx, EvalState *es, int method, Owned *o, float *qv, int dim,
                        KnnMetric metric, const VecDb *db, SearchMeta *meta, int nthreads, double t0, Err *err)
{
    if (db->whiten) {
        const int keep = whiten_kept(db, dim);
        if (db->whiten_dim > dim)
            par_err0(ctx, "eval: the %s baseline has D = %d < the database's whiten_dim %d: whitened in all %d "
                          "directions\n", METHOD_NAME[method], dim, db->whiten_dim, dim);
        if (whiten_owned(ctx, o, qv, es->Q, dim, keep, err)) return err->code;
        es->white[method] = keep;
    }
    if (metric == KNN_IP) {
        knn_normalize(qv, es->Q, dim);
        for (int i = 0; i < o->n; i++) knn_normalize(o->vec[i], o->dbs[i].M, dim);
    }
    TopK res;
    if (search_knn_qe(ctx, &res, qv, es->Q, dim, o->dbs, o->n, es->kk, metric, &es->qe, nthreads, err))
        return err->code;
    if (ctx->rank == 0) score(es, method, &res, meta, err);
    topk_free(&res);
    es->dim[method] = dim;
    es->secs[method] = timer_now() - t0;
    return par_agree(ctx, err);
}

/* Collective: fits PCA on the owned pixel vectors of all ranks, then
 * replaces each owned block and the queries by their projections. */
static int pca_transform(const ParCtx *ctx, Owned *o, float **qv, int64_t Q, int Pd, int D, Err *err)
{
    PcaStats st;
    pca_stats_init(&st, Pd);
    for (int i = 0; i < o->n; i++) pca_stats_add(&st, o->vec[i], o->dbs[i].M);
    par_allreduce_sum_f64(ctx, &st.n, 1);
    par_allreduce_sum_f64(ctx, st.sum, (size_t)Pd);
    par_allreduce_sum_f64(ctx, st.sxx, (size_t)Pd * (size_t)Pd);
    Pca pca;
    memset(&pca, 0, sizeof pca);
    if (ctx->rank == 0) pca_fit(&pca, &st, D, err);
    pca_stats_free(&st);
    if (par_agree(ctx, err)) return err->code;
    if (ctx->rank != 0) {
        pca.P = Pd;
        pca.D = D;
        pca.mean = xmalloc((size_t)Pd * sizeof *pca.mean);
        pca.axes = xmalloc((size_t)D * (size_t)Pd * sizeof *pca.axes);
        pca.var = xmalloc((size_t)D * sizeof *pca.var);
    }
    par_bcast(ctx, pca.mean, (size_t)Pd * sizeof *pca.mean, 0);
    par_bcast(ctx, pca.axes, (size_t)D * (size_t)Pd * sizeof *pca.axes, 0);
    for (int i = 0; i < o->n; i++) {
        float *y = xmalloc((size_t)(o->dbs[i].M > 0 ? o->dbs[i].M : 1) * (size_t)D * sizeof *y);
        pca_project(y, &pca, o->vec[i], o->dbs[i].M);
        free(o->vec[i]);
        o->vec[i] = y;
        o->dbs[i].x = y;
        o->dbs[i].D = D;
    }
    float *qy = xmalloc((size_t)Q * (size_t)D * sizeof *qy);
    pca_project(qy, &pca, *qv, Q);
    free(*qv);
    *qv = qy;
    pca_free(&pca);
    return AE_OK;
}

/* Collective: the pixels and/or PCA rows. */
static int eval_baselines(const ParCtx *ctx, EvalState *es, const SearchConfig *cfg, const ImageSet *qset,
                          const VecDb *db, KnnMetric metric, SearchMeta *meta, int nthreads, Err *err)
{
    const int Pd = db->C * db->H * db->W;
    ImageSet *sets = xcalloc((size_t)(db->n_sources ? db->n_sources : 1), sizeof *sets);
    Owned o;
    memset(&o, 0, sizeof o);
    float *qv = NULL;
    for (int s = 0; s < db->n_sources && err->code == AE_OK; s++) search_open_source(&sets[s], db, s, err);
    if (par_agree(ctx, err)) goto done;
    double t0 = timer_now();
    qv = xmalloc((size_t)es->Q * (size_t)Pd * sizeof *qv);
    if (ctx->rank == 0)
        for (int64_t i = 0; i < es->Q; i++) imgset_get_f32(qv + (size_t)i * (size_t)Pd, qset, i);
    par_bcast(ctx, qv, (size_t)es->Q * (size_t)Pd * sizeof *qv, 0);
    if (cfg->baselines & SEARCH_BASE_PIXELS) {
        owned_pixels(&o, ctx, db, sets);
        float *q = xmalloc((size_t)es->Q * (size_t)Pd * sizeof *q);
        memcpy(q, qv, (size_t)es->Q * (size_t)Pd * sizeof *q);
        int rc = eval_vectors(ctx, es, METHOD_PIXELS, &o, q, Pd, metric, db, meta, nthreads, t0, err);
        free(q);
        owned_free(&o);
        if (rc) goto done;
    }
    if (cfg->baselines & SEARCH_BASE_PCA) {
        t0 = timer_now();
        const int D = db->D < Pd ? db->D : Pd;
        owned_pixels(&o, ctx, db, sets);
        if (pca_transform(ctx, &o, &qv, es->Q, Pd, D, err)) goto done;
        eval_vectors(ctx, es, METHOD_PCA, &o, qv, D, metric, db, meta, nthreads, t0, err);
    }
done:
    owned_free(&o);
    free(qv);
    for (int s = 0; s < db->n_sources; s++) imgset_free(&sets[s]);
    free(sets);
    return err->code;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static double mean_of(const double *v, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    return n ? s / (double)n : 0.0;
}

/* Rank 0: eval --json: one object with, per method, D, precision@k, mAP@k,
 * 1-NN accuracy, seconds, precision@k per label and (whitened database) the
 * directions kept, "whiten_dim". */
static int print_json(FILE *f, const EvalState *es, const SearchConfig *cfg, const VecDb *db, KnnMetric metric)
{
    json_t *methods = json_object();
    for (int m = 0; m < METHOD_COUNT; m++) {
        if (!es->prec[m]) continue;
        json_t *per = json_object();
        for (int64_t i = 0; i < es->Q; i++) {
            char key[16];
            snprintf(key, sizeof key, "%d", (int)es->qlabel[i]);
            json_t *acc = json_object_get(per, key);
            if (!acc) {
                acc = json_pack("{s:f,s:I}", "sum", 0.0, "queries", (json_int_t)0);
                json_object_set_new(per, key, acc);
            }
            json_object_set_new(acc, "sum", json_real(json_real_value(json_object_get(acc, "sum")) + es->prec[m][i]));
            json_object_set_new(acc, "queries", json_integer(json_integer_value(json_object_get(acc, "queries")) + 1));
        }
        const char *key;
        json_t *acc;
        json_object_foreach(per, key, acc) {
            double n = (double)json_integer_value(json_object_get(acc, "queries"));
            json_object_set_new(acc, "precision", json_real(json_real_value(json_object_get(acc, "sum")) / n));
            json_object_del(acc, "sum");
        }
        json_t *one = json_pack("{s:i,s:f,s:f,s:f,s:f,s:o}", "dim", es->dim[m], "precision",
                                mean_of(es->prec[m], es->Q), "map", mean_of(es->ap[m], es->Q), "nn1_accuracy",
                                mean_of(es->nn1[m], es->Q), "seconds", es->secs[m], "per_label", per);
        if (db->whiten) CHECK(json_object_set_new(one, "whiten_dim", json_integer(es->white[m])) == 0);
        json_object_set_new(methods, METHOD_NAME[m], one);
    }
    json_t *root = json_pack("{s:i,s:I,s:s,s:s,s:I,s:s,s:b,s:b,s:o}", "k", es->k, "queries", (json_int_t)es->Q,
                             "query_source", cfg->queries, "db", db->dir, "db_count", (json_int_t)db->count, "metric",
                             vecdb_metric_name(metric), "whitened", db->whiten, "leave_one_out", es->self_first >= 0,
                             "methods", methods);
    CHECK(root);
    if (db->whiten)
        CHECK(json_object_set_new(root, "whiten_dim", json_integer(db->whiten_dim > 0 ? db->whiten_dim : db->D)) == 0);
    char tta[64];
    CHECK(json_object_set_new(root, "tta", json_string(vecdb_tta_name(&db->tta, tta, sizeof tta))) == 0);
    CHECK(json_object_set_new(root, "query_expansion", es->qe.n > 0 ? json_pack("{s:i,s:f}", "n", es->qe.n, "alpha",
                                                                                es->qe.alpha) : json_null()) == 0);
    int rc = json_dumpf(root, f, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
    fputc('\n', f);
    json_decref(root);
    return rc;
}

/* Rank 0: the table, per label and the mean over all queries (or JSON). */
static int print_table(const EvalState *es, const SearchConfig *cfg, const VecDb *db, KnnMetric metric, Err *err)
{
    const char *const *NAME = METHOD_NAME;
    AtomicFile af;
    FILE *f = stdout;
    if (cfg->out[0]) {
        if (atomic_open(&af, cfg->out, err)) return err->code;
        f = af.f;
    }
    if (cfg->json) {
        if (print_json(f, es, cfg, db, metric)) {
            if (cfg->out[0]) atomic_abort(&af);
            return err_set(err, AE_EIO, "eval --json: cannot write the results to %s", cfg->out[0] ? cfg->out : "stdout");
        }
        if (cfg->out[0]) return atomic_commit(&af, err);
        fflush(stdout);
        return AE_OK;
    }
    char tta[64], views[96] = "", qe[96] = "";
    if (vecdb_tta_views(&db->tta) > 1)
        snprintf(views, sizeof views, " | test-time views %s", vecdb_tta_name(&db->tta, tta, sizeof tta));
    char white[160] = "";
    if (db->whiten && db->whiten_dim > 0) {
        int n = snprintf(white, sizeof white, " | whitened, %d directions (baselines too", db->whiten_dim);
        for (int m = 0; m < METHOD_COUNT; m++) /* a baseline of fewer dimensions keeps all of its own */
            if (es->prec[m] && es->white[m] < db->whiten_dim)
                n += snprintf(white + n, sizeof white - (size_t)n, ", %s all %d", NAME[m], es->white[m]);
        snprintf(white + n, sizeof white - (size_t)n, ")");
    } else if (db->whiten)
        snprintf(white, sizeof white, " | whitened (baselines too)");
    if (es->qe.n > 0)
        snprintf(qe, sizeof qe, " | query expansion n = %d, alpha = %g (baselines too)", es->qe.n, es->qe.alpha);
    fprintf(f, "precision@%d by label | %lld queries from %s | database %s: %lld vectors | metric %s%s%s%s%s\n",
            es->k, (long long)es->Q, cfg->queries, db->dir, (long long)db->count, vecdb_metric_name(metric),
            white, views, qe,
            es->self_first >= 0 ? " | leave-one-out (queries are the database's source)" : "");
    fprintf(f, "%-8s %8s", "label", "queries");
    for (int m = 0; m < METHOD_COUNT; m++) {
        if (!es->prec[m]) continue;
        char head[32];
        snprintf(head, sizeof head, "%s(D=%d)", NAME[m], es->dim[m]);
        fprintf(f, " %14s", head);
    }
    fputc('\n', f);
    int32_t *labels = xmalloc((size_t)es->Q * sizeof *labels);
    memcpy(labels, es->qlabel, (size_t)es->Q * sizeof *labels);
    qsort(labels, (size_t)es->Q, sizeof *labels, cmp_i32);
    for (int64_t a = 0; a <= es->Q; a++) {
        /* Rows: each distinct label, then (a == Q) the mean of all. */
        if (a < es->Q && a > 0 && labels[a] == labels[a - 1]) continue;
        int64_t n = 0;
        double sum[METHOD_COUNT] = { 0 };
        for (int64_t i = 0; i < es->Q; i++) {
            if (a < es->Q && es->qlabel[i] != labels[a]) continue;
            n++;
            for (int m = 0; m < METHOD_COUNT; m++)
                if (es->prec[m]) sum[m] += es->prec[m][i];
        }
        if (a < es->Q) fprintf(f, "%-8d %8lld", (int)labels[a], (long long)n);
        else fprintf(f, "%-8s %8lld", "mean", (long long)n);
        for (int m = 0; m < METHOD_COUNT; m++)
            if (es->prec[m]) fprintf(f, " %14.*f", SEARCH_PRECISION_DECIMALS, n ? sum[m] / (double)n : 0.0);
        fputc('\n', f);
    }
    fprintf(f, "%-17s", "seconds");
    for (int m = 0; m < METHOD_COUNT; m++)
        if (es->prec[m]) fprintf(f, " %14.1f", es->secs[m]);
    fputc('\n', f);
    char head[32];
    snprintf(head, sizeof head, "mAP@%d", es->k);
    fprintf(f, "%-17s", head);
    for (int m = 0; m < METHOD_COUNT; m++)
        if (es->prec[m]) fprintf(f, " %14.*f", SEARCH_PRECISION_DECIMALS, mean_of(es->ap[m], es->Q));
    fputc('\n', f);
    fprintf(f, "%-17s", "1-NN accuracy");
    for (int m = 0; m < METHOD_COUNT; m++)
        if (es->prec[m]) fprintf(f, " %14.*f", SEARCH_PRECISION_DECIMALS, mean_of(es->nn1[m], es->Q));
    fputc('\n', f);
    free(labels);
    if (cfg->out[0]) return atomic_commit(&af, err);
    fflush(stdout);
    return AE_OK;
}

int search_eval(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    if (cfg->recall) return search_ivf_recall(ctx, cfg, nthreads, err);
    VecDb db;
    vecdb_read(&db, cfg->db, err);
    if (par_agree(ctx, err)) return err->code;
    const KnnMetric metric = cfg->metric == SEARCH_METRIC_DEFAULT ? db.metric : (KnnMetric)cfg->metric;
    EvalState es;
    memset(&es, 0, sizeof es);
    es.self_first = -1;
    es.k = cfg->k;
    Model m;
    uint32_t crc = 0;
    ImageSet qset;
    memset(&qset, 0, sizeof qset);
    SearchMeta meta;
    search_meta_init(&meta, &db);
    if (search_load_encoder(ctx, cfg->model, cfg->batch, nthreads, cfg->precision, &m, &crc, err)) goto done;
    search_check_model(&db, &m, crc, cfg->model, err);
    if (par_agree(ctx, err)) goto done;
    if (ctx->rank == 0) open_queries(&qset, &es, cfg, &db, err);
    if (!err->code && db.count == 0) err_set(err, AE_EARG, "the database %s is empty", cfg->db);
    if (par_agree(ctx, err)) goto done;
    par_bcast(ctx, &es.Q, sizeof es.Q, 0);
    par_bcast(ctx, &es.self_first, sizeof es.self_first, 0);
    int64_t kk = (int64_t)es.k + (es.self_first >= 0);
    es.kk = (int)(kk < db.count ? kk : db.count);
    char tta[64];
    search_qe_resolve(&es.qe, cfg, &db, metric, err);
    if (par_agree(ctx, err)) goto done;
    par_err0(ctx, "eval: %lld queries, precision@%d | %s: %lld vectors, D = %d, %d shard(s) over %d rank(s) | metric "
                  "%s | test-time augmentation %s\n", (long long)es.Q, es.k, cfg->db, (long long)db.count, db.D,
             db.n_shards, ctx->size, vecdb_metric_name(metric), vecdb_tta_name(&db.tta, tta, sizeof tta));
    if (es.qe.n > 0)
        par_err0(ctx, "eval: alpha query expansion, n = %d, alpha = %g, every method (--qe 0: off)\n", es.qe.n,
                 es.qe.alpha);
    if (eval_aesim(ctx, &es, &m, &qset, &db, metric, &meta, cfg, nthreads, err)) goto done;
    if (cfg->baselines && eval_baselines(ctx, &es, cfg, &qset, &db, metric, &meta, nthreads, err)) goto done;
    if (ctx->rank == 0) print_table(&es, cfg, &db, metric, err);
    par_agree(ctx, err);
done:
    for (int i = 0; i < METHOD_COUNT; i++) {
        free(es.prec[i]);
        free(es.ap[i]);
        free(es.nn1[i]);
    }
    free(es.qlabel);
    imgset_free(&qset);
    search_meta_free(&meta);
    model_free(&m);
    vecdb_free(&db);
    return err->code;
}
