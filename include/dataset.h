/*
 * dataset.h - training images in memory, whatever file they came from.
 *
 * A Dataset holds n images as uint8 NCHW ([n][C][H][W], C = 1 grey or 3 RGB)
 * plus optional int32 labels.  Sources:
 *   - an .npz in the downsampled-ImageNet layout (P. Chrabaszcz, I. Loshchilov,
 *     F. Hutter, "A Downsampled Variant of ImageNet as an Alternative to the
 *     CIFAR datasets", 2017; files train_data_batch_N.npz / val_data.npz):
 *     member 'data' uint8 (N, 3*S*S), each row the R plane (S*S bytes,
 *     row-major), then G, then B, which is already CHW; member 'labels' of
 *     any integer dtype, (N,), kept as given (1..1000 there).  Other members
 *     ('mean', ...) are not read.  Members stored or deflated, zip64 accepted.
 *   - an IDX images file (idx.h; magic 0x00000803, dims n,H,W; plain or
 *     gzip), C = 1.  Its labels come from the file whose name (last path
 *     component) has "images-idx3" replaced by "labels-idx1", if that file
 *     exists (magic 0x00000801, count must match).
 *   - a folder holding train-images-idx3-ubyte.gz or train-images-idx3-ubyte
 *     (the MNIST / Fashion-MNIST layout): that file, as above.
 * The kind of a file is recognised from its first bytes (zip "PK", gzip
 * 0x1f 0x8b, IDX 0x00 0x00), not from its name.
 *
 * Loading is single-threaded; dataset_get_*() only read and may be called
 * from several threads at once.  No MPI: every rank loads the same files
 * (the sampler then picks each rank's images).
 */
#ifndef AESIM_DATASET_H
#define AESIM_DATASET_H

#include <stdint.h>

#include "err.h"

/* Size of Dataset.source in bytes. */
#define DATASET_SOURCE_BYTES 4096
/* Folder layout: the images file looked for inside a folder (plain name;
 * the ".gz" variant is tried first). */
#define DATASET_IDX_TRAIN_IMAGES "train-images-idx3-ubyte"

typedef struct Dataset {
    int64_t n;          /* number of images, >= 1 after dataset_open */
    int C, H, W;        /* channels (1 grey or 3 RGB), height, width */
    uint8_t *pixels;    /* [n][C][H][W], owned */
    int32_t *labels;    /* [n] or NULL when the source has none, owned */
    char source[DATASET_SOURCE_BYTES]; /* what was loaded, for logs, e.g. "/p/a.npz (800 images)" */
} Dataset;

/* Opens one or several sources separated by commas (no spaces around them),
 * concatenated in the order given.  All must agree on C, H, W.  Labels are
 * kept only if every source has them (otherwise ds->labels = NULL).  With
 * several sources the images are copied once into one block (peak memory:
 * about twice the total).
 * Errors (message names the file and the problem, ends with a hint):
 *   AE_EIO     a source is missing or unreadable, or a folder lacks the file;
 *   AE_EFORMAT bad magic, truncated file, a header that lies about sizes,
 *              'data' missing / not uint8 / not 2-D / row length not 3*S*S,
 *              labels not an integer (N,) array or out of int32 range,
 *              labels file count mismatch, an IDX images file not 3-D,
 *              no images at all, an unrecognised file kind;
 *   AE_ESHAPE  two sources disagree on C, H or W (names both files);
 *   AE_EARG    an empty spec or an empty item between commas;
 *   AE_ENOMEM  an allocation sized by the file failed.
 * On error *ds is left empty (nothing to free). */
int dataset_open(Dataset *ds, const char *spec, Err *err);

/* Frees pixels and labels and zeroes *ds.  ds may be NULL. */
void dataset_free(Dataset *ds);

/* Bytes of one image: C*H*W. */
int64_t dataset_image_bytes(const Dataset *ds);

/* out[C][H][W] = pixels of image i / 255.0f (float32 division, so values are
 * exactly float32(p) / float32(255) in [0, 1]).  0 <= i < n (asserted). */
void dataset_get_f32(float *out, const Dataset *ds, int64_t i);

/* Gathers a batch: out[k][C][H][W] = image idx[k] / 255.0f for k < count.
 * out: [count][C][H][W]; idx: [count], each in [0, n) (asserted).  Parallel
 * over images with OpenMP when the batch is large (owner-writes; no BLAS). */
void dataset_get_batch_f32(float *out, const Dataset *ds, const int64_t *idx, int64_t count);

/* Splits off a validation set: nval = round(frac * n) images (at least 1)
 * chosen uniformly at random with rng_seed(seed, RNG_STREAM_SPLIT) go to
 * val, the rest to train.  Both keep the images' original order; pixels and
 * labels are copied, src is unchanged (and may be freed afterwards).
 * Errors: AE_EARG if frac is not in (0, 1) or train would be empty (the
 * message names src->source).  On error train and val are left empty. */
int dataset_split(Dataset *train, Dataset *val, const Dataset *src, double frac, uint64_t seed, Err *err);

#endif
