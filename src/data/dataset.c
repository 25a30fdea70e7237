/*
 * dataset.c - the Dataset of include/data/dataset.h: opens every source of a
 * spec (image_source.h), keeps mapped ones mapped and decodes the others
 * straight into one block, concatenates, converts to float, and splits
 * off a validation set (as views, without copying pixels).
 *
 * Storage: a refcounted DatasetStore holds the open sources (mappings,
 * names) and the in-memory block, cut into segments (one per source);
 * every Dataset made from it (the opened one, the train/val views of
 * dataset_split) holds a reference and, for views, its own row index.
 * Does not augment or normalise.  Loading is serial apart from the
 * sources' own OpenMP decoding; dataset_get_batch_f32 uses OpenMP over
 * images (owner-writes, no BLAS inside).  No MPI.
 */
#include "data/dataset.h"

#include "base/check.h"
#include "data/image_source.h"
#include "base/rng.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Pixel scale: uint8 0..255 maps to float 0..1. */
#define PIXEL_MAX 255.0f
/* A batch gather below this many output floats stays serial: thread start-up
 * (~ microseconds) would cost more than the copy. */
#define DATASET_OMP_MIN_FLOATS 65536
/* Alignment of the pixel block, as xmalloc (check.c). */
#define DATASET_ALIGN 64

/* A run of images with the same origin. */
typedef struct Segment {
    int64_t first;        /* physical index of its first image */
    int64_t n;
    const uint8_t *pix;   /* [n][C][H][W] (mapped pages or part of the block) */
    ImageSource *src;     /* where it came from (names) */
    int64_t *src_rows;    /* [n] row in src of each image when some were skipped; NULL = identity */
} Segment;

typedef struct DatasetStore {
    int refs;
    int n_seg;
    Segment *seg;         /* [n_seg], in order */
    uint8_t *block;       /* the in-memory images, owned (may be NULL) */
    ImageSource **srcs;   /* kept open for mappings and names */
    int n_src;
    int bad;              /* 1 once a read found a damaged block (atomic; claimed by the first) */
    int bad_done;         /* 1 once bad_err is complete (atomic) */
    Err bad_err;          /* the first such error */
} DatasetStore;

struct DatasetImpl {
    DatasetStore *st;
    int64_t *rows;        /* [n] physical index of each image (views), or NULL = identity */
};

/* Allocation sized by the files' contents: failing is AE_ENOMEM for the
 * caller, not a fatal error, so this does not use xmalloc.  Free with free(). */
static void *alloc_or_null(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, DATASET_ALIGN, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

int64_t dataset_image_bytes(const Dataset *ds)
{
    return (int64_t)ds->C * ds->H * ds->W;
}

static void store_unref(DatasetStore *st)
{
    if (!st || --st->refs > 0) return;
    for (int i = 0; i < st->n_seg; i++) free(st->seg[i].src_rows);
    free(st->seg);
    free(st->block);
    image_source_close_all(st->srcs, st->n_src);
    free(st);
}

void dataset_free(Dataset *ds)
{
    if (!ds) return;
    if (ds->impl) {
        store_unref(ds->impl->st);
        free(ds->impl->rows);
        free(ds->impl);
    } else {
        free(ds->pixels);
    }
    free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

/* Segment holding physical image p. */
static const Segment *find_segment(const DatasetStore *st, int64_t p)
{
    int lo = 0, hi = st->n_seg - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (st->seg[mid].first <= p) lo = mid;
        else hi = mid - 1;
    }
    return &st->seg[lo];
}

const uint8_t *dataset_image(const Dataset *ds, int64_t i)
{
    assert(i >= 0 && i < ds->n);
    int64_t img = dataset_image_bytes(ds);
    if (ds->pixels) return ds->pixels + i * img;
    int64_t p = ds->impl->rows ? ds->impl->rows[i] : i;
    DatasetStore *st = ds->impl->st;
    const Segment *s = find_segment(st, p);
    if (s->src && s->src->block_crc && s->src->mapped) {
        /* mapped segments have no skipped rows: p - first is the store row */
        Err e;
        err_clear(&e);
        if (image_source_check(s->src, p - s->first, 1, &e) && !__atomic_exchange_n(&st->bad, 1, __ATOMIC_ACQ_REL)) {
            st->bad_err = e;
            __atomic_store_n(&st->bad_done, 1, __ATOMIC_RELEASE);
        }
    }
    return s->pix + (p - s->first) * img;
}

int dataset_read_error(const Dataset *ds, Err *err)
{
    if (!ds->impl || !__atomic_load_n(&ds->impl->st->bad_done, __ATOMIC_ACQUIRE)) return AE_OK;
    *err = ds->impl->st->bad_err;
    return err->code;
}

void dataset_prefetch(const Dataset *ds, const int64_t *idx, int64_t first, int64_t count)
{
    if (!ds->impl) return; /* a hand-made Dataset: in memory */
    const int64_t img = dataset_image_bytes(ds);
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int64_t k = 0; k < count; k++) {
        const int64_t i = idx ? idx[k] : first + k;
        if (i < 0 || i >= ds->n) continue;
        int64_t p = ds->impl->rows ? ds->impl->rows[i] : i;
        const Segment *s = find_segment(ds->impl->st, p);
        if (!s->src || !s->src->mapped) continue; /* in memory already */
        uintptr_t a = (uintptr_t)(s->pix + (p - s->first) * img), b = a + (uintptr_t)img;
        a -= a % page;
        madvise((void *)a, (size_t)(b - a), MADV_WILLNEED);
    }
}

void dataset_get_u8(uint8_t *out, const Dataset *ds, int64_t i)
{
    memcpy(out, dataset_image(ds, i), (size_t)dataset_image_bytes(ds));
}

int32_t dataset_label(const Dataset *ds, int64_t i)
{
    assert(i >= 0 && i < ds->n);
    return ds->labels ? ds->labels[i] : -1;
}

int dataset_name(char *out, size_t cap, const Dataset *ds, int64_t i)
{
    assert(i >= 0 && i < ds->n && cap >= 1);
    out[0] = '\0';
    if (!ds->impl) return 0;
    int64_t p = ds->impl->rows ? ds->impl->rows[i] : i;
    const Segment *s = find_segment(ds->impl->st, p);
    int64_t r = p - s->first;
    if (s->src_rows) r = s->src_rows[r];
    return s->src ? image_source_name(s->src, r, out, cap) : 0;
}

const char *dataset_origin(const Dataset *ds, int64_t i, int64_t *row)
{
    assert(i >= 0 && i < ds->n);
    *row = i;
    if (!ds->impl) return NULL;
    int64_t p = ds->impl->rows ? ds->impl->rows[i] : i;
    const Segment *s = find_segment(ds->impl->st, p);
    int64_t r = p - s->first;
    *row = s->src_rows ? s->src_rows[r] : r;
    return s->src ? s->src->path : NULL;
}

int dataset_verify(const ParCtx *ctx, const Dataset *ds, VerifyStats *st, Err *err)
{
    err_clear(err);
    int n = 0;
    const DatasetStore *s = ds->impl ? ds->impl->st : NULL;
    VerifyMember *m = xcalloc((size_t)(s && s->n_src ? s->n_src : 1), sizeof *m);
    for (int i = 0; s && i < s->n_src; i++) {
        const ImageSource *src = s->srcs[i];
        if (!src || !src->verify_pending) continue;
        m[n++] = (VerifyMember){ .fd = src->za.fd, .path = src->path, .member = src->verify_entry.name,
                                 .offset = src->verify_entry.data_offset, .size = src->verify_entry.size,
                                 .crc = src->verify_entry.crc };
    }
    /* Every rank must walk the same list (the same spec opened everywhere). */
    int64_t mine = n, first = n;
    par_bcast(ctx, &first, sizeof first, 0);
    if (mine != first)
        err_set(err, AE_EFORMAT, "rank %d opened %d member(s) to verify but rank 0 opened %lld (hint: every rank must "
                "see the same --data files)", ctx->rank, n, (long long)first);
    if (par_agree(ctx, err) == AE_OK && n > 0) verify_members(ctx, m, n, st, err);
    free(m);
    return err->code;
}

int dataset_class_names(const Dataset *ds, const char *const **names)
{
    *names = NULL;
    if (!ds->impl) return 0;
    const DatasetStore *st = ds->impl->st;
    for (int i = 0; i < st->n_src; i++)
        if (st->srcs[i] && st->srcs[i]->n_classes > 0) {
            *names = (const char *const *)st->srcs[i]->classes;
            return st->srcs[i]->n_classes;
        }
    return 0;
}

/* Appends ", text" (or "text" when empty) to dst, truncating. */
static void append_source(char *dst, size_t cap, const char *text)
{
    size_t k = strlen(dst);
    for (const char *s = k ? ", " : ""; *s && k + 1 < cap; s++) dst[k++] = *s;
    for (const char *s = text; *s && k + 1 < cap; s++) dst[k++] = *s;
    dst[k] = '\0';
}

/* Reads the non-mapped source s into block[0..) in windows, dropping
 * skipped images; *kept receives the count, seg->src_rows the source rows
 * when something was skipped. */
static int read_source(ImageSource *s, uint8_t *block, Segment *seg, int64_t *kept, Err *err)
{
    int64_t img = (int64_t)s->C * s->H * s->W;
    int64_t per = IMAGE_SOURCE_WINDOW_BYTES / img;
    if (per < 1) per = 1;
    uint8_t *ok = xmalloc((size_t)(per < s->n ? per : s->n));
    int64_t out = 0;
    int rc = AE_OK;
    for (int64_t at = 0; at < s->n && rc == AE_OK; at += per) {
        int64_t m = s->n - at < per ? s->n - at : per;
        uint8_t *dst = block + out * img;
        rc = image_source_read(s, at, m, dst, ok, err);
        if (rc) break;
        for (int64_t k = 0; k < m; k++) {
            if (!ok[k]) {
                if (!seg->src_rows) {
                    seg->src_rows = xmalloc((size_t)s->n * sizeof *seg->src_rows);
                    for (int64_t j = 0; j < out; j++) seg->src_rows[j] = j;
                }
                continue;
            }
            if (block + out * img != dst + k * img) memmove(block + out * img, dst + k * img, (size_t)img);
            if (seg->src_rows) seg->src_rows[out] = at + k;
            out++;
        }
    }
    free(ok);
    *kept = out;
    return rc;
}

static void describe(char *out, size_t cap, const ImageSource *s, int64_t kept)
{
    char extra[IMAGE_SOURCE_NOTE_BYTES + 64] = "";
    if (s->n_skipped)
        snprintf(extra, sizeof extra, ", %" PRId64 " bad files skipped, first: %.600s", s->n_skipped, s->skip_note);
    snprintf(out, cap, "%.3000s (%" PRId64 " images %dx%dx%d%s%s%s)", s->path, kept, s->C, s->H, s->W,
             s->labels ? ", labelled" : "", s->mapped ? ", mapped" : "", extra);
}

int dataset_open(Dataset *ds, const char *spec, Err *err)
{
    return dataset_open_opts(ds, spec, NULL, err);
}

int dataset_open_opts(Dataset *ds, const char *spec, const DatasetOptions *opts, Err *err)
{
    memset(ds, 0, sizeof *ds);
    ImageSource **srcs;
    int ns;
    if (image_source_open_spec(&srcs, &ns, spec, opts, err)) return err->code;
    const ImageSource *a = srcs[0];
    char da[DATASET_SOURCE_BYTES], db[DATASET_SOURCE_BYTES];
    for (int i = 1; i < ns; i++) {
        const ImageSource *b = srcs[i];
        if (b->C != a->C || b->H != a->H || b->W != a->W) {
            describe(da, sizeof da, a, a->n);
            describe(db, sizeof db, b, b->n);
            err_set(err, AE_ESHAPE, "%.400s has images of %dx%dx%d (CxHxW) but %.400s has %dx%dx%d (hint: concatenated "
                    "sources must have the same channels and size; set ?size= and ?channels=)", da, a->C, a->H, a->W, db,
                    b->C, b->H, b->W);
            image_source_close_all(srcs, ns);
            return AE_ESHAPE;
        }
    }
    int64_t img = (int64_t)a->C * a->H * a->W, in_memory = 0, total = 0;
    int all_labels = 1, n_mapped = 0;
    for (int i = 0; i < ns; i++) {
        if (!srcs[i]->mapped) in_memory += srcs[i]->n;
        all_labels &= srcs[i]->labels != NULL;
        n_mapped += srcs[i]->mapped != NULL;
    }
    DatasetStore *st = xcalloc(1, sizeof *st);
    st->refs = 1;
    st->srcs = srcs;
    st->n_src = ns;
    st->seg = xcalloc((size_t)ns, sizeof *st->seg);
    int rc = AE_OK;
    if (in_memory > 0) {
        st->block = alloc_or_null((size_t)(in_memory * img));
        if (!st->block)
            rc = err_set(err, AE_ENOMEM, "cannot allocate %" PRId64 " images of %" PRId64 " bytes for '%.900s' (hint: "
                         "free memory, or pack the data with aesim-pack so it can be mapped)", in_memory, img, spec);
    }
    int64_t cursor = 0, skipped = 0;
    for (int i = 0; i < ns && rc == AE_OK; i++) {
        ImageSource *s = srcs[i];
        Segment *g = &st->seg[st->n_seg];
        g->first = total;
        g->src = s;
        int64_t kept = s->n;
        if (s->mapped) {
            g->pix = s->mapped;
        } else {
            g->pix = st->block + cursor * img;
            rc = read_source(s, st->block + cursor * img, g, &kept, err);
            cursor += kept;
        }
        if (rc) break;
        g->n = kept;
        skipped += s->n_skipped;
        ds->n_resized += s->n_resized;
        total += kept;
        if (kept > 0) st->n_seg++;
        else {
            free(g->src_rows);
            g->src_rows = NULL;
        }
        describe(da, sizeof da, s, kept);
        append_source(ds->source, sizeof ds->source, da);
        if (s->gap_note[0]) append_source(ds->warning, sizeof ds->warning, s->gap_note);
    }
    if (rc == AE_OK && total == 0)
        rc = err_set(err, AE_EFORMAT, "no images in '%.900s'%s (hint: check the files)", spec,
                     skipped ? ": every file was bad and skipped" : "");
    if (rc == AE_OK && all_labels) {
        ds->labels = alloc_or_null((size_t)total * sizeof *ds->labels);
        if (!ds->labels) rc = err_set(err, AE_ENOMEM, "cannot allocate %" PRId64 " labels", total);
        for (int i = 0; rc == AE_OK && i < st->n_seg; i++) {
            const Segment *g = &st->seg[i];
            for (int64_t k = 0; k < g->n; k++)
                ds->labels[g->first + k] = g->src->labels[g->src_rows ? g->src_rows[k] : k];
        }
    }
    if (rc) {
        free(ds->labels);
        store_unref(st);
        memset(ds, 0, sizeof *ds);
        return rc;
    }
    ds->n = total;
    ds->C = a->C;
    ds->H = a->H;
    ds->W = a->W;
    ds->n_skipped = skipped;
    /* One segment: a plain pointer (read-only when mapped), unless its
     * records are CRC-checked as they are read (dataset_image). */
    const ImageSource *s0 = st->n_seg == 1 ? st->seg[0].src : NULL;
    if (st->n_seg == 1 && !(s0 && s0->block_crc && s0->mapped)) ds->pixels = (uint8_t *)st->seg[0].pix;
    else if (n_mapped == 0) ds->pixels = st->block;
    ds->impl = xcalloc(1, sizeof *ds->impl);
    ds->impl->st = st;
    return AE_OK;
}

void dataset_get_f32(float *out, const Dataset *ds, int64_t i)
{
    int64_t img = dataset_image_bytes(ds);
    const uint8_t *p = dataset_image(ds, i);
    for (int64_t k = 0; k < img; k++) out[k] = (float)p[k] / PIXEL_MAX;
}

void dataset_get_batch_f32(float *out, const Dataset *ds, const int64_t *idx, int64_t count)
{
    int64_t img = dataset_image_bytes(ds);
    /* Each iteration writes its own image of out (owner-writes). */
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (count * img >= DATASET_OMP_MIN_FLOATS)
#endif
    for (int64_t k = 0; k < count; k++) dataset_get_f32(out + k * img, ds, idx[k]);
}

/* Makes dst the images of src with in_val[i] == want (in order): a view
 * sharing src's store, or a copy for a hand-made src. */
static void take_subset(Dataset *dst, const Dataset *src, const uint8_t *in_val, uint8_t want, int64_t count,
                        const char *role)
{
    int64_t img = dataset_image_bytes(src);
    dst->n = count;
    dst->C = src->C;
    dst->H = src->H;
    dst->W = src->W;
    dst->labels = src->labels ? xmalloc((size_t)count * sizeof *dst->labels) : NULL;
    int64_t *rows = NULL;
    if (src->impl) {
        dst->impl = xcalloc(1, sizeof *dst->impl);
        dst->impl->st = src->impl->st;
        dst->impl->st->refs++;
        rows = dst->impl->rows = xmalloc((size_t)count * sizeof *rows);
    } else {
        dst->pixels = xmalloc((size_t)(count * img));
    }
    int64_t k = 0;
    for (int64_t i = 0; i < src->n; i++) {
        if (in_val[i] != want) continue;
        if (rows) rows[k] = src->impl->rows ? src->impl->rows[i] : i;
        else memcpy(dst->pixels + k * img, src->pixels + i * img, (size_t)img);
        if (dst->labels) dst->labels[k] = src->labels[i];
        k++;
    }
    assert(k == count);
    snprintf(dst->source, sizeof dst->source, "%.3900s [%s: %" PRId64 " of %" PRId64 "]", src->source, role, count,
             src->n);
    snprintf(dst->warning, sizeof dst->warning, "%s", src->warning);
}

int dataset_split(Dataset *train, Dataset *val, const Dataset *src, double frac, uint64_t seed, Err *err)
{
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    if (!(frac > 0.0 && frac < 1.0))
        return err_set(err, AE_EARG, "validation fraction %g for %.900s is not in (0, 1) (hint: e.g. 0.1)", frac,
                       src->source);
    int64_t nval = (int64_t)llround(frac * (double)src->n);
    if (nval < 1) nval = 1;
    if (nval >= src->n)
        return err_set(err, AE_EARG,
                       "validation fraction %g of %" PRId64 " images in %.900s leaves no training images (hint: use a "
                       "smaller fraction or more data)",
                       frac, src->n, src->source);
    /* Partial Fisher-Yates: the first nval entries of a random permutation
     * are a uniformly random nval-subset. */
    int64_t *idx = xmalloc((size_t)src->n * sizeof *idx);
    uint8_t *in_val = xcalloc((size_t)src->n, 1);
    for (int64_t i = 0; i < src->n; i++) idx[i] = i;
    Rng r;
    rng_seed(&r, seed, RNG_STREAM_SPLIT);
    for (int64_t i = 0; i < nval; i++) {
        int64_t j = i + (int64_t)rng_below(&r, (uint64_t)(src->n - i));
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
        in_val[idx[i]] = 1;
    }
    take_subset(train, src, in_val, 0, src->n - nval, "train");
    take_subset(val, src, in_val, 1, nval, "val");
    free(idx);
    free(in_val);
    return AE_OK;
}
