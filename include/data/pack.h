/*
 * pack.h - packing any dataset source into an aesim sample store
 * (sample_store.h), in parallel over MPI ranks: the engine of aesim-pack.
 *
 * Every rank opens the sources itself (headers, labels and file lists
 * only; folder scans are sorted, so all ranks see the same order) and they
 * agree on errors.  Random-access sources (folders, lists, .npy, stored npz
 * members, CIFAR, plain IDX) are cut into P contiguous record ranges, one
 * per rank; streamed sources (deflated npz members, gzip IDX) are read by
 * rank 0 alone, front to back.  Each rank decodes its records window by
 * window (PackConfig.window images, decoded with OpenMP inside the window)
 * and pwrites them at their final offsets of one shared temporary file, so
 * memory stays bounded by the window whatever the dataset size (the file
 * must be on storage every rank can reach, e.g. a shared file system).
 * Rank 0 then compacts away skipped images (skip_bad=1), computes the
 * CRC-32 while reading the records back, writes labels, names and
 * meta.json and renames the file into place.
 * MPI through par.h only; collective: every rank calls pack_run.
 */
#ifndef AESIM_PACK_H
#define AESIM_PACK_H

#include <stdint.h>

#include "data/dataset.h"
#include "base/err.h"
#include "par/par.h"

/* Default images per decoding window and rank. */
#define PACK_DEFAULT_WINDOW 256
/* Largest --window accepted (images): bounds the window buffers. */
#define PACK_MAX_WINDOW 65536

typedef struct PackConfig {
    const char *spec;        /* sources, as for dataset_open_opts */
    DatasetOptions opts;     /* defaults for every item */
    const char *out;         /* the store to write */
    int64_t window;          /* images per window (>= 1) */
    int overwrite;           /* 1: replace an existing `out`; 0: never (not even one made while packing) */
} PackConfig;

typedef struct PackStats {
    int64_t n_in;            /* images in the sources */
    int64_t n_out;           /* images written */
    int64_t skipped;         /* bad files skipped */
    int C, H, W;
    double decode_s;         /* wall time of the parallel decode/write phase */
    double finish_s;         /* wall time of rank 0's compaction/CRC/metadata phase */
    char skip_note[1024];    /* the first skipped file and why */
    char warning[2048];      /* numbered sets taken with a gap (allow_gaps=1), "" if none: print it */
} PackStats;

/* Packs cfg->spec into cfg->out.  Collective.  Returns the same status on
 * every rank: AE_OK, or the first failing rank's code with its message in
 * err (errors of dataset_open_opts, AE_EIO writing the store, AE_EFORMAT if
 * every image was skipped).  On error no store is left behind. */
int pack_run(const ParCtx *ctx, const PackConfig *cfg, PackStats *stats, Err *err);

#endif
