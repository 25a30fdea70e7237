/*
 * sample_store.h - the on-disk sample store written by aesim-pack: one
 * uncompressed, memory-mappable file of uint8 NCHW images, labels and
 * names, that is also a valid NumPy .npz (numpy.load reads it; unzip -l
 * lists it).
 *
 * Layout (a zip archive, PKWARE APPNOTE 6.3, every member stored, zip64
 * records always present so stores may exceed 4 GiB):
 *   offset 0        local header of images.npy, padded with an extra field
 *                   (id STORE_PAD_EXTRA_ID) so that the member's data starts
 *                   at STORE_DATA_ALIGN - STORE_IMAGES_HEADER
 *   4096 - 128      images.npy's .npy v1.0 header (STORE_IMAGES_HEADER
 *                   bytes): {'descr': '|u1', 'fortran_order': False,
 *                   'shape': (N, C, H, W), }
 *   4096            the images, [N][C][H][W] uint8, record i at
 *                   4096 + i*C*H*W (page aligned: mapped as is)
 *   then            labels.npy        int32 (N,)   (only if labelled)
 *                   names.npy         uint8 (B,)   all names, concatenated
 *                   name_offsets.npy  int64 (N+1,) name i = names[off[i]:off[i+1]]
 *                   block_crc.npy     uint32 (ceil(N/R),) CRC-32 (zlib crc32,
 *                                     the zip polynomial) of the records of
 *                                     block b = records [b R, min(N, (b+1) R)),
 *                                     R = store_crc_block(C*H*W) records: the
 *                                     records of about one 4 KiB page, the
 *                                     unit storage reads anyway (since meta
 *                                     version 2; older stores lack it)
 *                   meta.json         {"format": "aesim-store", "version": 2,
 *                                      "n", "C", "H", "W", "layout": "NCHW",
 *                                      "crc_block": R,
 *                                      "source", "skipped", "classes": [...]}
 *   central directory, zip64 end record + locator, end record whose archive
 *   comment is STORE_COMMENT ("aesim-store 1"): how readers recognise a store.
 * CRC-32s are real (computed while writing), so any zip tool can test it.
 * Readers (image_source.h) map images.npy at its offset and read the rest;
 * they check a record's block against block_crc.npy when it is first read
 * (issue 18: no whole-store read before the first step), or the whole
 * member with ?verify=1.
 *
 * Writing protocol (pack.c; MPI through the caller):
 *   1. one process: store_create(tmp, n_max, C, H, W)  - file of the final
 *      size for n_max records (sparse), header placeholder;
 *   2. any process: store_write_records at record indices (pwrite; ranks
 *      write disjoint ranges of the same file);
 *   3. one process: store_finish(...) - writes the final header for n <=
 *      n_max records (the caller has compacted skipped ones), truncates,
 *      appends the other members and the directory, fsyncs, renames tmp to
 *      the final path.
 * Threading: distinct record ranges may be written concurrently.  No MPI.
 */
#ifndef AESIM_SAMPLE_STORE_H
#define AESIM_SAMPLE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* The archive comment of a store (format name and version), and the part
 * readers check first. */
#define STORE_COMMENT "aesim-store 1"
#define STORE_COMMENT_TAG "aesim-store"
/* Member names (without .npy). */
#define STORE_IMAGES "images"
#define STORE_LABELS "labels"
#define STORE_NAMES "names"
#define STORE_NAME_OFFSETS "name_offsets"
#define STORE_META "meta.json"
/* The image records start at this file offset (a page, for mmap). */
#define STORE_DATA_ALIGN 4096
/* Bytes of images.npy's own header (room for any 4-D shape). */
#define STORE_IMAGES_HEADER 128
/* Extra-field id of the padding in images.npy's local header (the id
 * Android's zipalign uses for alignment padding). */
#define STORE_PAD_EXTRA_ID 0xD935

/* File offset of record i of a store with C*H*W-byte images. */
static inline uint64_t store_record_offset(int64_t i, int64_t image_bytes)
{
    return (uint64_t)STORE_DATA_ALIGN + (uint64_t)i * (uint64_t)image_bytes;
}

/* Bytes a CRC block aims at: one page. */
#define STORE_CRC_BLOCK_BYTES 4096
/* Member name of the per-block CRCs (without .npy). */
#define STORE_BLOCK_CRC "block_crc"

/* Records per CRC block for C*H*W-byte images: max(1, 4096 / image_bytes). */
static inline int64_t store_crc_block(int64_t image_bytes)
{
    return image_bytes >= STORE_CRC_BLOCK_BYTES ? 1 : STORE_CRC_BLOCK_BYTES / image_bytes;
}

/* Creates (truncating) tmp_path sized for n_max records of C*H*W bytes.
 * Errors: AE_EIO (errno text naming the file), AE_EARG (bad sizes). */
int store_create(const char *tmp_path, int64_t n_max, int C, int H, int W, Err *err);

/* Writes records [first, first+count) (pix: [count][C][H][W]) into an
 * existing store file, and returns their CRC-32 in *crc (for
 * store_crc_combine).  Errors: AE_EIO. */
int store_write_records(const char *tmp_path, int64_t first, int64_t count, int64_t image_bytes, const uint8_t *pix,
                        uint32_t *crc, Err *err);

/* CRC-32 of the concatenation A||B from crc(A), crc(B) and len(B) (zlib
 * crc32_combine). */
uint32_t store_crc_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* What store_finish writes besides the images. */
typedef struct StoreMeta {
    int64_t n;               /* records kept (<= n_max of store_create) */
    int C, H, W;
    uint32_t records_crc;    /* CRC-32 of the n records' bytes, in order */
    const uint32_t *block_crc; /* [ceil(n / store_crc_block(C*H*W))] CRC-32 of each block of records, or NULL
                                  (then the store has no block_crc member) */
    const int32_t *labels;   /* [n] or NULL */
    const char *const *names;/* [n] NUL-terminated names, or NULL */
    const char *source;      /* the spec packed, for meta.json */
    int64_t skipped;         /* bad files skipped */
    const char *const *classes; /* [n_classes] class names (folders), or NULL */
    int n_classes;
} StoreMeta;

/* Finishes tmp_path (see the protocol above) and renames it to path; with
 * replace == 0 never over an existing path (fileio_rename_noreplace: a file
 * that appeared at path since the caller checked, e.g. another aesim-pack's
 * store, is kept).  Errors: AE_EIO (errno text); AE_EARG when replace == 0
 * and path exists.  On error tmp_path is removed. */
int store_finish(const char *tmp_path, const char *path, const StoreMeta *m, int replace, Err *err);

#endif
