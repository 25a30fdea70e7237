/*
 * dataset.c - loads images from npz (downsampled ImageNet) or IDX (MNIST)
 * files into one uint8 NCHW block, concatenates several sources, converts
 * to float and splits off a validation set (see include/dataset.h).
 *
 * Does not augment, normalise per channel or stream from disk: the whole
 * dataset lives in memory (Fashion-MNIST train is 47 MB, Imagenet32 one
 * batch ~ 400 MB).  Loading is serial; dataset_get_batch_f32 uses OpenMP
 * over images (owner-writes, no BLAS inside).  No MPI.
 */
#include "dataset.h"

#include "check.h"
#include "idx.h"
#include "npy.h"
#include "rng.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Pixel scale: uint8 0..255 maps to float 0..1. */
#define PIXEL_MAX 255.0f
/* Channels of the downsampled-ImageNet rows (R, G, B planes). */
#define NPZ_CHANNELS 3
/* Longest path we build (folder + file name), bytes incl. NUL. */
#define DATASET_PATH_BYTES 4096
/* File-kind signatures: zip local header "PK", gzip 0x1f 0x8b, IDX 0 0. */
#define SNIFF_BYTES 4
/* IDX name parts swapped to find the labels file next to the images. */
#define IDX_IMAGES_TAG "images-idx3"
#define IDX_LABELS_TAG "labels-idx1"
/* A batch gather below this many output floats stays serial: thread start-up
 * (~ microseconds) would cost more than the copy. */
#define DATASET_OMP_MIN_FLOATS 65536
/* Alignment of the pixel block, as xmalloc (check.c). */
#define DATASET_ALIGN 64

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

void dataset_free(Dataset *ds)
{
    if (!ds) return;
    free(ds->pixels);
    free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

/* Converts an integer label array to int32 in out[n]; -1 if the dtype is not
 * an integer or a value does not fit in int32. */
static int labels_to_i32(int32_t *out, const NpyArray *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        switch (a->dtype) {
        case NPY_U8: v = ((const uint8_t *)a->data)[i]; break;
        case NPY_I8: v = ((const int8_t *)a->data)[i]; break;
        case NPY_I16: v = ((const int16_t *)a->data)[i]; break;
        case NPY_U16: v = ((const uint16_t *)a->data)[i]; break;
        case NPY_I32: v = ((const int32_t *)a->data)[i]; break;
        case NPY_U32: v = ((const uint32_t *)a->data)[i]; break;
        case NPY_I64: v = ((const int64_t *)a->data)[i]; break;
        case NPY_U64: {
            uint64_t u = ((const uint64_t *)a->data)[i];
            if (u > INT32_MAX) return -1;
            v = (int64_t)u;
            break;
        }
        default: return -1;
        }
        if (v < INT32_MIN || v > INT32_MAX) return -1;
        out[i] = (int32_t)v;
    }
    return 0;
}

/* Integer square root: the S with S*S == q, or -1 if q is not a square. */
static int64_t exact_isqrt(int64_t q)
{
    if (q < 0) return -1;
    int64_t s = (int64_t)sqrt((double)q);
    while (s > 0 && s * s > q) s--;
    while ((s + 1) * (s + 1) <= q) s++;
    return s * s == q ? s : -1;
}

static void set_source(Dataset *ds, const char *path)
{
    snprintf(ds->source, sizeof ds->source, "%.3900s (%" PRId64 " images %dx%dx%d%s)", path, ds->n, ds->C, ds->H,
             ds->W, ds->labels ? ", labelled" : "");
}

/* Downsampled-ImageNet npz: 'data' uint8 (N, 3*S*S) and optional 'labels'. */
static int load_npz(Dataset *ds, const char *path, Err *err)
{
    static const char *const wanted[] = {"data", "labels"};
    NpyArray *arr = NULL;
    int narr = 0;
    if (npz_read_only(path, wanted, 2, &arr, &narr, err)) return err->code;
    NpyArray *data = NULL;
    const NpyArray *labels = npz_find(arr, narr, "labels");
    for (int i = 0; i < narr; i++)
        if (strcmp(arr[i].name, "data") == 0) data = &arr[i];
    int rc = AE_OK;
    char shp[64];
    if (!data) {
        rc = err_set(err, AE_EFORMAT,
                     "%s has no member 'data' (hint: expected the downsampled-ImageNet layout: data uint8 (N, 3*S*S), "
                     "labels (N,))",
                     path);
        goto done;
    }
    if (data->dtype != NPY_U8 || data->ndim != 2) {
        snprintf(shp, sizeof shp, "%d-D", data->ndim);
        rc = err_set(err, AE_EFORMAT,
                     "%s: member 'data' is %s %s, expected uint8 of shape (N, 3*S*S) (hint: save images as "
                     "uint8 rows of R, G, B planes)",
                     path, npy_dtype_descr(data->dtype), shp);
        goto done;
    }
    int64_t n = data->shape[0], row = data->shape[1];
    int64_t s = row % NPZ_CHANNELS == 0 ? exact_isqrt(row / NPZ_CHANNELS) : -1;
    if (s <= 0 || s > INT_MAX) {
        rc = err_set(err, AE_EFORMAT,
                     "%s: 'data' rows have %" PRId64 " values, not 3*S*S for an integer S > 0 (hint: each row must "
                     "hold the R, G and B planes of an SxS image)",
                     path, row);
        goto done;
    }
    if (n == 0) {
        rc = err_set(err, AE_EFORMAT, "%s: 'data' holds no images (hint: check the file)", path);
        goto done;
    }
    int32_t *lab = NULL;
    if (labels) {
        if (labels->ndim != 1 || labels->shape[0] != n) {
            rc = err_set(err, AE_EFORMAT,
                         "%s: 'labels' has %d dimensions and %" PRId64 " entries for %" PRId64
                         " images (hint: labels must be a (N,) integer array)",
                         path, labels->ndim, labels->ndim ? labels->shape[0] : 1, n);
            goto done;
        }
        lab = alloc_or_null((size_t)n * sizeof *lab);
        if (!lab) {
            rc = err_set(err, AE_ENOMEM, "%s: cannot allocate %" PRId64 " labels", path, n);
            goto done;
        }
        if (labels_to_i32(lab, labels, n)) {
            free(lab);
            rc = err_set(err, AE_EFORMAT,
                         "%s: 'labels' (%s) is not an integer array with values in int32 range (hint: save labels "
                         "as integers)",
                         path, npy_dtype_descr(labels->dtype));
            goto done;
        }
    }
    /* The rows are already [C][H][W] per image: take the buffer as is. */
    ds->n = n;
    ds->C = NPZ_CHANNELS;
    ds->H = ds->W = (int)s;
    ds->pixels = data->data;
    data->data = NULL;
    ds->labels = lab;
    set_source(ds, path);
done:
    npz_free(arr, narr);
    return rc;
}

/* Path of the labels file next to an IDX images file: "images-idx3" in the
 * last path component replaced by "labels-idx1".  Returns 0 and fills out
 * if the name has the tag, -1 otherwise. */
static int idx_labels_path(char *out, size_t cap, const char *images)
{
    const char *slash = strrchr(images, '/');
    const char *base = slash ? slash + 1 : images;
    const char *tag = strstr(base, IDX_IMAGES_TAG);
    if (!tag) return -1;
    int k = snprintf(out, cap, "%.*s%s%s", (int)(tag - images), images, IDX_LABELS_TAG, tag + strlen(IDX_IMAGES_TAG));
    return k > 0 && (size_t)k < cap ? 0 : -1;
}

/* IDX images (n, H, W) plus the labels file next to it, if any. */
static int load_idx(Dataset *ds, const char *path, Err *err)
{
    uint8_t *pix = NULL;
    int nd;
    int64_t dims[IDX_MAX_DIMS];
    if (idx_read_u8(path, &pix, &nd, dims, err)) return err->code;
    if (nd != 3 || dims[0] == 0 || dims[1] == 0 || dims[2] == 0 || dims[1] > INT_MAX || dims[2] > INT_MAX) {
        free(pix);
        return err_set(err, AE_EFORMAT,
                       "%s: IDX images must have 3 non-zero dimensions (n, rows, cols); this file has %d (first %" PRId64
                       ") (hint: pass the images file, not the labels file)",
                       path, nd, dims[0]);
    }
    int32_t *lab = NULL;
    char lpath[DATASET_PATH_BYTES];
    struct stat st;
    if (idx_labels_path(lpath, sizeof lpath, path) == 0 && stat(lpath, &st) == 0) {
        uint8_t *l8 = NULL;
        int lnd;
        int64_t ldims[IDX_MAX_DIMS];
        if (idx_read_u8(lpath, &l8, &lnd, ldims, err)) {
            free(pix);
            return err->code;
        }
        if (lnd != 1 || ldims[0] != dims[0]) {
            free(pix);
            free(l8);
            return err_set(err, AE_EFORMAT,
                           "%s: labels file has %d dimensions and %" PRId64 " labels but %s has %" PRId64
                           " images (hint: the labels file must belong to the images file)",
                           lpath, lnd, ldims[0], path, dims[0]);
        }
        lab = alloc_or_null((size_t)dims[0] * sizeof *lab);
        if (!lab) {
            free(pix);
            free(l8);
            return err_set(err, AE_ENOMEM, "%s: cannot allocate %" PRId64 " labels", lpath, dims[0]);
        }
        for (int64_t i = 0; i < dims[0]; i++) lab[i] = l8[i];
        free(l8);
    }
    ds->n = dims[0];
    ds->C = 1;
    ds->H = (int)dims[1];
    ds->W = (int)dims[2];
    ds->pixels = pix;
    ds->labels = lab;
    set_source(ds, path);
    return AE_OK;
}

/* One source: a file (kind from its first bytes) or an MNIST-layout folder. */
static int load_one(Dataset *ds, const char *path, Err *err)
{
    memset(ds, 0, sizeof *ds);
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path; separate several sources with commas)",
                       path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char file[DATASET_PATH_BYTES];
        int k = snprintf(file, sizeof file, "%s/%s.gz", path, DATASET_IDX_TRAIN_IMAGES);
        if (k < 0 || (size_t)k >= sizeof file) return err_set(err, AE_EIO, "%.200s...: path too long", path);
        if (stat(file, &st) != 0) {
            snprintf(file, sizeof file, "%s/%s", path, DATASET_IDX_TRAIN_IMAGES);
            if (stat(file, &st) != 0)
                return err_set(err, AE_EIO,
                               "folder %s holds neither %s.gz nor %s (hint: give a Fashion-MNIST/MNIST folder, an "
                               "IDX file or an npz)",
                               path, DATASET_IDX_TRAIN_IMAGES, DATASET_IDX_TRAIN_IMAGES);
        }
        return load_idx(ds, file, err);
    }
    uint8_t head[SNIFF_BYTES] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check permissions)", path, strerror(errno));
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got >= 2 && head[0] == 'P' && head[1] == 'K') return load_npz(ds, path, err);
    if (got >= 2 && ((head[0] == 0x1f && head[1] == 0x8b) || (head[0] == 0 && head[1] == 0)))
        return load_idx(ds, path, err);
    return err_set(err, AE_EFORMAT,
                   "%s: not an npz (zip) nor an IDX file (plain or gzip): first bytes %02x %02x %02x %02x, %zu bytes "
                   "read (hint: give a downsampled-ImageNet .npz, an MNIST IDX file or its folder)",
                   path, head[0], head[1], head[2], head[3], got);
}

/* Appends ", text" (or "text" when empty) to dst, truncating. */
static void append_source(char *dst, size_t cap, const char *text)
{
    size_t k = strlen(dst);
    for (const char *s = k ? ", " : ""; *s && k + 1 < cap; s++) dst[k++] = *s;
    for (const char *s = text; *s && k + 1 < cap; s++) dst[k++] = *s;
    dst[k] = '\0';
}

int dataset_open(Dataset *ds, const char *spec, Err *err)
{
    memset(ds, 0, sizeof *ds);
    if (!spec || !*spec)
        return err_set(err, AE_EARG, "no dataset given (hint: give an .npz, an IDX file or a folder; several separated by commas)");
    size_t len = strlen(spec);
    int nparts = 1;
    for (size_t i = 0; i < len; i++) nparts += spec[i] == ',';
    char *buf = xmalloc(len + 1);
    memcpy(buf, spec, len + 1);
    Dataset *parts = xcalloc((size_t)nparts, sizeof *parts);
    int loaded = 0, rc = AE_OK;
    char *item = buf;
    for (int p = 0; p < nparts; p++) {
        char *comma = strchr(item, ',');
        if (comma) *comma = '\0';
        if (!*item) {
            rc = err_set(err, AE_EARG, "empty item in the dataset list '%.900s' (hint: separate paths with single commas)",
                         spec);
            break;
        }
        rc = load_one(&parts[p], item, err);
        if (rc) break;
        loaded++;
        const Dataset *a = &parts[0], *b = &parts[p];
        if (b->C != a->C || b->H != a->H || b->W != a->W) {
            rc = err_set(err, AE_ESHAPE,
                         "%.400s has images of %dx%dx%d (CxHxW) but %.400s has %dx%dx%d (hint: concatenated sources "
                         "must have the same channels and size)",
                         a->source, a->C, a->H, a->W, b->source, b->C, b->H, b->W);
            break;
        }
        item = comma ? comma + 1 : item + strlen(item);
    }
    if (rc == AE_OK && nparts == 1) {
        *ds = parts[0];
        loaded = 0;
    } else if (rc == AE_OK) {
        int64_t img = dataset_image_bytes(&parts[0]), n = 0;
        int all_labels = 1;
        for (int p = 0; p < nparts; p++) {
            n += parts[p].n;
            all_labels &= parts[p].labels != NULL;
        }
        uint8_t *pix = alloc_or_null((size_t)(n * img));
        int32_t *lab = all_labels ? alloc_or_null((size_t)n * sizeof *lab) : NULL;
        if (!pix || (all_labels && !lab)) {
            free(pix);
            free(lab);
            rc = err_set(err, AE_ENOMEM, "cannot allocate %" PRId64 " images for '%.900s' (hint: free memory)", n, spec);
        } else {
            int64_t at = 0;
            for (int p = 0; p < nparts; p++) {
                memcpy(pix + at * img, parts[p].pixels, (size_t)(parts[p].n * img));
                if (lab) memcpy(lab + at, parts[p].labels, (size_t)parts[p].n * sizeof *lab);
                at += parts[p].n;
                append_source(ds->source, sizeof ds->source, parts[p].source);
            }
            ds->n = n;
            ds->C = parts[0].C;
            ds->H = parts[0].H;
            ds->W = parts[0].W;
            ds->pixels = pix;
            ds->labels = lab;
        }
    }
    for (int p = 0; p < loaded; p++) dataset_free(&parts[p]);
    free(parts);
    free(buf);
    if (rc) memset(ds, 0, sizeof *ds);
    return rc;
}

void dataset_get_f32(float *out, const Dataset *ds, int64_t i)
{
    assert(i >= 0 && i < ds->n);
    int64_t img = dataset_image_bytes(ds);
    const uint8_t *p = ds->pixels + i * img;
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

/* Copies the images with keep[i] == want from src into dst (in order). */
static void copy_subset(Dataset *dst, const Dataset *src, const uint8_t *in_val, uint8_t want, int64_t count,
                        const char *role)
{
    int64_t img = dataset_image_bytes(src);
    dst->n = count;
    dst->C = src->C;
    dst->H = src->H;
    dst->W = src->W;
    dst->pixels = xmalloc((size_t)(count * img));
    dst->labels = src->labels ? xmalloc((size_t)count * sizeof *dst->labels) : NULL;
    int64_t k = 0;
    for (int64_t i = 0; i < src->n; i++) {
        if (in_val[i] != want) continue;
        memcpy(dst->pixels + k * img, src->pixels + i * img, (size_t)img);
        if (dst->labels) dst->labels[k] = src->labels[i];
        k++;
    }
    assert(k == count);
    snprintf(dst->source, sizeof dst->source, "%.3900s [%s: %" PRId64 " of %" PRId64 "]", src->source, role, count,
             src->n);
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
    copy_subset(train, src, in_val, 0, src->n - nval, "train");
    copy_subset(val, src, in_val, 1, nval, "val");
    free(idx);
    free(in_val);
    return AE_OK;
}
