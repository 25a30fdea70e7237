/*
 * serve.c - the MPI side of aesim-search serve (see include/serve.h): the
 * loop of rank 0 (micro-batches from the ServeQueue, commands to the other
 * ranks, answers), the loop of the other ranks (wait for a command, search
 * or map a new shard), live additions and the clean stop.
 * Only rank 0's main thread calls MPI (through par.h); the HTTP threads
 * touch only the queue and the metrics.  Searching reuses search_core.h:
 * the same encoder, shard preparation, search_knn and top-k trimming as
 * `aesim-search query`.
 */
#include "search/serve.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/check.h"
#include "base/fileio.h"
#include "base/mapguard.h"
#include "search/http_server.h"
#include "data/imgset.h"
#include "data/npy.h"
#include "data/png_io.h"
#include "search/search_core.h"
#include "search/search_ivf.h"
#include "search/serve_metrics.h"
#include "search/serve_queue.h"
#include "base/signals.h"
#include "base/timer.h"
#include "search/vecdb.h"
#include "search/whiten.h"

/* Commands of rank 0 to every rank. */
enum { CMD_SEARCH = 1, CMD_ADD = 2, CMD_PING = 3, CMD_STOP = 4 };

typedef struct ServeCmd {
    int32_t op;
    int32_t k;         /* SEARCH: neighbours; STOP: 1 if stopped by a signal */
    int32_t n_labels;  /* SEARCH: label filters that follow */
    int32_t shard;     /* ADD: the new shard */
    int64_t n;         /* SEARCH: queries that follow; ADD: vectors of the shard */
} ServeCmd;

typedef struct Server {
    const ParCtx *ctx;
    const SearchConfig *cfg;
    int nthreads;
    VecDb db;
    KnnMetric metric;
    Model m;
    LocalShards ls;
    SearchIvf si;        /* IVF lists of this rank's shards when the database has an index (nprobe > 0) */
    SearchQe qe;         /* query expansion of every search (--qe, else the database's) */
    /* rank 0 only */
    Whiten w;            /* the database's whitening (whiten.h) when it has one: w.D > 0 */
    SearchMeta meta;
    ClassNames names;    /* --class-names FILE; n = 0 when not given (search_class_name) */
    VecShard *vmaps;     /* [n_vmaps] vectors of any shard, mapped for {"id"} queries */
    int n_vmaps;
    ImageSet *sets;      /* [n_sets] sources for GET /images: open when .n > 0 */
    int64_t *set_used;   /* [n_sets] when each was last read (a counter): the least recent is closed first */
    int n_sets, n_open;  /* n_open <= SERVE_OPEN_SOURCES */
    int64_t reads;
    int temps_checked;   /* stale temporary files removed (at the first addition) */
    int32_t *labels;     /* [n_labels] distinct labels of the database, sorted */
    int n_labels;
    ServeQueue q;
    ServeMetrics mx;
    HttpServer *http;
    SignalGuard guard;
    char info[512];      /* static part of /healthz (the HTTP server keeps a pointer) */
} Server;

static void sleep_us(long us)
{
    struct timespec t = { us / 1000000L, (us % 1000000L) * 1000L };
    nanosleep(&t, NULL);
}

/* Rank 0 sends a command; the others receive it (polling, no spinning). */
static void cmd_bcast(const ParCtx *ctx, ServeCmd *c)
{
    ParRequest r = { 0 };
    par_ibcast(ctx, c, sizeof *c, 0, &r);
    if (ctx->rank == 0) {
        par_wait_all(&r, 1);
        return;
    }
    while (par_test_all(&r, 1) == 0) sleep_us(SERVE_POLL_US);
}

/* ------------------------------------------------------------ labels */

static int label_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static int has_label(const Server *s, int32_t l)
{
    return s->n_labels > 0 && bsearch(&l, s->labels, (size_t)s->n_labels, sizeof l, label_cmp) != NULL;
}

/* Adds labels[n] to the sorted distinct set. */
static void add_labels(Server *s, const int32_t *labels, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        if (has_label(s, labels[j])) continue;
        int32_t *grown = xmalloc((size_t)(s->n_labels + 1) * sizeof *grown);
        if (s->n_labels) memcpy(grown, s->labels, (size_t)s->n_labels * sizeof *grown);
        grown[s->n_labels++] = labels[j];
        free(s->labels);
        s->labels = grown;
        qsort(s->labels, (size_t)s->n_labels, sizeof *s->labels, label_cmp);
    }
}

/* Rank 0: every shard's labels into the set. */
static int scan_labels(Server *s, int from_shard, Err *err)
{
    for (int sh = from_shard; sh < s->db.n_shards; sh++) {
        VecShard v;
        if (vecdb_shard_map(&v, &s->db, sh, VECDB_MAP_LABELS, err)) return err->code;
        add_labels(s, v.labels, v.count);
        vecdb_shard_unmap(&v);
    }
    return AE_OK;
}

/* ------------------------------------------------------------ metrics */

static void publish_vectors(Server *s)
{
    int64_t *per = xcalloc((size_t)s->ctx->size, sizeof *per);
    for (int sh = 0; sh < s->db.n_shards; sh++) per[vecdb_shard_owner(sh, s->ctx->size)] += s->db.shards[sh].count;
    serve_metrics_vectors(&s->mx, per, s->db.count, s->db.n_shards);
    free(per);
}

/* ------------------------------------------------------------ search */

/* Searches of one batch with the same k and filter. */
typedef struct Group {
    int k;
    int n_labels;
    int32_t labels[API_MAX_LABELS]; /* sorted */
    int n;
    int64_t *rows;                  /* [n] rows of the batch's vectors */
    ServeJob **jobs;                /* [n] */
} Group;

/* Every rank: one search command's vectors and filter in, results out
 * (rank 0: *top holds Q x k).  Returns the agreed status. */
static int run_search(Server *s, const ServeCmd *c, int32_t *labels, float *vec, TopK *top, Err *err)
{
    const ParCtx *ctx = s->ctx;
    par_bcast(ctx, labels, (size_t)c->n_labels * sizeof *labels, 0);
    par_bcast(ctx, vec, (size_t)c->n * (size_t)s->db.D * sizeof *vec, 0);
    SearchFilter f = { labels, c->n_labels, NULL, 0, 0 };
    search_shards_set_filter(&s->ls, &f);
    return search_ivf_knn_qe(ctx, top, vec, c->n, s->db.D, &s->ls, &s->si, c->k, s->metric, &s->qe, s->nthreads,
                             err);
}

/* Rank 0: the answer of one job from row i of top. */
static void answer_search(Server *s, ServeJob *job, const TopK *top, int64_t i, double t0)
{
    TopK row = { .Q = 1, .k = top->k, .order = top->order, .dist = top->dist + (size_t)i * (size_t)top->k,
                 .ids = top->ids + (size_t)i * (size_t)top->k };
    KnnRange r;
    memset(&r, 0, sizeof r);
    search_topk_to_range(&r, &row, s->metric, job->params.has_radius, job->params.radius);
    const int64_t n = r.lims[1];
    ApiResult *res = xcalloc((size_t)(n > 0 ? n : 1), sizeof *res);
    Err err;
    err_clear(&err);
    for (int64_t h = 0; h < n && err.code == AE_OK; h++) {
        res[h].id = r.ids[h];
        res[h].dist = r.dist[h];
        search_meta_get(&s->meta, r.ids[h], &res[h].label, &res[h].source, &err);
        res[h].cls = search_class_name(&s->names, &s->db, r.ids[h], res[h].label);
    }
    if (err.code) {
        serve_job_fail(&s->q, job, 500, err.msg);
    } else {
        char *body = api_results_json((timer_now() - t0) * 1e3, s->metric, job->params.k, res, n);
        serve_job_finish(&s->q, job, 200, body, strlen(body), "application/json");
    }
    free(res);
    knn_range_free(&r);
}

/* Rank 0: the stored vector of id (for {"id": N}). */
static int vector_of(Server *s, int64_t id, float *out, Err *err)
{
    int sh = vecdb_shard_of(&s->db, id);
    if (sh < 0)
        return err_set(err, API_NOT_FOUND, "id %lld is not in the database (ids 0..%lld)", (long long)id,
                       (long long)s->db.count - 1);
    if (sh >= s->n_vmaps) {
        VecShard *grown = xcalloc((size_t)s->db.n_shards, sizeof *grown);
        if (s->n_vmaps) memcpy(grown, s->vmaps, (size_t)s->n_vmaps * sizeof *grown);
        free(s->vmaps);
        s->vmaps = grown;
        s->n_vmaps = s->db.n_shards;
    }
    VecShard *v = &s->vmaps[sh];
    if (!v->map[VECDB_VECTORS] && vecdb_shard_map(v, &s->db, sh, VECDB_MAP_VECTORS, err)) {
        /* The HTTP status (500: the database is damaged, not the request). */
        err->code = 500;
        return 500;
    }
    memcpy(out, v->x + (size_t)(id - v->first_id) * (size_t)s->db.D, (size_t)s->db.D * sizeof *out);
    return AE_OK;
}

static int group_cmp_labels(const ApiParams *p, const Group *g)
{
    if (p->n_labels != g->n_labels) return 1;
    int32_t sorted[API_MAX_LABELS];
    memcpy(sorted, p->labels, (size_t)p->n_labels * sizeof *sorted);
    qsort(sorted, (size_t)p->n_labels, sizeof *sorted, label_cmp);
    return memcmp(sorted, g->labels, (size_t)p->n_labels * sizeof *sorted) != 0;
}

/* Rank 0: the searches of one batch. */
static int serve_searches(Server *s, ServeJob **jobs, int n, double t0, Err *err)
{
    const int D = s->db.D;
    const int C = s->db.C, H = s->db.H, W = s->db.W;
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    float *vec = xmalloc((size_t)n * (size_t)D * sizeof *vec);
    float *imgs = xmalloc((size_t)n * chw * sizeof *imgs);
    int64_t *img_row = xmalloc((size_t)n * sizeof *img_row);
    int *ok = xcalloc((size_t)n, sizeof *ok);
    int n_img = 0;
    for (int i = 0; i < n; i++) {
        ServeJob *j = jobs[i];
        Err e;
        err_clear(&e);
        for (int l = 0; l < j->params.n_labels && !e.code; l++)
            if (!has_label(s, j->params.labels[l]))
                err_set(&e, API_BAD_REQUEST, "label %d is not in the database (GET /labels lists them)",
                        (int)j->params.labels[l]);
        if (!e.code && j->query.kind == API_QUERY_ID) vector_of(s, j->query.id, vec + (size_t)i * (size_t)D, &e);
        if (!e.code && j->query.kind == API_QUERY_VECTOR) {
            memcpy(vec + (size_t)i * (size_t)D, j->query.vec, (size_t)D * sizeof *vec);
            if (s->w.D) whiten_apply(&s->w, vec + (size_t)i * (size_t)D, 1); /* as query --queries */
        }
        if (!e.code && j->query.kind == API_QUERY_IMAGE) {
            memcpy(imgs + (size_t)n_img * chw, j->query.input, chw * sizeof *imgs);
            img_row[n_img++] = i;
        }
        if (e.code) serve_job_fail(&s->q, j, e.code, e.msg);
        else ok[i] = 1;
    }
    /* One encoder call for every image of the batch. */
    if (n_img > 0) {
        float *z = xmalloc((size_t)n_img * (size_t)D * sizeof *z);
        search_encode(z, &s->m, NULL, imgs, 0, n_img, &s->db.tta);
        if (s->w.D) whiten_apply(&s->w, z, n_img);
        for (int t = 0; t < n_img; t++) {
            int64_t i = img_row[t];
            Err e;
            err_clear(&e);
            if (knn_check_vectors(z + (size_t)t * (size_t)D, 1, D, "the encoded image", &e)) {
                serve_job_fail(&s->q, jobs[i], 500, e.msg);
                ok[i] = 0;
            }
            memcpy(vec + (size_t)i * (size_t)D, z + (size_t)t * (size_t)D, (size_t)D * sizeof *vec);
        }
        free(z);
    }
    if (s->metric == KNN_IP) knn_normalize(vec, n, D);
    /* Groups of equal (k, labels), in order of first arrival. */
    Group *groups = xcalloc((size_t)n, sizeof *groups);
    int n_groups = 0;
    for (int i = 0; i < n; i++) {
        if (!ok[i]) continue;
        const ApiParams *p = &jobs[i]->params;
        int g = 0;
        while (g < n_groups && (groups[g].k != p->k || group_cmp_labels(p, &groups[g]))) g++;
        if (g == n_groups) {
            Group *G = &groups[n_groups++];
            G->k = p->k;
            G->n_labels = p->n_labels;
            memcpy(G->labels, p->labels, (size_t)p->n_labels * sizeof *G->labels);
            qsort(G->labels, (size_t)G->n_labels, sizeof *G->labels, label_cmp);
            G->rows = xmalloc((size_t)n * sizeof *G->rows);
            G->jobs = xmalloc((size_t)n * sizeof *G->jobs);
        }
        groups[g].rows[groups[g].n] = i;
        groups[g].jobs[groups[g].n++] = jobs[i];
    }
    int rc;
    float *gv = xmalloc((size_t)n * (size_t)D * sizeof *gv);
    for (int g = 0; g < n_groups; g++) {
        Group *G = &groups[g];
        for (int t = 0; t < G->n; t++)
            memcpy(gv + (size_t)t * (size_t)D, vec + (size_t)G->rows[t] * (size_t)D, (size_t)D * sizeof *gv);
        /* k beyond the database returns all of it, as in query. */
        int k = G->k;
        if ((int64_t)k > s->db.count) k = s->db.count > 0 ? (int)s->db.count : 1;
        ServeCmd c = { .op = CMD_SEARCH, .k = k, .n_labels = G->n_labels, .shard = 0, .n = G->n };
        cmd_bcast(s->ctx, &c);
        TopK top;
        /* A failed search (agreed by every rank) fails its requests only. */
        rc = run_search(s, &c, G->labels, gv, &top, err);
        for (int t = 0; t < G->n; t++) {
            if (rc) serve_job_fail(&s->q, G->jobs[t], 500, err->msg);
            else answer_search(s, G->jobs[t], &top, t, t0);
        }
        topk_free(&top);
        err_clear(err);
        rc = AE_OK;
    }
    for (int g = 0; g < n_groups; g++) {
        free(groups[g].rows);
        free(groups[g].jobs);
    }
    free(groups);
    free(gv);
    free(vec);
    free(imgs);
    free(img_row);
    free(ok);
    return AE_OK;
}

/* ------------------------------------------------------------ additions */

/* Rank 0: forgets the last source and shard of db (an addition whose
 * manifest could not be written). */
static void db_drop_last(VecDb *db)
{
    VecDbSource *src = &db->sources[db->n_sources - 1];
    for (int j = 0; j < src->n_items; j++) free(src->items[j].path);
    free(src->items);
    free(src->spec);
    db->n_sources--;
    db->count -= db->shards[db->n_shards - 1].count;
    db->n_shards--;
}

/* Rank 0: writes the images of jobs[n] as a new source and shard and
 * commits the manifest.  *ids_out = first new id. */
static int write_addition(Server *s, ServeJob **jobs, int n, int64_t *first_id, Err *err)
{
    const int C = s->db.C, H = s->db.H, W = s->db.W, D = s->db.D, shard = s->db.n_shards;
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    uint8_t *pix = xmalloc((size_t)n * chw);
    int32_t *labels = xmalloc((size_t)n * sizeof *labels);
    for (int i = 0; i < n; i++) {
        memcpy(pix + (size_t)i * chw, jobs[i]->query.pix, chw);
        labels[i] = jobs[i]->params.n_labels ? jobs[i]->params.labels[0] : -1;
    }
    /* Recorded relative to the database folder (vecdb_item_path), so that
     * the folder keeps its added images when it is moved or copied. */
    char rel[32], path[VECDB_PATH_BYTES + 32];
    snprintf(rel, sizeof rel, "added-%05d.npz", shard);
    snprintf(path, sizeof path, "%s/%s", s->db.dir, rel);
    NpyArray arrs[2];
    memset(arrs, 0, sizeof arrs);
    snprintf(arrs[0].name, sizeof arrs[0].name, "data");
    arrs[0].dtype = NPY_U8;
    arrs[0].ndim = 4;
    arrs[0].shape[0] = n;
    arrs[0].shape[1] = C;
    arrs[0].shape[2] = H;
    arrs[0].shape[3] = W;
    arrs[0].data = pix;
    snprintf(arrs[1].name, sizeof arrs[1].name, "labels");
    arrs[1].dtype = NPY_I32;
    arrs[1].ndim = 1;
    arrs[1].shape[0] = n;
    arrs[1].data = labels;
    ImageSet set;
    memset(&set, 0, sizeof set);
    float *vec = NULL;
    char *names = NULL;
    const char **name_ptrs = NULL;
    if (npz_write(path, arrs, 2, err) || search_open_db_file(&set, &s->db, rel, err)) goto done;
    if (set.n != n || set.C != C || set.H != H || set.W != W) {
        err_set(err, AE_EFORMAT, "%s reads back as %lld images of %dx%dx%d", path, (long long)set.n, set.C, set.H,
                set.W);
        goto done;
    }
    /* Encoded from the file just written, as index would encode it. */
    vec = xmalloc((size_t)n * (size_t)D * sizeof *vec);
    int64_t bad = search_encode(vec, &s->m, &set, NULL, 0, n, &s->db.tta);
    if (bad >= 0) {
        err_set(err, AE_ENUMERIC, "the encoder gives NaN or Inf for the uploaded image");
        goto done;
    }
    if (s->w.D) whiten_apply(&s->w, vec, n); /* stored as index --append stores them */
    names = xmalloc((size_t)n * IMGSET_NAME_BYTES);
    name_ptrs = xmalloc((size_t)n * sizeof *name_ptrs);
    for (int i = 0; i < n; i++) {
        imgset_name(names + (size_t)i * IMGSET_NAME_BYTES, IMGSET_NAME_BYTES, &set, i);
        name_ptrs[i] = names + (size_t)i * IMGSET_NAME_BYTES;
    }
    *first_id = s->db.count;
    if (vecdb_write_shard(s->db.dir, shard, vec, labels, name_ptrs, n, D, *first_id, err)) goto done;
    if (s->db.ivf_nlist > 0) {
        /* The new vectors join their nearest lists, as index --append's do. */
        float *cent = NULL;
        int32_t *list = xmalloc((size_t)n * sizeof *list);
        if (!ivf_read_centroids(&cent, &s->db, err) &&
            !ivf_assign(list, vec, n, cent, s->db.ivf_nlist, D, s->db.ivf_normalized, s->nthreads, err))
            ivf_write_lists(&s->db, shard, list, n, err);
        free(cent);
        free(list);
        if (err->code) goto done;
    }
    const char *item = rel;
    const int64_t count = n;
    vecdb_add_source(&s->db, rel, 1, &item, &count);
    vecdb_add_shard(&s->db, n);
    if (vecdb_write_manifest(&s->db, err)) {
        db_drop_last(&s->db);
        goto done;
    }
    add_labels(s, labels, n);
done:
    imgset_free(&set);
    free(vec);
    free(names);
    free(name_ptrs);
    free(pix);
    free(labels);
    return err->code;
}

/* Every rank: the new shard c->shard (already in rank 0's db) is mapped by
 * its owner.  Returns the agreed status (an error here stops the server). */
static int apply_addition(Server *s, const ServeCmd *c, Err *err)
{
    if (s->ctx->rank != 0) vecdb_add_shard(&s->db, c->n);
    if (!search_shards_add(s->ctx, &s->ls, &s->db, c->shard, s->metric, err) && s->si.nprobe > 0)
        ivf_local_add(&s->si.il, &s->db, &s->ls, err);
    if (!err->code) search_shards_cache_norms(&s->ls, s->nthreads);
    return par_agree(s->ctx, err);
}

/* Rank 0, holding the database's lock: 1 (with err) if the manifest on
 * disk no longer describes what this server holds (another writer, index
 * --append, train-ivf or another serve, changed it since we read it). */
static int db_changed_on_disk(const Server *s, Err *err)
{
    VecDb now;
    if (vecdb_read(&now, s->db.dir, err)) return 1;
    const int same = now.count == s->db.count && now.n_shards == s->db.n_shards && now.ivf_nlist == s->db.ivf_nlist &&
                     now.ivf_crc == s->db.ivf_crc;
    vecdb_free(&now);
    if (!same)
        err_set(err, AE_EARG, "the database %s changed on disk since this server read it (another program added "
                "to it or retrained its index): refusing to add, which would overwrite its changes (hint: restart "
                "the server to serve and extend the new contents)", s->db.dir);
    return !same;
}

static int serve_additions(Server *s, ServeJob **jobs, int n, Err *err)
{
    Err e;
    err_clear(&e);
    int64_t first = 0;
    /* One writer at a time (search_core.h): the lock for this batch, and a
     * manifest still as we read it, or the batch is refused (503 while
     * another writer runs, 409 when one has changed the database). */
    int lock = -1, status = 500;
    if (fileio_lock_dir(s->db.dir, VECDB_LOCK_NAME, "aesim-search serve", &lock, &e) == AE_EARG) {
        size_t len = strlen(e.msg);
        snprintf(e.msg + len, sizeof e.msg - len, ": another program is changing the database (hint: retry when "
                 "it has ended; then restart this server to see its changes)");
        status = 503;
    } else if (!e.code && db_changed_on_disk(s, &e)) {
        status = e.code == AE_EARG ? 409 : 500;
    } else if (!e.code && lock >= 0 && !s->temps_checked) {
        search_note_stale_temps(s->db.dir); /* once: a killed writer's leftovers */
        s->temps_checked = 1;
    }
    if (e.code || write_addition(s, jobs, n, &first, &e)) {
        fileio_unlock_dir(&lock);
        for (int i = 0; i < n; i++) serve_job_fail(&s->q, jobs[i], status, e.msg);
        return AE_OK;
    }
    fileio_unlock_dir(&lock); /* the manifest is committed */
    ServeCmd c = { .op = CMD_ADD, .shard = s->db.n_shards - 1, .n = n };
    cmd_bcast(s->ctx, &c);
    if (apply_addition(s, &c, err)) {
        for (int i = 0; i < n; i++) serve_job_fail(&s->q, jobs[i], 500, err->msg);
        return err->code;
    }
    search_meta_sync(&s->meta);
    publish_vectors(s);
    for (int i = 0; i < n; i++) {
        char *body = xmalloc(96);
        int len = snprintf(body, 96, "{\"id\":%lld,\"shard\":%d}", (long long)(first + i), c.shard);
        serve_job_finish(&s->q, jobs[i], 200, body, (size_t)len, "application/json");
    }
    return AE_OK;
}

/* ------------------------------------------------------------ rank-0 jobs */

/* GET /images/ID: the database image as PNG, from its recorded source. */
typedef struct GetImage {
    float *out;
    const ImageSet *set;
    int64_t i;
} GetImage;

/* mapguard_try's fn: reads image i of set as floats (no lock, no malloc). */
static void get_image_f32(void *arg)
{
    const GetImage *g = arg;
    imgset_get_f32(g->out, g->set, g->i);
}

static void close_source(Server *s, int i)
{
    imgset_free(&s->sets[i]);
    memset(&s->sets[i], 0, sizeof s->sets[i]);
    s->n_open--;
}

static void close_least_recent_source(Server *s)
{
    int oldest = -1;
    for (int i = 0; i < s->n_sets; i++)
        if (s->sets[i].n && (oldest < 0 || s->set_used[i] < s->set_used[oldest])) oldest = i;
    if (oldest >= 0) close_source(s, oldest);
}

static void serve_image(Server *s, ServeJob *job)
{
    Err e;
    err_clear(&e);
    int src = job->id < s->db.count ? search_source_of(&s->db, job->id) : -1;
    if (src < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "id %lld is not in the database (ids 0..%lld)", (long long)job->id,
                 (long long)s->db.count - 1);
        serve_job_fail(&s->q, job, API_NOT_FOUND, msg);
        return;
    }
    if (src >= s->n_sets) {
        ImageSet *grown = xcalloc((size_t)s->db.n_sources, sizeof *grown);
        int64_t *used = xcalloc((size_t)s->db.n_sources, sizeof *used);
        if (s->n_sets) {
            memcpy(grown, s->sets, (size_t)s->n_sets * sizeof *grown);
            memcpy(used, s->set_used, (size_t)s->n_sets * sizeof *used);
        }
        free(s->sets);
        free(s->set_used);
        s->sets = grown;
        s->set_used = used;
        s->n_sets = s->db.n_sources;
    }
    if (!s->sets[src].n) {
        /* Each open source holds file descriptors (and each added batch is a
         * source): at most SERVE_OPEN_SOURCES stay open, so browsing many
         * additions never exhausts the process's descriptors. */
        if (s->n_open >= SERVE_OPEN_SOURCES) close_least_recent_source(s);
        if (search_open_source(&s->sets[src], &s->db, src, &e)) {
            char msg[ERR_MSG_BYTES];
            snprintf(msg, sizeof msg, "image %lld: its source cannot be read: %.900s", (long long)job->id, e.msg);
            serve_job_fail(&s->q, job, 500, msg);
            return;
        }
        s->n_open++;
    }
    s->set_used[src] = ++s->reads;
    const ImageSet *set = &s->sets[src];
    const size_t chw = (size_t)set->C * (size_t)set->H * (size_t)set->W;
    float *f = xmalloc(chw * sizeof *f);
    uint8_t *pix = xmalloc(chw);
    /* The source is a user's file, mapped: one rewritten in place under the
     * server fails this request, not the server (mapguard_try); the set is
     * opened again by the next request, which checks its image counts. */
    GetImage get = { f, set, job->id - s->db.sources[src].first_id };
    char path[MAPGUARD_PATH_BYTES];
    if (mapguard_try(get_image_f32, &get, path, sizeof path)) {
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "image %lld: its source %.600s changed while in use: it shrank or was rewritten in "
                 "place (hint: put the original file back, or index the new one into a new database; the server goes "
                 "on)", (long long)job->id, path);
        serve_job_fail(&s->q, job, 500, msg);
        close_source(s, src);
        free(f);
        free(pix);
        return;
    }
    for (size_t j = 0; j < chw; j++) pix[j] = png_float_to_u8(f[j]);
    uint8_t *png = NULL;
    size_t len = 0;
    if (imgset_read_error(set, &e)) serve_job_fail(&s->q, job, 500, e.msg);
    else if (png_encode_chw_mem(&png, &len, pix, set->C, set->H, set->W, &e)) serve_job_fail(&s->q, job, 500, e.msg);
    else serve_job_finish(&s->q, job, 200, (char *)png, len, "image/png");
    free(f);
    free(pix);
}

static void serve_label_list(Server *s, ServeJob *job)
{
    char *body = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&body, &n);
    CHECK(f != NULL);
    fputs("{\"labels\":[", f);
    for (int i = 0; i < s->n_labels; i++) fprintf(f, "%s%d", i ? "," : "", (int)s->labels[i]);
    fputs("]}", f);
    CHECK(fclose(f) == 0);
    serve_job_finish(&s->q, job, 200, body, n, "application/json");
}

/* Rank 0: one micro-batch. */
static int serve_batch(Server *s, ServeJob **jobs, int n, Err *err)
{
    const double t0 = timer_now();
    ServeJob **adds = xmalloc((size_t)n * sizeof *adds), **searches = xmalloc((size_t)n * sizeof *searches);
    int n_add = 0, n_search = 0;
    for (int i = 0; i < n; i++) {
        switch (jobs[i]->kind) {
        case JOB_IMAGE: serve_image(s, jobs[i]); break;
        case JOB_LABELS: serve_label_list(s, jobs[i]); break;
        case JOB_ADD: adds[n_add++] = jobs[i]; break;
        default: searches[n_search++] = jobs[i]; break;
        }
    }
    int rc = AE_OK;
    /* Additions first: a search in the same batch already sees them. */
    if (n_add) rc = serve_additions(s, adds, n_add, err);
    if (rc == AE_OK && n_search) rc = serve_searches(s, searches, n_search, t0, err);
    else if (rc)
        for (int i = 0; i < n_search; i++) serve_job_fail(&s->q, searches[i], 503, "the server is stopping");
    serve_metrics_batch(&s->mx, n, serve_queue_length(&s->q));
    free(adds);
    free(searches);
    return rc;
}

/* ------------------------------------------------------------ loops */

/* Every rank: 1 if any rank received SIGTERM/SIGINT. */
static int ping(Server *s)
{
    ServeCmd c = { .op = CMD_PING };
    if (s->ctx->rank == 0) cmd_bcast(s->ctx, &c);
    return par_allreduce_max_int(s->ctx, signals_pending() != 0);
}

static int rank0_loop(Server *s, int *by_signal, Err *err)
{
    const int max = s->cfg->max_batch;
    ServeJob **jobs = xmalloc((size_t)max * sizeof *jobs);
    double last = timer_now(), deadline = 0;
    int stopping = 0, rc = AE_OK;
    for (;;) {
        int n = serve_queue_take(&s->q, jobs, max, SERVE_PING_MS / 5);
        if (n > 0 && (rc = serve_batch(s, jobs, n, err))) break;
        /* Busy or idle, the other ranks are asked for signals this often. */
        if (timer_now() - last > SERVE_PING_MS * 1e-3) {
            if (ping(s) && !stopping) {
                stopping = 1;
                par_err0(s->ctx, "serve: stop requested (%s): answering the requests in flight\n",
                         signals_pending() ? signals_name(signals_pending()) : "signal received by another rank");
                http_server_quiesce(s->http);
                deadline = timer_now() + s->cfg->timeout_s;
            }
            last = timer_now();
        }
        if (!stopping && signals_pending()) {
            stopping = 1;
            par_err0(s->ctx, "serve: stop requested (%s): answering the requests in flight\n",
                     signals_name(signals_pending()));
            http_server_quiesce(s->http);
            deadline = timer_now() + s->cfg->timeout_s;
        }
        if (stopping && ((http_server_in_flight(s->http) == 0 && serve_queue_length(&s->q) == 0) ||
                         timer_now() > deadline))
            break;
    }
    serve_queue_close(&s->q);
    int n;
    while ((n = serve_queue_take(&s->q, jobs, max, 0)) > 0)
        for (int i = 0; i < n; i++) serve_job_fail(&s->q, jobs[i], 503, "the server is stopping");
    free(jobs);
    *by_signal = stopping;
    /* After a failed addition the other ranks have already left (agreed). */
    if (rc == AE_OK) {
        ServeCmd c = { .op = CMD_STOP, .k = stopping };
        cmd_bcast(s->ctx, &c);
    }
    return rc;
}

static int worker_loop(Server *s, int *by_signal, Err *err)
{
    for (;;) {
        ServeCmd c;
        memset(&c, 0, sizeof c);
        cmd_bcast(s->ctx, &c);
        switch (c.op) {
        case CMD_SEARCH: {
            int32_t *labels = xmalloc((size_t)(c.n_labels > 0 ? c.n_labels : 1) * sizeof *labels);
            float *vec = xmalloc((size_t)c.n * (size_t)s->db.D * sizeof *vec);
            TopK top;
            run_search(s, &c, labels, vec, &top, err); /* an error was agreed and answered by rank 0 */
            err_clear(err);
            topk_free(&top);
            free(labels);
            free(vec);
            break;
        }
        case CMD_ADD:
            if (apply_addition(s, &c, err)) return err->code;
            break;
        case CMD_PING: ping(s); break;
        case CMD_STOP: *by_signal = c.k; return AE_OK;
        default: return err_set(err, AE_EARG, "unknown command %d from rank 0", (int)c.op);
        }
    }
}

/* ------------------------------------------------------------ main */

int search_serve(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    Server *s = xcalloc(1, sizeof *s);
    s->ctx = ctx;
    s->cfg = cfg;
    s->nthreads = nthreads;
    int by_signal = 0, have_model = 0, have_meta = 0, have_http = 0, have_queue = 0;
    vecdb_read(&s->db, cfg->db, err);
    if (par_agree(ctx, err)) goto done;
    s->metric = cfg->metric == SEARCH_METRIC_DEFAULT ? s->db.metric : (KnnMetric)cfg->metric;
    search_qe_resolve(&s->qe, cfg, &s->db, s->metric, err);
    if (par_agree(ctx, err)) goto done;
    uint32_t crc = 0;
    if (search_load_encoder(ctx, cfg->model, cfg->batch, nthreads, cfg->precision, &s->m, &crc, err)) goto done;
    have_model = 1;
    search_check_model(&s->db, &s->m, crc, cfg->model, err);
    if (par_agree(ctx, err)) goto done;
    SearchFilter none = { NULL, 0, NULL, 0, 0 };
    if (search_shards_open(ctx, &s->ls, &s->db, s->metric, &none, err)) goto done;
    if (search_ivf_open(ctx, &s->si, cfg, &s->db, &s->ls, err)) goto done;
    search_shards_cache_norms(&s->ls, nthreads); /* read once, not at every batch */
    if (ctx->rank == 0 && s->db.whiten) whiten_load(&s->w, s->db.dir, s->db.D, err);
    if (par_agree(ctx, err)) goto done;
    if (ctx->rank == 0) {
        search_meta_init(&s->meta, &s->db);
        have_meta = 1;
        scan_labels(s, 0, err);
        if (err->code == AE_OK && cfg->class_names[0]) class_names_read(&s->names, cfg->class_names, err);
    }
    if (par_agree(ctx, err)) goto done;
    signals_install(&s->guard);
    /* A client gone mid-answer must not end the process. */
    signal(SIGPIPE, SIG_IGN);
    char url[300] = "";
    if (ctx->rank == 0) {
        serve_queue_init(&s->q, SERVE_QUEUE_BATCHES * cfg->max_batch);
        serve_metrics_init(&s->mx, ctx->size);
        have_queue = 1;
        publish_vectors(s);
        char tta[64];
        snprintf(s->info, sizeof s->info, "\"dim\":%d,\"ranks\":%d,\"metric\":\"%s\",\"model_crc32\":\"%08x\","
                 "\"input_shape\":[%d,%d,%d],\"tta\":\"%s\",\"query_expansion\":{\"n\":%d,\"alpha\":%g}", s->db.D,
                 ctx->size, vecdb_metric_name(s->metric), (unsigned)crc, s->db.C, s->db.H, s->db.W,
                 vecdb_tta_name(&s->db.tta, tta, sizeof tta), s->qe.n, s->qe.alpha);
        HttpServerConfig hc = { .listen = cfg->listen, .timeout_s = cfg->timeout_s,
                                .max_body = (size_t)cfg->max_body_mib << 20, .max_k = cfg->max_k, .D = s->db.D,
                                .C = s->db.C, .H = s->db.H, .W = s->db.W, .info = s->info };
        if (http_server_start(&s->http, &hc, &s->q, &s->mx, url, sizeof url, err) == AE_OK) have_http = 1;
    }
    if (par_agree(ctx, err)) goto done;
    par_err0(ctx, "serve: %s: %lld vectors, D = %d, %d shard(s) over %d rank(s) | metric %s | max batch %d\n",
             cfg->db, (long long)s->db.count, s->db.D, s->db.n_shards, ctx->size, vecdb_metric_name(s->metric),
             cfg->max_batch);
    if (s->si.nprobe > 0)
        par_err0(ctx, "serve: IVF index, %d lists, scanning the %d nearest per query (--exact: full scan)\n",
                 s->db.ivf_nlist, s->si.nprobe);
    if (s->qe.n > 0)
        par_err0(ctx, "serve: alpha query expansion, n = %d, alpha = %g (--qe 0: off)\n", s->qe.n, s->qe.alpha);
    par_err0(ctx, "serve: listening on %s\n", url);
    if (ctx->rank == 0) rank0_loop(s, &by_signal, err);
    else worker_loop(s, &by_signal, err);
    par_err0(ctx, "serve: stopped\n");
done:
    if (have_http) http_server_stop(s->http);
    if (have_queue) {
        serve_queue_free(&s->q);
        serve_metrics_free(&s->mx);
    }
    if (have_meta) search_meta_free(&s->meta);
    class_names_free(&s->names);
    for (int i = 0; i < s->n_vmaps; i++) vecdb_shard_unmap(&s->vmaps[i]);
    free(s->vmaps);
    for (int i = 0; i < s->n_sets; i++) imgset_free(&s->sets[i]);
    free(s->sets);
    free(s->set_used);
    free(s->labels);
    search_ivf_close(&s->si);
    if (s->w.D) whiten_free(&s->w);
    search_shards_close(&s->ls);
    if (have_model) model_free(&s->m);
    vecdb_free(&s->db);
    signals_restore(&s->guard);
    free(s);
    /* mpirun that was itself signalled blocks MPI_Finalize (signals.h). */
    if (by_signal) signals_exit_watchdog(SERVE_EXIT_GRACE_S);
    return err->code;
}
