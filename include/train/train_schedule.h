/*
 * train_schedule.h - what a resumed run keeps from its checkpoint, and the
 * refusal of a resume that could not continue the same schedule.
 *
 * The data order of epoch e is a pure function of (seed, e, number of
 * training images) (sampler.h), and a checkpoint's position is (epoch, batch
 * of batch_size images).  A resume therefore continues the same schedule
 * only on the same training images with the same seed; the checkpoint
 * (version >= 3, ckpt.h) records the image count, a fingerprint of the images
 * and the source.  Options the user did not give on the command line
 * (TrainConfig.given) are taken from the checkpoint: --epochs, --batch-size,
 * --seed, --optimizer and its hyper-parameters; --max-steps is not (a resume
 * without it trains on to --epochs).  --epochs and --max-steps count from the
 * run's first step, before and after a resume.
 *
 * Pure functions: no MPI, no files; `notes` (may be NULL, e.g. on ranks other
 * than 0) receives one line per value kept from or changed against the
 * checkpoint.  The caller agrees the status over ranks.
 */
#ifndef AESIM_TRAIN_SCHEDULE_H
#define AESIM_TRAIN_SCHEDULE_H

#include <stdint.h>
#include <stdio.h>

#include "model/ckpt.h"
#include "data/dataset.h"
#include "base/err.h"
#include "train/train_args.h"

/* Images sampled, evenly spaced over the set, for the fingerprint: a
 * different file, order, crop or split changes at least one of them with
 * near certainty, at the cost of a few kilobytes read per run. */
#define TRAIN_SCHEDULE_SAMPLES 64

/* CRC-32 (zlib) of n, C, H, W (int64 little-endian) followed, for each of
 * min(n, TRAIN_SCHEDULE_SAMPLES) images i_j = j * (n - 1) / (samples - 1),
 * of its uint8 pixels [C][H][W] and its int32 label (little-endian, -1 =
 * none).  Equal for the same images in the same order. */
uint32_t train_schedule_fingerprint(const Dataset *ds);

/* Fills the schedule fields of st from this run: n_train, data_crc
 * (train_schedule_fingerprint), epochs, max_steps, the data source text and
 * cfg->data as data_arg (realpath(3) of it when it names an existing file or
 * folder, else as given: a list or a KIND:PATH source).
 * Leaves step/epoch/batch/seed/batch_size alone. */
void train_schedule_identity(CkptState *st, const Dataset *train, const TrainConfig *cfg);

/* Before the data is loaded (the validation split depends on the seed):
 * sets cfg's epochs, batch_size, seed, opt, adam and momentum, and (ck
 * version >= CKPT_VERSION_VIEWS) contrastive, tau, contrastive_pool,
 * contrastive_head and aug (--noise, --augment) from ck for every one the
 * user did not give, notes what the run keeps, and notes each given value
 * that differs from ck's.  An older ck records no objective: cfg's stand.
 * Errors: AE_EARG naming both values and the file when --seed or
 * --optimizer differs from ck's (the weights and the data order came from
 * them), when --contrastive-head differs from ck's head of N > 0 units
 * (its trained weights), and when the result has a head without
 * --contrastive W > 0 and --contrastive-pool avg (e.g. --contrastive 0 on a
 * checkpoint holding a head). */
int train_schedule_adopt(TrainConfig *cfg, const Checkpoint *ck, FILE *notes, Err *err);

/* How a resume's messages name the data it read: "--data" when given, "the
 * recorded --data (read again now)" when taken from the checkpoint
 * (cfg->data_from_ckpt), else "the default --data", with *hint = "" or, for
 * that last case, " (hint: this checkpoint does not record its --data: give
 * it)" to append.  Static strings. */
const char *train_schedule_data_name(const TrainConfig *cfg, const char **hint);

/* After the data is loaded: the starting state of the resumed run in
 * *start (ck's step/epoch/batch and seed, the batch position mapped to
 * cfg->batch_size, the schedule fields of this run).  Errors: AE_EARG when
 * the training images are not those of ck (another count: the message gives
 * both counts and sources; the same count but another fingerprint: other
 * images, order, size or split), or when --batch-size changes mid-epoch to a
 * size that does not divide the images already done of that epoch.  A
 * version 1-2 checkpoint has no record of its data: noted, not refused. */
int train_schedule_start(CkptState *start, const Checkpoint *ck, const TrainConfig *cfg, const Dataset *train,
                         FILE *notes, Err *err);

#endif
