/*
 * search.c - aesim-search index and query (see include/search/search.h; eval is in
 * src/search/search_eval.c).  index: every rank encodes its slice of the source and
 * writes its shard, rank 0 commits the manifest.  query: rank 0 reads and
 * encodes the queries and broadcasts the vectors, every rank searches the
 * shards it owns, rank 0 merges and writes the results (TSV / JSON) and the
 * contact sheet.  MPI through par.h only; errors agreed with par_agree.
 * Informational lines go to stderr (par_err0) so that stdout carries only
 * results.
 */
#include "search/search.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/check.h"
#include "base/fileio.h"
#include "base/signals.h"
#include "data/imgset.h"
#include "search/kmeans.h"
#include "search/knn.h"
#include "data/npy.h"
#include "data/png_io.h"
#include "data/image_convert.h"
#include "data/image_decode.h"
#include "search/search_core.h"
#include "data/sheet.h"
#include "data/class_names.h"
#include "search/search_ivf.h"
#include "base/timer.h"
#include "search/vecdb.h"
#include "search/whiten.h"

/* Most query vectors one run takes (--ids ranges, --queries rows). */
#define SEARCH_MAX_QUERIES ((int64_t)1 << 24)
/* Most ids an --ids-from file may list. */
#define SEARCH_MAX_FILTER_IDS ((int64_t)1 << 30)
/* Contact sheet: neighbours shown per row at most, rows at most, the
 * smallest tile side in pixels (28x28 images are scaled x3; sheet.h draws). */
#define SHEET_MAX_NEIGHBOURS 32
#define SHEET_MAX_ROWS 256
#define SHEET_TILE_PX 64
/* index: images encoded between two looks for a stop signal. */
#define INDEX_ENCODE_CHUNK 512

/* ================================================================ index */

/* The outermost folder on the way to dir that does not exist yet, into
 * out[cap] ("" when dir exists): what mkdir -p is about to create, and what
 * a failed index removes again (a failed command leaves nothing). */
static void first_missing_dir(char *out, size_t cap, const char *dir)
{
    struct stat st;
    out[0] = '\0';
    size_t len = strlen(dir);
    if (len >= cap) return;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && dir[i] != '/') continue;
        memcpy(out, dir, i);
        out[i] = '\0';
        if (stat(out, &st) != 0) return;
    }
    out[0] = '\0';
}

/* Rank 0 after a failed index: removes the shard files of this run (shards
 * first..first+P-1; the manifest does not list them) and the folders it
 * created, from dir up to `created` (rmdir: only if empty), with the lock
 * file when this run created the folder and holds the lock (lock >= 0). */
static void index_undo(const char *dir, int first, int P, const char *created, int lock)
{
    char path[VECDB_PATH_BYTES + 64];
    for (int sh = first; sh < first + P; sh++)
        for (int f = VECDB_VECTORS; f <= VECDB_NAMES; f++)
            if (vecdb_shard_path(path, sizeof path, dir, sh, (VecDbFile)f, NULL) == AE_OK) unlink(path);
    if (!created[0]) return;
    if (lock >= 0 && snprintf(path, sizeof path, "%s/%s", dir, VECDB_LOCK_NAME) < (int)sizeof path) unlink(path);
    snprintf(path, sizeof path, "%s", dir);
    for (;;) {
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/') path[--n] = '\0';
        if (rmdir(path) != 0 || strcmp(path, created) == 0) return;
        char *slash = strrchr(path, '/');
        if (!slash || slash == path) return;
        *slash = '\0';
    }
}

/* All ranks: an empty description for a new database, or the existing one
 * (--append) after checking the model.  For a new database rank 0 creates
 * the folder and takes its writer lock into *lock (an --append run holds it
 * already: search_lock_db). */
static int index_prepare_db(const ParCtx *ctx, VecDb *db, const SearchConfig *cfg, const Model *m, uint32_t crc,
                            char *created, int *lock, Err *err)
{
    memset(db, 0, sizeof *db);
    const int D = model_embedding_dim(m);
    const KnnMetric metric = cfg->metric == SEARCH_METRIC_DEFAULT ? KNN_L2 : (KnnMetric)cfg->metric;
    if (cfg->append) {
        if (!vecdb_read(db, cfg->db, err) && search_check_model(db, m, crc, cfg->model, err)) {
            char msg[ERR_MSG_BYTES];
            snprintf(msg, sizeof msg, "--append refused: %.980s", err->msg);
            snprintf(err->msg, sizeof err->msg, "%s", msg);
        } else if (!err->code && cfg->whiten && !db->whiten) {
            const char *opt = cfg->whiten_dim ? "--whiten-dim" : "--whiten";
            err_set(err, AE_EARG, "--append %s: %s was indexed without --whiten (hint: drop %s, or index everything "
                                  "again into a new --db with %s)", opt, cfg->db, opt, opt);
        } else if (!err->code && cfg->whiten_dim > 0 && cfg->whiten_dim != db->whiten_dim) {
            err_set(err, AE_EARG, "--append --whiten-dim %d: %s keeps %d whitened directions (hint: drop "
                                  "--whiten-dim; new images get the database's transform)", cfg->whiten_dim, cfg->db,
                    db->whiten_dim > 0 ? db->whiten_dim : db->D);
        } else if (!err->code && cfg->nlist > 0 && db->ivf_nlist > 0) {
            err_set(err, AE_EARG, "--append --ivf %d: %s already has an IVF index (nlist %d): refusing to replace it "
                                  "(hint: drop --ivf, new vectors join their nearest lists; or retrain it afterwards "
                                  "with train-ivf --overwrite)", cfg->nlist, cfg->db, db->ivf_nlist);
        } else if (!err->code && cfg->has_tta && (cfg->tta.flip != db->tta.flip || cfg->tta.shift != db->tta.shift)) {
            char a[64], b[64];
            err_set(err, AE_EARG, "--append --tta %s: %s was indexed with --tta %s (hint: drop --tta; new images are "
                                  "encoded as the database's were)", vecdb_tta_name(&cfg->tta, a, sizeof a), cfg->db,
                    vecdb_tta_name(&db->tta, b, sizeof b));
        } else if (!err->code && cfg->qe >= 0 && (cfg->qe != db->qe_n ||
                                                   (cfg->qe > 0 && cfg->qe_alpha >= 0 && cfg->qe_alpha != db->qe_alpha))) {
            err_set(err, AE_EARG, "--append --qe: %s records query expansion n = %d, alpha = %g (hint: drop --qe; "
                                  "query, eval and serve take --qe to search otherwise)", cfg->db, db->qe_n,
                    db->qe_alpha);
        } else if (!err->code && cfg->metric != SEARCH_METRIC_DEFAULT && metric != db->metric) {
            err_set(err, AE_EARG, "--append: --metric %s differs from the database's default %s (hint: drop --metric)",
                    vecdb_metric_name(metric), vecdb_metric_name(db->metric));
        }
    } else {
        if (ctx->rank == 0) {
            /* Folder first, then its writer lock, then the manifest check:
             * of two runs creating one database, the second is refused (it
             * sees the lock, or the manifest the first has committed). */
            char path[VECDB_PATH_BYTES + 32];
            snprintf(path, sizeof path, "%s/%s", cfg->db, VECDB_MANIFEST);
            struct stat st;
            first_missing_dir(created, VECDB_PATH_BYTES, cfg->db);
            if (!fileio_mkdirs(cfg->db, err) &&
                fileio_lock_dir(cfg->db, VECDB_LOCK_NAME, "aesim-search index", lock, err) == AE_EARG) {
                size_t len = strlen(err->msg);
                snprintf(err->msg + len, sizeof err->msg - len, ": one program at a time may change a database "
                         "(hint: wait for it to end, or choose another --db)");
            } else if (!err->code && stat(path, &st) == 0) {
                err_set(err, AE_EARG, "%s already holds a database (%s) (hint: add images with --append, or choose "
                                      "another --db)", cfg->db, VECDB_MANIFEST);
            }
        }
        char real[PATH_MAX];
        const char *ckpt = realpath(cfg->model, real) ? real : cfg->model;
        vecdb_init(db, cfg->db, crc, m->spec.text, m->spec.C, m->spec.H, m->spec.W, ckpt, D, metric);
        db->whiten = cfg->whiten;
        if (!err->code && cfg->whiten_dim >= D)
            err_set(err, AE_EARG, "--whiten-dim %d: the codes of %s have D = %d dimensions; K must be below D (hint: "
                                  "--whiten alone keeps all %d)", cfg->whiten_dim, cfg->model, D, D);
        db->whiten_dim = cfg->whiten_dim;
        db->tta = cfg->tta; /* zero (none) unless --tta */
        if (cfg->qe > 0) {
            if (!err->code && metric != KNN_IP)
                err_set(err, AE_EARG, "--qe: query expansion needs the cosine metric (hint: add --metric cosine, or "
                                      "use --recipe retrieval)");
            db->qe_n = cfg->qe;
            db->qe_alpha = cfg->qe_alpha >= 0 ? cfg->qe_alpha : SEARCH_DEFAULT_QE_ALPHA;
        }
    }
    if (par_agree(ctx, err)) {
        vecdb_free(db);
        return err->code;
    }
    return AE_OK;
}

/* Collective: whitens this rank's vec[n][D] in place.  A new database fits
 * the transform on the vectors of all ranks (rank 0 fits and writes
 * DIR/whiten.npz, then broadcasts it); --append reads the existing one. */
static int index_whiten(const ParCtx *ctx, const SearchConfig *cfg, const VecDb *db, float *vec, int64_t n, Err *err)
{
    const int D = db->D;
    Whiten w;
    memset(&w, 0, sizeof w);
    if (cfg->append) {
        if (ctx->rank == 0) whiten_load(&w, db->dir, D, err);
    } else {
        PcaStats st;
        pca_stats_init(&st, D);
        pca_stats_add(&st, vec, n);
        par_allreduce_sum_f64(ctx, &st.n, 1);
        par_allreduce_sum_f64(ctx, st.sum, (size_t)D);
        par_allreduce_sum_f64(ctx, st.sxx, (size_t)D * (size_t)D);
        if (ctx->rank == 0 && !whiten_fit(&w, &st, db->whiten_dim, err)) whiten_save(&w, db->dir, err);
        pca_stats_free(&st);
    }
    if (par_agree(ctx, err)) {
        whiten_free(&w);
        return err->code;
    }
    if (ctx->rank != 0) {
        w.D = D;
        w.mean = xmalloc((size_t)D * sizeof *w.mean);
        w.mat = xmalloc((size_t)D * D * sizeof *w.mat);
    }
    par_bcast(ctx, w.mean, (size_t)D * sizeof *w.mean, 0);
    par_bcast(ctx, w.mat, (size_t)D * D * sizeof *w.mat, 0);
    whiten_apply(&w, vec, n);
    whiten_free(&w);
    return AE_OK;
}

/* Sum of the pixel values (scaled to [0, 1]) of images [lo, lo+n) of src. */
static double index_pixel_sum(const ImageSet *src, int64_t lo, int64_t n)
{
    const size_t chw = (size_t)src->C * (size_t)src->H * (size_t)src->W;
    float *img = xmalloc(chw * sizeof *img);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        imgset_get_f32(img, src, lo + i);
        for (size_t j = 0; j < chw; j++) sum += img[j];
    }
    free(img);
    return sum;
}

/* --append to a database with an IVF index: this rank's new shard gets its
 * lists (ivf_assign: nearest centroid, or for a cosine index the largest inner
 * product of the normalised vector) before the manifest lists it. */
static int search_index_ivf_lists(const ParCtx *ctx, const VecDb *db, const float *vec, int64_t n, int nthreads,
                                  Err *err)
{
    float *cent = NULL;
    int32_t *list = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *list);
    if (!ivf_read_centroids(&cent, db, err) &&
        !ivf_assign(list, vec, n, cent, db->ivf_nlist, db->D, db->ivf_normalized, nthreads, err))
        ivf_write_lists(db, db->n_shards + ctx->rank, list, n, err);
    free(cent);
    free(list);
    return par_agree(ctx, err);
}

/* index --ivf N: train the IVF index of the database just committed. */
static int search_index_train_ivf(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    SearchConfig c = *cfg;
    c.cmd = SEARCH_TRAIN_IVF;
    return search_train_ivf(ctx, &c, nthreads, err);
}

int search_index(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    const double t0 = timer_now();
    Model m;
    uint32_t crc = 0;
    if (search_load_encoder(ctx, cfg->model, cfg->batch, nthreads, cfg->precision, &m, &crc, err)) return err->code;
    const int D = model_embedding_dim(&m), P = ctx->size;
    VecDb db;
    ImageSet src;
    memset(&src, 0, sizeof src);
    float *vec = NULL;
    int32_t *labels = NULL;
    char *names = NULL;
    const char **name_ptrs = NULL;
    int64_t *counts = NULL;
    char created[VECDB_PATH_BYTES] = ""; /* rank 0: the outermost folder this run created */
    SignalGuard guard = { 0 };
    signals_install(&guard); /* a stop before encoding is acted on when encoding starts */
    int lock = -1; /* rank 0, a new database: its writer lock (index_prepare_db) */
    if (index_prepare_db(ctx, &db, cfg, &m, crc, created, &lock, err)) {
        if (ctx->rank == 0) index_undo(cfg->db, 0, 0, created, lock);
        fileio_unlock_dir(&lock);
        signals_restore(&guard);
        model_free(&m);
        return err->code;
    }
    /* Any size and channel count: converted to the model's input as query
     * --image converts its files (search_data_options). */
    DatasetOptions opts;
    search_data_options(&opts, m.spec.C, m.spec.H, m.spec.W, cfg->allow_gaps);
    opts.defer_verify = 1; /* CRC checks shared by the ranks below (verify.h) */
    if (!imgset_open_opts(&src, cfg->data, &opts, err) && (src.C != m.spec.C || src.H != m.spec.H ||
                                                            src.W != m.spec.W))
        err_set(err, AE_ESHAPE, "%s has %dx%dx%d images (CxHxW) but the model %s takes %dx%dx%d (hint: drop the "
                                "source's own ?size= / ?channels=, or index with a model trained on such images)",
                cfg->data, src.C, src.H, src.W, cfg->model, m.spec.C, m.spec.H, m.spec.W);
    /* index --ivf N: the list count is checked against the count to come
     * before any work (train-ivf's own check would come after the commit). */
    const int64_t will_hold = db.count + (err->code ? 0 : src.n);
    if (!err->code && cfg->nlist > 0 && (int64_t)cfg->nlist > will_hold)
        err_set(err, AE_EARG, "--ivf %d: %s would hold %lld vectors; nlist must be in 1..%lld (hint: about "
                              "sqrt(count) to 16 sqrt(count) lists; k-means wants %d+ vectors per list); nothing was "
                              "written", cfg->nlist, cfg->db, (long long)will_hold, (long long)will_hold,
                KMEANS_MIN_PER_CENTROID);
    if (par_agree(ctx, err)) goto done;
    VerifyStats vs = { 0 };
    for (int i = 0; i < src.n_items; i++)
        if (dataset_verify(ctx, &src.items[i], &vs, err)) goto done;
    if (vs.members)
        par_err0(ctx, "index: CRC-32 of %lld stored member(s) checked, each rank reading 1/%d of it\n",
                 (long long)vs.members, P);
    if (src.warning[0]) par_err0(ctx, "index: warning: %s\n", src.warning);
    par_err0(ctx, "index: %lld images of %s, %d rank(s) -> shards %d..%d of %s | model %s crc32 %08x | D = %d | "
                  "encoder %s%s\n",
             (long long)src.n, cfg->data, P, db.n_shards, db.n_shards + P - 1, cfg->db, m.spec.text, (unsigned)crc, D,
             model_precision_name(m.precision),
             m.precision != MODEL_BF16 ? "" : m.amx ? " (AMX tiles)" : m.bf16_kernels ? " (VDPBF16PS)" : " (rounded operands, float32 kernels: no "
                                                                                 "AVX512_BF16)");
    if (src.n_resized || src.n_skipped)
        par_err0(ctx, "index: %lld of %lld images resized to %dx%d (box filter after a centre crop, or the whole "
                 "image with ?fit=squash); %lld bad file(s) skipped\n", (long long)src.n_resized,
                 (long long)(src.n + src.n_skipped), m.spec.H, m.spec.W, (long long)src.n_skipped);

    /* This rank's contiguous slice and its global ids. */
    const int64_t N = src.n, lo = N * ctx->rank / P, hi = N * (ctx->rank + 1) / P, n = hi - lo;
    const int64_t first_id = db.count + par_exscan_sum_i64(ctx, n);
    vec = xmalloc((size_t)(n > 0 ? n : 1) * (size_t)D * sizeof *vec);
    /* Encoding is the long part: a stop signal (SIGTERM from mpirun or
     * SLURM, Ctrl-C) is checked between chunks and ends the run before
     * anything is written, the folder it created removed.  Once writing
     * starts it is finished (atomic files, manifest last). */
    int64_t bad = -1;
    for (int64_t c0 = 0; c0 < n && bad < 0 && !signals_pending(); c0 += INDEX_ENCODE_CHUNK) {
        const int64_t cn = n - c0 < INDEX_ENCODE_CHUNK ? n - c0 : INDEX_ENCODE_CHUNK;
        const int64_t b = search_encode(vec + (size_t)c0 * (size_t)D, &m, &src, NULL, lo + c0, cn, &db.tta);
        if (b >= 0) bad = c0 + b;
    }
    const int stop = par_allreduce_max_int(ctx, signals_pending());
    if (stop) {
        err_set(err, AE_ESTOPPED, "stopped by %s while encoding; nothing was written to %s (hint: run the same "
                                  "command again)", signals_name(stop), cfg->db);
        goto done;
    }
    /* a damaged store block (imgset_read_error) is agreed below: nothing written */
    if (imgset_read_error(&src, err) == AE_OK && bad >= 0) {
        char name[IMGSET_NAME_BYTES];
        imgset_name(name, sizeof name, &src, lo + bad);
        err_set(err, AE_ENUMERIC, "the encoder gives NaN or Inf for image %s (source index %lld); nothing was "
                                  "written (hint: the checkpoint %s holds NaN weights or diverged; retrain it)",
                name, (long long)(lo + bad), cfg->model);
    }
    if (par_agree(ctx, err)) goto done;
    /* Writing starts: first a killed writer's leftovers (under the lock; a
     * refused run has touched nothing) */
    if (ctx->rank == 0) search_note_stale_temps(cfg->db);
    if (db.whiten && index_whiten(ctx, cfg, &db, vec, n, err)) goto done;
    /* Mean pixel of the indexed images (manifest pixel_mean: query warns
     * when its images are far from it, e.g. of the opposite polarity). */
    double pix_sum = index_pixel_sum(&src, lo, n);
    par_allreduce_sum_f64(ctx, &pix_sum, 1);
    labels = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *labels);
    names = xmalloc((size_t)(n > 0 ? n : 1) * IMGSET_NAME_BYTES);
    name_ptrs = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *name_ptrs);
    for (int64_t j = 0; j < n; j++) {
        labels[j] = imgset_label(&src, lo + j);
        imgset_name(names + (size_t)j * IMGSET_NAME_BYTES, IMGSET_NAME_BYTES, &src, lo + j);
        name_ptrs[j] = names + (size_t)j * IMGSET_NAME_BYTES;
    }
    vecdb_write_shard(cfg->db, db.n_shards + ctx->rank, vec, labels, name_ptrs, n, D, first_id, err);
    if (par_agree(ctx, err)) goto done;
    if (db.ivf_nlist > 0 && search_index_ivf_lists(ctx, &db, vec, n, nthreads, err)) goto done;

    /* Rank 0 commits: the manifest lists the new source and shards. */
    counts = xcalloc((size_t)P, sizeof *counts);
    par_gather(ctx, &n, counts, sizeof n, 0);
    if (ctx->rank == 0) {
        const char **paths = xmalloc((size_t)src.n_items * sizeof *paths);
        int64_t *item_counts = xmalloc((size_t)src.n_items * sizeof *item_counts);
        for (int i = 0; i < src.n_items; i++) {
            paths[i] = src.paths[i];
            item_counts[i] = src.first[i + 1] - src.first[i];
        }
        vecdb_add_source(&db, cfg->data, src.n_items, paths, item_counts);
        if (N > 0) db.sources[db.n_sources - 1].pixel_mean = pix_sum / ((double)N * (double)src.C * src.H * src.W);
        for (int i = 0; i < src.n_items; i++) {
            const char *const *names;
            int n_names = dataset_class_names(&src.items[i], &names);
            if (n_names > 0) {
                vecdb_set_classes(&db.sources[db.n_sources - 1], names, n_names);
                break;
            }
        }
        for (int p = 0; p < P; p++) vecdb_add_shard(&db, counts[p]);
        vecdb_write_manifest(&db, err);
        free(paths);
        free(item_counts);
    }
    if (par_agree(ctx, err)) goto done;
    if (cfg->nlist > 0 && search_index_train_ivf(ctx, cfg, nthreads, err)) goto done;
    const int late = par_allreduce_max_int(ctx, signals_pending());
    if (late)
        par_err0(ctx, "index: %s arrived while the database was being written: finished it first (complete, as "
                      "below)\n", signals_name(late));
    const double secs = timer_now() - t0;
    par_err0(ctx, "index: done in %.1f s (%.0f images/s) | %s now holds %lld vectors in %d shards\n", secs,
             (double)N / (secs > 0 ? secs : 1), cfg->db, (long long)db.count, db.n_shards); /* rank 0's db is updated */
done:
    /* Every rank is here after the same agreed error: nothing more is
     * written, so rank 0 can remove what this run left. */
    if (err->code && ctx->rank == 0) index_undo(cfg->db, db.n_shards, P, created, lock);
    fileio_unlock_dir(&lock);
    signals_restore(&guard);
    free(vec);
    free(labels);
    free(names);
    free(name_ptrs);
    free(counts);
    imgset_free(&src);
    vecdb_free(&db);
    model_free(&m);
    return err->code;
}

/* ================================================================ query */

/* The query vectors (every rank) and, on rank 0, their images and names. */
typedef struct Queries {
    int64_t Q;
    float *vec;   /* [Q][D] */
    float *img;   /* [Q][C][H][W] or NULL (--queries) */
    char *names;  /* [Q][IMGSET_NAME_BYTES] */
} Queries;

static void queries_free(Queries *qs)
{
    free(qs->vec);
    free(qs->img);
    free(qs->names);
    memset(qs, 0, sizeof *qs);
}

/* Parses "3,17,20-29" into ids in [0, limit). */
static int parse_id_list(int64_t **out, int64_t *n, const char *text, int64_t limit, const char *src, Err *err)
{
    *out = NULL;
    *n = 0;
    int64_t cap = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        long long a = strtoll(p, &end, 10), b;
        if (end == p || errno || a < 0) break;
        b = a;
        if (*end == '-') {
            const char *q = end + 1;
            b = strtoll(q, &end, 10);
            if (end == q || errno || b < a) break;
        }
        if (*end && *end != ',') break;
        if (b >= limit) {
            free(*out);
            *out = NULL;
            return err_set(err, AE_EARG, "--ids: index %lld is past the end of %s (%lld images, 0..%lld)", b, src,
                           (long long)limit, (long long)limit - 1);
        }
        if (*n + (b - a + 1) > SEARCH_MAX_QUERIES) {
            free(*out);
            *out = NULL;
            return err_set(err, AE_EARG, "--ids: more than %lld queries", (long long)SEARCH_MAX_QUERIES);
        }
        for (long long v = a; v <= b; v++) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 64;
                int64_t *grown = xmalloc((size_t)cap * sizeof *grown);
                if (*n) memcpy(grown, *out, (size_t)*n * sizeof *grown);
                free(*out);
                *out = grown;
            }
            (*out)[(*n)++] = v;
        }
        p = *end ? end + 1 : end;
        if (!*p && *end) break; /* trailing comma */
    }
    if (*p || *n == 0 || (p > text && p[-1] == ',')) {
        free(*out);
        *out = NULL;
        *n = 0;
        return err_set(err, AE_EARG, "--ids: '%s' is not a list of indices such as 3,17,20-29", text);
    }
    return AE_OK;
}

/* Rank 0: a warning on stderr when the query images' mean pixel is far
 * from the database images' (manifest pixel_mean) and their inverse would
 * be close: images of the opposite polarity (dark objects on white, while
 * Fashion-MNIST has light objects on black) find meaningless neighbours.
 * Databases without pixel_mean (older manifests) are not checked. */
static void warn_polarity(const Queries *qs, const VecDb *db, size_t chw)
{
    double known = 0, dsum = 0;
    for (int s = 0; s < db->n_sources; s++)
        if (db->sources[s].pixel_mean >= 0) {
            known += (double)db->sources[s].count;
            dsum += db->sources[s].pixel_mean * (double)db->sources[s].count;
        }
    if (known <= 0 || qs->Q < 1 || !qs->img) return;
    double qsum = 0;
    for (size_t j = 0; j < (size_t)qs->Q * chw; j++) qsum += qs->img[j];
    const double dm = dsum / known, qm = qsum / ((double)qs->Q * (double)chw);
    if (search_polarity_suspect(qm, dm))
        fprintf(stderr, "query: warning: the query images' mean pixel is %.3f but the database images' is %.3f "
                "(0 = black, 1 = white), and the inverse %.3f would fit: opposite polarity? (Fashion-MNIST has "
                "light objects on a black background; invert dark-on-white images, e.g. 255 - x)\n", qm, dm,
                1.0 - qm);
}

/* Rank 0: reads the queries and encodes them (vectors in qs->vec). */
static int load_queries(Queries *qs, const SearchConfig *cfg, Model *m, const VecDb *db, Err *err)
{
    memset(qs, 0, sizeof *qs);
    const int D = db->D;
    if (cfg->queries[0]) {
        NpyArray a;
        if (npy_read(cfg->queries, &a, err)) return err->code;
        int ok = a.dtype == NPY_F32 && ((a.ndim == 2 && a.shape[1] == D) || (a.ndim == 1 && a.shape[0] == D));
        int64_t Q = a.ndim == 2 ? a.shape[0] : 1;
        if (!ok || Q < 1 || Q > SEARCH_MAX_QUERIES) {
            npy_array_free(&a);
            return err_set(err, AE_ESHAPE, "%s must hold float32 query vectors of shape (Q, %d) or (%d,) with 1 <= Q "
                                           "<= %lld, the database's D (hint: numpy.save(f, x.astype('float32')))",
                           cfg->queries, D, D, (long long)SEARCH_MAX_QUERIES);
        }
        qs->Q = Q;
        qs->vec = xmalloc((size_t)Q * (size_t)D * sizeof *qs->vec);
        memcpy(qs->vec, a.data, (size_t)Q * (size_t)D * sizeof *qs->vec);
        npy_array_free(&a);
        qs->names = xcalloc((size_t)Q, IMGSET_NAME_BYTES);
        const char *base = strrchr(cfg->queries, '/');
        base = base ? base + 1 : cfg->queries;
        for (int64_t i = 0; i < Q; i++) {
            snprintf(qs->names + (size_t)i * IMGSET_NAME_BYTES, IMGSET_NAME_BYTES, "%.400s#%lld", base, (long long)i);
        }
        /* NaN/Inf components and norms that would overflow the distances */
        return knn_check_vectors(qs->vec, Q, D, cfg->queries, err);
    }
    const int C = m->spec.C, H = m->spec.H, W = m->spec.W;
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    if (cfg->n_images > 0) {
        qs->Q = cfg->n_images;
        qs->img = xmalloc((size_t)qs->Q * chw * sizeof *qs->img);
        qs->names = xcalloc((size_t)qs->Q, IMGSET_NAME_BYTES);
        uint8_t *pix = xmalloc(chw);
        int64_t resized = 0;
        for (int64_t i = 0; i < qs->Q && err->code == AE_OK; i++) {
            /* PNG or JPEG, any colour type (search_image_to_input). */
            DecodedImage im;
            if (image_decode_file(&im, cfg->images[i], DATASET_DEFAULT_MAX_PIXELS, err)) break;
            search_image_to_input(qs->img + (size_t)i * chw, pix, &im, C, H, W);
            resized += im.w != W || im.h != H;
            image_free(&im);
            snprintf(qs->names + (size_t)i * IMGSET_NAME_BYTES, IMGSET_NAME_BYTES, "%.*s", IMGSET_NAME_BYTES - 1,
                     cfg->images[i]);
        }
        free(pix);
        if (err->code) return err->code;
        if (resized)
            fprintf(stderr, "query: %lld of %lld --image files resized to %dx%d (box filter after a centre crop)\n",
                    (long long)resized, (long long)qs->Q, H, W);
    } else {
        ImageSet set;
        DatasetOptions opts;
        search_data_options(&opts, C, H, W, cfg->allow_gaps);
        if (imgset_open_opts(&set, cfg->data, &opts, err)) return err->code;
        if (set.warning[0]) fprintf(stderr, "query: warning: --data %s\n", set.warning);
        if (set.n_resized)
            fprintf(stderr, "query: %lld of %lld images of --data resized to %dx%d (box filter after a centre crop, "
                    "or the whole image with ?fit=squash)\n", (long long)set.n_resized, (long long)set.n, H, W);
        int64_t *ids = NULL;
        if (set.C != C || set.H != H || set.W != W)
            err_set(err, AE_ESHAPE, "%s has %dx%dx%d images (CxHxW) but the model takes %dx%dx%d", cfg->data, set.C,
                    set.H, set.W, C, H, W);
        else if (!parse_id_list(&ids, &qs->Q, cfg->ids, set.n, cfg->data, err)) {
            qs->img = xmalloc((size_t)qs->Q * chw * sizeof *qs->img);
            qs->names = xcalloc((size_t)qs->Q, IMGSET_NAME_BYTES);
            for (int64_t i = 0; i < qs->Q; i++) {
                imgset_get_f32(qs->img + (size_t)i * chw, &set, ids[i]);
                imgset_name(qs->names + (size_t)i * IMGSET_NAME_BYTES, IMGSET_NAME_BYTES, &set, ids[i]);
            }
            imgset_read_error(&set, err);
        }
        free(ids);
        imgset_free(&set);
        if (err->code) return err->code;
    }
    warn_polarity(qs, db, chw);
    qs->vec = xmalloc((size_t)qs->Q * (size_t)D * sizeof *qs->vec);
    int64_t bad = search_encode(qs->vec, m, NULL, qs->img, 0, qs->Q, &db->tta);
    if (bad >= 0)
        return err_set(err, AE_ENUMERIC, "the encoder gives NaN or Inf for query %s (hint: the checkpoint holds NaN "
                                         "weights)", qs->names + (size_t)bad * IMGSET_NAME_BYTES);
    return AE_OK;
}

/* Rank 0: the ids of an --ids-from file (text integers or an integer .npy),
 * each checked to be in [0, count). */
static int read_id_file(int64_t **out, int64_t *n, const char *path, int64_t count, Err *err)
{
    *out = NULL;
    *n = 0;
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".npy") == 0) {
        NpyArray a;
        if (npy_read(path, &a, err)) return err->code;
        int64_t m = npy_numel(&a);
        int integer = a.dtype != NPY_F32 && a.dtype != NPY_F64;
        if (!integer || a.ndim > 1) {
            npy_array_free(&a);
            return err_set(err, AE_EFORMAT, "--ids-from %s: expected a 1-D integer array", path);
        }
        *out = xmalloc((size_t)(m > 0 ? m : 1) * sizeof **out);
        for (int64_t i = 0; i < m; i++) {
            const void *d = a.data;
            switch (a.dtype) {
            case NPY_U8: (*out)[i] = ((const uint8_t *)d)[i]; break;
            case NPY_I8: (*out)[i] = ((const int8_t *)d)[i]; break;
            case NPY_I16: (*out)[i] = ((const int16_t *)d)[i]; break;
            case NPY_U16: (*out)[i] = ((const uint16_t *)d)[i]; break;
            case NPY_I32: (*out)[i] = ((const int32_t *)d)[i]; break;
            case NPY_U32: (*out)[i] = ((const uint32_t *)d)[i]; break;
            case NPY_I64: (*out)[i] = ((const int64_t *)d)[i]; break;
            case NPY_U64: {
                uint64_t v = ((const uint64_t *)d)[i];
                (*out)[i] = v > INT64_MAX ? -1 : (int64_t)v;
                break;
            }
            default: (*out)[i] = -1; break;
            }
        }
        *n = m;
        npy_array_free(&a);
    } else {
        if (fileio_check_input(path, err)) return err->code;
        FILE *f = fopen(path, "rb");
        if (!f) return err_set(err, AE_EIO, "--ids-from: cannot open %s: %s", path, strerror(errno));
        int64_t cap = 0;
        int c;
        long long line = 1;
        for (;;) {
            while ((c = fgetc(f)) != EOF && (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ','))
                line += c == '\n';
            if (c == EOF) break;
            char tok[32];
            size_t t = 0;
            while (c != EOF && c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != ',' && t + 1 < sizeof tok) {
                tok[t++] = (char)c;
                c = fgetc(f);
            }
            tok[t] = '\0';
            /* The newline that ended the token is counted after the token
             * is checked, so an error names the token's own line. */
            long long tok_line = line;
            if (c == '\n') line++;
            char *end;
            errno = 0;
            long long v = strtoll(tok, &end, 10);
            if (end == tok || *end || errno || *n >= SEARCH_MAX_FILTER_IDS) {
                fclose(f);
                free(*out);
                *out = NULL;
                return err_set(err, AE_EFORMAT, "--ids-from %s: line %lld: '%s' is not an id (hint: integers "
                                                "separated by spaces, commas or newlines)", path, tok_line, tok);
            }
            if (*n == cap) {
                cap = cap ? 2 * cap : 1024;
                int64_t *grown = xmalloc((size_t)cap * sizeof *grown);
                if (*n) memcpy(grown, *out, (size_t)*n * sizeof *grown);
                free(*out);
                *out = grown;
            }
            (*out)[(*n)++] = v;
        }
        fclose(f);
    }
    for (int64_t i = 0; i < *n; i++)
        if ((*out)[i] < 0 || (*out)[i] >= count) {
            long long v = (long long)(*out)[i];
            free(*out);
            *out = NULL;
            *n = 0;
            return err_set(err, AE_EARG, "--ids-from %s: id %lld is not in the database (ids 0..%lld)", path, v,
                           (long long)count - 1);
        }
    return AE_OK;
}

/* Rank 0: drops range hits whose reported distance exceeds the radius (the
 * cosine threshold was loosened by one float step; see search_query). */
static void range_filter(KnnRange *r, KnnMetric metric, double radius)
{
    int64_t at = 0, start = 0;
    for (int64_t i = 0; i < r->Q; i++) {
        for (int64_t h = start; h < r->lims[i + 1]; h++)
            if (search_out_dist(metric, r->dist[h]) <= radius) {
                r->ids[at] = r->ids[h];
                r->dist[at++] = r->dist[h];
            }
        start = r->lims[i + 1];
        r->lims[i + 1] = at;
    }
}

/* Rank 0: TSV or JSON results to cfg->out or stdout. */
static int write_results(const SearchConfig *cfg, const KnnRange *r, const Queries *qs, const VecDb *db,
                         const ClassNames *ln, KnnMetric metric, SearchMeta *meta, Err *err)
{
    AtomicFile af;
    FILE *f = stdout;
    if (cfg->out[0]) {
        if (atomic_open(&af, cfg->out, err)) return err->code;
        f = af.f;
    }
    json_t *root = NULL, *jq = NULL;
    if (cfg->json) {
        jq = json_array();
        root = json_pack("{s:s, s:i, s:o, s:o}", "metric", vecdb_metric_name(metric), "k", cfg->k, "radius",
                         cfg->has_radius ? json_real(cfg->radius) : json_null(), "queries", jq);
    } else {
        fprintf(f, "query\trank\tid\tdistance\tlabel\tsource\tclass\n");
    }
    for (int64_t i = 0; i < r->Q && err->code == AE_OK; i++) {
        json_t *list = cfg->json ? json_array() : NULL;
        for (int64_t h = r->lims[i]; h < r->lims[i + 1]; h++) {
            int32_t label = -1;
            const char *name = NULL;
            if (search_meta_get(meta, r->ids[h], &label, &name, err)) break;
            double d = search_out_dist(metric, r->dist[h]);
            long long rank = (long long)(h - r->lims[i] + 1);
            const char *cls = search_class_name(ln, db, r->ids[h], label);
            if (cfg->json)
                json_array_append_new(list, json_pack("{s:I, s:I, s:f, s:i, s:s, s:o}", "rank", (json_int_t)rank, "id",
                                                      (json_int_t)r->ids[h], "distance", d, "label", (int)label,
                                                      "source", name, "class", cls ? json_string(cls) : json_null()));
            else
                fprintf(f, "%lld\t%lld\t%lld\t%.9g\t%d\t%s\t%s\n", (long long)i, rank, (long long)r->ids[h], d,
                        (int)label, name, cls ? cls : "");
        }
        if (cfg->json)
            json_array_append_new(jq, json_pack("{s:I, s:s, s:o}", "query", (json_int_t)i, "name",
                                                qs->names + (size_t)i * IMGSET_NAME_BYTES, "results", list));
    }
    if (cfg->json && err->code == AE_OK) {
        json_dumpf(root, f, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        fputc('\n', f);
    }
    json_decref(root);
    if (cfg->out[0]) {
        if (err->code) atomic_abort(&af);
        else atomic_commit(&af, err);
    } else {
        fflush(stdout);
    }
    return err->code;
}

/* Rank 0: one row per query: its image, a gap, then its neighbours' images
 * read from the database's sources, each captioned with its distance and
 * label (class name where known: label_name). */
static int write_sheet(const SearchConfig *cfg, const KnnRange *r, const Queries *qs, const VecDb *db,
                       const ClassNames *ln, KnnMetric metric, SearchMeta *meta, Err *err)
{
    const int C = db->C, H = db->H, W = db->W;
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    int rows = r->Q < SHEET_MAX_ROWS ? (int)r->Q : SHEET_MAX_ROWS, most = 0;
    for (int i = 0; i < rows; i++) {
        int64_t c = r->lims[i + 1] - r->lims[i];
        if (c > most) most = c > SHEET_MAX_NEIGHBOURS ? SHEET_MAX_NEIGHBOURS : (int)c;
    }
    const int cols = 1 + most;
    const size_t cells = (size_t)rows * (size_t)cols;
    float *tiles = xcalloc(cells * chw, sizeof *tiles);
    SheetCaption *caps = xcalloc(cells, sizeof *caps);
    unsigned char *present = xcalloc(cells, 1);
    ImageSet *sets = xcalloc((size_t)db->n_sources, sizeof *sets);
    for (int i = 0; i < rows && err->code == AE_OK; i++) {
        memcpy(tiles + (size_t)i * (size_t)cols * chw, qs->img + (size_t)i * chw, chw * sizeof *tiles);
        present[(size_t)i * cols] = 1;
        /* The query's row in its source ("FILE#ROW"), else its file name. */
        const char *qname = qs->names + (size_t)i * IMGSET_NAME_BYTES, *hash = strrchr(qname, '#');
        const char *slash = strrchr(qname, '/');
        snprintf(caps[(size_t)i * cols].line[0], SHEET_CAPTION_BYTES, "query %d", i);
        snprintf(caps[(size_t)i * cols].line[1], SHEET_CAPTION_BYTES, "%s", hash ? hash : slash ? slash + 1 : qname);
        for (int j = 0; j < most && r->lims[i] + j < r->lims[i + 1]; j++) {
            const int64_t h = r->lims[i] + j, id = r->ids[h];
            const size_t t = (size_t)i * cols + 1 + (size_t)j;
            int s = search_source_of(db, id);
            if (s < 0 || (!sets[s].n && search_open_source(&sets[s], db, s, err))) break;
            imgset_get_f32(tiles + t * chw, &sets[s], id - db->sources[s].first_id);
            if (imgset_read_error(&sets[s], err)) break;
            int32_t label = -1;
            const char *src = NULL;
            if (search_meta_get(meta, id, &label, &src, err)) break;
            present[t] = 1;
            /* the reported distance, as in the TSV: squared L2, or 1 - cosine similarity */
            snprintf(caps[t].line[0], SHEET_CAPTION_BYTES, "d=%.3g", search_out_dist(metric, r->dist[h]));
            const char *cls = search_class_name(ln, db, id, label);
            if (label < 0)
                snprintf(caps[t].line[1], SHEET_CAPTION_BYTES, "no label");
            else if (cls)
                snprintf(caps[t].line[1], SHEET_CAPTION_BYTES, "%s", cls);
            else
                snprintf(caps[t].line[1], SHEET_CAPTION_BYTES, "label %d", (int)label);
        }
    }
    for (int s = 0; s < db->n_sources; s++) imgset_free(&sets[s]);
    free(sets);
    int side = H > W ? H : W, scale = (SHEET_TILE_PX + side - 1) / side;
    if (err->code == AE_OK)
        sheet_write(cfg->sheet, tiles, caps, present, rows, cols, C, H, W, scale < 1 ? 1 : scale, err);
    free(present);
    free(caps);
    free(tiles);
    return err->code;
}

/* Rank 0 reads the --ids-from file; every rank gets the list. */
static int share_filter_ids(const ParCtx *ctx, int64_t **ids, int64_t *n, const SearchConfig *cfg, int64_t count,
                            Err *err)
{
    *ids = NULL;
    *n = 0;
    if (ctx->rank == 0) read_id_file(ids, n, cfg->ids_from, count, err);
    if (par_agree(ctx, err)) return err->code;
    par_bcast(ctx, n, sizeof *n, 0);
    if (ctx->rank != 0) *ids = xmalloc((size_t)(*n > 0 ? *n : 1) * sizeof **ids);
    par_bcast(ctx, *ids, (size_t)*n * sizeof **ids, 0);
    return AE_OK;
}

int search_check_outputs(const ParCtx *ctx, const SearchConfig *cfg, Err *err)
{
    err_clear(err);
    if (ctx->rank == 0 && (cfg->cmd == SEARCH_QUERY || cfg->cmd == SEARCH_EVAL)) {
        if (cfg->out[0]) fileio_check_output(cfg->out, "--out", cfg->overwrite, err);
        if (!err->code && cfg->sheet[0]) fileio_check_output(cfg->sheet, "--sheet", cfg->overwrite, err);
    }
    /* An existing IVF index (another run's nlist, maybe tuned) is replaced
     * only when asked (a missing database: train-ivf's own error). */
    VecDb db;
    Err e;
    err_clear(&e);
    if (ctx->rank == 0 && cfg->cmd == SEARCH_TRAIN_IVF && !cfg->overwrite && vecdb_read(&db, cfg->db, &e) == AE_OK) {
        if (db.ivf_nlist > 0)
            err_set(err, AE_EIO, "%s already has an IVF index (nlist %d, centroids crc32 %08x): refusing to replace "
                    "it (hint: add --overwrite to replace it)", cfg->db, db.ivf_nlist, (unsigned)db.ivf_crc);
        vecdb_free(&db);
    }
    return par_agree(ctx, err);
}

int search_query(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err)
{
    err_clear(err);
    const double t0 = timer_now();
    VecDb db;
    vecdb_read(&db, cfg->db, err);
    if (par_agree(ctx, err)) return err->code;
    const KnnMetric metric = cfg->metric == SEARCH_METRIC_DEFAULT ? db.metric : (KnnMetric)cfg->metric;
    Model m;
    memset(&m, 0, sizeof m);
    Queries qs;
    memset(&qs, 0, sizeof qs);
    LocalShards ls;
    memset(&ls, 0, sizeof ls);
    SearchIvf si;
    memset(&si, 0, sizeof si);
    int64_t *filter_ids = NULL, n_filter = 0;
    TopK top;
    memset(&top, 0, sizeof top);
    KnnRange res;
    memset(&res, 0, sizeof res);
    SearchMeta meta;
    search_meta_init(&meta, &db);
    ClassNames ln; /* --class-names; n = 0 when not given */
    memset(&ln, 0, sizeof ln);
    if (ctx->rank == 0 && cfg->class_names[0]) class_names_read(&ln, cfg->class_names, err);
    if (par_agree(ctx, err)) goto done;
    if (cfg->model[0]) {
        uint32_t crc = 0;
        if (search_load_encoder(ctx, cfg->model, cfg->batch, nthreads, cfg->precision, &m, &crc, err)) goto done;
        search_check_model(&db, &m, crc, cfg->model, err);
        if (par_agree(ctx, err)) goto done;
    }
    if (ctx->rank == 0 && !load_queries(&qs, cfg, &m, &db, err)) search_whiten_queries(&db, qs.vec, qs.Q, err);
    if (par_agree(ctx, err)) goto done;
    par_bcast(ctx, &qs.Q, sizeof qs.Q, 0);
    if (ctx->rank != 0) qs.vec = xmalloc((size_t)qs.Q * (size_t)db.D * sizeof *qs.vec);
    if (ctx->rank == 0 && metric == KNN_IP) knn_normalize(qs.vec, qs.Q, db.D);
    par_bcast(ctx, qs.vec, (size_t)qs.Q * (size_t)db.D * sizeof *qs.vec, 0);
    if (cfg->ids_from[0] && share_filter_ids(ctx, &filter_ids, &n_filter, cfg, db.count, err)) goto done;
    SearchFilter filter = { cfg->labels, cfg->n_labels, filter_ids, n_filter, cfg->ids_from[0] != 0 };
    if (search_shards_open(ctx, &ls, &db, metric, &filter, err)) goto done;
    if (search_ivf_open(ctx, &si, cfg, &db, &ls, err)) goto done;
    par_err0(ctx, "query: %lld quer%s | %s: %lld vectors, D = %d, %d shard(s) over %d rank(s) | metric %s\n",
             (long long)qs.Q, qs.Q == 1 ? "y" : "ies", cfg->db, (long long)db.count, db.D, db.n_shards, ctx->size,
             vecdb_metric_name(metric));
    int64_t eligible = -1; /* with a filter: its eligible rows, summed over the ranks' shards */
    if (cfg->n_labels > 0 || cfg->ids_from[0]) {
        eligible = 0;
        for (int i = 0; i < ls.n; i++)
            for (int64_t j = 0; j < ls.dbs[i].M; j++) eligible += ls.masks[i] ? ls.masks[i][j] != 0 : 1;
        par_allreduce_sum_i64(ctx, &eligible, 1);
        if (eligible == 0)
            par_err0(ctx, "query: warning: the filter (%s) matches none of the %lld vectors: every result list "
                          "is empty\n",
                     cfg->n_labels > 0 && cfg->ids_from[0] ? "--label and --ids-from" : cfg->n_labels > 0 ? "--label" : "--ids-from",
                     (long long)db.count);
        else
            par_err0(ctx, "query: the filter leaves %lld of %lld vectors eligible\n", (long long)eligible,
                     (long long)db.count);
    }
    if (si.nprobe > 0)
        par_err0(ctx, "query: IVF index, %d lists, scanning the %d nearest per query (--exact: full scan)\n",
                 db.ivf_nlist, si.nprobe);
    if (cfg->k > 0) {
        /* k beyond the database returns all of it: no need for longer lists. */
        int k = cfg->k;
        if ((int64_t)k > db.count) k = db.count > 0 ? (int)db.count : 1;
        SearchQe qe;
        search_qe_resolve(&qe, cfg, &db, metric, err);
        if (par_agree(ctx, err)) goto done;
        if (qe.n > 0) par_err0(ctx, "query: alpha query expansion, n = %d, alpha = %g (--qe 0: off)\n", qe.n, qe.alpha);
        if (search_ivf_knn_qe(ctx, &top, qs.vec, qs.Q, db.D, &ls, &si, k, metric, &qe, nthreads, err)) goto done;
        if (ctx->rank == 0) search_topk_to_range(&res, &top, metric, cfg->has_radius, cfg->radius);
    } else {
        /* Threshold in the knn's units, never tighter than the radius; the
         * exact cut is made on the reported distance (range_filter). */
        float rad;
        if (metric == KNN_L2) {
            rad = (float)cfg->radius;
            if ((double)rad > cfg->radius) rad = nextafterf(rad, -INFINITY);
        } else {
            rad = nextafterf((float)(1.0 - cfg->radius), -INFINITY);
        }
        if (search_ivf_range(ctx, &res, qs.vec, qs.Q, &ls, &si, rad, metric, nthreads, err)) goto done;
        if (ctx->rank == 0) range_filter(&res, metric, cfg->radius);
    }
    if (ctx->rank == 0) {
        write_results(cfg, &res, &qs, &db, &ln, metric, &meta, err);
        if (!err->code && cfg->sheet[0]) write_sheet(cfg, &res, &qs, &db, &ln, metric, &meta, err);
    }
    if (par_agree(ctx, err)) goto done;
    if (ctx->rank == 0 && si.nprobe > 0 && eligible > 0 && cfg->k > 0 && !cfg->has_radius) {
        /* A filter applies inside the probed lists: they may hold fewer
         * than k eligible vectors although the database holds more. */
        const int64_t want = eligible < cfg->k ? eligible : cfg->k;
        int64_t short_q = 0;
        for (int64_t i = 0; i < res.Q; i++) short_q += res.lims[i + 1] - res.lims[i] < want;
        if (short_q)
            par_err0(ctx, "query: warning: %lld of %lld quer%s got fewer than %lld results: with an IVF index the "
                          "filter applies inside the %d probed lists, which held fewer eligible vectors (hint: "
                          "--exact, or a larger --nprobe)\n", (long long)short_q, (long long)res.Q,
                     res.Q == 1 ? "y" : "ies", (long long)want, si.nprobe);
    }
    if (ctx->rank == 0)
        par_err0(ctx, "query: %lld result(s) in %.2f s%s%s\n", (long long)res.lims[res.Q], timer_now() - t0,
                 cfg->sheet[0] ? " | sheet " : "", cfg->sheet);
done:
    class_names_free(&ln);
    search_meta_free(&meta);
    search_ivf_close(&si);
    search_shards_close(&ls);
    knn_range_free(&res);
    topk_free(&top);
    free(filter_ids);
    queries_free(&qs);
    if (cfg->model[0]) model_free(&m);
    vecdb_free(&db);
    return err->code;
}
