/*
 * dataset.h - training images, whatever file or folder they came from, as
 * uint8 NCHW ([n][C][H][W], C = 1 grey or 3 RGB) plus optional int32 labels.
 *
 * Sources (details, option syntax and the sample store: datasets/README.md;
 * the readers: image_source.h):
 *   - downsampled ImageNet .npz (P. Chrabaszcz, I. Loshchilov, F. Hutter, "A
 *     Downsampled Variant of ImageNet as an Alternative to the CIFAR
 *     datasets", 2017; train_data_batch_N.npz / val_data.npz): member 'data'
 *     uint8 (N, 3*S*S), each row the R plane then G then B (already CHW);
 *     'labels' kept exactly as given (1..1000 there, NOT shifted to 0..999).
 *     Stored or deflated members, zip64 archives.  A stored member is
 *     memory-mapped at its offset (no copy); a deflated one is inflated into
 *     memory (pack it with aesim-pack to train without that copy).
 *   - any NumPy .npy / .npz of images: uint8, float32 or float64, (N,H,W),
 *     (N,C,H,W), (N,H,W,C) or rows (N, C*S*S); versions 1.0/2.0/3.0;
 *     big-endian floats are byte-swapped; fortran_order is refused.
 *   - MNIST-style IDX files, plain or gzip, and their folders (labels from
 *     the matching *labels-idx1* file).
 *   - CIFAR-10 / CIFAR-100 binary batches (and their folders).
 *   - folders of PNG / JPEG images, recursively, first-level sub-folder name
 *     as label; list files (one image path per line, optional label).
 *   - sample stores written by aesim-pack (sample_store.h), memory-mapped.
 * Several sources are given separated by commas and concatenated; a path
 * may hold * or [..] wildcards (expanded in natural order, so batch_10
 * follows batch_9).  Each source may carry options: KIND:PATH?key=value&...
 * (dataset_opts.h).
 *
 * Memory: a mapped source costs address space, not RAM (pages come and go
 * through the page cache; a rank touches only the images it reads).  Other
 * sources are decoded into one block in memory.
 *
 * Loading: single-threaded except folder decoding (OpenMP over images).
 * The getters only read and may be called from several threads at once.
 * No MPI: every rank opens the same sources (aesim-pack is the MPI tool).
 */
#ifndef AESIM_DATASET_H
#define AESIM_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "data/verify.h"
#include "par/par.h"

/* Size of Dataset.source in bytes. */
#define DATASET_SOURCE_BYTES 4096
/* Size of Dataset.warning in bytes. */
#define DATASET_WARNING_BYTES 2048
/* Folder layout: the images file looked for inside a folder (plain name;
 * the ".gz" variant is tried first). */
#define DATASET_IDX_TRAIN_IMAGES "train-images-idx3-ubyte"
/* Size of the DatasetOptions member-name fields, bytes including the NUL. */
#define DATASET_MEMBER_BYTES 64

/* How 4-D arrays are laid out (NumPy sources). */
typedef enum {
    DATASET_LAYOUT_AUTO = 0, /* guess only when unambiguous: (N,C,H,W) if dim 1 is 1 or 3 and dim 3 is not, (N,H,W,C) the other way round */
    DATASET_LAYOUT_NCHW,
    DATASET_LAYOUT_NHWC
} DatasetLayout;

/* How an image whose aspect ratio differs from the target is fitted. */
typedef enum {
    DATASET_FIT_CROP = 0, /* default: the largest centred region with the target aspect ratio, then resized */
    DATASET_FIT_SQUASH    /* the whole image resized, aspect ratio not kept */
} DatasetFit;

/* Options of a source.  dataset_options_default() fills the defaults; a
 * spec item's ?key=value pairs override them for that item only. */
typedef struct DatasetOptions {
    int H, W;               /* target size in pixels; 0 = keep the source's (folders/lists: the first image's) */
    int C;                  /* target channels 1 or 3; 0 = keep the source's (folders/lists: 3) */
    DatasetLayout layout;   /* layout=auto|nchw|nhwc */
    DatasetFit fit;         /* fit=crop|squash */
    uint8_t bg[3];          /* bg=RRGGBB: background under transparent pixels (default ffffff, white) */
    int skip_bad;           /* skip_bad=1: folders/lists skip files that do not decode, counting them */
    double range;           /* range=1|255: value of full intensity in float arrays (default 1.0) */
    int verify;             /* verify=0|1: CRC-check a stored npz member before mapping it; -1 = default (1 for npz;
                               aesim stores with block CRCs: each block when first read; older stores: 1 when the
                               check is shared by the ranks, defer_verify, else 0) */
    int map;                /* map=0|1: -1 = map when possible; 0 = always read into memory; 1 = refuse sources that cannot be mapped */
    int coarse;             /* coarse=1: CIFAR-100 coarse (20-class) labels instead of fine */
    int64_t max_pixels;     /* max_pixels=N: refuse decoded images larger than this (decompression bombs) */
    char images[DATASET_MEMBER_BYTES]; /* images=NAME: npz member holding the images ("" = guess) */
    char labels[DATASET_MEMBER_BYTES]; /* labels=NAME: npz member holding the labels ("" = guess) */
    int random_access;      /* not a spec key: 1 = mapped files are read in random order (training's shuffled
                               batches): madvise(MADV_RANDOM), no readahead beyond the pages asked for; the
                               reader then names the pages it needs next with dataset_prefetch */
    int defer_verify;       /* not a spec key: 1 = the stored npz members that verify selects are not checked at
                               open but by dataset_verify, shared by the ranks (set by aesim-train and index) */
    int allow_gaps;         /* allow_gaps=1: a numbered set of files (train_data_batch_N.npz, ...) with a number
                               missing is taken with a warning instead of refused (image_source.h, numbered sets) */
} DatasetOptions;

struct DatasetImpl; /* dataset.c: shared mappings, segments, names; opaque */

typedef struct Dataset {
    int64_t n;          /* number of images, >= 1 after dataset_open */
    int C, H, W;        /* channels (1 grey or 3 RGB), height, width */
    uint8_t *pixels;    /* [n][C][H][W] when the images are one block: always for a single source (read-only
                           when mapped) and for several in-memory sources; NULL for several mapped sources, for a
                           mapped store whose records are CRC-checked when read (sample_store.h) and for views made
                           by dataset_split; use dataset_get_u8 / dataset_get_f32, which always work.
                           Never free it yourself (dataset_free does). */
    int32_t *labels;    /* [n] or NULL when a source has none, owned (-1 for folder images outside class folders) */
    char source[DATASET_SOURCE_BYTES]; /* what was loaded, for logs, e.g. "/p/a.npz (800 images 3x32x32, labelled)" */
    int64_t n_skipped;  /* bad files skipped (skip_bad=1); 0 otherwise */
    int64_t n_resized;  /* images whose own height x width differed from H x W: resized (box filter after the
                           fit=crop|squash region, image_convert.h) */
    char warning[DATASET_WARNING_BYTES]; /* what the caller must print as a warning (rank 0), "" if nothing:
                                            a numbered set taken with a gap (allow_gaps=1) */
    struct DatasetImpl *impl; /* owned; NULL for a hand-made Dataset whose pixels/labels were malloc'ed */
} Dataset;

/* Fills the defaults listed in DatasetOptions (size and channels from the
 * source, auto layout, centre crop, white background, no skipping, range 1,
 * verify/map per source kind, max_pixels DATASET_DEFAULT_MAX_PIXELS). */
void dataset_options_default(DatasetOptions *o);

/* Decoded images larger than this many pixels are refused by default
 * (2^26 = 8192 x 8192: a 256 MiB RGBA buffer per decoding thread). */
#define DATASET_DEFAULT_MAX_PIXELS (1LL << 26)

/* Sets one option by name, as a spec item's ?key=value would ("size" takes
 * HxW or S, "bg" RRGGBB hex or white/black, booleans 0/1).  For the
 * trainer's --data-* flags.  Errors: AE_EARG (unknown key or bad value; the
 * message lists the keys / accepted values). */
int dataset_options_set(DatasetOptions *o, const char *key, const char *value, Err *err);

/* Opens one or several sources separated by commas (no spaces around them),
 * concatenated in the order given, with the default options.  Same as
 * dataset_open_opts(ds, spec, NULL, err). */
int dataset_open(Dataset *ds, const char *spec, Err *err);

/* Opens spec with `opts` as the defaults of every item (NULL: the
 * dataset_options_default values).  All sources must agree on C, H, W after
 * their options are applied.  Labels are kept only if every source has
 * them.  In-memory sources are decoded straight into one block (no
 * second copy).
 * Errors (message names the file and the problem, ends with a hint):
 *   AE_EIO     a source is missing or unreadable, a folder holds nothing
 *              usable, a wildcard matches nothing;
 *   AE_EFORMAT a file breaks its format: bad magic, truncated, a header
 *              that lies about sizes, size overflow, zip bomb, CRC error,
 *              an undecodable image (unless skip_bad=1), an ambiguous or
 *              unsupported array shape/dtype, labels not integer or out of
 *              int32 range, mismatched label counts, no images at all;
 *   AE_ESHAPE  two sources disagree on C, H or W (names both);
 *   AE_EARG    an empty spec or item, an unknown kind or option, a bad
 *              option value, map=1 for a source that cannot be mapped;
 *   AE_ENOMEM  an allocation sized by the file failed.
 * On error *ds is left empty (nothing to free). */
int dataset_open_opts(Dataset *ds, const char *spec, const DatasetOptions *opts, Err *err);

/* Frees everything (unmaps, closes) and zeroes *ds.  ds may be NULL. */
void dataset_free(Dataset *ds);

/* Bytes of one image: C*H*W. */
int64_t dataset_image_bytes(const Dataset *ds);

/* Pointer to image i's C*H*W bytes ([C][H][W], read-only; valid until
 * dataset_free).  0 <= i < n (asserted).  A record mapped from an aesim
 * store with block CRCs is CRC-checked the first time it is read
 * (image_source_check); a mismatch does not stop the read but is kept for
 * dataset_read_error, which readers call before using what they read. */
const uint8_t *dataset_image(const Dataset *ds, int64_t i);

/* The first error of the reads so far (a damaged block of a store:
 * AE_EFORMAT naming the file, the images and the CRCs; AE_EIO), copied into
 * err, or AE_OK.  Sticky: once set, every later call returns it.  Call
 * after the reads (not during a parallel gather: the message of a failure
 * being recorded at that moment may not be complete yet). */
int dataset_read_error(const Dataset *ds, Err *err);

/* out[C][H][W] = the uint8 pixels of image i.  0 <= i < n (asserted). */
void dataset_get_u8(uint8_t *out, const Dataset *ds, int64_t i);

/* out[C][H][W] = pixels of image i / 255.0f (float32 division, so values are
 * exactly float32(p) / float32(255) in [0, 1]).  0 <= i < n (asserted). */
void dataset_get_f32(float *out, const Dataset *ds, int64_t i);

/* Gathers a batch: out[k][C][H][W] = image idx[k] / 255.0f for k < count.
 * out: [count][C][H][W]; idx: [count], each in [0, n) (asserted).  Parallel
 * over images with OpenMP when the batch is large (owner-writes; no BLAS). */
void dataset_get_batch_f32(float *out, const Dataset *ds, const int64_t *idx, int64_t count);

/* Label of image i, or -1 when the dataset has no labels. */
int32_t dataset_label(const Dataset *ds, int64_t i);

/* Writes the name of image i into out[cap] (cap >= 1): its path relative
 * to the folder or list for image folders and lists, the stored name for
 * sample stores, "" when the source has no names.  Returns 1 if a name was
 * known, 0 otherwise. */
int dataset_name(char *out, size_t cap, const Dataset *ds, int64_t i);

/* Where image i came from: returns the path of the file (or folder, list
 * file) it was read from, as opened after wildcard and folder-set expansion
 * (so "train_data_batch_7.npz", never the pattern or the folder of batches),
 * and sets *row to its 0-based row in that file (images skipped by
 * skip_bad=1 keep their rows counted, so the row is the file's own).
 * NULL (and *row = i) for a hand-made Dataset.  0 <= i < n (asserted). */
const char *dataset_origin(const Dataset *ds, int64_t i, int64_t *row);

/* The class names of the data set's labels when its source names them: an
 * image folder's class sub-folders (labels 0..K-1 in sorted order) or an
 * aesim-pack store's meta.json "classes".  Returns K and sets *names to the
 * source's array (owned by ds, valid until dataset_free), or returns 0 and
 * sets *names to NULL (no such source, or a hand-made Dataset).  With several
 * sources, the first that names classes. */
int dataset_class_names(const Dataset *ds, const char *const **names);

/* Collective: the CRC-32 check of every stored npz member that ds's sources
 * left for later (opened with defer_verify = 1), split over the ranks and
 * remembered across jobs (verify.h).  Every rank passes a Dataset opened
 * from the same spec.  Adds to *st.  Errors (agreed): verify_members'.
 * A Dataset with nothing left to check returns AE_OK without communicating
 * beyond one agreement. */
int dataset_verify(const ParCtx *ctx, const Dataset *ds, VerifyStats *st, Err *err);

/* Asks the kernel to start reading the pages of images idx[0..count-1] (or
 * first .. first + count - 1 when idx is NULL) of memory-mapped sources
 * (madvise(MADV_WILLNEED): asynchronous readahead of exactly those pages),
 * so that a later dataset_get_* of them does not wait for the disk; images
 * held in memory are skipped.  A hint: never fails, changes no data. */
void dataset_prefetch(const Dataset *ds, const int64_t *idx, int64_t first, int64_t count);

/* Splits off a validation set: nval = round(frac * n) images (at least 1)
 * chosen uniformly at random with rng_seed(seed, RNG_STREAM_SPLIT) go to
 * val, the rest to train.  Both keep the images' original order; labels are
 * copied.  Pixels: copied for a hand-made Dataset (impl == NULL); otherwise
 * train and val are views sharing src's images (no pixel copy, so a mapped
 * store stays mapped; their pixels field is NULL).  src is unchanged and may
 * be freed afterwards either way.
 * Errors: AE_EARG if frac is not in (0, 1) or train would be empty (the
 * message names src->source).  On error train and val are left empty. */
int dataset_split(Dataset *train, Dataset *val, const Dataset *src, double frac, uint64_t seed, Err *err);

#endif
