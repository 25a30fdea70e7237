/*
 * image_source.c - opening sources (kind detection, wildcards, folders of
 * batch files), NumPy / IDX array sources, and the windowed, converting
 * reader (see include/data/image_source.h).
 *
 * Array records are read with pread (RAW_FILE) or from a stream (deflated
 * npz member, gzip IDX) through a window of at most
 * IMAGE_SOURCE_WINDOW_BYTES, then converted in parallel (OpenMP over
 * records, each writing its own output slot).  Folders and lists are in
 * image_folder.c, CIFAR headers in cifar.c; the shape and mapping set-up
 * the array readers share in source_array.c.  This file holds the table of
 * kinds: it is the only one that knows every kind of source (the readers
 * know only the ImageSource they fill).  No MPI, no global state.
 */
#include "data/image_source.h"
#include "base/fileio.h"
#include "base/mapguard.h"

#include "base/check.h"
#include "data/cifar.h"
#include "data/image_convert.h"
#include "data/image_folder.h"
#include "data/source_array.h"
#include "data/sample_store.h"
#include "data/numbered_set.h"

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* First bytes that identify a file kind. */
#define SNIFF_BYTES 8
/* IDX name parts swapped to find the labels file next to the images. */
#define IDX_IMAGES_TAG "images-idx3"
#define IDX_LABELS_TAG "labels-idx1"
/* Bytes of a plain IDX images header: magic + 3 dims. */
#define IDX3_HEADER_BYTES 16
/* CIFAR-10 / CIFAR-100 record sizes: label byte(s) + 3*32*32 pixels. */
#define CIFAR10_RECORD 3073
#define CIFAR100_RECORD 3074
/* Records converted per OpenMP chunk below which conversion stays serial. */
#define CONVERT_OMP_MIN 16

static const char *const IMAGE_MEMBERS[] = {"images", "data", "x", "x_train", "X", "arr_0"};
static const char *const LABEL_MEMBERS[] = {"labels", "y", "y_train", "Y", "arr_1"};
#define N_IMAGE_MEMBERS (sizeof IMAGE_MEMBERS / sizeof *IMAGE_MEMBERS)
#define N_LABEL_MEMBERS (sizeof LABEL_MEMBERS / sizeof *LABEL_MEMBERS)

static void *alloc_or_null(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

/* ---- natural order ---------------------------------------------------- */

int image_source_natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0' && isdigit((unsigned char)a[1])) a++;
            while (*b == '0' && isdigit((unsigned char)b[1])) b++;
            size_t la = 0, lb = 0;
            while (isdigit((unsigned char)a[la])) la++;
            while (isdigit((unsigned char)b[lb])) lb++;
            if (la != lb) return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c) return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

static int natural_qsort_cmp(const void *x, const void *y)
{
    return image_source_natural_cmp(*(const char *const *)x, *(const char *const *)y);
}

/* ---- life cycle ------------------------------------------------------- */

static ImageSource *source_new(SourceKind kind, const char *path, const DatasetOptions *opts)
{
    ImageSource *s = xcalloc(1, sizeof *s);
    s->kind = kind;
    snprintf(s->path, sizeof s->path, "%s", path);
    s->opts = *opts;
    s->fd = -1;
    s->za.fd = -1;
    return s;
}

void image_source_close(ImageSource *s)
{
    if (!s) return;
    if (s->map_addr) {
        mapguard_unregister(s->map_addr);
        munmap(s->map_addr, s->map_len);
    }
    if (s->access == RAW_ZIP_STREAM) zip_stream_close(&s->zs);
    if (s->access == RAW_IDX_STREAM) idx_stream_close(&s->idx);
    if (s->fd >= 0) close(s->fd);
    if (s->za.entries || s->za.fd >= 0) zip_archive_close(&s->za);
    free(s->labels);
    free(s->names);
    free(s->name_off);
    free(s->block_crc);
    free(s->block_ok);
    for (int64_t i = 0; s->files && i < s->n; i++) {
        if (s->files[i].name_owned) free(s->files[i].name);
        free(s->files[i].path);
    }
    free(s->files);
    for (int i = 0; i < s->n_classes; i++) free(s->classes[i]);
    free(s->classes);
    free(s);
}

void image_source_close_all(ImageSource **srcs, int n)
{
    for (int i = 0; i < n; i++) image_source_close(srcs[i]);
    free(srcs);
}

int image_source_name(const ImageSource *s, int64_t i, char *out, size_t cap)
{
    assert(i >= 0 && i < s->n && cap >= 1);
    out[0] = '\0';
    if (s->files) {
        snprintf(out, cap, "%s", s->files[i].name);
        return 1;
    }
    if (s->names) {
        int64_t a = s->name_off[i], len = s->name_off[i + 1] - a;
        size_t k = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
        memcpy(out, s->names + a, k);
        out[k] = '\0';
        return 1;
    }
    return 0;
}

/* ---- shapes and conversion -------------------------------------------- */

/* Integer square root: the S with S*S == q, or -1. */
static int64_t exact_isqrt(int64_t q)
{
    if (q < 0) return -1;
    int64_t s = (int64_t)sqrt((double)q);
    while (s > 0 && s * s > q) s--;
    while ((s + 1) * (s + 1) <= q) s++;
    return s * s == q ? s : -1;
}

static int is_rgb_or_grey(int64_t c) { return c == 1 || c == 3; }


/* Interprets an array shape (ndim, shape) as images (see dataset.h). */
static int images_shape(ImageSource *s, int ndim, const int64_t *shape, const char *what, Err *err)
{
    DatasetLayout lay = s->opts.layout;
    int64_t c0 = 1, h0 = 0, w0 = 0;
    int nhwc = 0;
    char shp[160];
    int k = snprintf(shp, sizeof shp, "(");
    for (int i = 0; i < ndim && k < (int)sizeof shp - 24; i++)
        k += snprintf(shp + k, sizeof shp - (size_t)k, "%s%" PRId64, i ? ", " : "", shape[i]);
    snprintf(shp + k, sizeof shp - (size_t)k, ndim == 1 ? ",)" : ")");
    if (ndim == 3) {
        h0 = shape[1];
        w0 = shape[2];
    } else if (ndim == 4) {
        int first = is_rgb_or_grey(shape[1]), last = is_rgb_or_grey(shape[3]);
        if (lay == DATASET_LAYOUT_AUTO) {
            if (first && !last) lay = DATASET_LAYOUT_NCHW;
            else if (last && !first) lay = DATASET_LAYOUT_NHWC;
            else
                return err_set(err, AE_EFORMAT, "%s: cannot tell whether shape %s is (N,C,H,W) or (N,H,W,C) (hint: add "
                               "?layout=nchw or ?layout=nhwc to the source)", what, shp);
        }
        if (lay == DATASET_LAYOUT_NCHW) {
            c0 = shape[1];
            h0 = shape[2];
            w0 = shape[3];
        } else {
            h0 = shape[1];
            w0 = shape[2];
            c0 = shape[3];
            nhwc = 1;
        }
        if (!is_rgb_or_grey(c0))
            return err_set(err, AE_EFORMAT, "%s: shape %s read as %s has %" PRId64 " channels; 1 or 3 are supported "
                           "(hint: check ?layout=, or drop the alpha channel)", what, shp,
                           lay == DATASET_LAYOUT_NCHW ? "(N,C,H,W)" : "(N,H,W,C)", c0);
    } else if (ndim == 2) {
        int64_t d = shape[1], sq;
        if (d > 0 && d % 3 == 0 && (sq = exact_isqrt(d / 3)) > 0) c0 = 3;
        else if ((sq = exact_isqrt(d)) > 0) c0 = 1;
        else
            return err_set(err, AE_EFORMAT, "%s: rows of %" PRId64 " values are neither 3*S*S (RGB SxS) nor S*S (grey "
                           "SxS) (hint: save images as (N,H,W), (N,C,H,W) or (N,H,W,C))", what, d);
        h0 = w0 = sq;
        nhwc = lay == DATASET_LAYOUT_NHWC;
    } else {
        return err_set(err, AE_EFORMAT, "%s: a %d-D array %s is not a set of images (hint: use (N,H,W), (N,C,H,W), "
                       "(N,H,W,C) or rows (N, C*S*S))", what, ndim, shp);
    }
    if (shape[0] < 1 || h0 < 1 || w0 < 1 || h0 > INT_MAX || w0 > INT_MAX)
        return err_set(err, AE_EFORMAT, "%s: shape %s holds no images or images smaller than 1x1 (hint: check the "
                       "array)", what, shp);
    s->n = shape[0];
    s->C0 = (int)c0;
    s->H0 = (int)h0;
    s->W0 = (int)w0;
    s->nhwc = nhwc;
    return AE_OK;
}

/* Converts one raw record to out[C][H][W].  Returns 0, or -1 and sets
 * *bad to the offending value for float records out of range. */
static int convert_record(uint8_t *out, const ImageSource *s, const uint8_t *raw, double *bad)
{
    int64_t hw0 = (int64_t)s->H0 * s->W0, n0 = hw0 * s->C0;
    uint8_t *planar = NULL;
    const uint8_t *src = raw;
    if (s->dtype != NPY_U8 || (s->nhwc && s->C0 > 1)) {
        planar = xmalloc((size_t)n0);
        double range = s->opts.range, tol = range / 510.0; /* half an 8-bit step */
        size_t isz = npy_dtype_size(s->dtype);
        for (int64_t i = 0; i < n0; i++) {
            /* Element i of the raw record, in its own layout. */
            double v;
            const uint8_t *p = raw + (size_t)i * isz;
            if (s->dtype == NPY_U8) {
                v = p[0];
            } else {
                uint8_t b[8];
                for (size_t j = 0; j < isz; j++) b[j] = s->big_endian ? p[isz - 1 - j] : p[j];
                if (s->dtype == NPY_F32) {
                    float f;
                    memcpy(&f, b, sizeof f);
                    v = f;
                } else {
                    memcpy(&v, b, sizeof v);
                }
                if (!(v >= -tol && v <= range + tol)) {
                    *bad = v;
                    free(planar);
                    return -1;
                }
                v = floor(v * 255.0 / range + 0.5);
                v = v < 0 ? 0 : v > 255 ? 255 : v;
            }
            int64_t dst = i;
            if (s->nhwc) { /* i = (y*W0 + x)*C0 + c -> c*hw0 + y*W0 + x */
                int64_t c = i % s->C0, yx = i / s->C0;
                dst = c * hw0 + yx;
            }
            planar[dst] = (uint8_t)v;
        }
        src = planar;
    }
    uint8_t *chan = NULL;
    if (s->C != s->C0) {
        chan = xmalloc((size_t)(s->C * hw0));
        image_planar_channels(chan, s->C, src, s->C0, hw0);
        src = chan;
    }
    if (s->H != s->H0 || s->W != s->W0) {
        int x0, y0, rw, rh;
        image_fit_region(&x0, &y0, &rw, &rh, s->W0, s->H0, s->W, s->H, s->opts.fit);
        image_resize_area(out, s->W, s->H, src, s->W0, s->H0, s->C, x0, y0, rw, rh);
    } else if (src != out) {
        memcpy(out, src, (size_t)(s->C * hw0));
    }
    free(planar);
    free(chan);
    return 0;
}

/* Raw bytes of records [first, first + m) into buf (m * stride bytes). */
static int raw_get(ImageSource *s, int64_t first, int64_t m, uint8_t *buf, Err *err)
{
    uint64_t bytes = (uint64_t)m * s->stride;
    switch (s->access) {
    case RAW_FILE:
        if (fileio_pread_full(s->fd, buf, bytes, s->offset + (uint64_t)first * s->stride) != 0)
            return err_set(err, errno ? AE_EIO : AE_EFORMAT, "%s: %s reading images %" PRId64 "..%" PRId64
                           " (hint: the file shrank or is unreadable)", s->path, errno ? strerror(errno) : "unexpected end",
                           first, first + m - 1);
        return AE_OK;
    case RAW_ZIP_STREAM: return zip_stream_read(&s->zs, buf, bytes, err);
    case RAW_IDX_STREAM: return idx_stream_read(&s->idx, buf, (int64_t)bytes, err);
    default: assert(0); return AE_EARG;
    }
}

int image_source_check(ImageSource *s, int64_t first, int64_t count, Err *err)
{
    if (!s->block_crc || count <= 0) return AE_OK;
    const int64_t R = s->crc_block;
    uint8_t *buf = NULL;
    int rc = AE_OK;
    for (int64_t b = first / R; b <= (first + count - 1) / R && rc == AE_OK; b++) {
        if (__atomic_load_n(&s->block_ok[b], __ATOMIC_ACQUIRE)) continue;
        const int64_t r0 = b * R, m = s->n - r0 < R ? s->n - r0 : R;
        const uint64_t bytes = (uint64_t)m * s->stride, at = s->offset + (uint64_t)r0 * s->stride;
        const uint8_t *p = s->mapped ? s->mapped + (uint64_t)r0 * s->stride : NULL;
        if (!p) {
            if (!buf) buf = xmalloc((size_t)((uint64_t)R * s->stride));
            if (fileio_pread_full(s->fd, buf, bytes, at) != 0) {
                rc = err_set(err, AE_EIO, "%s: %s reading images %" PRId64 "..%" PRId64 " to check their CRC (hint: the "
                             "file shrank or is unreadable)", s->path, errno ? strerror(errno) : "unexpected end", r0,
                             r0 + m - 1);
                break;
            }
            p = buf;
        }
        /* a block is at most max(4 KiB, one record): within a uInt for any
         * record sizes a store allows */
        uint32_t c = (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)bytes);
        if (c != s->block_crc[b])
            rc = err_set(err, AE_EFORMAT, "%s: images %" PRId64 "..%" PRId64 " (CRC block %" PRId64 " of %" PRId64
                         "): CRC-32 %08x, the store records %08x (hint: the store is damaged; pack it again from its "
                         "source)", s->path, r0, r0 + m - 1, b, s->n_blocks, c, s->block_crc[b]);
        else __atomic_store_n(&s->block_ok[b], 1, __ATOMIC_RELEASE);
    }
    free(buf);
    return rc;
}

static int array_read(ImageSource *s, int64_t first, int64_t count, uint8_t *pix, Err *err)
{
    int64_t img = (int64_t)s->C * s->H * s->W;
    if (image_source_check(s, first, count, err)) return err->code;
    if (s->mapped) {
        memcpy(pix, s->mapped + first * img, (size_t)(count * img));
        return AE_OK;
    }
    int direct = s->dtype == NPY_U8 && s->skip == 0 && (!s->nhwc || s->C0 == 1) && s->C == s->C0 && s->H == s->H0 &&
                 s->W == s->W0 && s->stride == (uint64_t)img;
    if (direct) return raw_get(s, first, count, pix, err);
    int64_t per = IMAGE_SOURCE_WINDOW_BYTES / (int64_t)s->stride;
    if (per < 1) per = 1;
    if (per > count) per = count;
    uint8_t *buf = xmalloc((size_t)per * s->stride);
    int rc = AE_OK;
    for (int64_t at = 0; at < count && rc == AE_OK; at += per) {
        int64_t m = count - at < per ? count - at : per;
        rc = raw_get(s, first + at, m, buf, err);
        if (rc) break;
        int64_t bad_at = INT64_MAX;
        double bad_v = 0;
        /* Each record writes its own output slot (owner-writes). */
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 4) if (m >= CONVERT_OMP_MIN)
#endif
        for (int64_t k = 0; k < m; k++) {
            double v;
            if (convert_record(pix + (at + k) * img, s, buf + k * s->stride + s->skip, &v)) {
#if defined(_OPENMP)
#pragma omp critical(aesim_convert_bad)
#endif
                {
                    if (at + k < bad_at) {
                        bad_at = at + k;
                        bad_v = v;
                    }
                }
            }
        }
        if (bad_at != INT64_MAX)
            rc = err_set(err, AE_EFORMAT, "%s: image %" PRId64 " holds the value %g, outside [0, %g] (hint: set "
                         "?range=255 for 0..255 data, or rescale the array)", s->path, first + bad_at, bad_v,
                         s->opts.range);
    }
    free(buf);
    return rc;
}

int image_source_read(ImageSource *s, int64_t first, int64_t count, uint8_t *pix, uint8_t *ok, Err *err)
{
    assert(first >= 0 && count >= 0 && first + count <= s->n);
    if (s->sequential && first != s->next_first)
        return err_set(err, AE_EARG, "%s is read as a stream: images must be read in order (asked for %" PRId64
                       ", next is %" PRId64 ") (hint: pack it with aesim-pack for random access)", s->path, first,
                       s->next_first);
    int rc;
    if (s->files) {
        rc = image_folder_read(s, first, count, pix, ok, err);
    } else {
        rc = array_read(s, first, count, pix, err);
        if (ok) memset(ok, 1, (size_t)count);
    }
    if (rc == AE_OK) s->next_first = first + count;
    return rc;
}

/* ---- labels ----------------------------------------------------------- */

/* Converts integer array data to int32 labels; -1 if not integer or out of
 * range (*badv holds the value). */
static int labels_to_i32(int32_t *out, const void *data, NpyDtype t, int big, int64_t n)
{
    size_t isz = npy_dtype_size(t);
    for (int64_t i = 0; i < n; i++) {
        uint8_t b[8];
        const uint8_t *p = (const uint8_t *)data + (size_t)i * isz;
        for (size_t j = 0; j < isz; j++) b[j] = big ? p[isz - 1 - j] : p[j];
        int64_t v;
        switch (t) {
        case NPY_U8: v = b[0]; break;
        case NPY_I8: v = (int8_t)b[0]; break;
        case NPY_I16: { int16_t x; memcpy(&x, b, 2); v = x; break; }
        case NPY_U16: { uint16_t x; memcpy(&x, b, 2); v = x; break; }
        case NPY_I32: { int32_t x; memcpy(&x, b, 4); v = x; break; }
        case NPY_U32: { uint32_t x; memcpy(&x, b, 4); v = x; break; }
        case NPY_I64: { memcpy(&v, b, 8); break; }
        case NPY_U64: {
            uint64_t x;
            memcpy(&x, b, 8);
            if (x > INT32_MAX) return -1;
            v = (int64_t)x;
            break;
        }
        default: return -1;
        }
        if (v < INT32_MIN || v > INT32_MAX) return -1;
        out[i] = (int32_t)v;
    }
    return 0;
}

/* NpyReadFn over a ZipStream. */
static int zs_read_fn(void *ctx, void *buf, uint64_t n, Err *err)
{
    ZipStream *zs = ctx;
    if (n > zip_stream_left(zs))
        return err_set(err, AE_EFORMAT, "%s: member '%s' ends inside its .npy header (hint: the archive is damaged)",
                       zs->za->path, zs->e->name);
    return zip_stream_read(zs, buf, n, err);
}

/* Reads a whole small npz member as an array: header *hd, data in *data
 * (owned).  Refuses fortran order. */
static int read_member_array(const ZipArchive *za, const ZipEntry *e, NpyHeader *hd, void **data, int64_t max_bytes,
                             Err *err)
{
    char what[ZIP_PATH_BYTES + ZIP_NAME_BYTES + 16];
    snprintf(what, sizeof what, "%s (member '%s')", za->path, e->name);
    *data = NULL;
    ZipStream zs;
    if (zip_stream_open(&zs, za, e, err)) return err->code;
    int rc = npy_header_read(hd, zs_read_fn, &zs, e->size, what, err);
    if (rc == AE_OK && hd->fortran_order)
        rc = err_set(err, AE_EFORMAT, "%s: fortran_order=True is not supported (hint: save numpy.ascontiguousarray(a))",
                     what);
    if (rc == AE_OK && (int64_t)hd->data_bytes > max_bytes)
        rc = err_set(err, AE_EFORMAT, "%s: %" PRIu64 " bytes is more than expected (%" PRId64 ") (hint: the member "
                     "does not belong to these images)", what, hd->data_bytes, max_bytes);
    if (rc == AE_OK) {
        *data = alloc_or_null((size_t)hd->data_bytes);
        if (!*data) rc = err_set(err, AE_ENOMEM, "%s: cannot allocate %" PRIu64 " bytes", what, hd->data_bytes);
        else rc = zip_stream_read(&zs, *data, hd->data_bytes, err);
    }
    zip_stream_close(&zs);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

static int npz_labels(ImageSource *s, const ZipEntry *e, Err *err)
{
    NpyHeader hd;
    void *data;
    if (read_member_array(&s->za, e, &hd, &data, s->n * 8, err)) return err->code;
    int64_t cnt = hd.ndim >= 1 ? hd.shape[0] : 1;
    int rc = AE_OK;
    if (!(hd.ndim == 1 || (hd.ndim == 2 && hd.shape[1] == 1)) || cnt != s->n) {
        rc = err_set(err, AE_EFORMAT, "%s: labels member '%s' has %d dimensions and %" PRId64 " entries for %" PRId64
                     " images (hint: labels must be a (N,) integer array; choose the member with ?labels=NAME)",
                     s->path, e->name, hd.ndim, cnt, s->n);
    } else {
        s->labels = alloc_or_null((size_t)s->n * sizeof *s->labels);
        if (!s->labels) rc = err_set(err, AE_ENOMEM, "%s: cannot allocate labels", s->path);
        else if (labels_to_i32(s->labels, data, hd.dtype, hd.big_endian, s->n))
            rc = err_set(err, AE_EFORMAT, "%s: labels member '%s' (%s%s) is not an integer array with values in int32 "
                         "range (hint: save labels as integers)", s->path, e->name, hd.big_endian ? ">" : "",
                         npy_dtype_descr(hd.dtype) + (hd.big_endian ? 1 : 0));
    }
    free(data);
    return rc;
}

/* ---- NumPy sources ---------------------------------------------------- */

static int check_dtype(const ImageSource *s, const NpyHeader *hd, const char *what, Err *err)
{
    if (hd->fortran_order)
        return err_set(err, AE_EFORMAT, "%s: fortran_order=True arrays are not supported (hint: save "
                       "numpy.ascontiguousarray(a))", what);
    if (hd->dtype != NPY_U8 && hd->dtype != NPY_F32 && hd->dtype != NPY_F64)
        return err_set(err, AE_EFORMAT, "%s: images of dtype %s%s are not supported (hint: save uint8 (0..255) or "
                       "float32 (0..1, or 0..255 with ?range=255))", what, hd->big_endian ? ">" : "",
                       npy_dtype_descr(hd->dtype) + (hd->big_endian ? 1 : 0));
    (void)s;
    return AE_OK;
}

/* Reads exactly n bytes at the fd's current offset (NpyReadFn). */
typedef struct FdCursor {
    int fd;
    uint64_t pos;
    const char *what;
} FdCursor;

static int fd_read_fn(void *ctx, void *buf, uint64_t n, Err *err)
{
    FdCursor *c = ctx;
    if (fileio_pread_full(c->fd, buf, n, c->pos) != 0)
        return err_set(err, errno ? AE_EIO : AE_EFORMAT, "%s: %s inside the .npy header (hint: the file is "
                       "truncated)", c->what, errno ? strerror(errno) : "the file ends");
    c->pos += n;
    return AE_OK;
}

static int npy_open(ImageSource *s, Err *err)
{
    if (fileio_check_input(s->path, err)) return err->code;
    s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", s->path, strerror(errno));
    struct stat st;
    if (fstat(s->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s is not a readable regular file", s->path);
    NpyHeader hd;
    FdCursor c = {s->fd, 0, s->path};
    if (npy_header_read(&hd, fd_read_fn, &c, (uint64_t)st.st_size, s->path, err)) return err->code;
    if (check_dtype(s, &hd, s->path, err) || images_shape(s, hd.ndim, hd.shape, s->path, err)) return err->code;
    s->access = RAW_FILE;
    s->offset = hd.data_offset;
    s->dtype = hd.dtype;
    s->big_endian = hd.big_endian;
    s->stride = (uint64_t)s->C0 * s->H0 * s->W0 * npy_dtype_size(hd.dtype);
    return source_array_finish_shape(s, s->path, err);
}

static const ZipEntry *find_member(const ZipArchive *za, const char *name)
{
    char full[DATASET_MEMBER_BYTES + 8];
    snprintf(full, sizeof full, "%s.npy", name);
    return zip_archive_find(za, full);
}

/* Store names: members names (uint8 blob) and name_offsets (int64 n+1). */
static int store_names(ImageSource *s, Err *err)
{
    const ZipEntry *en = find_member(&s->za, STORE_NAMES), *eo = find_member(&s->za, STORE_NAME_OFFSETS);
    if (!en || !eo) return AE_OK;
    NpyHeader hn, ho;
    void *blob = NULL, *off = NULL;
    int rc = read_member_array(&s->za, en, &hn, &blob, (int64_t)en->size, err);
    if (rc == AE_OK) rc = read_member_array(&s->za, eo, &ho, &off, (s->n + 1) * 8, err);
    if (rc == AE_OK) {
        int64_t *o = off;
        int okk = hn.dtype == NPY_U8 && hn.ndim == 1 && ho.dtype == NPY_I64 && ho.ndim == 1 && ho.shape[0] == s->n + 1 &&
                  o[0] == 0 && o[s->n] == hn.shape[0];
        for (int64_t i = 0; okk && i < s->n; i++) okk = o[i] <= o[i + 1];
        if (!okk)
            rc = err_set(err, AE_EFORMAT, "%s: the names / name_offsets members are inconsistent (hint: re-pack the "
                         "store)", s->path);
    }
    if (rc == AE_OK) {
        s->names = blob;
        s->name_off = off;
    } else {
        free(blob);
        free(off);
    }
    return rc;
}

/* Store class names: meta.json's "classes" list (the class sub-folders of
 * the packed folder), kept as the source's classes. */
static int store_classes(ImageSource *s, Err *err)
{
    const ZipEntry *e = zip_archive_find(&s->za, STORE_META);
    if (!e || e->size == 0 || e->size > (1u << 26)) return AE_OK;
    char *text = xmalloc((size_t)e->size + 1);
    ZipStream zs;
    int rc = zip_stream_open(&zs, &s->za, e, err);
    if (rc == AE_OK) {
        rc = zip_stream_read(&zs, text, e->size, err);
        zip_stream_close(&zs);
    }
    text[rc == AE_OK ? e->size : 0] = '\0';
    json_t *o = rc == AE_OK ? json_loadb(text, (size_t)e->size, 0, NULL) : NULL;
    json_t *cls = o ? json_object_get(o, "classes") : NULL;
    size_t n = json_is_array(cls) ? json_array_size(cls) : 0;
    if (rc == AE_OK && n) {
        s->classes = xcalloc(n, sizeof *s->classes);
        for (size_t i = 0; i < n; i++) {
            const char *v = json_string_value(json_array_get(cls, i));
            s->classes[i] = xmalloc(strlen(v ? v : "") + 1);
            strcpy(s->classes[i], v ? v : "");
        }
        s->n_classes = (int)n;
    }
    json_decref(o);
    free(text);
    return rc;
}

/* Store block CRCs: block_crc.npy, uint32, one per block of
 * store_crc_block(record bytes) records. */
static int store_block_crcs(ImageSource *s, const ZipEntry *e, Err *err)
{
    NpyHeader hd;
    void *data;
    const int64_t R = store_crc_block((int64_t)s->stride), nb = (s->n + R - 1) / R;
    if (read_member_array(&s->za, e, &hd, &data, nb * 4, err)) return err->code;
    if (hd.dtype != NPY_U32 || hd.big_endian || hd.ndim != 1 || hd.shape[0] != nb) {
        free(data);
        return err_set(err, AE_EFORMAT, "%s: member '%s' is not uint32 (%" PRId64 ",) for %" PRId64 " images in blocks "
                       "of %" PRId64 " (hint: the store is damaged; pack it again)", s->path, e->name, nb, s->n, R);
    }
    s->block_crc = data;
    s->crc_block = R;
    s->n_blocks = nb;
    s->block_ok = xcalloc((size_t)nb, 1);
    return AE_OK;
}

static int npz_open(ImageSource *s, Err *err)
{
    if (zip_archive_open(&s->za, s->path, err)) return err->code;
    s->is_store = strncmp(s->za.comment, STORE_COMMENT_TAG, strlen(STORE_COMMENT_TAG)) == 0;
    if (s->is_store && strcmp(s->za.comment, STORE_COMMENT) != 0)
        return err_set(err, AE_EFORMAT, "%s: sample store version '%s' is not supported (expected '%s') (hint: re-pack "
                       "it with this aesim-pack)", s->path, s->za.comment, STORE_COMMENT);
    const ZipEntry *img = NULL;
    const char *img_name = NULL;
    if (s->opts.images[0]) {
        img = find_member(&s->za, s->opts.images);
        img_name = s->opts.images;
        if (!img)
            return err_set(err, AE_EFORMAT, "%s has no member '%s.npy' (hint: check ?images=)", s->path, s->opts.images);
    } else {
        for (size_t i = 0; i < N_IMAGE_MEMBERS && !img; i++) {
            img = find_member(&s->za, IMAGE_MEMBERS[i]);
            img_name = IMAGE_MEMBERS[i];
        }
        if (!img)
            return err_set(err, AE_EFORMAT, "%s has no images member (looked for images, data, x, x_train, X, arr_0) "
                           "(hint: name it with ?images=NAME; the downsampled-ImageNet layout has data uint8 (N, 3*S*S))",
                           s->path);
    }
    s->member = img;
    char what[ZIP_PATH_BYTES + ZIP_NAME_BYTES + 16];
    snprintf(what, sizeof what, "%s (member '%s')", s->path, img->name);
    /* By default a stored member is CRC-checked; an aesim store with block
     * CRCs block by block as its records are read (image_source_check); an
     * older store when the check is shared by the ranks (defer_verify:
     * training and indexing), not when one process would read a whole store
     * to answer a query. */
    const ZipEntry *bc = s->is_store ? find_member(&s->za, STORE_BLOCK_CRC) : NULL;
    int by_block = bc && s->opts.verify == -1 && img->method == ZIP_METHOD_STORED;
    if (s->opts.verify == 1 || (s->opts.verify == -1 && img->method == ZIP_METHOD_STORED && !by_block &&
                                (!s->is_store || s->opts.defer_verify))) {
        if (s->opts.defer_verify && img->method == ZIP_METHOD_STORED) {
            s->verify_pending = 1; /* dataset_verify, shared by the ranks */
            s->verify_entry = *img;
        } else if (zip_member_verify(&s->za, img, err)) {
            return err->code;
        }
    }
    if (zip_stream_open(&s->zs, &s->za, img, err)) return err->code;
    s->access = RAW_ZIP_STREAM; /* until the header is read */
    NpyHeader hd;
    if (npy_header_read(&hd, zs_read_fn, &s->zs, img->size, what, err)) return err->code;
    if (check_dtype(s, &hd, what, err) || images_shape(s, hd.ndim, hd.shape, what, err)) return err->code;
    s->dtype = hd.dtype;
    s->big_endian = hd.big_endian;
    s->stride = (uint64_t)s->C0 * s->H0 * s->W0 * npy_dtype_size(hd.dtype);
    if (img->method == ZIP_METHOD_STORED) {
        zip_stream_close(&s->zs);
        s->access = RAW_FILE;
        s->fd = dup(s->za.fd);
        if (s->fd < 0) return err_set(err, AE_EIO, "%s: dup: %s", s->path, strerror(errno));
        s->offset = img->data_offset + hd.data_offset;
        if (by_block && store_block_crcs(s, bc, err)) return err->code;
    } else {
        s->sequential = 1;
    }
    /* Labels. */
    const ZipEntry *lab = NULL;
    if (s->opts.labels[0]) {
        lab = find_member(&s->za, s->opts.labels);
        if (!lab)
            return err_set(err, AE_EFORMAT, "%s has no member '%s.npy' (hint: check ?labels=)", s->path, s->opts.labels);
    } else {
        for (size_t i = 0; i < N_LABEL_MEMBERS && !lab; i++) {
            if (!strcmp(LABEL_MEMBERS[i], "arr_1") && strcmp(img_name, "arr_0") != 0) continue;
            lab = find_member(&s->za, LABEL_MEMBERS[i]);
        }
    }
    if (lab && npz_labels(s, lab, err)) return err->code;
    if (s->is_store && (store_names(s, err) || store_classes(s, err))) return err->code;
    return source_array_finish_shape(s, what, err);
}

/* ---- IDX -------------------------------------------------------------- */

static int idx_labels_path(char *out, size_t cap, const char *images)
{
    const char *slash = strrchr(images, '/');
    const char *base = slash ? slash + 1 : images;
    const char *tag = strstr(base, IDX_IMAGES_TAG);
    if (!tag) return -1;
    int k = snprintf(out, cap, "%.*s%s%s", (int)(tag - images), images, IDX_LABELS_TAG, tag + strlen(IDX_IMAGES_TAG));
    return k > 0 && (size_t)k < cap ? 0 : -1;
}

static int idx_open(ImageSource *s, Err *err)
{
    if (idx_stream_open(&s->idx, s->path, err)) return err->code;
    s->access = RAW_IDX_STREAM;
    const int64_t *d = s->idx.dims;
    if (s->idx.ndim != 3 || d[0] == 0 || d[1] == 0 || d[2] == 0 || d[1] > INT_MAX || d[2] > INT_MAX)
        return err_set(err, AE_EFORMAT,
                       "%s: IDX images must have 3 non-zero dimensions (n, rows, cols); this file has %d (first %" PRId64
                       ") (hint: pass the images file, not the labels file)", s->path, s->idx.ndim, d[0]);
    s->n = d[0];
    s->C0 = 1;
    s->H0 = (int)d[1];
    s->W0 = (int)d[2];
    s->dtype = NPY_U8;
    s->stride = (uint64_t)d[1] * (uint64_t)d[2];
    char lpath[DATASET_PATH_BYTES];
    struct stat st;
    if (idx_labels_path(lpath, sizeof lpath, s->path) == 0 && stat(lpath, &st) == 0) {
        uint8_t *l8 = NULL;
        int lnd;
        int64_t ld[IDX_MAX_DIMS];
        if (idx_read_u8(lpath, &l8, &lnd, ld, err)) return err->code;
        if (lnd != 1 || ld[0] != s->n) {
            free(l8);
            return err_set(err, AE_EFORMAT, "%s: labels file has %d dimensions and %" PRId64 " labels but %s has %" PRId64
                           " images (hint: the labels file must belong to the images file)", lpath, lnd, ld[0], s->path,
                           s->n);
        }
        s->labels = xmalloc((size_t)s->n * sizeof *s->labels);
        for (int64_t i = 0; i < s->n; i++) s->labels[i] = l8[i];
        free(l8);
    }
    if (s->idx.plain) {
        /* A plain file: random access (and mapping) instead of a stream. */
        idx_stream_close(&s->idx);
        if (fileio_check_input(s->path, err)) return err->code;
        s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (s->fd < 0) return err_set(err, AE_EIO, "cannot open %s: %s", s->path, strerror(errno));
        s->access = RAW_FILE;
        s->offset = IDX3_HEADER_BYTES;
    } else {
        s->sequential = 1;
    }
    return source_array_finish_shape(s, s->path, err);
}

/* ---- dispatch --------------------------------------------------------- */

static void list_push(ImageSource ***list, int *count, int *cap, ImageSource *s)
{
    if (*count == *cap) {
        int ncap = *cap ? 2 * *cap : 8;
        ImageSource **grown = xmalloc((size_t)ncap * sizeof *grown);
        if (*count) memcpy(grown, *list, (size_t)*count * sizeof *grown);
        free(*list);
        *list = grown;
        *cap = ncap;
    }
    (*list)[(*count)++] = s;
}

static int open_single(ImageSource ***list, int *count, int *cap, SourceKind kind, const char *path,
                       const DatasetOptions *opts, Err *err)
{
    ImageSource *s = source_new(kind, path, opts);
    int rc;
    switch (kind) {
    case SOURCE_NPZ: rc = npz_open(s, err); break;
    case SOURCE_NPY: rc = npy_open(s, err); break;
    case SOURCE_IDX: rc = idx_open(s, err); break;
    case SOURCE_CIFAR10: rc = cifar_open(s, 1, err); break;
    case SOURCE_CIFAR100: rc = cifar_open(s, 2, err); break;
    case SOURCE_FOLDER: rc = image_folder_open(s, err); break;
    case SOURCE_LIST: rc = image_list_open(s, err); break;
    default: rc = err_set(err, AE_EARG, "%s: source kind %s cannot be opened directly", path, dataset_kind_name(kind));
    }
    if (rc) {
        image_source_close(s);
        return rc;
    }
    list_push(list, count, cap, s);
    return AE_OK;
}

/* Files in folder dir whose names match pred, natural order. */
static int folder_matches(char ***names, int *n, const char *dir, int (*pred)(const char *))
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!pred(de->d_name)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **g = xmalloc((size_t)cap * sizeof *g);
            if (*n) memcpy(g, *names, (size_t)*n * sizeof *g);
            free(*names);
            *names = g;
        }
        size_t len = strlen(de->d_name);
        (*names)[*n] = xmalloc(len + 1);
        memcpy((*names)[*n], de->d_name, len + 1);
        (*n)++;
    }
    closedir(d);
    if (*n) qsort(*names, (size_t)*n, sizeof **names, natural_qsort_cmp);
    return 0;
}

static int match_prefix_suffix(const char *name, const char *pre, const char *suf)
{
    size_t ln = strlen(name), lp = strlen(pre), ls = strlen(suf);
    return ln > lp + ls && !strncmp(name, pre, lp) && !strcmp(name + ln - ls, suf);
}
static int is_cifar10_batch(const char *name) { return match_prefix_suffix(name, "data_batch_", ".bin"); }
static int is_imagenet_batch(const char *name) { return match_prefix_suffix(name, "train_data_batch_", ".npz"); }

/* A numbered set (numbered_set.h) of n files named names[] (what: the
 * pattern or folder, for the message): AE_OK without a gap; with one,
 * AE_EIO naming the missing files, or with allow_gaps=1 AE_OK and the
 * warning in note[IMAGE_SOURCE_NOTE_BYTES]. */
static int check_gaps(const char *const *names, int n, const char *what, const DatasetOptions *opts, char *note,
                      Err *err)
{
    char gaps[IMAGE_SOURCE_NOTE_BYTES - 200];
    note[0] = '\0';
    if (numbered_set_gaps(names, n, gaps, sizeof gaps) == 0) return AE_OK;
    if (!opts->allow_gaps)
        return err_set(err, AE_EIO, "%.300s: numbered set %s (hint: restore the missing file(s), or pass --allow-gaps "
                       "(?allow_gaps=1) to use the others)", what, gaps);
    snprintf(note, IMAGE_SOURCE_NOTE_BYTES, "%.150s: numbered set %s; using the others (allow_gaps=1)", what, gaps);
    return AE_OK;
}

/* Opens every file of a folder matched by pred, in natural order. */
static int open_folder_set(ImageSource ***list, int *count, int *cap, SourceKind kind, const char *dir,
                           int (*pred)(const char *), const DatasetOptions *opts, Err *err)
{
    char **names;
    int n;
    folder_matches(&names, &n, dir, pred);
    char note[IMAGE_SOURCE_NOTE_BYTES];
    int rc = check_gaps((const char *const *)names, n, dir, opts, note, err), first = *count;
    for (int i = 0; i < n && rc == AE_OK; i++) {
        char p[DATASET_PATH_BYTES];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        rc = open_single(list, count, cap, kind, p, opts, err);
    }
    if (rc == AE_OK && *count > first) snprintf((*list)[first]->gap_note, sizeof note, "%s", note);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

static int exists(const char *dir, const char *name, char *out, size_t cap)
{
    struct stat st;
    int k = snprintf(out, cap, "%s/%s", dir, name);
    return k > 0 && (size_t)k < cap && stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

static int open_dir(ImageSource ***list, int *count, int *cap, SourceKind kind, const char *path,
                    const DatasetOptions *opts, Err *err)
{
    char f[DATASET_PATH_BYTES];
    char **names;
    int n;
    if (kind == SOURCE_FOLDER) return open_single(list, count, cap, SOURCE_FOLDER, path, opts, err);
    if (kind == SOURCE_AUTO || kind == SOURCE_MNIST || kind == SOURCE_IDX) {
        if (exists(path, DATASET_IDX_TRAIN_IMAGES ".gz", f, sizeof f) || exists(path, DATASET_IDX_TRAIN_IMAGES, f, sizeof f))
            return open_single(list, count, cap, SOURCE_IDX, f, opts, err);
        if (kind != SOURCE_AUTO)
            return err_set(err, AE_EIO, "folder %s holds neither %s.gz nor %s (hint: give a Fashion-MNIST/MNIST folder, "
                           "an IDX file or an npz)", path, DATASET_IDX_TRAIN_IMAGES, DATASET_IDX_TRAIN_IMAGES);
    }
    if (kind == SOURCE_AUTO || kind == SOURCE_CIFAR10) {
        folder_matches(&names, &n, path, is_cifar10_batch);
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        if (n > 0) return open_folder_set(list, count, cap, SOURCE_CIFAR10, path, is_cifar10_batch, opts, err);
        if (kind == SOURCE_CIFAR10)
            return err_set(err, AE_EIO, "folder %s holds no data_batch_N.bin (hint: give the cifar-10-batches-bin "
                           "folder or a batch file)", path);
    }
    if (kind == SOURCE_AUTO || kind == SOURCE_CIFAR100) {
        if (exists(path, "train.bin", f, sizeof f)) return open_single(list, count, cap, SOURCE_CIFAR100, f, opts, err);
        if (kind == SOURCE_CIFAR100)
            return err_set(err, AE_EIO, "folder %s holds no train.bin (hint: give the cifar-100-binary folder or a batch "
                           "file)", path);
    }
    if (kind == SOURCE_AUTO || kind == SOURCE_NPZ) {
        folder_matches(&names, &n, path, is_imagenet_batch);
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        if (n > 0) return open_folder_set(list, count, cap, SOURCE_NPZ, path, is_imagenet_batch, opts, err);
        if (kind == SOURCE_NPZ)
            return err_set(err, AE_EIO, "folder %s holds no train_data_batch_N.npz (hint: give the npz files)", path);
    }
    if (kind == SOURCE_AUTO) return open_single(list, count, cap, SOURCE_FOLDER, path, opts, err);
    return err_set(err, AE_EARG, "%s is a folder, but kind %s needs a file (hint: drop the kind or give a file)", path,
                   dataset_kind_name(kind));
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

int image_source_open_path(ImageSource ***list, int *count, int *cap, SourceKind kind, const char *path,
                           const DatasetOptions *opts, Err *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path; separate several sources with commas)",
                       path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return open_dir(list, count, cap, kind, path, opts, err);
    if (kind == SOURCE_FOLDER || kind == SOURCE_MNIST)
        return err_set(err, AE_EARG, "%s is a file, but kind %s needs a folder", path, dataset_kind_name(kind));
    if (kind != SOURCE_AUTO) return open_single(list, count, cap, kind, path, opts, err);
    uint8_t head[SNIFF_BYTES] = {0};
    if (fileio_check_input(path, err)) return err->code;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check permissions)", path, strerror(errno));
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *why = NULL; /* the reason for the guess, named if opening fails */
    if (got >= 2 && head[0] == 'P' && head[1] == 'K') kind = SOURCE_NPZ, why = "its first bytes are a zip signature 'PK'";
    else if (got >= 6 && memcmp(head, "\x93NUMPY", 6) == 0) kind = SOURCE_NPY, why = "its first bytes are the .npy magic";
    else if (got >= 2 && head[0] == 0x1f && head[1] == 0x8b) kind = SOURCE_IDX, why = "it is gzip-compressed (1f 8b)";
    else if (got >= 2 && head[0] == 0 && head[1] == 0) kind = SOURCE_IDX, why = "its first bytes are 00 00 as in IDX";
    else if (is_cifar10_batch(base) || !strcmp(base, "test_batch.bin"))
        kind = SOURCE_CIFAR10, why = "its name is a CIFAR-10 batch's";
    else if ((!strcmp(base, "train.bin") || !strcmp(base, "test.bin")) && st.st_size % CIFAR100_RECORD == 0)
        kind = SOURCE_CIFAR100, why = "its name is train.bin/test.bin and its size a multiple of 3074";
    else if (ends_with(base, ".txt") || ends_with(base, ".lst") || ends_with(base, ".list"))
        kind = SOURCE_LIST, why = "its name ends in .txt/.lst/.list and its first bytes match no binary format";
    else
        return err_set(err, AE_EFORMAT,
                       "%s: not a recognised dataset file: first bytes %02x %02x %02x %02x, %zu bytes read (hint: give "
                       "an .npz, .npy, IDX file, CIFAR batch, list file (.txt) or an image folder, or name the kind: "
                       "npz:, npy:, idx:, cifar10:, cifar100:, list:, folder:)",
                       path, head[0], head[1], head[2], head[3], got);
    int rc = open_single(list, count, cap, kind, path, opts, err);
    if (rc == AE_OK) (*list)[*count - 1]->guess = why;
    if (rc) {
        /* Say what was guessed and why first: the error itself may name
         * another file (a path listed in what was taken for a list). */
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "%s", err->msg);
        err_set(err, rc, "%.300s was guessed to be %s because %s; reading it as such failed: %.500s (hint: if it "
                "is something else, name its kind before the path, e.g. npz:PATH, npy:PATH, idx:PATH, folder:PATH)",
                path, kind == SOURCE_LIST ? "a list file of image paths" : dataset_kind_name(kind), why, msg);
    }
    return rc;
}

static int has_wildcard(const char *p) { return strchr(p, '*') || strchr(p, '['); }

int image_source_open_spec(ImageSource ***srcs, int *n, const char *spec, const DatasetOptions *defaults, Err *err)
{
    *srcs = NULL;
    *n = 0;
    if (!spec || !*spec)
        return err_set(err, AE_EARG, "no dataset given (hint: give an .npz, an IDX file or a folder; several separated "
                       "by commas)");
    DatasetOptions dflt;
    if (!defaults) {
        dataset_options_default(&dflt);
        defaults = &dflt;
    }
    size_t len = strlen(spec);
    char *buf = xmalloc(len + 1);
    memcpy(buf, spec, len + 1);
    ImageSource **list = NULL;
    int count = 0, cap = 0, rc = AE_OK;
    DatasetItem *item = xmalloc(sizeof *item);
    char *p = buf;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        if (!*p) {
            rc = err_set(err, AE_EARG, "empty item in the dataset list '%.900s' (hint: separate paths with single commas)",
                         spec);
            break;
        }
        rc = dataset_item_parse(item, p, defaults, err);
        if (rc) break;
        if (has_wildcard(item->path)) {
            glob_t g;
            int gr = glob(item->path, GLOB_NOSORT, NULL, &g);
            if (gr == GLOB_NOMATCH || (gr == 0 && g.gl_pathc == 0)) {
                rc = err_set(err, AE_EIO, "no file matches %s (hint: check the pattern)", item->path);
            } else if (gr != 0) {
                rc = err_set(err, AE_EIO, "cannot expand %s (hint: check permissions)", item->path);
            } else {
                qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, natural_qsort_cmp);
                char note[IMAGE_SOURCE_NOTE_BYTES];
                int first = count, many = g.gl_pathc > INT_MAX ? INT_MAX : (int)g.gl_pathc;
                rc = check_gaps((const char *const *)g.gl_pathv, many, item->path, &item->opts, note, err);
                for (size_t i = 0; i < g.gl_pathc && rc == AE_OK; i++)
                    rc = image_source_open_path(&list, &count, &cap, item->kind, g.gl_pathv[i], &item->opts, err);
                if (rc == AE_OK && count > first) snprintf(list[first]->gap_note, sizeof note, "%s", note);
            }
            if (gr == 0 || gr == GLOB_NOMATCH) globfree(&g);
        } else {
            rc = image_source_open_path(&list, &count, &cap, item->kind, item->path, &item->opts, err);
        }
        if (rc || !comma) break;
        p = comma + 1;
    }
    free(item);
    free(buf);
    if (rc) {
        image_source_close_all(list, count);
        return rc;
    }
    *srcs = list;
    *n = count;
    return AE_OK;
}
