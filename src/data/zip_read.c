/*
 * zip_read.c - strict zip central-directory reader and member streams (see
 * include/data/zip_read.h; format from PKWARE APPNOTE.TXT 6.3).
 *
 * Reads with pread() only, so one archive can serve several threads.  Does
 * not write zip files (sample_store.c and npy.c do), does not handle
 * encryption, multi-disk archives or methods other than stored/deflated.
 * No MPI, no global state.
 */
#include "data/zip_read.h"
#include "base/fileio.h"

#include "base/check.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Record signatures and fixed sizes (APPNOTE 4.3.7, 4.3.12, 4.3.14-16). */
#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define LOCAL_BYTES 30
#define CENTRAL_BYTES 46
#define EOCD_BYTES 22
#define EOCD64_BYTES 56
#define LOCATOR64_BYTES 20
/* The archive comment is at most 65535 bytes: the EOCD lies in the last
 * EOCD_BYTES + 65535 bytes. */
#define EOCD_SEARCH_BYTES (EOCD_BYTES + 65535)
/* Extra-field id of the zip64 extended information (APPNOTE 4.5.3). */
#define EXTRA_ZIP64 0x0001
/* General-purpose flag bit 0: encrypted (APPNOTE 4.4.4). */
#define FLAG_ENCRYPTED 0x0001
/* 32-bit / 16-bit fields set to all ones defer to the zip64 record. */
#define ZIP64_U32 0xFFFFFFFFu
#define ZIP64_U16 0xFFFFu
/* Deflate cannot expand data more than about 1032:1 (zlib technical
 * details, "Maximum compression factor"); the slack covers tiny streams. */
#define DEFLATE_MAX_RATIO 1032
#define DEFLATE_SLACK_BYTES 1024
/* Compressed bytes read per pread while inflating: large enough to keep
 * syscalls rare, small enough to be a bounded window. */
#define INFLATE_WINDOW_BYTES (256u << 10)
/* zlib and crc32 take unsigned int counts: work in chunks of at most this. */
#define ZCHUNK (1u << 30)

static uint16_t rd16(const uint8_t *b) { return (uint16_t)(b[0] | b[1] << 8); }
static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t rd64(const uint8_t *b) { return (uint64_t)rd32(b) | (uint64_t)rd32(b + 4) << 32; }

static uint32_t crc_update(uint32_t crc, const uint8_t *p, uint64_t n)
{
    while (n) {
        uInt c = n > ZCHUNK ? ZCHUNK : (uInt)n;
        crc = (uint32_t)crc32(crc, p, c);
        p += c;
        n -= c;
    }
    return crc;
}

static int bad(Err *err, const ZipArchive *za, const char *what)
{
    return err_set(err, AE_EFORMAT, "%s: not a valid zip archive: %s (hint: the file is truncated or damaged; "
                   "re-create it, e.g. with numpy.savez)", za->path, what);
}

static int read_at(ZipArchive *za, void *buf, size_t n, uint64_t off, const char *what, Err *err)
{
    if (off > za->file_size || n > za->file_size - off) return bad(err, za, what);
    if (fileio_pread_full(za->fd, buf, n, off) != 0) {
        if (errno)
            return err_set(err, AE_EIO, "%s: read error: %s (hint: check the disk)", za->path, strerror(errno));
        return bad(err, za, what);
    }
    return AE_OK;
}

/* Finds the EOCD; fills the central directory's count, size and offset. */
static int find_directory(ZipArchive *za, uint64_t *count, uint64_t *cd_size, uint64_t *cd_off, Err *err)
{
    if (za->file_size < EOCD_BYTES)
        return bad(err, za, za->file_size ? "shorter than an end-of-directory record" : "the file is empty");
    uint64_t span = za->file_size < EOCD_SEARCH_BYTES ? za->file_size : EOCD_SEARCH_BYTES;
    uint8_t *tail = xmalloc((size_t)span);
    uint64_t base = za->file_size - span;
    if (read_at(za, tail, (size_t)span, base, "cannot read the end", err)) {
        free(tail);
        return err->code;
    }
    int64_t at = -1;
    for (int64_t i = (int64_t)span - EOCD_BYTES; i >= 0; i--) {
        if (rd32(tail + i) == SIG_EOCD && (uint64_t)i + EOCD_BYTES + rd16(tail + i + 20) == span) {
            at = i;
            break;
        }
    }
    if (at < 0) {
        free(tail);
        return bad(err, za, "no end-of-central-directory record at the end");
    }
    const uint8_t *e = tail + at;
    uint16_t disk = rd16(e + 4), cd_disk = rd16(e + 6);
    uint16_t n_disk = rd16(e + 8), n_total = rd16(e + 10);
    uint32_t sz = rd32(e + 12), off = rd32(e + 16);
    uint16_t clen = rd16(e + 20);
    size_t keep = clen < ZIP_COMMENT_BYTES - 1 ? clen : ZIP_COMMENT_BYTES - 1;
    memcpy(za->comment, e + EOCD_BYTES, keep);
    za->comment[keep] = '\0';
    uint64_t eocd_pos = base + (uint64_t)at;
    free(tail);
    *count = n_total;
    *cd_size = sz;
    *cd_off = off;
    int zip64 = n_total == ZIP64_U16 || sz == ZIP64_U32 || off == ZIP64_U32;
    if (eocd_pos >= LOCATOR64_BYTES) {
        uint8_t loc[LOCATOR64_BYTES];
        if (read_at(za, loc, sizeof loc, eocd_pos - LOCATOR64_BYTES, "cannot read the zip64 locator", err))
            return err->code;
        if (rd32(loc) == SIG_LOCATOR64) {
            uint64_t off64 = rd64(loc + 8);
            uint8_t r[EOCD64_BYTES];
            if (off64 > eocd_pos - LOCATOR64_BYTES || EOCD64_BYTES > eocd_pos - LOCATOR64_BYTES - off64)
                return bad(err, za, "the zip64 locator points outside the file");
            if (read_at(za, r, sizeof r, off64, "cannot read the zip64 end record", err)) return err->code;
            if (rd32(r) != SIG_EOCD64) return bad(err, za, "the zip64 end record has a bad signature");
            if (rd32(r + 16) != 0 || rd32(r + 20) != 0 || rd64(r + 24) != rd64(r + 32))
                return err_set(err, AE_EFORMAT, "%s: multi-disk (split) zip archives are not supported (hint: join "
                               "the parts into one archive)", za->path);
            *count = rd64(r + 32);
            *cd_size = rd64(r + 40);
            *cd_off = rd64(r + 48);
            zip64 = 0;
            if (*cd_off > off64 || *cd_size > off64 - *cd_off)
                return bad(err, za, "the central directory overlaps the zip64 end record");
        }
    }
    if (zip64) return bad(err, za, "zip64 sizes are announced but there is no zip64 end record");
    if (disk != 0 || cd_disk != 0 || n_disk != n_total)
        return err_set(err, AE_EFORMAT, "%s: multi-disk (split) zip archives are not supported (hint: join the parts "
                       "into one archive)", za->path);
    if (*cd_off > eocd_pos || *cd_size > eocd_pos - *cd_off)
        return bad(err, za, "the central directory lies outside the file");
    if (*count > *cd_size / CENTRAL_BYTES) return bad(err, za, "more entries announced than the directory can hold");
    return AE_OK;
}

/* Applies the zip64 extra field of a central header to the fields that are
 * all ones.  extra[len].  Returns 0, or -1 if a needed value is missing. */
static int apply_zip64(const uint8_t *extra, size_t len, uint64_t *size, uint64_t *comp, uint64_t *lho, int need_size,
                       int need_comp, int need_lho)
{
    size_t p = 0;
    while (p + 4 <= len) {
        uint16_t id = rd16(extra + p), dlen = rd16(extra + p + 2);
        if (p + 4 + dlen > len) return -1;
        if (id == EXTRA_ZIP64) {
            const uint8_t *d = extra + p + 4;
            size_t q = 0;
            if (need_size) {
                if (q + 8 > dlen) return -1;
                *size = rd64(d + q);
                q += 8;
            }
            if (need_comp) {
                if (q + 8 > dlen) return -1;
                *comp = rd64(d + q);
                q += 8;
            }
            if (need_lho) {
                if (q + 8 > dlen) return -1;
                *lho = rd64(d + q);
            }
            return 0;
        }
        p += 4 + (size_t)dlen;
    }
    return need_size || need_comp || need_lho ? -1 : 0;
}

static int cmp_names(const void *a, const void *b)
{
    const ZipEntry *x = *(const ZipEntry *const *)a, *y = *(const ZipEntry *const *)b;
    return strcmp(x->name, y->name);
}

/* Parses the central directory cd[cd_size] (starting at file offset cd_off). */
static int parse_directory(ZipArchive *za, const uint8_t *cd, uint64_t cd_size, uint64_t cd_off, uint64_t count,
                           Err *err)
{
    za->entries = xcalloc(count ? (size_t)count : 1, sizeof *za->entries);
    uint64_t p = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (cd_size - p < CENTRAL_BYTES || rd32(cd + p) != SIG_CENTRAL)
            return bad(err, za, "a central directory header is missing or damaged");
        const uint8_t *h = cd + p;
        uint16_t flags = rd16(h + 8), method = rd16(h + 10);
        uint32_t crc = rd32(h + 16);
        uint64_t comp = rd32(h + 20), size = rd32(h + 24);
        uint16_t nlen = rd16(h + 28), xlen = rd16(h + 30), clen = rd16(h + 32);
        uint64_t lho = rd32(h + 42);
        if ((uint64_t)nlen + xlen + clen > cd_size - p - CENTRAL_BYTES)
            return bad(err, za, "a central directory entry runs past the directory");
        const uint8_t *name = h + CENTRAL_BYTES;
        if (apply_zip64(name + nlen, xlen, &size, &comp, &lho, size == ZIP64_U32, comp == ZIP64_U32, lho == ZIP64_U32))
            return bad(err, za, "a zip64 extra field is missing or short");
        ZipEntry *e = &za->entries[i];
        if (nlen == 0 || nlen >= ZIP_NAME_BYTES || memchr(name, '\0', nlen))
            return err_set(err, AE_EFORMAT, "%s: entry %" PRIu64 " has an empty, over-long (> %d bytes) or NUL-holding "
                           "name (hint: the archive is damaged)", za->path, i, ZIP_NAME_BYTES - 1);
        memcpy(e->name, name, nlen);
        e->name[nlen] = '\0';
        if (flags & FLAG_ENCRYPTED)
            return err_set(err, AE_EFORMAT, "%s: member '%s' is encrypted (hint: store it without a password)",
                           za->path, e->name);
        int is_dir = e->name[nlen - 1] == '/';
        if (method != ZIP_METHOD_STORED && method != ZIP_METHOD_DEFLATED && !is_dir)
            return err_set(err, AE_EFORMAT, "%s: member '%s' uses compression method %u; only stored (0) and deflated "
                           "(8) are supported (hint: re-create it with numpy.savez or savez_compressed)",
                           za->path, e->name, method);
        if (method == ZIP_METHOD_STORED && comp != size)
            return err_set(err, AE_EFORMAT, "%s: stored member '%s' records %" PRIu64 " bytes but %" PRIu64
                           " compressed bytes (hint: the archive is damaged)", za->path, e->name, size, comp);
        if (method == ZIP_METHOD_DEFLATED && size / DEFLATE_MAX_RATIO > comp + DEFLATE_SLACK_BYTES)
            return err_set(err, AE_EFORMAT, "%s: member '%s' claims %" PRIu64 " bytes inflated from %" PRIu64
                           " compressed, more than deflate can expand: a zip bomb or a damaged archive (hint: "
                           "re-create it)", za->path, e->name, size, comp);
        /* The local header: its own name and extra lengths decide where the
         * data starts. */
        uint8_t lh[LOCAL_BYTES];
        if (lho > cd_off || LOCAL_BYTES > cd_off - lho)
            return err_set(err, AE_EFORMAT, "%s: member '%s' has its local header outside the archive data (hint: the "
                           "archive is truncated or damaged)", za->path, e->name);
        if (read_at(za, lh, sizeof lh, lho, "cannot read a local header", err)) return err->code;
        if (rd32(lh) != SIG_LOCAL || rd16(lh + 8) != method)
            return err_set(err, AE_EFORMAT, "%s: member '%s': the local header does not match the central directory "
                           "(hint: the archive is damaged)", za->path, e->name);
        uint64_t data = lho + LOCAL_BYTES + rd16(lh + 26) + rd16(lh + 28);
        if (data > cd_off || comp > cd_off - data)
            return err_set(err, AE_EFORMAT, "%s: member '%s' claims %" PRIu64 " bytes at offset %" PRIu64
                           " but the member area ends at %" PRIu64 " (hint: the archive is truncated or lies about "
                           "sizes)", za->path, e->name, comp, data, cd_off);
        e->method = method;
        e->comp_size = comp;
        e->size = size;
        e->crc = crc;
        e->data_offset = data;
        p += CENTRAL_BYTES + (uint64_t)nlen + xlen + clen;
        za->n++;
    }
    /* Duplicate names would make lookups ambiguous. */
    if (za->n > 1) {
        const ZipEntry **sorted = xmalloc((size_t)za->n * sizeof *sorted);
        for (int i = 0; i < za->n; i++) sorted[i] = &za->entries[i];
        qsort(sorted, (size_t)za->n, sizeof *sorted, cmp_names);
        int dup = -1;
        for (int i = 1; i < za->n && dup < 0; i++)
            if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) dup = i;
        if (dup >= 0)
            err_set(err, AE_EFORMAT, "%s: member '%s' appears twice (hint: the archive is damaged)", za->path,
                    sorted[dup]->name);
        free(sorted);
        if (dup >= 0) return AE_EFORMAT;
    }
    return AE_OK;
}

int zip_archive_open_fd(ZipArchive *za, int fd, const char *what, Err *err)
{
    memset(za, 0, sizeof *za);
    za->fd = fd;
    snprintf(za->path, sizeof za->path, "%s", what);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int rc = err_set(err, AE_EIO, "%s is not a readable regular file (hint: give the path of a zip/npz file)", what);
        zip_archive_close(za);
        return rc;
    }
    za->file_size = (uint64_t)st.st_size;
    uint64_t count = 0, cd_size = 0, cd_off = 0;
    int rc = find_directory(za, &count, &cd_size, &cd_off, err);
    if (rc == AE_OK) {
        uint8_t *cd = xmalloc(cd_size ? (size_t)cd_size : 1);
        rc = read_at(za, cd, (size_t)cd_size, cd_off, "cannot read the central directory", err);
        if (rc == AE_OK) rc = parse_directory(za, cd, cd_size, cd_off, count, err);
        free(cd);
    }
    if (rc) zip_archive_close(za);
    return rc;
}

int zip_archive_open(ZipArchive *za, const char *path, Err *err)
{
    memset(za, 0, sizeof *za);
    za->fd = -1;
    if (fileio_check_input(path, err)) return err->code;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    return zip_archive_open_fd(za, fd, path, err);
}

void zip_archive_close(ZipArchive *za)
{
    if (!za) return;
    if (za->fd >= 0) close(za->fd);
    free(za->entries);
    memset(za, 0, sizeof *za);
    za->fd = -1;
}

const ZipEntry *zip_archive_find(const ZipArchive *za, const char *name)
{
    for (int i = 0; i < za->n; i++)
        if (strcmp(za->entries[i].name, name) == 0) return &za->entries[i];
    return NULL;
}

/* ---- member streams --------------------------------------------------- */

int zip_stream_open(ZipStream *zs, const ZipArchive *za, const ZipEntry *e, Err *err)
{
    memset(zs, 0, sizeof *zs);
    zs->za = za;
    zs->e = e;
    zs->crc = (uint32_t)crc32(0L, Z_NULL, 0);
    if (e->method == ZIP_METHOD_STORED) return AE_OK;
    if (e->method != ZIP_METHOD_DEFLATED)
        return err_set(err, AE_EFORMAT, "%s: member '%s': unsupported method %d", za->path, e->name, e->method);
    z_stream *z = xcalloc(1, sizeof *z);
    /* Negative window bits: a raw deflate stream, as zip stores it. */
    if (inflateInit2(z, -MAX_WBITS) != Z_OK) {
        free(z);
        return err_set(err, AE_ENOMEM, "%s: member '%s': cannot start zlib", za->path, e->name);
    }
    zs->z = z;
    zs->inflating = 1;
    zs->inbuf = xmalloc(INFLATE_WINDOW_BYTES);
    return AE_OK;
}

uint64_t zip_stream_left(const ZipStream *zs) { return zs->e->size - zs->out_pos; }

static int stream_bad(ZipStream *zs, const char *what, Err *err)
{
    return err_set(err, AE_EFORMAT, "%s: member '%s': %s (hint: the archive is damaged; re-create it)", zs->za->path,
                   zs->e->name, what);
}

/* Refills the compressed window.  Returns 0, or -1 with err set. */
static int refill(ZipStream *zs, Err *err)
{
    uint64_t left = zs->e->comp_size - zs->in_pos;
    size_t n = left < INFLATE_WINDOW_BYTES ? (size_t)left : INFLATE_WINDOW_BYTES;
    if (n == 0) return 0;
    if (fileio_pread_full(zs->za->fd, zs->inbuf, n, zs->e->data_offset + zs->in_pos) != 0) {
        err_set(err, errno ? AE_EIO : AE_EFORMAT, "%s: member '%s': %s (hint: the file is truncated or unreadable)",
                zs->za->path, zs->e->name, errno ? strerror(errno) : "data ends early");
        return -1;
    }
    zs->in_pos += n;
    zs->in_have = n;
    zs->in_off = 0;
    return 0;
}

/* Inflates exactly n bytes into out, or fails. */
static int inflate_exact(ZipStream *zs, uint8_t *out, uint64_t n, Err *err)
{
    z_stream *z = zs->z;
    uint64_t done = 0;
    while (done < n) {
        if (zs->in_have == 0 && refill(zs, err)) return err->code;
        uint64_t want = n - done < ZCHUNK ? n - done : ZCHUNK;
        z->next_in = zs->inbuf + zs->in_off;
        z->avail_in = (uInt)zs->in_have;
        z->next_out = out + done;
        z->avail_out = (uInt)want;
        int r = inflate(z, Z_NO_FLUSH);
        uint64_t made = want - z->avail_out;
        zs->in_off += zs->in_have - z->avail_in;
        zs->in_have = z->avail_in;
        done += made;
        if (r == Z_STREAM_END && done < n) return stream_bad(zs, "the deflate stream ends before the recorded size", err);
        if (r == Z_DATA_ERROR || r == Z_NEED_DICT) return stream_bad(zs, "corrupt deflate data", err);
        if (r == Z_MEM_ERROR) return err_set(err, AE_ENOMEM, "%s: out of memory inflating", zs->za->path);
        if (r == Z_BUF_ERROR && made == 0 && zs->in_have == 0 && zs->in_pos == zs->e->comp_size)
            return stream_bad(zs, "the compressed data ends before the recorded size", err);
    }
    return AE_OK;
}

/* After the last recorded byte: the deflate stream must end here. */
static int inflate_check_end(ZipStream *zs, Err *err)
{
    z_stream *z = zs->z;
    uint8_t extra;
    for (;;) {
        if (zs->in_have == 0 && refill(zs, err)) return err->code;
        z->next_in = zs->inbuf + zs->in_off;
        z->avail_in = (uInt)zs->in_have;
        z->next_out = &extra;
        z->avail_out = 1;
        int r = inflate(z, Z_NO_FLUSH);
        zs->in_off += zs->in_have - z->avail_in;
        zs->in_have = z->avail_in;
        if (z->avail_out == 0) return stream_bad(zs, "more data than the recorded size (a lying header)", err);
        if (r == Z_STREAM_END) return AE_OK;
        if (r == Z_DATA_ERROR || r == Z_NEED_DICT) return stream_bad(zs, "corrupt deflate data", err);
        if (zs->in_have == 0 && zs->in_pos == zs->e->comp_size)
            return stream_bad(zs, "the deflate stream is truncated", err);
    }
}

int zip_stream_read(ZipStream *zs, void *buf, uint64_t n, Err *err)
{
    assert(n <= zip_stream_left(zs));
    uint8_t *out = buf;
    if (zs->inflating) {
        if (inflate_exact(zs, out, n, err)) return err->code;
    } else if (n && fileio_pread_full(zs->za->fd, out, (size_t)n, zs->e->data_offset + zs->out_pos) != 0) {
        return err_set(err, errno ? AE_EIO : AE_EFORMAT, "%s: member '%s': %s (hint: the file is truncated)",
                       zs->za->path, zs->e->name, errno ? strerror(errno) : "data ends early");
    }
    zs->crc = crc_update(zs->crc, out, n);
    zs->out_pos += n;
    if (zs->out_pos == zs->e->size) {
        if (zs->inflating && inflate_check_end(zs, err)) return err->code;
        if (zs->crc != zs->e->crc) {
            char why[96];
            snprintf(why, sizeof why, "CRC-32 mismatch (computed %08" PRIx32 ", recorded %08" PRIx32 ")", zs->crc,
                     zs->e->crc);
            return stream_bad(zs, why, err);
        }
    }
    return AE_OK;
}

void zip_stream_close(ZipStream *zs)
{
    if (!zs) return;
    if (zs->inflating) inflateEnd(zs->z);
    free(zs->z);
    free(zs->inbuf);
    memset(zs, 0, sizeof *zs);
}

int zip_member_verify(const ZipArchive *za, const ZipEntry *e, Err *err)
{
    ZipStream zs;
    if (zip_stream_open(&zs, za, e, err)) return err->code;
    uint8_t *buf = xmalloc(INFLATE_WINDOW_BYTES);
    int rc = AE_OK;
    while (rc == AE_OK && zip_stream_left(&zs) > 0) {
        uint64_t left = zip_stream_left(&zs);
        rc = zip_stream_read(&zs, buf, left < INFLATE_WINDOW_BYTES ? left : INFLATE_WINDOW_BYTES, err);
    }
    if (rc == AE_OK && e->size == 0) rc = zip_stream_read(&zs, buf, 0, err);
    free(buf);
    zip_stream_close(&zs);
    return rc;
}
