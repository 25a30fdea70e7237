/*
 * verify.h - CRC-32 verification of the stored (uncompressed) npz members
 * that training and indexing map, read once per job instead of once per
 * rank, and remembered across jobs (issue 18, item 1).
 *
 * Scheme: a member of `size` bytes is cut into P contiguous ranges, rank r
 * reading bytes [size r / P, size (r + 1) / P) with pread and computing their
 * CRC-32 (zlib crc32); rank 0 gathers the P (crc, length) pairs and joins
 * them in order with zlib's crc32_combine, which gives exactly the CRC-32 of
 * the whole member (the same guarantee as reading it all on one rank: the
 * zip format's check, PKWARE APPNOTE 4.4.7), compares it with the CRC
 * recorded in the archive, and the verdict is agreed by all ranks
 * (par_agree).  Every byte is read once per job, by one rank.
 *
 * Cache: a verified member is remembered as one line of a text file
 *   CRC32_HEX  SIZE  MTIME_NS  INODE  DATA_OFFSET  PATH
 * (its file's size, modification time in nanoseconds and inode number, the
 * member's data offset and CRC-32, the file's absolute path, tab-separated),
 * at $AESIM_VERIFY_CACHE, else
 * $XDG_CACHE_HOME/aesim/verified.tsv, else $HOME/.cache/aesim/verified.tsv;
 * AESIM_VERIFY_CACHE=off disables it.  A line is trusted only when every
 * field matches the file as it is now, so a file replaced or touched is
 * checked again.  The file is rewritten atomically (fileio.h) by rank 0,
 * holding at most VERIFY_CACHE_MAX_LINES lines (the newest); a cache that
 * cannot be read or written is ignored (the check then simply runs).
 */
#ifndef AESIM_VERIFY_H
#define AESIM_VERIFY_H

#include <stdint.h>

#include "base/err.h"
#include "par/par.h"

#define VERIFY_CACHE_ENV "AESIM_VERIFY_CACHE"
#define VERIFY_CACHE_MAX_LINES 4096

/* One member to check: the open file, where the bytes are, what they must
 * give.  path names the file in messages and in the cache. */
typedef struct VerifyMember {
    int fd;
    const char *path;
    const char *member;   /* the member's name, for messages */
    uint64_t offset;      /* file offset of the member's first byte */
    uint64_t size;        /* bytes */
    uint32_t crc;         /* CRC-32 recorded in the archive */
} VerifyMember;

typedef struct VerifyStats {
    int64_t members;      /* members checked (not found in the cache) */
    int64_t cached;       /* members skipped: verified before (cache) */
    uint64_t bytes_read;  /* bytes this rank read */
} VerifyStats;

/* Collective: verifies m[0..n-1] as described above (every rank passes the
 * same list, in the same order).  Adds to *st.  Errors (agreed, the same on
 * every rank): AE_EIO when a rank cannot read its range (file and offset
 * named), AE_EFORMAT on a CRC mismatch ("FILE member 'M': CRC-32 ...
 * (hint: the file is damaged or truncated; download or copy it again)"). */
int verify_members(const ParCtx *ctx, const VerifyMember *m, int n, VerifyStats *st, Err *err);

/* The cache path in use (see above) into out[cap]; returns 0 if disabled. */
int verify_cache_path(char *out, size_t cap);

#endif
