/*
 * idx.c - MNIST IDX reader through zlib (see include/data/idx.h for the format).
 * Reads the whole file into one buffer (idx_read_u8) or streams it
 * (idx_stream_*); does not write IDX, does not convert types.  No shared state, no MPI.
 */
#include "data/idx.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* Bytes of the magic number (0, 0, type, ndim) and of each dimension. */
#define IDX_MAGIC_BYTES 4
#define IDX_DIM_BYTES 4
/* gzread takes an unsigned int count: read in chunks of at most this. */
#define IDX_READ_CHUNK (1u << 30)
/* Deflate expands at most about 1032:1 (zlib technical details, "Maximum
 * compression factor"); the slack covers gzip headers of tiny files. */
#define DEFLATE_MAX_RATIO 1032
#define DEFLATE_SLACK_BYTES 1024
/* Alignment of the data buffer, as xmalloc (check.c): one cache line. */
#define IDX_DATA_ALIGN 64

/* Allocation whose size comes from a file: failing is a user-level error
 * (AE_ENOMEM), not a fatal one, so this does not go through xmalloc (which
 * ends the job).  Free with free(). */
static void *alloc_or_null(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, IDX_DATA_ALIGN, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

/* Text of the last gzip error, without the "path: " prefix zlib puts in
 * front of it (our messages name the file already). */
static const char *gz_errtext(gzFile gz, const char *path)
{
    int code = Z_OK;
    const char *msg = gzerror(gz, &code);
    if (code == Z_ERRNO) return strerror(errno);
    if (code == Z_OK || !msg || !*msg) return "unexpected end of file";
    size_t plen = strlen(path);
    if (strncmp(msg, path, plen) == 0 && msg[plen] == ':' && msg[plen + 1] == ' ') msg += plen + 2;
    return msg;
}

/* Reads n bytes; returns the count read (< n at end of data) or -1. */
static int64_t gz_read_full(gzFile gz, uint8_t *buf, uint64_t n)
{
    uint64_t done = 0;
    while (done < n) {
        uint64_t want = n - done < IDX_READ_CHUNK ? n - done : IDX_READ_CHUNK;
        int got = gzread(gz, buf + done, (unsigned)want);
        if (got < 0) return -1;
        if (got == 0) break;
        done += (uint64_t)got;
    }
    return (int64_t)done;
}

int idx_stream_open(IdxStream *s, const char *path, Err *err)
{
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s is not a regular file (hint: give the path of an IDX file)", path);
    gzFile gz = gzopen(path, "rb");
    if (!gz) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check permissions)", path, strerror(errno));
    int rc = AE_OK;
    uint8_t head[IDX_MAGIC_BYTES + IDX_MAX_DIMS * IDX_DIM_BYTES];
    int64_t got = gz_read_full(gz, head, IDX_MAGIC_BYTES);
    if (got != IDX_MAGIC_BYTES) {
        if (got < 0)
            rc = err_set(err, AE_EFORMAT, "%s: corrupt gzip data: %s (hint: re-download the file)", path,
                         gz_errtext(gz, path));
        else
            rc = err_set(err, AE_EFORMAT, "%s: truncated: the file ends before the 4-byte IDX magic (hint: re-download it)",
                         path);
        goto done;
    }
    uint32_t magic = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    int nd = head[3];
    if (head[0] != 0 || head[1] != 0 || head[2] != IDX_TYPE_U8 || nd < 1 || nd > IDX_MAX_DIMS) {
        rc = err_set(err, AE_EFORMAT,
                     "%s: bad IDX magic 0x%08" PRIx32 " (expected 0x000008NN: unsigned bytes, 1..%d dimensions, "
                     "e.g. 0x00000803 for images) (hint: is this an MNIST-style IDX file?)",
                     path, magic, IDX_MAX_DIMS);
        goto done;
    }
    got = gz_read_full(gz, head + IDX_MAGIC_BYTES, (uint64_t)nd * IDX_DIM_BYTES);
    if (got != (int64_t)nd * IDX_DIM_BYTES) {
        rc = err_set(err, AE_EFORMAT, "%s: %s inside the IDX header (hint: re-download the file)", path,
                     got < 0 ? gz_errtext(gz, path) : "truncated: the file ends");
        goto done;
    }
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const uint8_t *b = head + IDX_MAGIC_BYTES + i * IDX_DIM_BYTES;
        s->dims[i] = (int64_t)((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]);
        if (s->dims[i] != 0 && numel > INT64_MAX / s->dims[i]) {
            rc = err_set(err, AE_EFORMAT, "%s: the IDX dimensions overflow (hint: the header is corrupt)", path);
            goto done;
        }
        numel *= s->dims[i];
    }
    int64_t header_bytes = IDX_MAGIC_BYTES + (int64_t)nd * IDX_DIM_BYTES;
    int64_t file_bytes = (int64_t)st.st_size;
    /* Check the claimed size against the file before anything trusts it. */
    int plain = gzdirect(gz);
    if (plain && numel != file_bytes - header_bytes) {
        rc = err_set(err, AE_EFORMAT,
                     "%s: the IDX header announces %" PRId64 " data bytes (%" PRId64 " bytes with the header) but the "
                     "file has %" PRId64 " bytes (hint: the file is truncated or the header is corrupt; re-download it)",
                     path, numel, numel + header_bytes, file_bytes);
        goto done;
    }
    if (!plain && numel / DEFLATE_MAX_RATIO > file_bytes + DEFLATE_SLACK_BYTES) {
        rc = err_set(err, AE_EFORMAT,
                     "%s: the IDX header announces %" PRId64 " data bytes, more than a %" PRId64
                     "-byte gzip file can hold (hint: the header is corrupt; re-download the file)",
                     path, numel, file_bytes);
        goto done;
    }
    s->ndim = nd;
    s->numel = numel;
    s->plain = plain;
done:
    if (rc) {
        gzclose(gz);
        memset(s->dims, 0, sizeof s->dims);
    } else {
        s->gz = gz;
    }
    return rc;
}

int idx_stream_read(IdxStream *s, uint8_t *buf, int64_t n, Err *err)
{
    assert(n >= 0 && n <= s->numel - s->pos);
    gzFile gz = s->gz;
    int64_t got = gz_read_full(gz, buf, (uint64_t)n);
    if (got != n) {
        if (got < 0)
            return err_set(err, AE_EFORMAT, "%s: corrupt gzip data: %s (hint: re-download the file)", s->path,
                           gz_errtext(gz, s->path));
        return err_set(err, AE_EFORMAT,
                       "%s: truncated: the data ends after %" PRId64 " of %" PRId64 " bytes (hint: re-download the file)",
                       s->path, s->pos + got, s->numel);
    }
    s->pos += n;
    if (s->pos == s->numel) {
        uint8_t extra;
        got = gz_read_full(gz, &extra, 1);
        if (got != 0)
            return err_set(err, AE_EFORMAT,
                           "%s: %s after the %" PRId64 " data bytes the header announces (hint: the header is wrong or "
                           "the file is damaged)", s->path, got < 0 ? gz_errtext(gz, s->path) : "extra bytes", s->numel);
    }
    return AE_OK;
}

void idx_stream_close(IdxStream *s)
{
    if (!s) return;
    if (s->gz) gzclose(s->gz);
    s->gz = NULL;
}

int idx_read_u8(const char *path, uint8_t **data, int *ndim, int64_t dims[IDX_MAX_DIMS], Err *err)
{
    *data = NULL;
    *ndim = 0;
    for (int i = 0; i < IDX_MAX_DIMS; i++) dims[i] = 0;
    IdxStream s;
    if (idx_stream_open(&s, path, err)) return err->code;
    uint8_t *buf = NULL;
    int rc = AE_OK;
    if ((uint64_t)s.numel > SIZE_MAX || !(buf = alloc_or_null((size_t)s.numel)))
        rc = err_set(err, AE_ENOMEM, "%s: cannot allocate %" PRId64 " bytes (hint: free memory)", path, s.numel);
    else
        rc = idx_stream_read(&s, buf, s.numel, err);
    if (rc == AE_OK) {
        *data = buf;
        *ndim = s.ndim;
        for (int i = 0; i < IDX_MAX_DIMS; i++) dims[i] = s.dims[i];
    } else {
        free(buf);
    }
    idx_stream_close(&s);
    return rc;
}
