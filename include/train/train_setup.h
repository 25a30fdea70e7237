/*
 * train_setup.h - everything aesim-train does before the loop: load the
 * training and validation images, pick and check the architecture, build the
 * model with identical weights on every rank (fresh Glorot init on rank 0 or
 * a checkpoint read by rank 0, then broadcast), and set up the optimizer.
 * Collective: every rank calls these in the same order; errors are agreed
 * (par_agree) so all ranks return the same status.
 */
#ifndef AESIM_TRAIN_SETUP_H
#define AESIM_TRAIN_SETUP_H

#include "model/ckpt.h"
#include "data/dataset.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "par/par.h"
#include "train/train_args.h"

/* Loads cfg->data into *train and the validation set into *val: cfg->val if
 * given; else, for a MNIST-style folder, its t10k-images file; else a seeded
 * cfg->val_fraction split.  Errors (agreed): AE_EIO/AE_EFORMAT/AE_ESHAPE
 * from dataset_open naming the file, AE_ESHAPE if val and train shapes
 * differ, AE_EARG if the split leaves nothing to train on. */
int train_setup_data(const ParCtx *ctx, const TrainConfig *cfg, Dataset *train, Dataset *val, Err *err);

/* For --resume (a checkpoint file or an output folder): rank 0 picks the
 * newest intact checkpoint (ckpt_read_latest: damaged ones are refused with
 * the reason on stderr and the next older one is used) into *ck (arrays on
 * rank 0 only, the meta fields on every rank), and the options the user did
 * not give are taken from it (train_schedule_adopt: seed, batch, epochs,
 * optimizer and its hyper-parameters; a different --seed or --optimizer is
 * refused; and --data when it is recorded, cfg->data_from_ckpt = 1, with a
 * line on stdout; AE_EIO naming the checkpoint and the path when that
 * --data is a path that no longer exists).  Call before train_setup_data (the validation split depends on
 * the seed).  Without --resume, *ck is empty.  Errors (agreed):
 * AE_EIO/AE_EFORMAT for the checkpoint, AE_EARG for a conflicting option;
 * *ck is then empty. */
int train_setup_resume(const ParCtx *ctx, TrainConfig *cfg, Checkpoint *ck, Err *err);

/* Frees cfg->resume_notes unprinted (a run refused between
 * train_setup_resume and train_setup_model, which prints them); NULL after. */
void train_setup_drop_notes(TrainConfig *cfg);

/* Builds *m (max batch = ceil(min(batch, n_train) / P) images per rank) and *opt for the
 * shape of the training images.  With cfg->resume, ck is the checkpoint of
 * train_setup_resume: the architecture, weights, optimizer state and *start
 * come from it (its architecture must match --arch if both are given, the
 * image shape and the training images must be its own: train_schedule_start);
 * on success ck is kept for train_run (which restores the projection head
 * from it) and the caller frees it; on error it is freed.  Otherwise
 * Glorot init from cfg->seed and *start = step 0.
 * Either way *start carries this run's schedule identity (train_schedule.h),
 * which every checkpoint of the run records.  On success rank 0 prints the
 * resume's notes (cfg->resume_notes) on stdout; either way they are freed.
 * Errors (agreed): AE_EARG/AE_ESHAPE for a bad spec, shape or other data,
 * AE_EFORMAT for the checkpoint. */
int train_setup_model(const ParCtx *ctx, TrainConfig *cfg, Checkpoint *ck, const Dataset *train, int nthreads,
                      Model *m, Optimizer *opt, CkptState *start, Err *err);


#endif
