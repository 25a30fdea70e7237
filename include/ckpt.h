/*
 * ckpt.h - training checkpoints as NumPy .npz files (numpy.savez layout,
 * stored members), so the weights load in Python with numpy alone:
 *
 *     ck = numpy.load("checkpoint.npz")
 *     ck["conv0.weight"]        # float32 [OC][C][K][K], PyTorch Conv2d layout
 *     ck["conv0.bias"]          # float32 [OC]
 *     bytes(ck["meta.arch"]).decode()   # "c16 p c8 p c8 | c16 u c16 u c1"
 *
 * Members:
 *   convJ.weight, convJ.bias       parameters of the J-th conv (0-based)
 *   opt.m.NAME, opt.v.NAME         optimizer state per tensor (Adam: m and v;
 *                                  SGD: opt.m = momentum buffer)
 *   meta.arch        uint8 [len]   canonical architecture spec (ASCII)
 *   meta.input_shape int64 [3]     C, H, W
 *   meta.state       int64 [CKPT_STATE_LEN]  see CkptState (version first)
 *   meta.hparams     float64 [5]   lr, beta1, beta2, eps, momentum
 * The data order of epoch e is a pure function of (seed, e), so (seed, epoch,
 * batch) is the whole RNG state: a resumed run, with any number of ranks,
 * continues the same schedule.
 * Written by one rank, atomically (temp file, fsync, rename: fileio.h).
 */
#ifndef AESIM_CKPT_H
#define AESIM_CKPT_H

#include <stdint.h>

#include "err.h"
#include "model.h"
#include "npy.h"
#include "optimizer.h"

/* Format version stored first in meta.state; bump on incompatible change. */
#define CKPT_VERSION 1

/* Where training stands. */
typedef struct CkptState {
    int64_t step;            /* optimizer steps done */
    int64_t epoch;           /* current epoch (0-based) */
    int64_t batch;           /* global batches of that epoch already done */
    uint64_t seed;           /* data-order and init seed */
    int64_t batch_size;      /* global batch size */
} CkptState;

/* Length of meta.state: version, step, epoch, batch, seed, batch_size, optimizer kind. */
#define CKPT_STATE_LEN 7

/* Writes model parameters, optimizer state (opt may be NULL: weights only)
 * and st to path atomically.  Errors: AE_EIO naming the file (errno text). */
int ckpt_save(const char *path, const Model *m, const Optimizer *opt, const CkptState *st, Err *err);

/* A checkpoint read into memory, before a model exists. */
typedef struct Checkpoint {
    char path[4096];      /* file it was read from, for messages */
    NpyArray *arrays;
    int n_arrays;
    char arch[MODEL_SPEC_MAX];
    int C, H, W;
    CkptState state;
    OptKind opt_kind;
    double hparams[5];
} Checkpoint;

/* Reads and validates the meta members.  Errors: AE_EIO (missing file),
 * AE_EFORMAT (not an npz, missing or malformed meta.*, unknown version) with
 * a message naming the file.  Free with ckpt_free. */
int ckpt_read(Checkpoint *ck, const char *path, Err *err);

/* Copies parameters (and, if opt is not NULL, the optimizer state: opt must
 * have been initialised with the checkpoint's kind) into a model built from
 * ck->arch.  Errors: AE_EFORMAT when a tensor is missing or its shape differs
 * (naming the member), e.g. a checkpoint from another architecture. */
int ckpt_restore(const Checkpoint *ck, Model *m, Optimizer *opt, Err *err);

void ckpt_free(Checkpoint *ck);

#endif
