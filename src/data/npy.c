/*
 * npy.c - NumPy .npy / .npz reading and writing (see include/data/npy.h; format
 * from numpy/lib/format.py and NEP 1).
 *
 * Reading: one parser (npy_parse_stream) serves both plain files (stdio) and
 * npz members (streamed with libzip's zip_fopen_index / zip_fread, so a
 * member is decompressed once, straight into the array).  The header dict is
 * parsed by a small hand-written scanner that accepts exactly the literals
 * numpy writes; nothing is ever evaluated.  Before any allocation the size
 * implied by the header is checked against the bytes actually present, so a
 * lying header cannot make us allocate more than the file holds.
 * Writing: version 1.0 headers; npz members are stored (not compressed), as
 * numpy.savez does, through libzip, into an AtomicFile (fileio.h).
 *
 * Does not do: memory mapping, byte swapping, fortran order, pickles.
 * Single-threaded per call; no shared state; no MPI.
 */
#include "data/npy.h"

#include "base/check.h"
#include "base/fileio.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c reads and writes little-endian data without byte swaps: little-endian hosts only"
#endif

/* File magic of every .npy: 0x93 then "NUMPY" (NEP 1). */
static const char NPY_MAGIC[] = "\x93NUMPY";
#define NPY_MAGIC_LEN 6
/* Bytes before the header dict: magic, major, minor, then the header length
 * as uint16 LE (version 1.0) or uint32 LE (2.0 and 3.0). */
#define NPY_PREFIX_V1 10
#define NPY_PREFIX_V2 12
/* numpy pads the header so that the data starts at a multiple of this many
 * bytes (format.py ARRAY_ALIGN), for aligned memory mapping. */
#define NPY_ALIGN 64
/* Largest header dict we accept, in bytes: numpy's own headers are < 1 KiB
 * for our dtypes; this only stops a corrupt length field from allocating. */
#define NPY_MAX_HEADER_BYTES (1u << 20)
/* Room for a version 1.0 header we write: prefix + dict with NPY_MAX_DIMS
 * 20-digit dims (< 300 bytes) + alignment padding. */
#define NPY_EMIT_HEADER_BYTES 512
/* Longest descr / dict key we parse, bytes incl. NUL (numpy's are <= 16). */
#define NPY_TOKEN_BYTES 64
/* Deflate cannot expand data more than about 1032:1 (zlib technical
 * details, "Maximum compression factor"); a member claiming more is corrupt.
 * The slack covers the fixed overhead of tiny streams, in bytes. */
#define DEFLATE_MAX_RATIO 1032
#define DEFLATE_SLACK_BYTES 1024
/* Alignment of arrays we allocate, as xmalloc (check.c): one cache line. */
#define NPY_DATA_ALIGN 64
/* Length of an empty zip file: just the end-of-central-directory record. */
#define ZIP_EOCD_BYTES 22

/* ---- dtypes --------------------------------------------------------- */

typedef struct DtypeInfo {
    NpyDtype t;
    char kind;          /* numpy kind letter: 'u', 'i', 'f' */
    size_t size;        /* bytes per element */
    const char *descr;  /* what we write */
} DtypeInfo;

static const DtypeInfo DTYPES[] = {
    {NPY_U8, 'u', 1, "|u1"},  {NPY_I32, 'i', 4, "<i4"}, {NPY_I64, 'i', 8, "<i8"},
    {NPY_U64, 'u', 8, "<u8"}, {NPY_F32, 'f', 4, "<f4"}, {NPY_F64, 'f', 8, "<f8"},
    {NPY_I8, 'i', 1, "|i1"},  {NPY_I16, 'i', 2, "<i2"}, {NPY_U16, 'u', 2, "<u2"},
    {NPY_U32, 'u', 4, "<u4"},
};
#define N_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

static const DtypeInfo *dtype_info(NpyDtype t)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].t == t) return &DTYPES[i];
    return NULL;
}

size_t npy_dtype_size(NpyDtype t)
{
    const DtypeInfo *d = dtype_info(t);
    assert(d);
    return d ? d->size : 0;
}

const char *npy_dtype_descr(NpyDtype t)
{
    const DtypeInfo *d = dtype_info(t);
    return d ? d->descr : "?";
}

int64_t npy_numel(const NpyArray *a)
{
    int64_t n = 1;
    for (int i = 0; i < a->ndim; i++) n *= a->shape[i];
    return n;
}

void npy_array_free(NpyArray *a)
{
    if (!a) return;
    free(a->data);
    a->data = NULL;
}

/* Allocation whose size comes from a file: failing is a user-level error
 * (AE_ENOMEM), not a fatal one, so this does not go through xmalloc (which
 * ends the job).  Same 64-byte alignment as xmalloc; free with free(). */
static void *alloc_or_null(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, NPY_DATA_ALIGN, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

/* Element count and byte size of a shape, or -1 if they overflow int64. */
static int shape_bytes(const int64_t *shape, int ndim, size_t itemsize, int64_t *numel, int64_t *bytes)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    if (n > INT64_MAX / (int64_t)itemsize) return -1;
    *numel = n;
    *bytes = n * (int64_t)itemsize;
    return 0;
}

/* "(2, 3)" / "(5,)" / "()" into buf, as Python prints a tuple. */
static void format_shape(char *buf, size_t cap, const int64_t *shape, int ndim)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "(");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, ndim == 1 ? ",)" : ")");
}

/* ---- header dict parsing ---------------------------------------------- */

typedef struct Header {
    NpyDtype dtype;
    int big_endian;
    int fortran_order;
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
} Header;

static void skip_ws(const char **p)
{
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r') (*p)++;
}

/* A Python string literal in single or double quotes, without escapes. */
static int parse_string(const char **p, char *out, size_t cap)
{
    char q = **p;
    if (q != '\'' && q != '"') return -1;
    (*p)++;
    size_t k = 0;
    while (**p && **p != q) {
        if (**p == '\\' || k + 1 >= cap) return -1;
        out[k++] = *(*p)++;
    }
    if (**p != q) return -1;
    (*p)++;
    out[k] = '\0';
    return 0;
}

/* Maps a descr string to a supported dtype (*big = 1 for '>' multi-byte
 * types), or explains in why. */
static int dtype_from_descr(const char *descr, NpyDtype *t, int *big, char *why, size_t whycap)
{
    char order = '|';
    const char *s = descr;
    if (*s == '<' || *s == '>' || *s == '|' || *s == '=') order = *s++;
    if (s[0] == 'O') {
        snprintf(why, whycap, "object arrays (descr '%s', pickled Python objects) are not supported", descr);
        return -1;
    }
    for (size_t i = 0; i < N_DTYPES; i++) {
        const DtypeInfo *d = &DTYPES[i];
        char want[8];
        snprintf(want, sizeof want, "%c%zu", d->kind, d->size);
        if (strcmp(s, want) != 0) continue;
        if (d->size > 1 && order == '|') break; /* '|' only makes sense for 1-byte types */
        *big = d->size > 1 && order == '>';
        *t = d->t;
        return 0;
    }
    snprintf(why, whycap,
             "dtype '%s' is not supported (supported: u1 i1 i2 u2 i4 u4 i8 u8 f4 f8, little-endian)", descr);
    return -1;
}

/* Parses the header dict h (NUL-terminated).  Returns 0, or -1 with why. */
static int parse_header(const char *h, Header *hd, char *why, size_t whycap)
{
    const char *p = h;
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    char tok[NPY_TOKEN_BYTES];
    skip_ws(&p);
    if (*p++ != '{') goto malformed;
    for (;;) {
        skip_ws(&p);
        if (*p == '}') {
            p++;
            break;
        }
        if (parse_string(&p, tok, sizeof tok)) goto malformed;
        skip_ws(&p);
        if (*p++ != ':') goto malformed;
        skip_ws(&p);
        if (strcmp(tok, "descr") == 0) {
            if (*p == '[') {
                snprintf(why, whycap, "structured dtypes (descr is a list) are not supported");
                return -1;
            }
            if (parse_string(&p, tok, sizeof tok)) goto malformed;
            if (dtype_from_descr(tok, &hd->dtype, &hd->big_endian, why, whycap)) return -1;
            have_descr = 1;
        } else if (strcmp(tok, "fortran_order") == 0) {
            if (strncmp(p, "True", 4) == 0) {
                hd->fortran_order = 1;
                p += 4;
            } else if (strncmp(p, "False", 5) == 0) {
                hd->fortran_order = 0;
                p += 5;
            } else {
                goto malformed;
            }
            have_fortran = 1;
        } else if (strcmp(tok, "shape") == 0) {
            if (*p++ != '(') goto malformed;
            hd->ndim = 0;
            for (;;) {
                skip_ws(&p);
                if (*p == ')') {
                    p++;
                    break;
                }
                if (*p < '0' || *p > '9') goto malformed;
                int64_t v = 0;
                while (*p >= '0' && *p <= '9') {
                    int digit = *p++ - '0';
                    if (v > (INT64_MAX - digit) / 10) {
                        snprintf(why, whycap, "a dimension in the header's shape overflows int64");
                        return -1;
                    }
                    v = v * 10 + digit;
                }
                if (*p == 'L') p++; /* Python 2 long literal, as old numpy wrote */
                if (hd->ndim == NPY_MAX_DIMS) {
                    snprintf(why, whycap, "more than %d dimensions are not supported", NPY_MAX_DIMS);
                    return -1;
                }
                hd->shape[hd->ndim++] = v;
                skip_ws(&p);
                if (*p == ',') p++;
                else if (*p != ')') goto malformed;
            }
            have_shape = 1;
        } else {
            snprintf(why, whycap, "unexpected key '%s' in the header", tok);
            return -1;
        }
        skip_ws(&p);
        if (*p == ',') p++;
        else if (*p != '}') goto malformed;
    }
    skip_ws(&p);
    if (*p != '\0') goto malformed;
    if (!have_descr || !have_fortran || !have_shape) {
        snprintf(why, whycap, "the header lacks %s", !have_descr ? "'descr'" : !have_fortran ? "'fortran_order'" : "'shape'");
        return -1;
    }
    return 0;
malformed:
    snprintf(why, whycap, "malformed header dict near byte %td: \"%.40s\"", p - h, h);
    return -1;
}

/* ---- reading -------------------------------------------------------- */

/* A byte source: a stdio file or an open zip member. */
typedef struct Reader {
    /* Reads up to n bytes into buf; returns the count (< n only at end of
     * data) or -1 on error. */
    int64_t (*read)(void *ctx, void *buf, uint64_t n);
    /* Text of the last error. */
    const char *(*errstr)(void *ctx);
    void *ctx;
} Reader;

static int64_t file_read(void *ctx, void *buf, uint64_t n)
{
    FILE *f = ctx;
    size_t got = fread(buf, 1, (size_t)n, f);
    if (got < n && ferror(f)) return -1;
    return (int64_t)got;
}

static const char *file_errstr(void *ctx)
{
    (void)ctx;
    return errno ? strerror(errno) : "unexpected end of file";
}

static int64_t zipf_read(void *ctx, void *buf, uint64_t n)
{
    uint8_t *b = buf;
    uint64_t done = 0;
    while (done < n) { /* zip_fread may return short counts before the end */
        zip_int64_t got = zip_fread(ctx, b + done, n - done);
        if (got < 0) return -1;
        if (got == 0) break;
        done += (uint64_t)got;
    }
    return (int64_t)done;
}

static const char *zipf_errstr(void *ctx)
{
    return zip_file_strerror(ctx);
}

/* Reads exactly n bytes or reports why not. */
static int read_exact(Reader *rd, void *buf, uint64_t n, const char *what, const char *part, Err *err)
{
    int64_t got = rd->read(rd->ctx, buf, n);
    if (got < 0)
        return err_set(err, AE_EFORMAT, "%s: read error in the %s: %s (hint: the file is damaged)", what, part,
                       rd->errstr(rd->ctx));
    if ((uint64_t)got != n)
        return err_set(err, AE_EFORMAT,
                       "%s: truncated: the %s ends after %" PRId64 " of %" PRIu64
                       " bytes (hint: re-create the file with numpy.save / numpy.savez)",
                       what, part, got, n);
    return AE_OK;
}

static uint32_t le32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Adapts a Reader to NpyReadFn. */
typedef struct ReaderCtx {
    Reader *rd;
    const char *what;
} ReaderCtx;

static int reader_fn(void *ctx, void *buf, uint64_t n, Err *err)
{
    ReaderCtx *c = ctx;
    return read_exact(c->rd, buf, n, c->what, "header", err);
}

int npy_header_read(NpyHeader *out, NpyReadFn read, void *ctx, uint64_t total, const char *what, Err *err)
{
    uint8_t pre[NPY_PREFIX_V2];
    memset(out, 0, sizeof *out);
    if (total < NPY_PREFIX_V1)
        return err_set(err, AE_EFORMAT,
                       "%s: truncated: %" PRIu64 " bytes is shorter than an .npy header (hint: re-create it with numpy.save)",
                       what, total);
    if (read(ctx, pre, NPY_PREFIX_V1, err)) return err->code;
    if (memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return err_set(err, AE_EFORMAT,
                       "%s: not an .npy array (the first bytes are not \\x93NUMPY) (hint: write it with numpy.save)",
                       what);
    unsigned major = pre[6], minor = pre[7];
    uint64_t prefix, hlen;
    if (major == 1 && minor == 0) {
        prefix = NPY_PREFIX_V1;
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        prefix = NPY_PREFIX_V2;
        if (total < NPY_PREFIX_V2 || read(ctx, pre + NPY_PREFIX_V1, 2, err))
            return err_set(err, AE_EFORMAT, "%s: truncated inside the .npy header (hint: re-create it with numpy.save)",
                           what);
        hlen = le32(pre + 8);
    } else {
        return err_set(err, AE_EFORMAT,
                       "%s: .npy format version %u.%u is not supported (hint: this reader handles 1.0, 2.0 and 3.0)",
                       what, major, minor);
    }
    if (hlen > NPY_MAX_HEADER_BYTES || prefix + hlen > total)
        return err_set(err, AE_EFORMAT,
                       "%s: the header claims %" PRIu64 " bytes but only %" PRIu64
                       " follow (hint: the file is truncated or not an .npy)",
                       what, hlen, total - prefix);
    char *h = xmalloc((size_t)hlen + 1);
    if (read(ctx, h, hlen, err)) {
        free(h);
        return err->code;
    }
    h[hlen] = '\0';
    Header hd;
    memset(&hd, 0, sizeof hd);
    char why[256];
    int bad = strlen(h) != hlen;
    if (bad) snprintf(why, sizeof why, "the header dict holds a NUL byte");
    else bad = parse_header(h, &hd, why, sizeof why);
    free(h);
    if (bad)
        return err_set(err, AE_EFORMAT,
                       "%s: %s (hint: save a C-order little-endian numeric array, e.g. numpy.save(path, a.astype('<f4')))",
                       what, why);
    size_t isz = npy_dtype_size(hd.dtype);
    int64_t numel, bytes;
    char shp[NPY_MAX_DIMS * 24];
    format_shape(shp, sizeof shp, hd.shape, hd.ndim);
    if (shape_bytes(hd.shape, hd.ndim, isz, &numel, &bytes))
        return err_set(err, AE_EFORMAT, "%s: shape %s is too large (size overflows) (hint: the header is corrupt)",
                       what, shp);
    uint64_t avail = total - prefix - hlen;
    if ((uint64_t)bytes != avail)
        return err_set(err, AE_EFORMAT,
                       "%s: the header says %s%s shape %s = %" PRId64 " bytes of data but %" PRIu64
                       " bytes follow (hint: the file is truncated or was not written by numpy)",
                       what, hd.big_endian ? ">" : "", npy_dtype_descr(hd.dtype), shp, bytes, avail);
    out->dtype = hd.dtype;
    out->big_endian = hd.big_endian;
    out->fortran_order = hd.fortran_order;
    out->ndim = hd.ndim;
    memcpy(out->shape, hd.shape, sizeof hd.shape);
    out->data_offset = prefix + hlen;
    out->data_bytes = (uint64_t)bytes;
    return AE_OK;
}

/* Parses one .npy of `total` bytes from rd into out (data allocated here).
 * `what` names the file (and member) in messages. */
static int npy_parse_stream(NpyArray *out, Reader *rd, uint64_t total, const char *what, Err *err)
{
    memset(out, 0, sizeof *out);
    NpyHeader hd;
    ReaderCtx rc = {rd, what};
    if (npy_header_read(&hd, reader_fn, &rc, total, what, err)) return err->code;
    if (hd.big_endian)
        return err_set(err, AE_EFORMAT,
                       "%s: big-endian data (descr '>%s') is not supported (hint: save a C-order little-endian numeric "
                       "array, e.g. numpy.save(path, a.astype('<f4')))",
                       what, npy_dtype_descr(hd.dtype) + 1);
    if (hd.fortran_order)
        return err_set(err, AE_EFORMAT,
                       "%s: fortran_order=True arrays are not supported (hint: save numpy.ascontiguousarray(a))",
                       what);
    uint64_t bytes = hd.data_bytes;
    char shp[NPY_MAX_DIMS * 24];
    format_shape(shp, sizeof shp, hd.shape, hd.ndim);
    if (bytes > SIZE_MAX)
        return err_set(err, AE_ENOMEM, "%s: %" PRIu64 " bytes do not fit in memory here", what, bytes);
    void *data = alloc_or_null((size_t)bytes);
    if (!data)
        return err_set(err, AE_ENOMEM, "%s: cannot allocate %" PRIu64 " bytes for shape %s (hint: free memory or use a smaller file)",
                       what, bytes, shp);
    if (read_exact(rd, data, bytes, what, "array data", err)) {
        free(data);
        return err->code;
    }
    out->dtype = hd.dtype;
    out->ndim = hd.ndim;
    memcpy(out->shape, hd.shape, sizeof hd.shape);
    out->data = data;
    return AE_OK;
}

int npy_read(const char *path, NpyArray *out, Err *err)
{
    memset(out, 0, sizeof *out);
    if (fileio_check_input(path, err)) return err->code;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return err_set(err, AE_EIO, "%s is not a readable regular file (hint: give the path of an .npy file)", path);
    }
    Reader rd = {file_read, file_errstr, f};
    errno = 0;
    int rc = npy_parse_stream(out, &rd, (uint64_t)st.st_size, path, err);
    fclose(f);
    return rc;
}

/* Maps a libzip error code to our status codes. */
static int zip_status(int ze)
{
    switch (ze) {
    case ZIP_ER_MEMORY: return AE_ENOMEM;
    case ZIP_ER_OPEN:
    case ZIP_ER_NOENT:
    case ZIP_ER_READ:
    case ZIP_ER_SEEK:
    case ZIP_ER_TELL:
    case ZIP_ER_WRITE:
    case ZIP_ER_CLOSE:
    case ZIP_ER_RENAME:
    case ZIP_ER_TMPOPEN:
    case ZIP_ER_REMOVE: return AE_EIO;
    default: return AE_EFORMAT;
    }
}

/* Reads member `index` (stat zs) of za into a. */
static int read_member(zip_t *za, zip_uint64_t index, const zip_stat_t *zs, const char *path, NpyArray *a,
                       Err *err)
{
    char what[FILEIO_PATH_MAX + NPY_NAME_BYTES + 16];
    snprintf(what, sizeof what, "%s (member '%s')", path, zs->name);
    if ((zs->valid & ZIP_STAT_COMP_METHOD) && (zs->valid & ZIP_STAT_COMP_SIZE) &&
        zs->comp_method == ZIP_CM_DEFLATE && zs->size / DEFLATE_MAX_RATIO > zs->comp_size + DEFLATE_SLACK_BYTES)
        return err_set(err, AE_EFORMAT,
                       "%s: claims %" PRIu64 " bytes inflated from %" PRIu64
                       " compressed, more than deflate can expand (hint: the archive is damaged)",
                       what, (uint64_t)zs->size, (uint64_t)zs->comp_size);
    zip_file_t *zf = zip_fopen_index(za, index, 0);
    if (!zf) {
        zip_error_t *ze = zip_get_error(za);
        return err_set(err, zip_status(zip_error_code_zip(ze)), "%s: cannot open the member: %s (hint: re-create the npz with numpy.savez)",
                       what, zip_error_strerror(ze));
    }
    Reader rd = {zipf_read, zipf_errstr, zf};
    int rc = npy_parse_stream(a, &rd, (uint64_t)zs->size, what, err);
    if (rc == AE_OK) {
        /* Read past the end: libzip checks the member's CRC-32 only when the
         * stream reaches its end. */
        uint8_t extra;
        zip_int64_t got = zip_fread(zf, &extra, 1);
        if (got != 0) {
            rc = err_set(err, AE_EFORMAT, "%s: %s (hint: the archive is damaged; re-create it)", what,
                         got < 0 ? zip_file_strerror(zf) : "more data than the zip directory records");
            npy_array_free(a);
        }
    }
    if (zip_fclose(zf) != 0 && rc == AE_OK) {
        rc = err_set(err, AE_EFORMAT, "%s: error closing the member (hint: the archive is damaged)", what);
        npy_array_free(a);
    }
    return rc;
}

static int name_selected(const char *name, const char *const *names, int n_names)
{
    if (!names) return 1;
    for (int i = 0; i < n_names; i++)
        if (strcmp(name, names[i]) == 0) return 1;
    return 0;
}

static int npz_read_impl(const char *path, const char *const *names, int n_names, NpyArray **arrays, int *n,
                         Err *err)
{
    static const char npy_ext[] = ".npy";
    const size_t ext_len = sizeof npy_ext - 1;
    *arrays = NULL;
    *n = 0;
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s is not a regular file (hint: give the path of an .npz file)", path);
    if (st.st_size == 0)
        return err_set(err, AE_EFORMAT, "%s is empty (0 bytes), not an npz archive (hint: re-create it with numpy.savez)",
                       path);
    int zerr = 0;
    if (fileio_check_input(path, err)) return err->code;
    zip_t *za = zip_open(path, ZIP_RDONLY, &zerr);
    if (!za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        int code = zip_status(zerr);
        err_set(err, code, "cannot read %s as an npz: %s (hint: %s)", path, zip_error_strerror(&ze),
                code == AE_EIO ? "check the path and permissions"
                                       : "it must be a complete zip archive written by numpy.savez; truncated?");
        zip_error_fini(&ze);
        return code;
    }
    zip_int64_t ne = zip_get_num_entries(za, 0);
    NpyArray *list = NULL;
    int cnt = 0, cap = 0, rc = AE_OK;
    for (zip_int64_t i = 0; i < ne; i++) {
        zip_stat_t zs;
        zip_stat_init(&zs);
        if (zip_stat_index(za, (zip_uint64_t)i, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_NAME) ||
            !(zs.valid & ZIP_STAT_SIZE)) {
            rc = err_set(err, AE_EFORMAT, "%s: cannot read zip entry %" PRId64 ": %s (hint: the archive is damaged)",
                         path, (int64_t)i, zip_strerror(za));
            break;
        }
        size_t len = strlen(zs.name);
        if (len < ext_len || strcmp(zs.name + len - ext_len, npy_ext) != 0) continue; /* not an array */
        if (len - ext_len >= NPY_NAME_BYTES) {
            rc = err_set(err, AE_EFORMAT, "%s: member name '%.64s...' is longer than %d bytes (hint: use shorter names)",
                         path, zs.name, NPY_NAME_BYTES - 1);
            break;
        }
        char base[NPY_NAME_BYTES];
        memcpy(base, zs.name, len - ext_len);
        base[len - ext_len] = '\0';
        if (!name_selected(base, names, n_names)) continue;
        if (cnt == cap) {
            int ncap = cap ? 2 * cap : 8;
            NpyArray *grown = xmalloc((size_t)ncap * sizeof *grown);
            if (cnt) memcpy(grown, list, (size_t)cnt * sizeof *list);
            free(list);
            list = grown;
            cap = ncap;
        }
        rc = read_member(za, (zip_uint64_t)i, &zs, path, &list[cnt], err);
        if (rc) break;
        snprintf(list[cnt].name, sizeof list[cnt].name, "%s", base);
        cnt++;
    }
    zip_discard(za); /* read-only: nothing to write back */
    if (rc) {
        npz_free(list, cnt);
        return rc;
    }
    *arrays = list ? list : xmalloc(sizeof *list);
    *n = cnt;
    return AE_OK;
}

int npz_read(const char *path, NpyArray **arrays, int *n, Err *err)
{
    return npz_read_impl(path, NULL, 0, arrays, n, err);
}

int npz_read_only(const char *path, const char *const *names, int n_names, NpyArray **arrays, int *n, Err *err)
{
    assert(names && n_names >= 0);
    return npz_read_impl(path, names, n_names, arrays, n, err);
}

void npz_free(NpyArray *arrays, int n)
{
    if (!arrays) return;
    for (int i = 0; i < n; i++) npy_array_free(&arrays[i]);
    free(arrays);
}

const NpyArray *npz_find(const NpyArray *arrays, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arrays[i].name, name) == 0) return &arrays[i];
    return NULL;
}

/* ---- writing -------------------------------------------------------- */

/* Checks that a can be written; `what` names it in messages. */
static int check_writable(const NpyArray *a, const char *what, int64_t *bytes, Err *err)
{
    if (!dtype_info(a->dtype)) return err_set(err, AE_EARG, "%s: unknown dtype code %d", what, (int)a->dtype);
    if (a->ndim < 0 || a->ndim > NPY_MAX_DIMS)
        return err_set(err, AE_EARG, "%s: ndim %d is outside 0..%d", what, a->ndim, NPY_MAX_DIMS);
    int64_t numel;
    if (shape_bytes(a->shape, a->ndim, npy_dtype_size(a->dtype), &numel, bytes))
        return err_set(err, AE_EARG, "%s: negative or overflowing shape", what);
    if (*bytes > 0 && !a->data) return err_set(err, AE_EARG, "%s: data is NULL", what);
    return AE_OK;
}

/* Writes a version 1.0 header for a into buf (NPY_EMIT_HEADER_BYTES) and
 * returns its length, a multiple of NPY_ALIGN. */
static size_t make_header(uint8_t *buf, const NpyArray *a)
{
    char shp[NPY_MAX_DIMS * 24], dict[NPY_EMIT_HEADER_BYTES];
    format_shape(shp, sizeof shp, a->shape, a->ndim);
    int dlen = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                        npy_dtype_descr(a->dtype), shp);
    assert(dlen > 0 && (size_t)dlen < sizeof dict);
    /* Pad with spaces so that prefix + dict + '\n' is a multiple of 64. */
    size_t unpadded = NPY_PREFIX_V1 + (size_t)dlen + 1;
    size_t total = (unpadded + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    assert(total <= NPY_EMIT_HEADER_BYTES);
    size_t hlen = total - NPY_PREFIX_V1;
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (uint8_t)(hlen & 0xFF);
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + NPY_PREFIX_V1, dict, (size_t)dlen);
    memset(buf + NPY_PREFIX_V1 + dlen, ' ', total - unpadded);
    buf[total - 1] = '\n';
    return total;
}

int npy_write(const char *path, const NpyArray *a, Err *err)
{
    int64_t bytes;
    if (check_writable(a, path, &bytes, err)) return err->code;
    uint8_t hdr[NPY_EMIT_HEADER_BYTES];
    size_t hlen = make_header(hdr, a);
    AtomicFile af;
    if (atomic_open(&af, path, err)) return err->code;
    if (fwrite(hdr, 1, hlen, af.f) != hlen || (bytes > 0 && fwrite(a->data, 1, (size_t)bytes, af.f) != (size_t)bytes)) {
        int e = errno;
        atomic_abort(&af);
        return err_set(err, AE_EIO, "cannot write %s: %s (hint: disk full or folder not writable?)", path,
                       strerror(e ? e : EIO));
    }
    return atomic_commit(&af, err);
}

int npz_write(const char *path, const NpyArray *arrays, int n, Err *err)
{
    assert(n >= 0);
    for (int i = 0; i < n; i++) {
        int64_t bytes;
        char what[FILEIO_PATH_MAX + NPY_NAME_BYTES + 16];
        snprintf(what, sizeof what, "%s (array %d '%s')", path, i, arrays[i].name);
        if (arrays[i].name[0] == '\0' || memchr(arrays[i].name, '\0', NPY_NAME_BYTES) == NULL)
            return err_set(err, AE_EARG, "%s: empty or unterminated array name (hint: set NpyArray.name)", what);
        if (check_writable(&arrays[i], what, &bytes, err)) return err->code;
        for (int j = 0; j < i; j++)
            if (strcmp(arrays[i].name, arrays[j].name) == 0)
                return err_set(err, AE_EARG, "%s: duplicate array name (hint: names must be unique)", what);
    }
    AtomicFile af;
    if (atomic_open(&af, path, err)) return err->code;
    if (n == 0) {
        /* libzip deletes an archive with no entries on close; numpy.savez()
         * writes the bare end-of-central-directory record instead. */
        uint8_t eocd[ZIP_EOCD_BYTES] = {'P', 'K', 5, 6};
        if (fwrite(eocd, 1, sizeof eocd, af.f) != sizeof eocd) {
            atomic_abort(&af);
            return err_set(err, AE_EIO, "cannot write %s: %s", path, strerror(errno));
        }
        return atomic_commit(&af, err);
    }
    fclose(af.f); /* libzip writes af.tmp_path itself */
    af.f = NULL;
    uint8_t *headers = xmalloc((size_t)n * NPY_EMIT_HEADER_BYTES);
    zip_buffer_fragment_t *frags = xmalloc(2 * (size_t)n * sizeof *frags);
    int zerr = 0, rc = AE_OK;
    zip_t *za = zip_open(af.tmp_path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        rc = err_set(err, AE_EIO, "cannot write %s: %s (hint: is the folder writable?)", path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const NpyArray *a = &arrays[i];
        uint8_t *hdr = headers + (size_t)i * NPY_EMIT_HEADER_BYTES;
        int64_t bytes = npy_numel(a) * (int64_t)npy_dtype_size(a->dtype);
        frags[2 * i].data = hdr;
        frags[2 * i].length = make_header(hdr, a);
        frags[2 * i + 1].data = a->data;
        frags[2 * i + 1].length = (zip_uint64_t)bytes;
        /* The fragments' memory (our headers, the caller's data) must stay
         * valid until zip_close, which is where libzip reads it. */
        zip_source_t *src = zip_source_buffer_fragment(za, &frags[2 * i], bytes > 0 ? 2 : 1, 0);
        char member[NPY_NAME_BYTES + 8];
        snprintf(member, sizeof member, "%s.npy", a->name);
        zip_int64_t idx = src ? zip_file_add(za, member, src, ZIP_FL_ENC_UTF_8) : -1;
        if (idx < 0 && src) zip_source_free(src);
        if (idx < 0 || zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0) != 0) {
            rc = err_set(err, AE_EIO, "cannot write %s (member %s): %s", path, member, zip_strerror(za));
            zip_discard(za);
            goto done;
        }
    }
    if (zip_close(za) != 0) {
        rc = err_set(err, AE_EIO, "cannot write %s: %s (hint: disk full or folder not writable?)", path,
                     zip_strerror(za));
        zip_discard(za);
    }
done:
    free(headers);
    free(frags);
    if (rc) {
        atomic_abort(&af);
        return rc;
    }
    return atomic_commit_closed(&af, err);
}
