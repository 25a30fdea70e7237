/*
 * dataset_opts.h - the source-spec syntax: how one item of a --data list
 * names its kind, path and options.
 *
 * Syntax of one item (items are separated by commas in a --data list):
 *
 *     [KIND:]PATH[?KEY=VALUE[&KEY=VALUE...]]
 *
 * KIND (optional; guessed from the file's first bytes, its name or the
 * folder's contents when absent):
 *     npz      NumPy .npz (downsampled ImageNet, any images array, or an
 *              aesim sample store)      npy     a NumPy .npy array
 *     idx      MNIST IDX (plain/gzip)   mnist   folder with train-images-idx3-ubyte[.gz]
 *     cifar10  CIFAR-10 binary batch    cifar100 CIFAR-100 binary batch
 *     folder   folder of PNG/JPEG files list    list file of image paths
 * KEY=VALUE (defaults in dataset.h, DatasetOptions):
 *     size=HxW or size=S        target size (e.g. size=64x64, size=32)
 *     channels=1|3              target channels (RGB->grey: ITU-R 601-2 luma)
 *     layout=auto|nchw|nhwc     layout of 4-D arrays (and of 2-D rows)
 *     fit=crop|squash           aspect-ratio handling when resizing
 *     bg=RRGGBB|white|black     background under transparent pixels
 *     skip_bad=0|1              folders/lists: skip undecodable files
 *     range=1|255               full-intensity value of float arrays
 *     verify=0|1                CRC-check stored npz members before mapping
 *     map=auto|0|1              memory-map when possible / never / required
 *     coarse=0|1                CIFAR-100: coarse labels
 *     max_pixels=N              largest decoded image accepted
 *     images=NAME, labels=NAME  npz member names
 *     allow_gaps=0|1            take a numbered file set with a number missing (warning)
 * A literal '?' cannot appear in PATH (it starts the options); '*' and
 * '[...]' in PATH are wildcards (glob(3)).
 *
 * Pure string handling; no I/O, no global state, thread-safe.
 */
#ifndef AESIM_DATASET_OPTS_H
#define AESIM_DATASET_OPTS_H

#include "data/dataset.h"
#include "base/err.h"

/* Longest item path, bytes including the NUL. */
#define DATASET_PATH_BYTES 4096

typedef enum {
    SOURCE_AUTO = 0,
    SOURCE_NPZ,
    SOURCE_NPY,
    SOURCE_IDX,
    SOURCE_MNIST,
    SOURCE_CIFAR10,
    SOURCE_CIFAR100,
    SOURCE_FOLDER,
    SOURCE_LIST
} SourceKind;

/* Name of a kind as written in specs ("npz", ...; "auto"). Static string. */
const char *dataset_kind_name(SourceKind k);

/* One parsed item. */
typedef struct DatasetItem {
    SourceKind kind;
    char path[DATASET_PATH_BYTES];
    DatasetOptions opts;  /* the defaults passed in, overridden by the item's options */
} DatasetItem;

/* Applies "key=value&key=value..." (the part after '?' of an item, also
 * aesim-train's --data-opts) to *o with dataset_options_set.  Errors:
 * AE_EARG naming the option that is not KEY=VALUE, too long, or unknown. */
int dataset_options_parse(DatasetOptions *o, const char *kv, Err *err);

/* Parses one item (no commas) with `defaults` as the starting options.
 * Errors: AE_EARG (empty path, path too long, unknown kind when the text
 * before ':' looks like one, unknown key, bad value, '=' missing; the
 * message quotes the item and lists what is accepted). */
int dataset_item_parse(DatasetItem *out, const char *item, const DatasetOptions *defaults, Err *err);

#endif
