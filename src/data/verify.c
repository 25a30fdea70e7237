/*
 * verify.c - CRC-32 of stored npz members split over the ranks, joined with
 * crc32_combine, remembered in a cache file (see include/data/verify.h).
 * MPI through par.h only; files through pread and fileio.h.
 */
#include "data/verify.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "base/check.h"
#include "base/fileio.h"

/* Largest cache file read (VERIFY_CACHE_MAX_LINES lines of at most ~4,200 bytes fit). */
#define VERIFY_CACHE_MAX_BYTES ((size_t)64 << 20)
/* pread chunk. */
#define VERIFY_CHUNK_BYTES (4u << 20)

int verify_cache_path(char *out, size_t cap)
{
    const char *env = getenv(VERIFY_CACHE_ENV), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (env && env[0]) {
        if (!strcmp(env, "off")) return 0;
        n = snprintf(out, cap, "%s", env);
    } else if (xdg && xdg[0]) {
        n = snprintf(out, cap, "%s/aesim/verified.tsv", xdg);
    } else if (home && home[0]) {
        n = snprintf(out, cap, "%s/.cache/aesim/verified.tsv", home);
    } else {
        return 0;
    }
    return n > 0 && (size_t)n < cap;
}

/* "CRC SIZE MTIME_NS INODE OFFSET PATH" of m as the file is now; 0 if it cannot be stat'ed. */
static int cache_key(char *out, size_t cap, const VerifyMember *m)
{
    struct stat st;
    char real[PATH_MAX];
    if (fstat(m->fd, &st) != 0 || !realpath(m->path, real)) return 0;
    long long mt = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    int n = snprintf(out, cap, "%08" PRIx32 "\t%lld\t%lld\t%llu\t%" PRIu64 "\t%s", m->crc, (long long)st.st_size,
                     mt, (unsigned long long)st.st_ino, m->offset, real);
    return n > 0 && (size_t)n < cap;
}

/* The cache file's text, or NULL (missing, unreadable or too large: the
 * cache only saves work, so it is then ignored). */
static char *cache_read(const char *path)
{
    Err e;
    return fileio_read_text(path, VERIFY_CACHE_MAX_BYTES, NULL, &e);
}

static int cache_has(const char *text, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        if (l == kl && !memcmp(p, key, kl)) return 1;
        p = nl ? nl + 1 : NULL;
    }
    return 0;
}

/* Rewrites the cache as old's lines then the keys added (added: lines ending
 * in '\n'), keeping the newest VERIFY_CACHE_MAX_LINES; failures are ignored
 * (the cache only saves work). */
static void cache_write(const char *path, const char *old, const char *added)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    Err e;
    if (slash && slash != dir) {
        *slash = '\0';
        if (fileio_mkdirs(dir, &e)) return;
    }
    int lines = 0;
    for (const char *p = old; p && *p; p++) lines += *p == '\n';
    for (const char *p = added; *p; p++) lines += *p == '\n';
    const char *from = old;
    while (from && lines > VERIFY_CACHE_MAX_LINES) {
        const char *nl = strchr(from, '\n');
        from = nl ? nl + 1 : NULL;
        lines--;
    }
    AtomicFile af;
    if (atomic_open(&af, path, &e) == AE_OK) {
        if (from && *from) fputs(from, af.f);
        fputs(added, af.f);
        if (ferror(af.f)) atomic_abort(&af);
        else atomic_commit(&af, &e);
    }
}

/* CRC-32 of bytes [off, off + len) of fd. */
static int crc_range(int fd, uint64_t off, uint64_t len, uint32_t *crc, uint8_t *buf, const VerifyMember *m, Err *err)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (len > 0) {
        size_t want = len < VERIFY_CHUNK_BYTES ? (size_t)len : VERIFY_CHUNK_BYTES;
        if (fileio_pread_full(fd, buf, want, off))
            return err_set(err, AE_EIO, "%s member '%s': cannot read %zu bytes at offset %" PRIu64 ": %s (hint: "
                           "the file is truncated or unreadable)", m->path, m->member, want, off,
                           errno ? strerror(errno) : "end of file");
        c = crc32(c, buf, (uInt)want);
        off += want;
        len -= want;
    }
    *crc = (uint32_t)c;
    return AE_OK;
}

int verify_members(const ParCtx *ctx, const VerifyMember *m, int n, VerifyStats *st, Err *err)
{
    err_clear(err);
    const int P = ctx->size, r = ctx->rank;
    char cpath[4096];
    const int use_cache = verify_cache_path(cpath, sizeof cpath);
    char *cache = r == 0 && use_cache ? cache_read(cpath) : NULL;
    uint8_t *buf = xmalloc(VERIFY_CHUNK_BYTES);
    uint64_t *parts = xmalloc((size_t)P * 2 * sizeof *parts);
    char *added = NULL; /* rank 0: cache lines of the members verified now */
    for (int i = 0; i < n && err->code == AE_OK; i++) {
        char key[4400];
        int32_t hit = 0;
        if (r == 0 && use_cache && cache && cache_key(key, sizeof key, &m[i])) hit = cache_has(cache, key);
        par_bcast(ctx, &hit, sizeof hit, 0);
        if (hit) {
            st->cached++;
            continue;
        }
        const uint64_t lo = m[i].size * (uint64_t)r / (uint64_t)P, hi = m[i].size * (uint64_t)(r + 1) / (uint64_t)P;
        uint32_t crc = 0;
        crc_range(m[i].fd, m[i].offset + lo, hi - lo, &crc, buf, &m[i], err);
        st->bytes_read += hi - lo;
        if (par_agree(ctx, err)) break;
        uint64_t mine[2] = { crc, hi - lo };
        par_gather(ctx, mine, parts, sizeof mine, 0);
        if (r == 0) {
            uLong all = (uLong)parts[0];
            for (int q = 1; q < P; q++) all = crc32_combine(all, (uLong)parts[2 * q], (z_off_t)parts[2 * q + 1]);
            if ((uint32_t)all != m[i].crc)
                err_set(err, AE_EFORMAT, "%s member '%s': CRC-32 of its %" PRIu64 " bytes is %08" PRIx32 " but the "
                        "archive records %08" PRIx32 " (hint: the file is damaged or truncated; download or copy it "
                        "again)", m[i].path, m[i].member, m[i].size, (uint32_t)all, m[i].crc);
            else if (use_cache && cache_key(key, sizeof key, &m[i])) {
                const size_t kl = strlen(key), have = added ? strlen(added) : 0;
                char *grown = xmalloc(have + kl + 2);
                memcpy(grown, added ? added : "", have);
                memcpy(grown + have, key, kl);
                grown[have + kl] = '\n';
                grown[have + kl + 1] = '\0';
                free(added);
                added = grown;
            }
        }
        st->members++;
        if (par_agree(ctx, err)) break;
    }
    if (added) cache_write(cpath, cache, added);
    free(added);
    free(cache);
    free(buf);
    free(parts);
    return err->code;
}
