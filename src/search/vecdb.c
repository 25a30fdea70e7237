/*
 * vecdb.c - the on-disk vector database (see include/search/vecdb.h): the JSON
 * manifest (jansson), shard files written with npy_write / AtomicFile, and
 * shards mapped read-only with mmap(2) after checking their NumPy headers.
 *
 * Mapped shard files are parsed with npy.h's npy_header_read over the
 * mapped bytes, so only the header is read and the data stay mapped.
 * No MPI, no global state.
 */
#include "search/vecdb.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/check.h"
#include "base/fileio.h"
#include "base/mapguard.h"
#include "data/npy.h"
#include "search/whiten.h"

/* Hint closing every shard error. */
#define SHARD_HINT "hint: the shard is damaged or from another database; rebuild it with aesim-search index"

static const char *const FILE_SUFFIX[] = { "vectors.npy", "ids.npy", "labels.npy", "names.txt" };

const char *vecdb_metric_name(KnnMetric m) { return m == KNN_IP ? "cosine" : "l2"; }

int vecdb_metric_parse(KnnMetric *m, const char *text, const char *what, Err *err)
{
    if (strcmp(text, "l2") == 0) *m = KNN_L2;
    else if (strcmp(text, "cosine") == 0) *m = KNN_IP;
    else return err_set(err, AE_EARG, "%s: '%s' is not a metric (accepted: l2, cosine)", what, text);
    return AE_OK;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = xmalloc(n);
    memcpy(d, s, n);
    return d;
}

void vecdb_init(VecDb *db, const char *dir, uint32_t model_crc, const char *arch, int C, int H, int W,
                const char *checkpoint, int D, KnnMetric metric)
{
    memset(db, 0, sizeof *db);
    snprintf(db->dir, sizeof db->dir, "%s", dir);
    db->model_crc = model_crc;
    snprintf(db->arch, sizeof db->arch, "%s", arch);
    db->C = C;
    db->H = H;
    db->W = W;
    snprintf(db->checkpoint, sizeof db->checkpoint, "%s", checkpoint);
    db->D = D;
    db->metric = metric;
}

int vecdb_tta_parse(VecDbTta *t, const char *s, const char *what, Err *err)
{
    memset(t, 0, sizeof *t);
    if (strcmp(s, "none") == 0) return AE_OK;
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 4 && strncmp(p, "flip", 4) == 0) {
            t->flip = 1;
        } else if (n > 6 && strncmp(p, "shift:", 6) == 0) {
            char num[16];
            long v = 0;
            char *end = NULL;
            if (n - 6 < sizeof num) {
                memcpy(num, p + 6, n - 6);
                num[n - 6] = '\0';
                v = strtol(num, &end, 10);
            }
            if (!end || *end || v < 1 || v > VECDB_MAX_TTA_SHIFT)
                return err_set(err, AE_EARG, "%s: '%.*s': the shift must be an integer in 1..%d pixels", what, (int)n,
                               p, VECDB_MAX_TTA_SHIFT);
            t->shift = (int)v;
        } else {
            return err_set(err, AE_EARG, "%s: '%.*s' is unknown in '%s' (none, or a comma list of flip and "
                                         "shift:PIXELS, e.g. flip,shift:1)", what, (int)n, p, s);
        }
        if (!e) break;
        p = e + 1;
    }
    return AE_OK;
}

const char *vecdb_tta_name(const VecDbTta *t, char *buf, size_t cap)
{
    if (!t->flip && !t->shift) snprintf(buf, cap, "none");
    else if (!t->shift) snprintf(buf, cap, "flip");
    else snprintf(buf, cap, "%sshift:%d", t->flip ? "flip," : "", t->shift);
    return buf;
}

int vecdb_tta_views(const VecDbTta *t)
{
    return (1 + (t->flip != 0)) * (t->shift > 0 ? 5 : 1);
}

void vecdb_free(VecDb *db)
{
    if (!db) return;
    for (int i = 0; i < db->n_sources; i++) {
        VecDbSource *s = &db->sources[i];
        for (int j = 0; j < s->n_items; j++) free(s->items[j].path);
        free(s->items);
        free(s->spec);
        vecdb_set_classes(s, NULL, 0);
    }
    free(db->sources);
    free(db->shards);
    memset(db, 0, sizeof *db);
}

void vecdb_add_source(VecDb *db, const char *spec, int n_items, const char *const *paths, const int64_t *counts)
{
    VecDbSource *list = xmalloc((size_t)(db->n_sources + 1) * sizeof *list);
    if (db->n_sources) memcpy(list, db->sources, (size_t)db->n_sources * sizeof *list);
    free(db->sources);
    db->sources = list;
    VecDbSource *s = &list[db->n_sources++];
    s->spec = xstrdup(spec);
    s->first_id = db->count;
    s->count = 0;
    s->pixel_mean = -1.0; /* unknown until vecdb_set_pixel_mean */
    s->n_classes = 0;
    s->classes = NULL;
    s->n_items = n_items;
    s->items = xcalloc((size_t)n_items, sizeof *s->items);
    for (int j = 0; j < n_items; j++) {
        s->items[j].path = xstrdup(paths[j]);
        s->items[j].count = counts[j];
        s->count += counts[j];
    }
}

int vecdb_item_path(char *out, size_t cap, const VecDb *db, const char *item, Err *err)
{
    int k = item[0] == '/' ? snprintf(out, cap, "%s", item) : snprintf(out, cap, "%s/%s", db->dir, item);
    if (k < 0 || (size_t)k >= cap) return err_set(err, AE_EARG, "the path of %s in %s is too long", item, db->dir);
    return AE_OK;
}

void vecdb_set_classes(VecDbSource *s, const char *const *names, int n)
{
    for (int i = 0; i < s->n_classes; i++) free(s->classes[i]);
    free(s->classes);
    s->classes = NULL;
    s->n_classes = 0;
    if (n <= 0) return;
    s->classes = xcalloc((size_t)n, sizeof *s->classes);
    for (int i = 0; i < n; i++) s->classes[i] = xstrdup(names[i] ? names[i] : "");
    s->n_classes = n;
}

void vecdb_add_shard(VecDb *db, int64_t count)
{
    VecDbShard *list = xmalloc((size_t)(db->n_shards + 1) * sizeof *list);
    if (db->n_shards) memcpy(list, db->shards, (size_t)db->n_shards * sizeof *list);
    free(db->shards);
    db->shards = list;
    list[db->n_shards].count = count;
    list[db->n_shards].first_id = db->count;
    db->n_shards++;
    db->count += count;
}

int vecdb_shard_path(char *out, size_t cap, const char *dir, int shard, VecDbFile file, Err *err)
{
    int k = snprintf(out, cap, "%s/shard-%05d.%s", dir, shard, FILE_SUFFIX[file]);
    if (k < 0 || (size_t)k >= cap) return err_set(err, AE_EARG, "%.200s...: database path too long", dir);
    return AE_OK;
}

int vecdb_shard_owner(int shard, int P) { return shard % P; }

int vecdb_shard_of(const VecDb *db, int64_t id)
{
    if (id < 0 || id >= db->count) return -1;
    int lo = 0, hi = db->n_shards - 1;
    /* The last shard with first_id <= id.  An empty shard shares its
     * first_id with the next non-empty one, which comes later, so the last
     * such shard is never empty. */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (db->shards[mid].first_id <= id) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* ------------------------------------------------------------ manifest */

static json_t *shard_json(const VecDbShard *s, int number)
{
    return json_pack("{s:i, s:I, s:I, s:I}", "shard", number, "count", (json_int_t)s->count, "first_id",
                     (json_int_t)s->first_id, "last_id", (json_int_t)(s->first_id + s->count - 1));
}

int vecdb_write_manifest(const VecDb *db, Err *err)
{
    char crc[16];
    snprintf(crc, sizeof crc, "%08" PRIx32, db->model_crc);
    json_t *sources = json_array(), *shards = json_array();
    for (int i = 0; i < db->n_sources; i++) {
        const VecDbSource *s = &db->sources[i];
        json_t *items = json_array();
        for (int j = 0; j < s->n_items; j++)
            json_array_append_new(items, json_pack("{s:s, s:I}", "path", s->items[j].path, "count",
                                                   (json_int_t)s->items[j].count));
        json_t *js = json_pack("{s:s, s:I, s:I, s:o}", "spec", s->spec, "first_id", (json_int_t)s->first_id, "count",
                               (json_int_t)s->count, "items", items);
        CHECK(js != NULL);
        if (s->pixel_mean >= 0) json_object_set_new(js, "pixel_mean", json_real(s->pixel_mean));
        if (s->n_classes > 0) {
            json_t *cls = json_array();
            for (int c = 0; c < s->n_classes; c++) json_array_append_new(cls, json_string(s->classes[c]));
            json_object_set_new(js, "classes", cls);
        }
        json_array_append_new(sources, js);
    }
    for (int i = 0; i < db->n_shards; i++) json_array_append_new(shards, shard_json(&db->shards[i], i));
    json_t *root = json_pack("{s:s, s:i, s:{s:s, s:s, s:[i,i,i], s:s}, s:i, s:I, s:s, s:o, s:o}", "format",
                             VECDB_FORMAT, "version", VECDB_VERSION, "model", "crc32", crc, "arch", db->arch,
                             "input_shape", db->C, db->H, db->W, "checkpoint", db->checkpoint, "dim", db->D,
                             "count", (json_int_t)db->count, "metric", vecdb_metric_name(db->metric), "sources",
                             sources, "shards", shards);
    CHECK(root != NULL);
    if (db->whiten) json_object_set_new(root, "transform", json_string("whiten"));
    if (db->whiten && db->whiten_dim > 0) json_object_set_new(root, "whiten_dim", json_integer(db->whiten_dim));
    if (vecdb_tta_views(&db->tta) > 1) {
        char tta[64];
        json_object_set_new(root, "tta", json_string(vecdb_tta_name(&db->tta, tta, sizeof tta)));
    }
    if (db->qe_n > 0)
        json_object_set_new(root, "query_expansion", json_pack("{s:i, s:f}", "n", db->qe_n, "alpha", db->qe_alpha));
    if (db->ivf_nlist > 0) {
        char icrc[16], file[64];
        snprintf(icrc, sizeof icrc, "%08" PRIx32, db->ivf_crc);
        snprintf(file, sizeof file, "ivf-%s.centroids.npy", icrc);
        CHECK(json_object_set_new(root, "version", json_integer(VECDB_VERSION_IVF)) == 0);
        json_t *ivf = json_pack("{s:i, s:s, s:s}", "nlist", db->ivf_nlist, "crc32", icrc, "centroids", file);
        CHECK(ivf != NULL);
        if (db->ivf_normalized) CHECK(json_object_set_new(ivf, "normalized", json_true()) == 0);
        CHECK(json_object_set_new(root, "ivf", ivf) == 0);
    }
    char path[VECDB_PATH_BYTES + 32];
    snprintf(path, sizeof path, "%s/%s", db->dir, VECDB_MANIFEST);
    AtomicFile af;
    int rc = atomic_open(&af, path, err);
    if (rc == AE_OK) {
        if (json_dumpf(root, af.f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 || fputc('\n', af.f) == EOF) {
            atomic_abort(&af);
            rc = err_set(err, AE_EIO, "cannot write %s: %s", path, strerror(errno));
        } else {
            rc = atomic_commit(&af, err);
        }
    }
    json_decref(root);
    return rc;
}

/* Typed member lookups that name the key in the error. */
static json_t *member(json_t *obj, const char *key, int type, const char *path, const char *where, Err *err)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || (int)json_typeof(v) != type) {
        static const char *const NAMES[] = { "an object", "an array", "a string", "an integer", "a number",
                                             "true", "false", "null" };
        err_set(err, AE_EFORMAT,
                "%s: %s'%s' is missing or not %s (hint: the manifest was edited or damaged; rebuild the database "
                "with aesim-search index)",
                path, where, key, NAMES[type]);
        return NULL;
    }
    return v;
}

static int get_i64(int64_t *out, json_t *obj, const char *key, int64_t lo, const char *path, const char *where,
                   Err *err)
{
    json_t *v = member(obj, key, JSON_INTEGER, path, where, err);
    if (!v) return AE_EFORMAT;
    *out = json_integer_value(v);
    if (*out < lo)
        return err_set(err, AE_EFORMAT, "%s: %s'%s' = %lld is below %lld (hint: the manifest is damaged)", path,
                       where, key, (long long)*out, (long long)lo);
    return AE_OK;
}

static int read_sources(VecDb *db, json_t *arr, const char *path, Err *err)
{
    int64_t next = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *s = json_array_get(arr, i), *spec, *items;
        char where[64];
        snprintf(where, sizeof where, "sources[%zu].", i);
        int64_t first, count;
        if (!(spec = member(s, "spec", JSON_STRING, path, where, err)) ||
            get_i64(&first, s, "first_id", 0, path, where, err) || get_i64(&count, s, "count", 0, path, where, err) ||
            !(items = member(s, "items", JSON_ARRAY, path, where, err)))
            return AE_EFORMAT;
        size_t n = json_array_size(items);
        if (n > INT32_MAX) return err_set(err, AE_EFORMAT, "%s: %s'items' is too long", path, where);
        const char **paths = xcalloc(n ? n : 1, sizeof *paths);
        int64_t *counts = xcalloc(n ? n : 1, sizeof *counts);
        int rc = AE_OK;
        for (size_t j = 0; j < n && rc == AE_OK; j++) {
            char w2[96];
            snprintf(w2, sizeof w2, "sources[%zu].items[%zu].", i, j);
            json_t *it = json_array_get(items, j), *p = member(it, "path", JSON_STRING, path, w2, err);
            if (!p) rc = AE_EFORMAT;
            else if (!(rc = get_i64(&counts[j], it, "count", 0, path, w2, err))) paths[j] = json_string_value(p);
        }
        if (rc == AE_OK) {
            vecdb_add_source(db, json_string_value(spec), (int)n, paths, counts);
            VecDbSource *src = &db->sources[db->n_sources - 1];
            src->first_id = first;
            /* Optional (added after version 1's first release): older
             * manifests have no pixel_mean, which is then unknown. */
            json_t *mean = json_object_get(s, "pixel_mean");
            if (mean && json_is_number(mean) && json_number_value(mean) >= 0 && json_number_value(mean) <= 1)
                src->pixel_mean = json_number_value(mean);
            else if (mean)
                rc = err_set(err, AE_EFORMAT, "%s: %s'pixel_mean' is not a number in [0, 1] (hint: the manifest is "
                             "damaged)", path, where);
            /* Optional: the class names of its labels (issue 13). */
            json_t *cls = json_object_get(s, "classes");
            size_t nc = json_is_array(cls) ? json_array_size(cls) : 0;
            for (size_t c = 0; rc == AE_OK && c < nc; c++)
                if (!json_is_string(json_array_get(cls, c)))
                    rc = err_set(err, AE_EFORMAT, "%s: %s'classes'[%zu] is not a string (hint: the manifest is "
                                 "damaged)", path, where, c);
            if (rc == AE_OK && cls && (!json_is_array(cls) || nc > INT32_MAX))
                rc = err_set(err, AE_EFORMAT, "%s: %s'classes' is not a list of names (hint: the manifest is "
                             "damaged)", path, where);
            if (rc == AE_OK && nc) {
                const char **names = xcalloc(nc, sizeof *names);
                for (size_t c = 0; c < nc; c++) names[c] = json_string_value(json_array_get(cls, c));
                vecdb_set_classes(src, names, (int)nc);
                free(names);
            }
            if (rc == AE_OK && (src->count != count || first != next))
                rc = err_set(err, AE_EFORMAT,
                             "%s: sources[%zu] has first_id %lld and count %lld but its items add up to %lld and it "
                             "should start at %lld (hint: the manifest is damaged)",
                             path, i, (long long)first, (long long)count, (long long)src->count, (long long)next);
        }
        free(paths);
        free(counts);
        if (rc) return rc;
        next += count;
    }
    if (next != db->count)
        return err_set(err, AE_EFORMAT, "%s: the sources hold %lld images but 'count' is %lld (hint: the manifest "
                                        "is damaged)", path, (long long)next, (long long)db->count);
    return AE_OK;
}

static int read_shards(VecDb *db, json_t *arr, const char *path, Err *err)
{
    int64_t total = db->count;
    db->count = 0;
    if (json_array_size(arr) > INT32_MAX) return err_set(err, AE_EFORMAT, "%s: too many shards", path);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *s = json_array_get(arr, i);
        char where[64];
        snprintf(where, sizeof where, "shards[%zu].", i);
        int64_t number, count, first, last;
        if (get_i64(&number, s, "shard", 0, path, where, err) || get_i64(&count, s, "count", 0, path, where, err) ||
            get_i64(&first, s, "first_id", 0, path, where, err) || get_i64(&last, s, "last_id", -1, path, where, err))
            return AE_EFORMAT;
        if (number != (int64_t)i || first != db->count || last != first + count - 1)
            return err_set(err, AE_EFORMAT,
                           "%s: shards[%zu] = {shard %lld, first_id %lld, last_id %lld, count %lld} but shard %zu "
                           "should start at id %lld with last_id = first_id + count - 1 (hint: the manifest is "
                           "damaged)",
                           path, i, (long long)number, (long long)first, (long long)last, (long long)count, i,
                           (long long)db->count);
        vecdb_add_shard(db, count);
    }
    if (db->count != total)
        return err_set(err, AE_EFORMAT, "%s: the shards hold %lld vectors but 'count' is %lld (hint: the manifest "
                                        "is damaged)", path, (long long)db->count, (long long)total);
    return AE_OK;
}

/* The "ivf" object of a version-2 manifest. */
static int read_ivf(VecDb *db, json_t *root, const char *path, Err *err)
{
    json_t *ivf, *crc, *file;
    int64_t nlist;
    if (!(ivf = member(root, "ivf", JSON_OBJECT, path, "", err)) || get_i64(&nlist, ivf, "nlist", 1, path, "ivf.", err) ||
        !(crc = member(ivf, "crc32", JSON_STRING, path, "ivf.", err)) ||
        !(file = member(ivf, "centroids", JSON_STRING, path, "ivf.", err)))
        return AE_EFORMAT;
    char *end = NULL, want[64];
    unsigned long long c = strtoull(json_string_value(crc), &end, 16);
    snprintf(want, sizeof want, "ivf-%s.centroids.npy", json_string_value(crc));
    if (!*json_string_value(crc) || *end || c > UINT32_MAX || nlist > INT32_MAX ||
        strcmp(want, json_string_value(file)) != 0)
        return err_set(err, AE_EFORMAT, "%s: bad ivf.crc32, ivf.nlist or ivf.centroids (hint: the manifest is "
                                        "damaged; rebuild the index with aesim-search train-ivf)", path);
    json_t *norm = json_object_get(ivf, "normalized");
    if (norm && !json_is_boolean(norm))
        return err_set(err, AE_EFORMAT, "%s: ivf.normalized must be true or false (hint: the manifest is damaged; "
                                        "rebuild the index with aesim-search train-ivf --overwrite)", path);
    db->ivf_nlist = (int)nlist;
    db->ivf_crc = (uint32_t)c;
    db->ivf_normalized = norm && json_is_true(norm);
    return AE_OK;
}

int vecdb_read(VecDb *db, const char *dir, Err *err)
{
    memset(db, 0, sizeof *db);
    char path[VECDB_PATH_BYTES + 32];
    snprintf(path, sizeof path, "%s/%s", dir, VECDB_MANIFEST);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(err, AE_EIO, "database folder %s: %s (hint: build it with aesim-search index --db %s)", dir,
                       stat(dir, &st) != 0 ? strerror(errno) : "not a folder", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        if (stat(path, &st) != 0)
            return err_set(err, AE_EIO, "%s: %s (hint: %s is not an aesim database; build one with aesim-search "
                                        "index)", path, strerror(errno), dir);
        return err_set(err, AE_EFORMAT, "%s: invalid JSON at line %d column %d: %s (hint: the manifest is damaged; "
                                        "rebuild the database)", path, jerr.line, jerr.column, jerr.text);
    }
    snprintf(db->dir, sizeof db->dir, "%s", dir);
    json_t *fmt, *model, *crc, *arch, *shape, *ckpt, *metric, *sources, *shards;
    int64_t version = 0, dim = 0, count = 0;
    int rc = AE_EFORMAT;
    if (!(fmt = member(root, "format", JSON_STRING, path, "", err))) goto done;
    if (strcmp(json_string_value(fmt), VECDB_FORMAT) != 0) {
        err_set(err, AE_EFORMAT, "%s: format '%s' is not '%s' (hint: not an aesim database)", path,
                json_string_value(fmt), VECDB_FORMAT);
        goto done;
    }
    if (get_i64(&version, root, "version", 0, path, "", err)) goto done;
    if (version != VECDB_VERSION && version != VECDB_VERSION_IVF) {
        err_set(err, AE_EFORMAT, "%s: database format version %lld, this aesim reads versions %d and %d (hint: "
                                 "rebuild it with this aesim-search)", path, (long long)version, VECDB_VERSION,
                VECDB_VERSION_IVF);
        goto done;
    }
    if (!(model = member(root, "model", JSON_OBJECT, path, "", err)) ||
        !(crc = member(model, "crc32", JSON_STRING, path, "model.", err)) ||
        !(arch = member(model, "arch", JSON_STRING, path, "model.", err)) ||
        !(shape = member(model, "input_shape", JSON_ARRAY, path, "model.", err)) ||
        !(ckpt = member(model, "checkpoint", JSON_STRING, path, "model.", err)) ||
        get_i64(&dim, root, "dim", 1, path, "", err) || get_i64(&count, root, "count", 0, path, "", err) ||
        !(metric = member(root, "metric", JSON_STRING, path, "", err)) ||
        !(sources = member(root, "sources", JSON_ARRAY, path, "", err)) ||
        !(shards = member(root, "shards", JSON_ARRAY, path, "", err)))
        goto done;
    char *end = NULL;
    unsigned long long c = strtoull(json_string_value(crc), &end, 16);
    int64_t s[3] = { 0, 0, 0 };
    for (int i = 0; i < 3; i++) {
        json_t *v = json_array_get(shape, (size_t)i);
        s[i] = json_is_integer(v) ? json_integer_value(v) : 0;
    }
    if (!*json_string_value(crc) || *end || c > UINT32_MAX || json_array_size(shape) != 3 || s[0] < 1 ||
        s[1] < 1 || s[2] < 1 || s[0] > INT32_MAX || s[1] > INT32_MAX || s[2] > INT32_MAX || dim > INT32_MAX ||
        strlen(json_string_value(arch)) >= sizeof db->arch) {
        err_set(err, AE_EFORMAT, "%s: bad model.crc32, model.input_shape, model.arch or dim (hint: the manifest is "
                                 "damaged; rebuild the database)", path);
        goto done;
    }
    db->model_crc = (uint32_t)c;
    snprintf(db->arch, sizeof db->arch, "%s", json_string_value(arch));
    snprintf(db->checkpoint, sizeof db->checkpoint, "%s", json_string_value(ckpt));
    db->C = (int)s[0];
    db->H = (int)s[1];
    db->W = (int)s[2];
    db->D = (int)dim;
    char what[VECDB_PATH_BYTES + 64];
    snprintf(what, sizeof what, "%s: 'metric'", path);
    if (vecdb_metric_parse(&db->metric, json_string_value(metric), what, err)) {
        err->code = AE_EFORMAT;
        goto done;
    }
    json_t *transform = json_object_get(root, "transform"); /* optional (issue 17) */
    if (transform && !(json_is_string(transform) && strcmp(json_string_value(transform), "whiten") == 0)) {
        err_set(err, AE_EFORMAT, "%s: 'transform' must be \"whiten\" when present (hint: the manifest is damaged, "
                                 "or written by a newer aesim)", path);
        goto done;
    }
    db->whiten = transform != NULL;
    json_t *wdim = json_object_get(root, "whiten_dim"); /* optional */
    if (wdim && (!db->whiten || !json_is_integer(wdim) || json_integer_value(wdim) < 1 ||
                 json_integer_value(wdim) >= db->D)) {
        err_set(err, AE_EFORMAT, "%s: 'whiten_dim' must be an integer in 1 .. %d (below 'dim') and needs "
                                 "\"transform\": \"whiten\" (hint: the manifest is damaged)", path, db->D - 1);
        goto done;
    }
    db->whiten_dim = wdim ? (int)json_integer_value(wdim) : 0;
    json_t *tta = json_object_get(root, "tta"), *qe = json_object_get(root, "query_expansion");
    if (tta) {
        char what[VECDB_PATH_BYTES + 64];
        snprintf(what, sizeof what, "%s: 'tta'", path);
        if (!json_is_string(tta)) {
            err_set(err, AE_EFORMAT, "%s must be a string such as \"flip,shift:1\" (hint: the manifest is damaged)",
                    what);
            goto done;
        }
        if (vecdb_tta_parse(&db->tta, json_string_value(tta), what, err)) {
            err->code = AE_EFORMAT;
            goto done;
        }
    }
    if (qe) {
        json_t *qn = json_object_get(qe, "n"), *qa = json_object_get(qe, "alpha");
        if (!json_is_integer(qn) || json_integer_value(qn) < 1 || json_integer_value(qn) > VECDB_MAX_QE ||
            !json_is_number(qa) || !(json_number_value(qa) >= 0 && json_number_value(qa) <= VECDB_MAX_QE_ALPHA)) {
            err_set(err, AE_EFORMAT, "%s: 'query_expansion' must be {\"n\": 1..%d, \"alpha\": 0..%g} (hint: the "
                                     "manifest is damaged)", path, VECDB_MAX_QE, VECDB_MAX_QE_ALPHA);
            goto done;
        }
        db->qe_n = (int)json_integer_value(qn);
        db->qe_alpha = json_number_value(qa);
    }
    db->count = count;
    if (read_sources(db, sources, path, err)) goto done;
    db->count = count;
    if ((rc = read_shards(db, shards, path, err)) == AE_OK && version == VECDB_VERSION_IVF) rc = read_ivf(db, root, path, err);
done:
    json_decref(root);
    if (rc) vecdb_free(db);
    return rc;
}

/* -------------------------------------------------------------- shards */

int vecdb_write_shard(const char *dir, int shard, const float *x, const int32_t *labels, const char *const *names,
                      int64_t n, int D, int64_t first_id, Err *err)
{
    for (int64_t j = 0; j < n; j++)
        if (strchr(names[j], '\n') || strlen(names[j]) >= VECDB_NAME_BYTES)
            return err_set(err, AE_EARG, "name of image %lld holds a newline or is longer than %d bytes",
                           (long long)(first_id + j), VECDB_NAME_BYTES - 1);
    char path[VECDB_PATH_BYTES];
    int64_t *ids = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
    for (int64_t j = 0; j < n; j++) ids[j] = first_id + j;
    static const float no_x[1] = { 0 };
    static const int32_t no_labels[1] = { 0 };
    NpyArray a[3] = {
        { .dtype = NPY_F32, .ndim = 2, .shape = { n, D }, .data = (void *)(x ? x : no_x) },
        { .dtype = NPY_I64, .ndim = 1, .shape = { n }, .data = ids },
        { .dtype = NPY_I32, .ndim = 1, .shape = { n }, .data = (void *)(labels ? labels : no_labels) },
    };
    int rc = AE_OK;
    for (int f = VECDB_VECTORS; f <= VECDB_LABELS && rc == AE_OK; f++)
        if (!(rc = vecdb_shard_path(path, sizeof path, dir, shard, (VecDbFile)f, err)))
            rc = npy_write(path, &a[f], err);
    free(ids);
    if (rc) return rc;
    if ((rc = vecdb_shard_path(path, sizeof path, dir, shard, VECDB_NAMES, err))) return rc;
    AtomicFile af;
    if ((rc = atomic_open(&af, path, err))) return rc;
    for (int64_t j = 0; j < n; j++)
        if (fputs(names[j], af.f) == EOF || fputc('\n', af.f) == EOF) {
            int e = errno;
            atomic_abort(&af);
            return err_set(err, AE_EIO, "cannot write %s: %s", path, strerror(e));
        }
    return atomic_commit(&af, err);
}

/* npy_header_read source over a mapped file. */
typedef struct MemReader {
    const unsigned char *p;
    size_t size, off;
    const char *path;
} MemReader;

static int mem_read(void *ctx, void *buf, uint64_t n, Err *err)
{
    MemReader *r = ctx;
    if (n > r->size - r->off)
        return err_set(err, AE_EFORMAT, "%s: truncated inside the .npy header (%s)", r->path, SHARD_HINT);
    memcpy(buf, r->p + r->off, (size_t)n);
    r->off += (size_t)n;
    return AE_OK;
}

/* Maps path and checks it is a C-order little-endian .npy of type `dtype`
 * and shape shape[ndim] whose size is exactly header + data (npy.h's
 * npy_header_read parses the header).  On success (*base, *bytes) is the
 * whole mapping and *data its element data. */
static int map_npy(void **base, size_t *bytes, const void **data, const char *path, NpyDtype dtype, int ndim,
                   const int64_t *shape, Err *err)
{
    *base = NULL;
    *bytes = 0;
    if (fileio_check_input(path, err)) return err->code;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(err, AE_EIO, "cannot open shard file %s: %s (%s)", path, strerror(errno), SHARD_HINT);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(err, AE_EIO, "cannot stat %s: %s", path, strerror(e));
    }
    if (st.st_size == 0) {
        close(fd);
        return err_set(err, AE_EFORMAT, "%s: empty file (%s)", path, SHARD_HINT);
    }
    size_t size = (size_t)st.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return err_set(err, AE_EIO, "cannot mmap %s: %s", path, strerror(e));
    MemReader rd = { m, size, 0, path };
    NpyHeader hd;
    char why[192] = "";
    if (npy_header_read(&hd, mem_read, &rd, size, path, err)) {
        munmap(m, size);
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "damaged shard file: %.990s", err->msg); /* npy.h's message has its hint */
        return err_set(err, AE_EFORMAT, "%s", msg);
    }
    if (hd.dtype != dtype || hd.big_endian)
        snprintf(why, sizeof why, "dtype %s%s is not %s", hd.big_endian ? ">" : "", npy_dtype_descr(hd.dtype),
                 npy_dtype_descr(dtype));
    else if (hd.fortran_order)
        snprintf(why, sizeof why, "the array is in Fortran order");
    else if (hd.ndim != ndim)
        snprintf(why, sizeof why, "has %d dimensions, expected %d", hd.ndim, ndim);
    else if (hd.shape[0] != shape[0])
        snprintf(why, sizeof why, "has %lld rows but the manifest says %lld", (long long)hd.shape[0],
                 (long long)shape[0]);
    else if (ndim == 2 && hd.shape[1] != shape[1])
        snprintf(why, sizeof why, "has %lld columns but the manifest says D = %lld", (long long)hd.shape[1],
                 (long long)shape[1]);
    else if (hd.data_offset % npy_dtype_size(dtype) != 0)
        snprintf(why, sizeof why, "data offset %llu is not aligned to its %zu-byte elements",
                 (unsigned long long)hd.data_offset, npy_dtype_size(dtype));
    if (why[0]) {
        munmap(m, size);
        return err_set(err, AE_EFORMAT, "%s: %s (%s)", path, why, SHARD_HINT);
    }
    *base = m;
    *bytes = size;
    *data = (const unsigned char *)m + hd.data_offset;
    mapguard_register(m, size, path); /* a clear end if the file shrinks under us */
    return AE_OK;
}

int vecdb_shard_map(VecShard *s, const VecDb *db, int shard, unsigned want, Err *err)
{
    memset(s, 0, sizeof *s);
    if (shard < 0 || shard >= db->n_shards)
        return err_set(err, AE_EARG, "shard %d does not exist (the database has %d)", shard, db->n_shards);
    s->shard = shard;
    s->count = db->shards[shard].count;
    s->first_id = db->shards[shard].first_id;
    s->D = db->D;
    static const NpyDtype DTYPE[3] = { NPY_F32, NPY_I64, NPY_I32 };
    const int64_t shape[2] = { s->count, db->D };
    const void *data[3] = { NULL, NULL, NULL };
    for (int f = VECDB_VECTORS; f <= VECDB_LABELS; f++) {
        if (!(want & (1u << f))) continue;
        char path[VECDB_PATH_BYTES];
        int rc = vecdb_shard_path(path, sizeof path, db->dir, shard, (VecDbFile)f, err);
        if (!rc) rc = map_npy(&s->map[f], &s->map_bytes[f], &data[f], path, DTYPE[f], f == 0 ? 2 : 1, shape, err);
        if (rc) {
            vecdb_shard_unmap(s);
            return rc;
        }
    }
    s->x = data[VECDB_VECTORS];
    s->ids = data[VECDB_IDS];
    s->labels = data[VECDB_LABELS];
    if (s->ids)
        for (int64_t j = 0; j < s->count; j++)
            if (s->ids[j] != s->first_id + j) {
                char path[VECDB_PATH_BYTES];
                vecdb_shard_path(path, sizeof path, db->dir, shard, VECDB_IDS, NULL);
                err_set(err, AE_EFORMAT, "%s: row %lld holds id %lld but the manifest gives this shard ids %lld..%lld "
                                         "(%s)", path, (long long)j, (long long)s->ids[j], (long long)s->first_id,
                        (long long)(s->first_id + s->count - 1), SHARD_HINT);
                vecdb_shard_unmap(s);
                return AE_EFORMAT;
            }
    return AE_OK;
}

void vecdb_shard_unmap(VecShard *s)
{
    if (!s) return;
    for (int f = 0; f < 3; f++)
        if (s->map[f]) {
            mapguard_unregister(s->map[f]);
            munmap(s->map[f], s->map_bytes[f]);
        }
    memset(s, 0, sizeof *s);
}

int vecdb_read_names(char **names, const VecDb *db, int shard, Err *err)
{
    *names = NULL;
    char path[VECDB_PATH_BYTES];
    int rc = vecdb_shard_path(path, sizeof path, db->dir, shard, VECDB_NAMES, err);
    if (rc) return rc;
    if (fileio_check_input(path, err)) return err->code;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open shard file %s: %s (%s)", path, strerror(errno), SHARD_HINT);
    int64_t n = db->shards[shard].count;
    char *out = xcalloc((size_t)(n > 0 ? n : 1), VECDB_NAME_BYTES);
    char line[VECDB_NAME_BYTES + 2];
    int64_t j = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n' || len > VECDB_NAME_BYTES) {
            rc = err_set(err, AE_EFORMAT, "%s: line %lld is too long or not ended by a newline (%s)", path,
                         (long long)(j + 1), SHARD_HINT);
            break;
        }
        if (j < n) memcpy(out + (size_t)j * VECDB_NAME_BYTES, line, len - 1);
        j++;
    }
    fclose(f);
    if (rc == AE_OK && j != n)
        rc = err_set(err, AE_EFORMAT, "%s: %lld names but the manifest says %lld vectors (%s)", path, (long long)j,
                     (long long)n, SHARD_HINT);
    if (rc) {
        free(out);
        return rc;
    }
    *names = out;
    return AE_OK;
}

int vecdb_read_names_packed(char **text, int64_t **offsets, const VecDb *db, int shard, Err *err)
{
    *text = NULL;
    *offsets = NULL;
    char path[VECDB_PATH_BYTES];
    int rc = vecdb_shard_path(path, sizeof path, db->dir, shard, VECDB_NAMES, err);
    if (rc) return rc;
    if (fileio_check_input(path, err)) return err->code;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open shard file %s: %s (%s)", path, strerror(errno), SHARD_HINT);
    const int64_t n = db->shards[shard].count;
    int64_t *offs = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *offs);
    size_t cap = 4096, used = 0;
    char *out = xmalloc(cap);
    char line[VECDB_NAME_BYTES + 2];
    int64_t j = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n' || len > VECDB_NAME_BYTES) {
            rc = err_set(err, AE_EFORMAT, "%s: line %lld is too long or not ended by a newline (%s)", path,
                         (long long)(j + 1), SHARD_HINT);
            break;
        }
        if (j < n) {
            if (used + len > cap) {
                while (used + len > cap) cap *= 2;
                char *grown = xmalloc(cap);
                memcpy(grown, out, used);
                free(out);
                out = grown;
            }
            offs[j] = (int64_t)used;
            memcpy(out + used, line, len - 1);
            out[used + len - 1] = '\0';
            used += len;
        }
        j++;
    }
    fclose(f);
    if (rc == AE_OK && j != n)
        rc = err_set(err, AE_EFORMAT, "%s: %lld names but the manifest says %lld vectors (%s)", path, (long long)j,
                     (long long)n, SHARD_HINT);
    if (rc) {
        free(out);
        free(offs);
        return rc;
    }
    *text = out;
    *offsets = offs;
    return AE_OK;
}

/* 1 for the names a database's writers write: the manifest, shard-*,
 * ivf-* (centroids), whiten.npz and serve's added-*.npz. */
static int db_own_name(const char *name)
{
    return strcmp(name, VECDB_MANIFEST) == 0 || strcmp(name, WHITEN_FILE) == 0 || strncmp(name, "shard-", 6) == 0 ||
           strncmp(name, "ivf-", 4) == 0 || strncmp(name, "added-", 6) == 0;
}

int vecdb_remove_stale_temps(const char *dir)
{
    return fileio_remove_dead_temps(dir, db_own_name, NULL);
}
