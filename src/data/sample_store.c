/*
 * sample_store.c - writing aesim sample stores (see include/data/sample_store.h
 * for the layout).  Reading goes through image_source.c (a store is an npz
 * whose images member is mapped).
 *
 * Hand-written zip records (PKWARE APPNOTE 6.3: local header 4.3.7,
 * central header 4.3.12, zip64 extra 4.5.3, zip64 end record and locator
 * 4.3.14-15, end record 4.3.16) because the images must sit at a fixed,
 * page-aligned offset that several ranks write into with pwrite before the
 * archive is finished; libzip cannot do that.  No MPI; record writes of
 * distinct ranges may run concurrently.
 */
#include "data/sample_store.h"
#include "base/fileio.h"

#include "base/check.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

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
/* Zip64 extra in local headers: id, length, size, compressed size. */
#define LOCAL_ZIP64_EXTRA 20
/* Zip64 extra in central headers: id, length, size, compressed size, offset. */
#define CENTRAL_ZIP64_EXTRA 28
/* "Version needed to extract" 4.5 (zip64); made by Unix (3) 4.5. */
#define ZIP_VERSION_ZIP64 45
#define ZIP_MADE_BY_UNIX ((3 << 8) | ZIP_VERSION_ZIP64)
/* General-purpose flag bit 11: names are UTF-8. */
#define FLAG_UTF8 0x0800
/* MS-DOS date of 1980-01-01 (the earliest representable; stores are
 * reproducible byte for byte). */
#define DOS_DATE_1980 0x0021
/* Unix mode 0644 of a regular file, in the external attributes' high half. */
#define EXT_ATTR_FILE (0100644u << 16)
/* Numpy pads headers so that data starts at a multiple of this. */
#define NPY_ALIGN 64
#define NPY_PREFIX_V1 10
/* Room for a small member's .npy header. */
#define NPY_SMALL_HEADER 256
/* Members after images.npy. */
#define MAX_MEMBERS 6
/* Bytes copied per write when appending members. */
#define WRITE_CHUNK (4u << 20)

static void put16(uint8_t *b, uint32_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *b, uint32_t v) { put16(b, v & 0xFFFF); put16(b + 2, v >> 16); }
static void put64(uint8_t *b, uint64_t v) { put32(b, (uint32_t)v); put32(b + 4, (uint32_t)(v >> 32)); }

static uint32_t crc_of(uint32_t crc, const uint8_t *p, uint64_t n)
{
    while (n) {
        uInt c = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = (uint32_t)crc32(crc, p, c);
        p += c;
        n -= c;
    }
    return crc;
}

uint32_t store_crc_combine(uint32_t a, uint32_t b, uint64_t len_b)
{
    return (uint32_t)crc32_combine(a, b, (z_off_t)len_b);
}

/* A v1.0 .npy header for `descr` and shape text, padded with spaces to
 * exactly `total` bytes (0: to the next multiple of 64).  Returns its
 * length, or 0 if it does not fit. */
static size_t npy_header(uint8_t *out, size_t cap, const char *descr, const char *shape, size_t total)
{
    char dict[NPY_SMALL_HEADER];
    int d = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    if (d < 0 || (size_t)d >= sizeof dict) return 0;
    size_t need = NPY_PREFIX_V1 + (size_t)d + 1;
    if (!total) total = (need + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    if (need > total || total > cap) return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    put16(out + 8, (uint32_t)(total - NPY_PREFIX_V1));
    memcpy(out + NPY_PREFIX_V1, dict, (size_t)d);
    memset(out + NPY_PREFIX_V1 + d, ' ', total - need);
    out[total - 1] = '\n';
    return total;
}

/* Local header of a member: name, zip64 extra, optional padding extra of
 * pad bytes (pad 0: none; else >= 4).  Returns its length. */
static size_t local_header(uint8_t *out, const char *name, uint32_t crc, uint64_t size, size_t pad)
{
    size_t nlen = strlen(name);
    size_t xlen = LOCAL_ZIP64_EXTRA + pad;
    put32(out, SIG_LOCAL);
    put16(out + 4, ZIP_VERSION_ZIP64);
    put16(out + 6, FLAG_UTF8);
    put16(out + 8, 0);
    put16(out + 10, 0);
    put16(out + 12, DOS_DATE_1980);
    put32(out + 14, crc);
    put32(out + 18, 0xFFFFFFFFu);
    put32(out + 22, 0xFFFFFFFFu);
    put16(out + 26, (uint32_t)nlen);
    put16(out + 28, (uint32_t)xlen);
    memcpy(out + LOCAL_BYTES, name, nlen);
    uint8_t *x = out + LOCAL_BYTES + nlen;
    put16(x, 0x0001);
    put16(x + 2, 16);
    put64(x + 4, size);
    put64(x + 12, size);
    if (pad) {
        put16(x + LOCAL_ZIP64_EXTRA, STORE_PAD_EXTRA_ID);
        put16(x + LOCAL_ZIP64_EXTRA + 2, (uint32_t)(pad - 4));
        memset(x + LOCAL_ZIP64_EXTRA + 4, 0, pad - 4);
    }
    return LOCAL_BYTES + nlen + xlen;
}

/* Padding so that images.npy's data starts at STORE_DATA_ALIGN - header. */
static size_t images_pad(void)
{
    return STORE_DATA_ALIGN - STORE_IMAGES_HEADER - LOCAL_BYTES - strlen(STORE_IMAGES ".npy") - LOCAL_ZIP64_EXTRA;
}

static int io_fail(Err *err, const char *path, const char *what)
{
    return err_set(err, AE_EIO, "cannot %s %s: %s (hint: disk full or folder not writable?)", what, path,
                   strerror(errno ? errno : EIO));
}

int store_create(const char *tmp_path, int64_t n_max, int C, int H, int W, Err *err)
{
    if (n_max < 0 || C < 1 || H < 1 || W < 1)
        return err_set(err, AE_EARG, "%s: bad store size %" PRId64 "x%dx%dx%d", tmp_path, n_max, C, H, W);
    int fd = open(tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return io_fail(err, tmp_path, "create");
    uint64_t end = store_record_offset(n_max, (int64_t)C * H * W);
    int rc = ftruncate(fd, (off_t)end) == 0 ? AE_OK : io_fail(err, tmp_path, "size");
    if (close(fd) != 0 && rc == AE_OK) rc = io_fail(err, tmp_path, "close");
    return rc;
}

int store_write_records(const char *tmp_path, int64_t first, int64_t count, int64_t image_bytes, const uint8_t *pix,
                        uint32_t *crc, Err *err)
{
    int fd = open(tmp_path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return io_fail(err, tmp_path, "open");
    uint64_t bytes = (uint64_t)count * (uint64_t)image_bytes;
    int rc = fileio_pwrite_full(fd, pix, bytes, store_record_offset(first, image_bytes)) == 0 ? AE_OK
                                                                                       : io_fail(err, tmp_path, "write");
    if (close(fd) != 0 && rc == AE_OK) rc = io_fail(err, tmp_path, "close");
    *crc = crc_of((uint32_t)crc32(0L, Z_NULL, 0), pix, bytes);
    return rc;
}

/* A member appended after the images. */
typedef struct Member {
    char name[64];
    uint8_t hdr[NPY_SMALL_HEADER];
    size_t hdr_len;           /* .npy header (0 for meta.json) */
    const uint8_t *data;
    uint64_t data_len;
    uint32_t crc;
    uint64_t lho;             /* local header offset */
} Member;

static void member_npy(Member *m, const char *name, const char *descr, int64_t count, const void *data, uint64_t len)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s.npy", name);
    char shape[48];
    snprintf(shape, sizeof shape, "(%" PRId64 ",)", count);
    m->hdr_len = npy_header(m->hdr, sizeof m->hdr, descr, shape, 0);
    m->data = data;
    m->data_len = len;
    m->crc = crc_of(crc_of((uint32_t)crc32(0L, Z_NULL, 0), m->hdr, m->hdr_len), data, len);
}

static size_t central_header(uint8_t *out, const char *name, uint32_t crc, uint64_t size, uint64_t lho)
{
    size_t nlen = strlen(name);
    put32(out, SIG_CENTRAL);
    put16(out + 4, ZIP_MADE_BY_UNIX);
    put16(out + 6, ZIP_VERSION_ZIP64);
    put16(out + 8, FLAG_UTF8);
    put16(out + 10, 0);
    put16(out + 12, 0);
    put16(out + 14, DOS_DATE_1980);
    put32(out + 16, crc);
    put32(out + 20, 0xFFFFFFFFu);
    put32(out + 24, 0xFFFFFFFFu);
    put16(out + 28, (uint32_t)nlen);
    put16(out + 30, CENTRAL_ZIP64_EXTRA);
    put16(out + 32, 0);
    put16(out + 34, 0);
    put16(out + 36, 0);
    put32(out + 38, EXT_ATTR_FILE);
    put32(out + 42, 0xFFFFFFFFu);
    memcpy(out + CENTRAL_BYTES, name, nlen);
    uint8_t *x = out + CENTRAL_BYTES + nlen;
    put16(x, 0x0001);
    put16(x + 2, 24);
    put64(x + 4, size);
    put64(x + 12, size);
    put64(x + 20, lho);
    return CENTRAL_BYTES + nlen + CENTRAL_ZIP64_EXTRA;
}

static char *meta_json(const StoreMeta *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "format", json_string("aesim-store"));
    json_object_set_new(o, "version", json_integer(m->block_crc ? 2 : 1));
    json_object_set_new(o, "n", json_integer(m->n));
    json_object_set_new(o, "C", json_integer(m->C));
    json_object_set_new(o, "H", json_integer(m->H));
    json_object_set_new(o, "W", json_integer(m->W));
    json_object_set_new(o, "layout", json_string("NCHW"));
    if (m->block_crc) json_object_set_new(o, "crc_block", json_integer(store_crc_block((int64_t)m->C * m->H * m->W)));
    json_object_set_new(o, "source", json_string(m->source ? m->source : ""));
    json_object_set_new(o, "skipped", json_integer(m->skipped));
    json_t *cls = json_array();
    for (int i = 0; m->classes && i < m->n_classes; i++) json_array_append_new(cls, json_string(m->classes[i]));
    json_object_set_new(o, "classes", cls);
    char *text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    CHECK(text != NULL);
    return text;
}

int store_finish(const char *tmp_path, const char *path, const StoreMeta *m, int replace, Err *err)
{
    int64_t img = (int64_t)m->C * m->H * m->W;
    int fd = open(tmp_path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return io_fail(err, tmp_path, "open");
    int rc = AE_OK;
    /* images.npy: header + records. */
    uint8_t ihdr[STORE_IMAGES_HEADER];
    char shape[128];
    snprintf(shape, sizeof shape, "(%" PRId64 ", %d, %d, %d)", m->n, m->C, m->H, m->W);
    size_t ih = npy_header(ihdr, sizeof ihdr, "|u1", shape, STORE_IMAGES_HEADER);
    CHECK(ih == STORE_IMAGES_HEADER);
    uint64_t rec_bytes = (uint64_t)m->n * (uint64_t)img;
    uint64_t isize = STORE_IMAGES_HEADER + rec_bytes;
    uint32_t icrc = store_crc_combine(crc_of((uint32_t)crc32(0L, Z_NULL, 0), ihdr, ih), m->records_crc, rec_bytes);
    uint8_t lh[STORE_DATA_ALIGN];
    size_t lhl = local_header(lh, STORE_IMAGES ".npy", icrc, isize, images_pad());
    CHECK(lhl == STORE_DATA_ALIGN - STORE_IMAGES_HEADER);
    if (fileio_pwrite_full(fd, lh, lhl, 0) || fileio_pwrite_full(fd, ihdr, ih, lhl)) rc = io_fail(err, tmp_path, "write");
    uint64_t at = store_record_offset(m->n, img);
    if (rc == AE_OK && ftruncate(fd, (off_t)at) != 0) rc = io_fail(err, tmp_path, "truncate");
    /* The other members. */
    Member mem[MAX_MEMBERS];
    int nm = 0;
    char *blob = NULL, *json = NULL;
    int64_t *off = NULL;
    if (m->labels) member_npy(&mem[nm++], STORE_LABELS, "<i4", m->n, m->labels, (uint64_t)m->n * sizeof(int32_t));
    if (m->names) {
        off = xmalloc((size_t)(m->n + 1) * sizeof *off);
        off[0] = 0;
        for (int64_t i = 0; i < m->n; i++) off[i + 1] = off[i] + (int64_t)strlen(m->names[i]);
        blob = xmalloc((size_t)off[m->n] + 1);
        for (int64_t i = 0; i < m->n; i++) memcpy(blob + off[i], m->names[i], (size_t)(off[i + 1] - off[i]));
        member_npy(&mem[nm++], STORE_NAMES, "|u1", off[m->n], blob, (uint64_t)off[m->n]);
        member_npy(&mem[nm++], STORE_NAME_OFFSETS, "<i8", m->n + 1, off, (uint64_t)(m->n + 1) * sizeof *off);
    }
    if (m->block_crc) {
        int64_t r = store_crc_block(img), nb = (m->n + r - 1) / r;
        member_npy(&mem[nm++], STORE_BLOCK_CRC, "<u4", nb, m->block_crc, (uint64_t)nb * sizeof(uint32_t));
    }
    json = meta_json(m);
    Member *mj = &mem[nm++];
    memset(mj, 0, sizeof *mj);
    snprintf(mj->name, sizeof mj->name, "%s", STORE_META);
    mj->data = (const uint8_t *)json;
    mj->data_len = strlen(json);
    mj->crc = crc_of((uint32_t)crc32(0L, Z_NULL, 0), mj->data, mj->data_len);
    uint8_t buf[LOCAL_BYTES + 64 + LOCAL_ZIP64_EXTRA + NPY_SMALL_HEADER];
    for (int i = 0; i < nm && rc == AE_OK; i++) {
        mem[i].lho = at;
        size_t l = local_header(buf, mem[i].name, mem[i].crc, mem[i].hdr_len + mem[i].data_len, 0);
        memcpy(buf + l, mem[i].hdr, mem[i].hdr_len);
        if (fileio_pwrite_full(fd, buf, l + mem[i].hdr_len, at) ||
            fileio_pwrite_full(fd, mem[i].data, mem[i].data_len, at + l + mem[i].hdr_len))
            rc = io_fail(err, tmp_path, "write");
        at += l + mem[i].hdr_len + mem[i].data_len;
    }
    /* Central directory and end records. */
    size_t cd_cap = (size_t)(nm + 1) * (CENTRAL_BYTES + 64 + CENTRAL_ZIP64_EXTRA) + EOCD64_BYTES + LOCATOR64_BYTES +
                    EOCD_BYTES + sizeof STORE_COMMENT;
    uint8_t *cd = xmalloc(cd_cap);
    size_t k = central_header(cd, STORE_IMAGES ".npy", icrc, isize, 0);
    for (int i = 0; i < nm; i++) k += central_header(cd + k, mem[i].name, mem[i].crc, mem[i].hdr_len + mem[i].data_len,
                                                     mem[i].lho);
    uint64_t cd_off = at, cd_size = k, entries = (uint64_t)nm + 1;
    uint8_t *e = cd + k;
    put32(e, SIG_EOCD64);
    put64(e + 4, EOCD64_BYTES - 12);
    put16(e + 12, ZIP_MADE_BY_UNIX);
    put16(e + 14, ZIP_VERSION_ZIP64);
    put32(e + 16, 0);
    put32(e + 20, 0);
    put64(e + 24, entries);
    put64(e + 32, entries);
    put64(e + 40, cd_size);
    put64(e + 48, cd_off);
    e += EOCD64_BYTES;
    put32(e, SIG_LOCATOR64);
    put32(e + 4, 0);
    put64(e + 8, cd_off + cd_size);
    put32(e + 16, 1);
    e += LOCATOR64_BYTES;
    size_t clen = strlen(STORE_COMMENT);
    put32(e, SIG_EOCD);
    put16(e + 4, 0);
    put16(e + 6, 0);
    put16(e + 8, 0xFFFF);
    put16(e + 10, 0xFFFF);
    put32(e + 12, 0xFFFFFFFFu);
    put32(e + 16, 0xFFFFFFFFu);
    put16(e + 20, (uint32_t)clen);
    memcpy(e + EOCD_BYTES, STORE_COMMENT, clen);
    e += EOCD_BYTES + clen;
    if (rc == AE_OK && fileio_pwrite_full(fd, cd, (uint64_t)(e - cd), at)) rc = io_fail(err, tmp_path, "write");
    if (rc == AE_OK && fsync(fd) != 0) rc = io_fail(err, tmp_path, "fsync");
    if (close(fd) != 0 && rc == AE_OK) rc = io_fail(err, tmp_path, "close");
    if (rc == AE_OK && replace && rename(tmp_path, path) != 0) rc = io_fail(err, path, "rename to");
    if (rc == AE_OK && !replace && fileio_rename_noreplace(tmp_path, path) != 0)
        rc = errno == EEXIST ? err_set(err, AE_EARG, "%s appeared while this store was written (another aesim-pack "
                                                     "with the same --out?): refusing to replace it; nothing was "
                                                     "written (hint: --overwrite to replace it)", path)
                             : io_fail(err, path, "rename to");
    if (rc) unlink(tmp_path);
    free(cd);
    free(blob);
    free(off);
    free(json);
    return rc;
}
