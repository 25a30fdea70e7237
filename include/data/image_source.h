/*
 * image_source.h - one opened source of images (a file, a folder, a list
 * file) that yields records converted to the requested C x H x W, in
 * bounded windows: the common reader behind dataset_open (dataset.h) and
 * aesim-pack (pack.h).
 *
 * What a source is and how it is recognised: dataset_opts.h (syntax) and
 * dataset.h (formats).  Opening reads headers, labels and file lists only;
 * pixels are read by image_source_read, window by window, straight into the
 * caller's buffer (at most IMAGE_SOURCE_WINDOW_BYTES of raw file data are
 * held at once), or are available without any read through `mapped` when
 * the file already holds uint8 NCHW records of the requested shape.
 *
 * Conversion of array records (npy/npz/IDX/CIFAR): dtype (uint8 as is;
 * float32/float64 v -> round(v * 255 / range), refused if NaN or outside
 * [0, range]), layout (NHWC -> NCHW), channels and size (image_convert.h;
 * fit applies when the aspect ratio changes).  Images of folders and lists
 * are decoded with image_decode.h and converted with image_convert().
 *
 * Threading: image_source_read decodes folder images in parallel with
 * OpenMP (one image per iteration, owner-writes) and converts array records
 * in parallel; a source must not be read from two threads at once.  No MPI.
 */
#ifndef AESIM_IMAGE_SOURCE_H
#define AESIM_IMAGE_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "data/dataset_opts.h"
#include "base/err.h"
#include "data/idx.h"
#include "data/npy.h"
#include "data/zip_read.h"

/* Raw bytes read per window by image_source_read (bounded memory). */
#define IMAGE_SOURCE_WINDOW_BYTES (32LL << 20)
/* Room for the note about skipped files, bytes including the NUL. */
#define IMAGE_SOURCE_NOTE_BYTES 1024

/* How an array source reaches its records. */
typedef enum {
    RAW_NONE = 0,      /* not an array source (folders, lists) */
    RAW_FILE,          /* at file offsets: pread, or mmap */
    RAW_ZIP_STREAM,    /* a deflated npz member: sequential */
    RAW_IDX_STREAM     /* an IDX file through zlib (plain or gzip): sequential */
} RawAccess;

/* One file of a folder or list source. */
typedef struct ImageFile {
    char *path;     /* full path, owned */
    char *name;     /* relative to the folder / as written in the list; points into path or owned (see name_owned) */
    int name_owned;
    int32_t label;  /* -1 when none */
    int64_t line;   /* list files: the 1-based line naming it (for messages); 0 for folders */
} ImageFile;

typedef struct ImageSource {
    SourceKind kind;                /* resolved kind (never SOURCE_AUTO) */
    char path[DATASET_PATH_BYTES];  /* the file or folder */
    DatasetOptions opts;            /* after the item's own options */
    int64_t n;                      /* images */
    int C, H, W;                    /* shape of the records delivered */
    int32_t *labels;                /* [n] or NULL, owned */
    int sequential;                 /* 1: image_source_read must be called with first == next_first */
    int64_t next_first;             /* sequential sources: where the next read must start */
    const uint8_t *mapped;          /* [n][C][H][W] read-only pages of the file, or NULL */
    int64_t n_skipped;              /* images marked bad so far (skip_bad) */
    int64_t n_resized;              /* images whose own H x W differs from the delivered H x W: all of them for
                                       an array source of another size, counted as read for folders/lists */
    char skip_note[IMAGE_SOURCE_NOTE_BYTES]; /* the first skipped file and why */
    int is_store;                   /* 1 for an aesim sample store */
    const char *guess;              /* why its kind was guessed ("its name ends in .txt ..."; static) when no
                                       KIND: was given, for messages; NULL when named or found in a folder */
    char gap_note[IMAGE_SOURCE_NOTE_BYTES]; /* first source of a numbered set taken with a gap (allow_gaps=1):
                                               the warning to print, naming the missing files; "" otherwise */

    /* Array sources. */
    RawAccess access;
    int fd;                         /* RAW_FILE: owned, -1 otherwise */
    uint64_t offset;                /* RAW_FILE: file offset of record 0 */
    uint64_t stride;                /* bytes from one record to the next */
    uint64_t skip;                  /* bytes at the start of each record that are not pixels (CIFAR labels) */
    NpyDtype dtype;                 /* NPY_U8, NPY_F32 or NPY_F64 */
    int big_endian;
    int C0, H0, W0;                 /* shape of a raw record */
    int nhwc;                       /* 1 if raw records are [H0][W0][C0] */
    ZipArchive za;                  /* npz sources: the open archive */
    int verify_pending;             /* 1: verify_entry's CRC is still to be checked (opts.defer_verify) */
    ZipEntry verify_entry;          /* the images member, when verify_pending */
    const ZipEntry *member;         /* npz sources: the images member */
    ZipStream zs;                   /* RAW_ZIP_STREAM */
    IdxStream idx;                  /* RAW_IDX_STREAM */
    void *map_addr;                 /* the mapping, owned */
    size_t map_len;
    uint32_t *block_crc;            /* stores with a block_crc member, checked when read (verify not 0 or 1):
                                       [n_blocks] CRC-32 of each block of crc_block raw records, owned; else NULL */
    int64_t crc_block, n_blocks;
    uint8_t *block_ok;              /* [n_blocks] 1 once a block was checked (atomic bytes), owned */
    char *names;                    /* stores: NUL-separated names blob, owned (or NULL) */
    int64_t *name_off;              /* stores: [n + 1] offsets into names */

    /* Folder and list sources. */
    ImageFile *files;               /* [n], owned */
    int n_classes;                  /* folders: number of class sub-folders */
    char **classes;                 /* [n_classes] class names in label order, owned */
} ImageSource;

/* Opens every item of a comma-separated spec, expanding wildcards and
 * folders of batch files into several sources (in order).  A wildcard or a
 * folder set whose numbered files have a gap (numbered_set.h: _7 of 1..10
 * missing) is refused with AE_EIO naming the missing files, or with the
 * item's allow_gaps=1 opened with the warning in the set's first gap_note.
 * *srcs receives
 * an array of *n opened sources (free with image_source_close_all).
 * Errors: see dataset_open_opts (dataset.h).  On error nothing is held. */
int image_source_open_spec(ImageSource ***srcs, int *n, const char *spec, const DatasetOptions *defaults, Err *err);

/* Opens one path of a known or guessed kind (no wildcards, no commas).
 * Appends one or more sources to *list (grown with realloc semantics via
 * xmalloc; *count and *cap updated).  Errors as above. */
int image_source_open_path(ImageSource ***list, int *count, int *cap, SourceKind kind, const char *path,
                           const DatasetOptions *opts, Err *err);

/* Reads records [first, first + count) into pix[count][C][H][W].  ok[count]
 * receives 1 for every image delivered and 0 for a bad image skipped
 * (skip_bad=1 on folders/lists; its slot in pix is zero-filled); ok may be
 * NULL when the source cannot skip.  Sequential sources need first ==
 * next_first.  Errors: AE_EIO / AE_EFORMAT / AE_ENOMEM naming the file (and
 * the image), AE_EARG for a sequential source read out of order. */
int image_source_read(ImageSource *s, int64_t first, int64_t count, uint8_t *pix, uint8_t *ok, Err *err);

/* Checks the CRC-32 of every block of raw records overlapping [first,
 * first + count) that has not been checked before, against the store's
 * block_crc member (sample_store.h): from the mapping, or read with pread.
 * AE_OK at once for sources without block CRCs.  image_source_read calls
 * it; dataset.c calls it for mapped records.  Thread-safe: blocks may be
 * checked by several threads at once (a block checked twice costs only
 * time).  Errors: AE_EFORMAT "PATH: images A..B (CRC block b of nb):
 * CRC-32 X, the store records Y (hint: ...)", AE_EIO when a block cannot
 * be read. */
int image_source_check(ImageSource *s, int64_t first, int64_t count, Err *err);

/* Name of image i (see dataset_name): returns 1 and fills out if known. */
int image_source_name(const ImageSource *s, int64_t i, char *out, size_t cap);

/* Closes files, unmaps, frees; s may be NULL. */
void image_source_close(ImageSource *s);

/* Closes every source of an array from image_source_open_spec and frees it. */
void image_source_close_all(ImageSource **srcs, int n);

/* Natural-order comparison of two strings: digit runs compare as numbers
 * ("batch_9" < "batch_10"), the rest bytewise.  For wildcard expansion. */
int image_source_natural_cmp(const char *a, const char *b);

#endif
