/*
 * npy.h - NumPy .npy arrays and .npz archives, read and write.
 *
 * Format: numpy/lib/format.py and NEP 1 ("A simple file format for NumPy
 * arrays"): the magic "\x93NUMPY", a major/minor version byte pair, the
 * header length (uint16 LE for 1.0, uint32 LE for 2.0 and 3.0), an ASCII
 * (3.0: UTF-8) Python dict literal {'descr': ..., 'fortran_order': ...,
 * 'shape': (...)} padded with spaces and ended by '\n', then the raw data.
 * Versions 1.0, 2.0 and 3.0 are read; 1.0 is written, with the header padded
 * so that the data starts at a multiple of 64 bytes, as numpy does.
 * An .npz is a zip archive of NAME.npy members (numpy.savez stores them,
 * numpy.savez_compressed deflates them); it is handled with libzip, which
 * also reads zip64 archives.
 *
 * Supported: C-order, little-endian (or byte-order-free) numeric dtypes of
 * NpyDtype, 0 to NPY_MAX_DIMS dimensions, empty arrays.  Refused with
 * AE_EFORMAT: fortran_order=True, big-endian data, object arrays (pickles,
 * never executed), structured/string/bool/complex/float16 dtypes, headers
 * that do not parse, and any mismatch between the size the header implies
 * and the bytes actually present (truncated or padded data).
 * Little-endian hosts only (checked at compile time in npy.c).
 *
 * No global state; thread-safe for distinct arrays and files.  No MPI: the
 * caller decides which rank reads or writes.
 */
#ifndef AESIM_NPY_H
#define AESIM_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Most dimensions an array may have here (numpy allows 32/64; our data has
 * at most 4). */
#define NPY_MAX_DIMS 8
/* Longest member name of an npz, in bytes including the NUL. */
#define NPY_NAME_BYTES 256

/* Element types, with their numpy descr strings.  All multi-byte types are
 * little-endian; for 1-byte types numpy writes '|' (any of '|', '<', '>' is
 * accepted on reading). */
typedef enum {
    NPY_U8,  /* '|u1' uint8   */
    NPY_I32, /* '<i4' int32   */
    NPY_I64, /* '<i8' int64   */
    NPY_U64, /* '<u8' uint64  */
    NPY_F32, /* '<f4' float32 */
    NPY_F64, /* '<f8' float64 */
    NPY_I8,  /* '|i1' int8    */
    NPY_I16, /* '<i2' int16   */
    NPY_U16, /* '<u2' uint16  */
    NPY_U32  /* '<u4' uint32  */
} NpyDtype;

typedef struct NpyArray {
    char name[NPY_NAME_BYTES]; /* npz member name without ".npy"; "" for a single .npy */
    NpyDtype dtype;
    int ndim;                  /* 0 (a scalar: one element) .. NPY_MAX_DIMS */
    int64_t shape[NPY_MAX_DIMS]; /* shape[0..ndim), each >= 0 */
    void *data;                /* C-order elements: npy_numel() * npy_dtype_size() bytes.
                                  Owned when read (npy_array_free / npz_free; never NULL,
                                  even for an empty array); borrowed when writing. */
} NpyArray;

/* What an .npy header says, as parsed by npy_header_read. */
typedef struct NpyHeader {
    NpyDtype dtype;
    int big_endian;        /* 1 if descr starts with '>' (multi-byte types only) */
    int fortran_order;     /* 1 if the header says fortran_order: True */
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    uint64_t data_offset;  /* bytes from the start of the .npy to its data */
    uint64_t data_bytes;   /* numel * itemsize, checked against the bytes present */
} NpyHeader;

/* Sequential byte source for npy_header_read: reads exactly n bytes into
 * buf and returns 0, or returns an AE_* code with err set. */
typedef int (*NpyReadFn)(void *ctx, void *buf, uint64_t n, Err *err);

/* Reads and parses an .npy header (versions 1.0, 2.0, 3.0) from a source
 * holding `total` bytes in all, leaving the source at the first data byte.
 * Unlike npy_read, big-endian data and fortran_order are NOT refused here
 * (they are reported in *hd for the caller to handle or refuse); everything
 * else is checked as in npy_read, including that total equals
 * data_offset + data_bytes.  `what` names the file (and member) in
 * messages.  Errors: AE_EFORMAT (message ends with a hint), or the reader's
 * code. */
int npy_header_read(NpyHeader *hd, NpyReadFn read, void *ctx, uint64_t total, const char *what, Err *err);

/* Bytes per element of t (1, 2, 4 or 8). */
size_t npy_dtype_size(NpyDtype t);

/* The numpy descr string of t ("|u1", "<f4", ...); static storage. */
const char *npy_dtype_descr(NpyDtype t);

/* Number of elements: the product of shape[0..ndim), 1 when ndim == 0.
 * The shape must be valid (non-negative, product fits; readers check). */
int64_t npy_numel(const NpyArray *a);

/* Reads a single .npy file into *out (out->name = "").  Errors: AE_EIO
 * (missing/unreadable, errno text), AE_EFORMAT (see the file comment; the
 * message names the file), AE_ENOMEM (data too large to allocate).  On error
 * *out holds no memory. */
int npy_read(const char *path, NpyArray *out, Err *err);

/* Writes a as a version 1.0 .npy file, atomically (fileio.h: temp file,
 * fsync, rename).  Errors: AE_EIO (errno text, naming the file), AE_EARG
 * (ndim or shape out of range). */
int npy_write(const char *path, const NpyArray *a, Err *err);

/* Frees a->data and sets it to NULL.  a may be NULL. */
void npy_array_free(NpyArray *a);

/* Reads every NAME.npy member of an npz (other members and folders are
 * skipped), in archive order, streaming each member through libzip
 * (zip_fopen_index + zip_fread; stored or deflated, zip64 accepted).
 * *arrays is allocated with *n entries (possibly 0); free with npz_free.
 * Errors: AE_EIO (missing/unreadable file), AE_EFORMAT (not a zip archive,
 * corrupt zip, CRC error, or a member refused as above: the message names
 * the file and the member), AE_ENOMEM.  On error *arrays = NULL, *n = 0. */
int npz_read(const char *path, NpyArray **arrays, int *n, Err *err);

/* Like npz_read, but reads only the members named in names[0..n_names)
 * (without ".npy"); other members are neither decompressed nor parsed, so an
 * npz with e.g. a string member can still be used.  Members not present are
 * simply absent from *arrays (check with npz_find). */
int npz_read_only(const char *path, const char *const *names, int n_names, NpyArray **arrays,
                  int *n, Err *err);

/* Frees every array and the list.  arrays may be NULL. */
void npz_free(NpyArray *arrays, int n);

/* The array named `name` (without ".npy"), or NULL if absent. */
const NpyArray *npz_find(const NpyArray *arrays, int n, const char *name);

/* Writes arrays[0..n) as an npz (each as member NAME.npy, version 1.0,
 * stored without compression, as numpy.savez), atomically (fileio.h; libzip
 * writes the temporary file, then it is fsynced and renamed).  Readable by
 * numpy.load.  Errors: AE_EIO (errno / libzip text naming the file), AE_EARG
 * (empty or duplicate name, ndim or shape out of range). */
int npz_write(const char *path, const NpyArray *arrays, int n, Err *err);

#endif
