/*
 * zip_read.h - a small, strict reader of zip archives (.npz files and our
 * sample stores) that tells where each member's bytes are in the file, so a
 * stored member can be memory-mapped, and streams deflated members with a
 * bounded buffer.
 *
 * Format: PKWARE APPNOTE.TXT 6.3.x: end of central directory record (4.3.16),
 * zip64 end of central directory record and locator (4.3.14, 4.3.15),
 * central directory headers (4.3.12), local file headers (4.3.7), the zip64
 * extended information extra field 0x0001 (4.5.3).  Methods 0 (stored) and
 * 8 (deflated, RFC 1951, inflated with zlib) are read; encrypted members,
 * other methods, multi-disk archives and members whose data lies outside the
 * file or overlaps the central directory are refused.
 *
 * Why not libzip here: libzip does not tell the file offset of a member's
 * data, which mapping needs.  npy.c keeps using libzip for npz_read/npz_write.
 *
 * Safety: every size read from the file is checked against the file size
 * before it is used; a deflated member may not claim to expand more than
 * deflate can (about 1032:1, the "zip bomb" check); a stream never yields
 * more than the size recorded in the central directory and must end exactly
 * there; CRC-32 is checked when a stream reaches the member's end.
 *
 * Threading: a ZipArchive is read-only after zip_archive_open and may be
 * shared by threads; each ZipStream belongs to one thread.  No MPI.
 */
#ifndef AESIM_ZIP_READ_H
#define AESIM_ZIP_READ_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Longest member name kept, bytes including the NUL (longer names: refused). */
#define ZIP_NAME_BYTES 256
/* Longest archive comment kept, bytes including the NUL (rest ignored). */
#define ZIP_COMMENT_BYTES 256
/* Longest path kept for messages, bytes including the NUL. */
#define ZIP_PATH_BYTES 4096
/* Compression methods (APPNOTE 4.4.5). */
#define ZIP_METHOD_STORED 0
#define ZIP_METHOD_DEFLATED 8

typedef struct ZipEntry {
    char name[ZIP_NAME_BYTES];
    int method;            /* ZIP_METHOD_STORED or ZIP_METHOD_DEFLATED */
    uint64_t comp_size;    /* bytes of (compressed) data in the file */
    uint64_t size;         /* bytes once inflated (== comp_size when stored) */
    uint32_t crc;          /* CRC-32 of the inflated bytes */
    uint64_t data_offset;  /* file offset of the first data byte */
} ZipEntry;

typedef struct ZipArchive {
    int fd;                          /* open read-only, owned (closed by zip_archive_close) */
    char path[ZIP_PATH_BYTES];       /* for messages */
    uint64_t file_size;
    int n;                           /* entries */
    ZipEntry *entries;               /* [n], in central-directory order, owned */
    char comment[ZIP_COMMENT_BYTES]; /* archive comment, NUL-terminated */
} ZipArchive;

/* Opens path and reads its central directory.  Errors (the message names the
 * file, and the member where there is one, and ends with a hint): AE_EIO
 * (cannot open / read), AE_EFORMAT (not a zip archive, truncated, any field
 * that points outside the file, an unsupported feature as listed above, a
 * zip bomb).  On error *za holds nothing (no fd, no memory). */
int zip_archive_open(ZipArchive *za, const char *path, Err *err);

/* Same on an already open file descriptor (taken over: closed on error and
 * by zip_archive_close).  `what` names the file in messages. */
int zip_archive_open_fd(ZipArchive *za, int fd, const char *what, Err *err);

/* Closes the file and frees the entries; za may be NULL or closed. */
void zip_archive_close(ZipArchive *za);

/* The entry named `name` (exact match), or NULL. */
const ZipEntry *zip_archive_find(const ZipArchive *za, const char *name);

/* A sequential reader of one member's inflated bytes. */
typedef struct ZipStream {
    const ZipArchive *za;
    const ZipEntry *e;
    uint64_t in_pos;     /* compressed bytes consumed */
    uint64_t out_pos;    /* inflated bytes delivered */
    uint32_t crc;        /* running CRC-32 of delivered bytes */
    int inflating;       /* 1 when a zlib stream is set up */
    void *z;             /* z_stream*, owned */
    uint8_t *inbuf;      /* compressed input window, owned */
    size_t in_have;      /* bytes of inbuf not yet consumed */
    size_t in_off;       /* offset in inbuf of the next unconsumed byte */
} ZipStream;

/* Starts reading member e of za.  Errors: AE_EFORMAT (unsupported method),
 * AE_ENOMEM.  On error nothing is held. */
int zip_stream_open(ZipStream *zs, const ZipArchive *za, const ZipEntry *e, Err *err);

/* Reads exactly n bytes into buf (n <= bytes left in the member).  When the
 * last byte of the member has been delivered, checks that the deflate stream
 * ends there and that the CRC-32 matches.  Errors: AE_EIO (read error),
 * AE_EFORMAT (corrupt deflate data, data ending early or going on past the
 * recorded size, CRC mismatch: the message names file and member).  Asks for
 * more than is left is a programming error (asserted). */
int zip_stream_read(ZipStream *zs, void *buf, uint64_t n, Err *err);

/* Bytes of the member not yet delivered. */
uint64_t zip_stream_left(const ZipStream *zs);

/* Frees the stream's buffers; zs may be NULL or closed. */
void zip_stream_close(ZipStream *zs);

/* Reads the whole member and checks its CRC without keeping the bytes
 * (used to verify a stored member before mapping it).  Errors as
 * zip_stream_read. */
int zip_member_verify(const ZipArchive *za, const ZipEntry *e, Err *err);

#endif
