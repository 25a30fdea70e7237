/*
 * imgset.h - an image source made of several files, opened file by file so
 * that every image keeps its origin: global index -> (file, row), a label
 * (-1 when the file has none) and a printable name "FILE#ROW".
 *
 * A source spec is what dataset.h accepts: one or several items separated by
 * commas, each any source dataset.h reads (.npz/.npy, IDX file or folder,
 * CIFAR batches, image folders and lists, sample stores, a wildcard, with
 * ?key=value options).  Each item is opened with dataset_open (so formats,
 * errors and hints are dataset.h's); the global index runs over the items in
 * the order given, like dataset_open's concatenation, but without copying the
 * pixels into one block.  Unlike dataset_open, labels are kept per item: an
 * item without labels gives -1 for its images (dataset_label).
 *
 * Names (used by aesim-search to say where a vector came from): the last
 * path component of the file the image was read from (dataset_origin: a
 * wildcard's or a folder set's own member, the IDX file inside an MNIST
 * folder), '#', the 0-based row within that file, e.g.
 * "train_data_batch_7.npz#1" for train_data_batch_*.npz or its folder,
 * "train-images-idx3-ubyte.gz#123" for a Fashion-MNIST folder; for sources
 * whose images have their own names (dataset_name: image folders, lists,
 * sample stores) that source's last component, '/', and that name, e.g.
 * "photos/cats/001.png".
 * Tabs, newlines and other control bytes of the path become '?', so a name is
 * always one TSV field.
 *
 * Does not: resize or convert images itself (imgset_open_opts passes the
 * options, e.g. the model's size, to every item; all items must then agree
 * on C, H, W), read
 * image files (image_decode.h), or split work between ranks (the caller picks the
 * range it needs).  Loading is single-threaded; the getters only read and may
 * be called from several threads.  No MPI.
 */
#ifndef AESIM_IMGSET_H
#define AESIM_IMGSET_H

#include <stddef.h>
#include <stdint.h>

#include "data/dataset.h"
#include "base/err.h"

/* Longest item path kept, bytes including the NUL. */
#define IMGSET_PATH_BYTES 4096
/* Longest name imgset_name writes, bytes including the NUL. */
#define IMGSET_NAME_BYTES 512

typedef struct ImageSet {
    int n_items;              /* files (comma-separated items), >= 1 when open */
    Dataset *items;           /* [n_items], owned */
    char (*paths)[IMGSET_PATH_BYTES]; /* [n_items] absolute path of each item (realpath) */
    int64_t *first;           /* [n_items + 1] global index of each item's row 0; first[n_items] = n */
    int64_t n;                /* images in all */
    int C, H, W;              /* image shape shared by all items */
    int64_t n_resized;        /* images whose own size differed from H x W (resized when read) */
    int64_t n_skipped;        /* bad images skipped (skip_bad=1) */
    char warning[DATASET_WARNING_BYTES]; /* the items' warnings (dataset.h), "" if none: print it */
} ImageSet;

/* Opens every item of `spec`.  Errors (message names the item, ends with a
 * hint): those of dataset_open (AE_EIO, AE_EFORMAT, AE_ENOMEM), AE_EARG for
 * an empty spec or an empty item between commas, AE_ESHAPE when two items
 * disagree on C, H or W.  On error *s is left empty (nothing to free). */
int imgset_open(ImageSet *s, const char *spec, Err *err);

/* As imgset_open, with `defaults` as every item's options (NULL: the
 * dataset_options_default values), e.g. a model's size and channels so that
 * images of any size are converted to them (dataset.h). */
int imgset_open_opts(ImageSet *s, const char *spec, const DatasetOptions *defaults, Err *err);

/* Frees everything and zeroes *s.  s may be NULL or already freed. */
void imgset_free(ImageSet *s);

/* Item holding global image i and the row within it.  0 <= i < n (assert). */
int imgset_locate(const ImageSet *s, int64_t i, int64_t *row);

/* out[C][H][W] = pixels of global image i / 255.0f (as dataset_get_f32).
 * 0 <= i < n (assert). */
void imgset_get_f32(float *out, const ImageSet *s, int64_t i);

/* The first read error of any item (dataset_read_error: a damaged block of
 * an aesim store read by imgset_get_f32), copied into err, or AE_OK. */
int imgset_read_error(const ImageSet *s, Err *err);

/* Label of global image i, or -1 when its item has no labels. */
int32_t imgset_label(const ImageSet *s, int64_t i);

/* Writes the name of global image i ("ITEM#ROW", see above) into out[cap],
 * truncating if needed.  cap >= 1. */
void imgset_name(char *out, size_t cap, const ImageSet *s, int64_t i);

#endif
