/*
 * idx.h - reader for the IDX format of MNIST / Fashion-MNIST.
 *
 * Format (Y. LeCun et al., yann.lecun.com/exdb/mnist, "THE IDX FILE FORMAT";
 * the same layout is used by zalandoresearch/fashion-mnist): a 4-byte magic
 * 0x00 0x00 T D, where T is the element type (0x08 = unsigned byte) and D the
 * number of dimensions, then D big-endian uint32 sizes, then the elements in
 * C order.  Images are 0x00000803 (n, rows, cols), labels 0x00000801 (n,).
 *
 * Files are read through zlib's gzopen/gzread, which reads both
 * gzip-compressed ('.gz') and plain files.  Only unsigned-byte data
 * (T = 0x08) and 1 to IDX_MAX_DIMS dimensions are supported.
 * No global state, no MPI; one call per thread per file.
 */
#ifndef AESIM_IDX_H
#define AESIM_IDX_H

#include <stdint.h>

#include "base/err.h"

/* Most dimensions an IDX file may have here. */
#define IDX_MAX_DIMS 4
/* IDX type byte of unsigned 8-bit data. */
#define IDX_TYPE_U8 0x08

/* Reads the IDX file at path (plain or gzip).  On success *data holds
 * dims[0]*...*dims[*ndim-1] bytes in C order (owned by the caller, free with
 * free(); never NULL), *ndim is 1..IDX_MAX_DIMS and dims[*ndim..4) are 0.
 * The data size implied by the header must equal what the file holds: for a
 * plain file the header and file size must agree before anything is
 * allocated; for a gzip file the claim is bounded by the most deflate can
 * expand the file, and the stream must end right after the data.
 * Errors (message names the file and ends with a hint): AE_EIO (missing,
 * unreadable, a folder), AE_EFORMAT (bad magic, type other than 0x08,
 * ndim 0 or > IDX_MAX_DIMS, overflowing sizes, truncated or trailing data,
 * corrupt gzip stream), AE_ENOMEM.  On error *data = NULL. */
int idx_read_u8(const char *path, uint8_t **data, int *ndim, int64_t dims[IDX_MAX_DIMS], Err *err);

/* A sequential reader of an IDX file's data (for files too large to hold
 * twice, and for aesim-pack).  idx_stream_open reads and checks the header
 * with the same size checks as idx_read_u8 (before anything is allocated),
 * then idx_stream_read delivers the data in order; the read that reaches
 * the last byte also checks that nothing follows it. */
typedef struct IdxStream {
    void *gz;                    /* gzFile, owned */
    char path[4096];             /* for messages */
    int ndim;                    /* 1..IDX_MAX_DIMS */
    int64_t dims[IDX_MAX_DIMS];  /* dims[ndim..) = 0 */
    int64_t numel;               /* product of dims */
    int64_t pos;                 /* bytes delivered so far */
    int plain;                   /* 1 if the file is not gzip-compressed (data at byte 4 + 4*ndim) */
} IdxStream;

/* Opens path and reads its header.  Errors as idx_read_u8 (except
 * AE_ENOMEM).  On error nothing is held. */
int idx_stream_open(IdxStream *s, const char *path, Err *err);

/* Reads the next n bytes (n <= numel - pos, asserted) into buf.  Errors:
 * AE_EFORMAT (truncated, corrupt gzip data, trailing bytes after the last
 * element; message names the file). */
int idx_stream_read(IdxStream *s, uint8_t *buf, int64_t n, Err *err);

/* Closes the file; s may be NULL or closed. */
void idx_stream_close(IdxStream *s);

#endif
