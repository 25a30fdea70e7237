/*
 * ckpt.h - training checkpoints as NumPy .npz files (numpy.savez layout,
 * stored members), so the weights load in Python with numpy alone:
 *
 *     ck = numpy.load("checkpoint.npz")
 *     ck["conv0.weight"]        # float32 [OC][C][K][K], PyTorch Conv2d layout
 *     ck["conv0.bias"]          # float32 [OC]
 *     bytes(ck["meta.arch"]).decode()   # "c16 p c8 p c8 | c16 u c16 u c1"
 *
 * Members, in this archive order:
 *   convJ.weight, convJ.bias       parameters of the J-th conv (0-based)
 *   opt.m.NAME, opt.v.NAME         optimizer state per tensor (Adam: m and v;
 *                                  SGD: opt.m = momentum buffer)
 *   head.*, opt.m.head.*, ...      only from aesim-train --contrastive-head:
 *                                  the projection head (CkptState.extra)
 *   meta.arch        uint8 [len]   canonical architecture spec (ASCII)
 *   meta.input_shape int64 [3]     C, H, W
 *   meta.state       int64 [CKPT_STATE_LEN]  see CkptState (version first)
 *   meta.hparams     float64 [5]   lr, beta1, beta2, eps, momentum
 *   meta.schedule    int64 [CKPT_SCHEDULE_LEN]  (version >= 3) what the data
 *                                  schedule depends on and the run's targets:
 *                                  n_train, data_crc, epochs, max_steps (see
 *                                  CkptState)
 *   meta.data        uint8 [len]   (version >= 3) the training source as
 *                                  loaded (ASCII, for messages)
 *   meta.shuffle     int64 [2]     (version >= 4) the epoch order: block and
 *                                  window of sampler_block_permutation, or
 *                                  0, 0 for the global shuffle
 *   meta.data_arg    uint8 [len]   (version >= 5) the run's --data argument
 *                                  (ASCII; absolute when it named an existing
 *                                  file or folder), which a resume without
 *                                  --data trains on; "unknown" = not recorded
 *   meta.views       float64 [CKPT_VIEWS_LEN]  (version >= 6) the training
 *                                  objective's options (train_views.h):
 *                                  --contrastive W, --tau, --contrastive-pool
 *                                  (0 none, 1 avg), --contrastive-head N,
 *                                  --noise kind (NoiseKind) and level,
 *                                  --augment crop MIN, flip (0/1), shift PX;
 *                                  older files read as all off
 *   meta.crc32       uint32 [n]    (version >= 2) always the LAST member;
 *                                  entry i = zlib crc32 of the raw data bytes
 *                                  (C order, little-endian, no .npy header)
 *                                  of the i-th member above.  In Python:
 *                                  [zlib.crc32(ck[k].tobytes()) for k in ck.files[:-1]]
 * The data order of epoch e is a pure function of (seed, e) and the number of
 * training images, so (seed, epoch, batch) is the whole RNG state for the
 * same data: a resumed run, with any number of ranks, continues the same
 * schedule; with the same number of ranks (and threads) it reproduces an
 * uninterrupted run bit for bit.  Version 3 records the data's identity (count
 * and a CRC of sampled images) so that a resume on other data is refused
 * (train_schedule.h).
 *
 * Versions: 1 (no meta.crc32), 2 (meta.crc32), 3 (meta.schedule, meta.data),
 * 4 (meta.shuffle; older files read as the global shuffle, which is all they
 * could use), 5 (meta.data_arg; older files read as not recorded), 6
 * (meta.views; older files read as the plain autoencoder, every option off,
 * tau 0 = not recorded).
 * Every older version is still read; a version 1-2 file reads with the
 * version-3 fields of CkptState zero (not recorded), and the trainer then says
 * that it cannot check the data.
 *
 * Verification on load (ckpt_read): the zip CRC of every member (libzip),
 * the size of every member against its header (npy.h), the meta.crc32 of every
 * member, the meta fields, and that every float32 member is finite.  A
 * truncated, bit-flipped or edited file is refused with a message naming the
 * file and the member.  meta.crc32 catches damage, not an edit that
 * recomputes it, so every meta value is also checked against what
 * aesim-train can write (before any is narrowed to int):
 *   meta.state    step >= 0, 0 <= epoch <= CKPT_EPOCHS_MAX, seed >= 0,
 *                 1 <= batch_size <= CKPT_BATCH_SIZE_MAX, optimizer kind
 *                 OPT_ADAM, OPT_SGD or CKPT_OPT_NONE; the position possible:
 *                 0 <= batch < the batches of an epoch of n_train images
 *                 (batch * batch_size < INT64_MAX when n_train is not
 *                 recorded), step >= epoch (+ 1 if batch > 0: every epoch and
 *                 batch started takes a step), and in the first epoch step <=
 *                 batch * batch_size (a step takes >= 1 image).  Later epochs
 *                 bound no step count: a resume of a version 1-2 file may
 *                 have changed the data.
 *   meta.hparams  finite and within the ranges of --lr, --beta1, --beta2,
 *                 --eps and --momentum (OPTIMIZER_* of optimizer.h, compared
 *                 as float: a run with --beta2 0.999999999 stores 1.0); all 0
 *                 for CKPT_OPT_NONE.
 *   meta.schedule n_train >= 0, data_crc a uint32, 0 <= epochs <=
 *                 CKPT_EPOCHS_MAX (0: not recorded), max_steps >= 0.
 *   meta.shuffle  0, 0 or a block and window in 1..CKPT_SHUFFLE_MAX.
 *   meta.views    the ranges of the command line: W in [0,
 *                 CKPT_CONTRASTIVE_MAX], tau in [CKPT_TAU_MIN, CKPT_TAU_MAX],
 *                 pool 0 or 1, head an integer in 0..CKPT_HEAD_MAX (> 0 only
 *                 with W > 0 and pool 1), noise kind 0, 1 or 2 with level 0
 *                 (none), in (0, AUGMENT_GAUSS_SIGMA_MAX] (gauss) or in (0, 1)
 *                 (mask), crop in [0, 1], flip 0 or 1, shift an integer in
 *                 0..AUGMENT_MAX_SHIFT (augment.h).
 *   meta.arch     no NUL byte, and it parses (model_parse) for the
 *                 meta.input_shape; meta.data and meta.data_arg hold no NUL
 *                 byte, meta.data_arg fewer than CKPT_DATA_ARG_BYTES.
 * Such a file is refused like a damaged one (ckpt_read_latest then tries the
 * next older), naming the file, the field and the value, e.g.
 * "ckpt.npz: meta.state batch size 1099511627776 is out of range (1..1048576)
 * (hint: the checkpoint was edited or is from another program)".
 *
 * Files in an output folder OUT (ckpt_save_rotate / ckpt_read_latest):
 *   OUT/ckpt-step00001234.npz   the checkpoint after optimizer step 1234
 *                               (CKPT_STEP_DIGITS digits, more if needed);
 *                               the newest `keep` of them are kept
 *   OUT/checkpoint.npz          the newest one: a hard link to the newest
 *                               ckpt-step file (no extra disk space), or a
 *                               second copy where the file system has no hard
 *                               links.  Always a complete checkpoint.
 * Every file is written atomically (temp file in OUT, fsync, rename, fsync of
 * OUT: fileio.h), the step file first, then checkpoint.npz is replaced; only
 * then are older step files removed.  A crash or a full disk at any point
 * leaves the previous checkpoints complete.  ckpt-step files with a step
 * LARGER than the one being saved, and at a run's first save those after
 * the step it resumed from, belong to an abandoned run (the run was resumed
 * from an older checkpoint into the same folder) and are removed, as
 * metrics.csv drops rows after the resume step.  Temporary files left by a
 * killed writer are removed before each save (and by the trainer when it
 * takes the folder's lock).  A damaged older step file does not count toward
 * `keep` (CkptRotation).  One job per OUT at a time.
 *
 * Written by one rank; no MPI here (the trainer decides which rank writes and
 * broadcasts what rank 0 read).  Not thread-safe for the same folder.
 */
#ifndef AESIM_CKPT_H
#define AESIM_CKPT_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "model/model.h"
#include "data/augment.h"
#include "data/npy.h"
#include "model/optimizer.h"

/* Format version stored first in meta.state; bump on incompatible change.
 * 2 added meta.crc32, 3 meta.schedule and meta.data, 4 meta.shuffle, 5
 * meta.data_arg, 6 meta.views.  Every older version is still read. */
#define CKPT_VERSION 6

/* Oldest format version with meta.views (Checkpoint.version). */
#define CKPT_VERSION_VIEWS 6
/* Length of meta.views: contrastive, tau, pool, head, noise kind, noise
 * level, crop, flip, shift. */
#define CKPT_VIEWS_LEN 9

/* Length of meta.schedule: n_train, data_crc, epochs, max_steps. */
#define CKPT_SCHEDULE_LEN 4
/* Bytes of CkptState.data, the training source's description, NUL included. */
#define CKPT_DATA_BYTES 512
/* Bytes of CkptState.data_arg, the --data argument, NUL included (the
 * trainer's path options hold as much). */
#define CKPT_DATA_ARG_BYTES 4096

/* The stable name of the newest checkpoint in an output folder. */
#define CKPT_LATEST_NAME "checkpoint.npz"
/* Step checkpoints are CKPT_STEP_PREFIX + step (zero-padded to
 * CKPT_STEP_DIGITS) + ".npz", e.g. ckpt-step00001234.npz. */
#define CKPT_STEP_PREFIX "ckpt-step"
#define CKPT_STEP_DIGITS 8
/* How many step checkpoints ckpt_save_rotate keeps by default (--keep). */
#define CKPT_KEEP_DEFAULT 3

/* Limits of a run's schedule: what aesim-train accepts (--batch-size,
 * --epochs, --shuffle block:B:W; train_args.c) and what ckpt_read accepts in
 * meta.state, meta.schedule and meta.shuffle.  Hyper-parameters:
 * OPTIMIZER_* (optimizer.h). */
#define CKPT_BATCH_SIZE_MAX (1 << 20)
#define CKPT_EPOCHS_MAX 1000000
#define CKPT_SHUFFLE_MAX INT32_MAX
/* Limits of --contrastive W, --tau T and --contrastive-head N (train_args.c)
 * and of their record in meta.views. */
#define CKPT_CONTRASTIVE_MAX 1e6
#define CKPT_TAU_MIN 1e-3
#define CKPT_TAU_MAX 1e3
#define CKPT_HEAD_MAX 4096
/* meta.state's optimizer kind of a checkpoint saved without optimizer state
 * (ckpt_save with opt NULL; its meta.hparams are all 0). */
#define CKPT_OPT_NONE (-1)

/* Where training stands. */
typedef struct CkptState {
    int64_t step;            /* optimizer steps done */
    int64_t epoch;           /* current epoch (0-based) */
    int64_t batch;           /* global batches of that epoch already done */
    uint64_t seed;           /* data-order and init seed */
    int64_t batch_size;      /* global batch size */
    /* Version >= 3 (zero when read from an older file: not recorded): */
    int64_t n_train;         /* images in the training set (the permutation's length) */
    int64_t data_crc;        /* fingerprint of the training images, a uint32 (train_schedule.h) */
    int64_t epochs;          /* the run's --epochs target */
    int64_t max_steps;       /* the run's --max-steps target (0 = no limit) */
    /* Version >= 4 (zero when read from an older file: the global shuffle): */
    int64_t shuffle_block;   /* --shuffle block:B:W, 0 = global shuffle */
    int64_t shuffle_window;
    char data[CKPT_DATA_BYTES]; /* the training source as loaded ("" = not recorded) */
    /* Version >= 5 ("" when read from an older file: not recorded): */
    char data_arg[CKPT_DATA_ARG_BYTES]; /* the run's --data argument (absolute when a path) */
    /* Version >= 6 (zero when read from an older file: all off, tau not recorded): */
    double contrastive;      /* --contrastive W (0 = off) */
    double tau;              /* --tau (0 = not recorded) */
    int64_t contrastive_pool; /* --contrastive-pool: 0 none, 1 avg (CONTRASTIVE_POOL_*, train_args.h) */
    int64_t contrastive_head; /* --contrastive-head N (0 = none) */
    AugmentConfig aug;       /* --noise and --augment */
    /* Members ckpt_save writes beside the model's, before meta.* (the
     * trainer's projection head and its optimizer state, train_views.h);
     * NULL / 0 = none.  Not owned: they point at live buffers.  Covered by
     * meta.crc32 like every member; ckpt_restore ignores them (read them
     * with npz_find on Checkpoint.arrays).  Not read back into state. */
    const NpyArray *extra;
    int n_extra;
} CkptState;

/* Length of meta.state: version, step, epoch, batch, seed, batch_size, optimizer kind. */
#define CKPT_STATE_LEN 7

/* Writes model parameters, optimizer state (opt may be NULL: weights only),
 * st and meta.crc32 to path atomically.  Errors: AE_EIO naming the file
 * (errno / libzip text, e.g. "No space left on device"); the previous file
 * at path, if any, is untouched. */
int ckpt_save(const char *path, const Model *m, const Optimizer *opt, const CkptState *st, Err *err);

/* What ckpt_save_rotate remembers of an output folder between the saves of
 * one run (one job per folder: the trainer's lock).  Fill with
 * ckpt_rotation_init; free with ckpt_rotation_free. */
typedef struct CkptRotation {
    int64_t start;          /* the step the run started from: its resume step, 0 for a fresh run */
    int saved;              /* checkpoints the run has written so far */
    FILE *notes;            /* receives one line per damaged older checkpoint (NULL: none) */
    int64_t *checked;       /* [n_checked] steps <= start read back once (malloc'd) */
    unsigned char *intact;  /* [n_checked] 1 if that one read and verified (ckpt_read) */
    int n_checked, cap;
} CkptRotation;

/* A rotation for a run that starts at step `start` (0: fresh); notes may be
 * NULL.  Owns nothing until the first save. */
void ckpt_rotation_init(CkptRotation *r, int64_t start, FILE *notes);
void ckpt_rotation_free(CkptRotation *r);

/* Writes dir/ckpt-stepNNNNNNNN.npz for st->step, makes dir/checkpoint.npz
 * that checkpoint, then removes step files:
 *   - newer than st->step (another history: see the file comment);
 *   - with rot, at the run's first save (rot->saved == 0): every one newer
 *     than rot->start except the new one, the continuation abandoned when
 *     the run resumed from step rot->start (so the folder holds one history);
 *   - beyond the newest `keep` (>= 1), the new one first.  With rot, a step
 *     file from before the run (step <= rot->start) counts only if it reads
 *     and verifies (ckpt_read, once per run; a refusal is one line on
 *     rot->notes): a damaged one is left in place, not counted, and removed
 *     once `keep` newer intact ones exist, so it never displaces an intact
 *     one.  Without rot (NULL) every step file counts.
 * Stale temporary files (ckpt_remove_stale_temps) are removed first, before
 * the write, as the room it may need.  rot is updated (may be NULL).
 * written: [FILEIO_PATH_MAX] or NULL; receives the step file's path.  Errors: AE_EIO naming the file that could not be written (earlier
 * checkpoints and the previous checkpoint.npz are intact, nothing is
 * removed), AE_EARG if the path is too long.  Failing to remove an old file
 * is not an error. */
int ckpt_save_rotate(const char *dir, const Model *m, const Optimizer *opt, const CkptState *st, int keep,
                     CkptRotation *rot, char *written, Err *err);

/* 1 if the file name `name` (no folder) is one of this module's:
 * CKPT_LATEST_NAME or CKPT_STEP_PREFIX <digits> ".npz"; else 0.  Pure. */
int ckpt_is_own_name(const char *name);

/* Removes the temporary files of checkpoint names in dir
 * (ckpt-stepNNNNNNNN.npz.tmp.PID[.XXXXXX], checkpoint.npz.tmp.PID[...]) left
 * by a writer that was killed mid-way (fileio_remove_dead_temps: its pid no
 * longer runs; other names, a user's included, stay).  Call while holding
 * the folder's lock (the trainer's, train_outdir.h).  *bytes (may be NULL)
 * gets their total size.  Returns how many were removed; a folder that
 * cannot be listed, or a file that cannot be removed, is skipped. */
int ckpt_remove_stale_temps(const char *dir, int64_t *bytes);

/* dir/ckpt-stepNNNNNNNN.npz of `step` into out[cap]; 1, or 0 when it does
 * not fit. */
int ckpt_step_path(char *out, size_t cap, const char *dir, int64_t step);

/* 1 if the step file of `step` in dir reads and verifies (ckpt_read: CRCs,
 * meta values), else 0 (missing, damaged, from a newer aesim).  Reads the
 * whole file. */
int ckpt_step_intact(const char *dir, int64_t step);

/* The steps of the step files (ckpt-stepNNNNNNNN.npz) in dir, newest first:
 * *steps gets a malloc'd array (free it; NULL when none).  Returns their
 * number, or -1 if dir cannot be listed. */
int ckpt_list_steps(const char *dir, int64_t **steps);

/* A checkpoint read into memory, before a model exists. */
typedef struct Checkpoint {
    char path[4096];      /* file it was read from, for messages */
    NpyArray *arrays;
    int n_arrays;
    char arch[MODEL_SPEC_MAX];
    int C, H, W;
    CkptState state;
    int version;          /* its format version (1..CKPT_VERSION) */
    OptKind opt_kind;
    double hparams[5];
} Checkpoint;

/* Reads and verifies a checkpoint file (see "Verification on load").
 * Errors: AE_EIO (missing or unreadable file), AE_EFORMAT (not an npz,
 * truncated, a CRC that does not match, missing or malformed meta.*, unknown
 * version, non-finite values) with a message naming the file and member;
 * AE_EFORMAT also for a meta value aesim-train cannot have written (out of
 * its option's range, an impossible step/epoch/batch, an unknown optimizer
 * kind, a NUL byte in meta.arch or meta.data, a meta.arch that does not
 * parse for meta.input_shape), naming the file, the field and the value.
 * Free with ckpt_free (also after an error: it is then empty). */
int ckpt_read(Checkpoint *ck, const char *path, Err *err);

/* The folder of --resume ARG into out[cap]: ARG itself when it is a
 * folder, else its dirname ("." for a bare name, "/" for "/name"). */
void ckpt_resume_folder(char *out, size_t cap, const char *arg);

/* Reads the newest intact checkpoint for --resume ARG:
 *   ARG a folder: its ckpt-step*.npz files, newest step first, then its
 *     checkpoint.npz (unless it is the same file as one already tried);
 *   ARG a file: that file; if it exists but cannot be read or verified and
 *     its name is checkpoint.npz or ckpt-stepN.npz, the ckpt-step files of
 *     its folder (older than N), newest first.  A file that does not exist
 *     is an error, never a fallback (the user named that one).
 * A candidate is refused for any error of ckpt_read, a value out of range
 * as much as a CRC mismatch.
 * When more than one candidate is tried, each refused one is reported as one
 * line on `notes` (may be NULL), with the reason; a single refused candidate
 * is only the error (so the caller prints its reason once).  ck->path names
 * the file actually used.  Errors: the code of ckpt_read for the first
 * candidate when none is intact (its message, or with several candidates
 * "none of the N checkpoints tried is intact"), AE_EIO when ARG does not
 * exist (naming it, with the steps its folder holds) or a folder holds no
 * checkpoint. */
int ckpt_read_latest(Checkpoint *ck, const char *arg, FILE *notes, Err *err);

/* Copies parameters (and, if opt is not NULL, the optimizer state: opt must
 * have been initialised with the checkpoint's kind) into a model built from
 * ck->arch.  Errors: AE_EFORMAT when a tensor is missing or its shape differs
 * (naming the member), e.g. a checkpoint from another architecture. */
int ckpt_restore(const Checkpoint *ck, Model *m, Optimizer *opt, Err *err);

void ckpt_free(Checkpoint *ck);

/* CRC-32 (zlib) of the parameter bytes (m->params, n_params floats): equal on
 * every rank when the ranks hold bitwise-identical weights; the vector
 * database records it to tie its vectors to the encoder that made them. */
uint32_t ckpt_params_crc32(const Model *m);

#endif
