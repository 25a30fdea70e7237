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

/* Builds *m (max batch = ceil(min(batch, n_train) / P) images per rank) and *opt for the
 * images' shape.  With cfg->resume (a checkpoint file or an output folder):
 * rank 0 picks the newest intact checkpoint (ckpt_read_latest: damaged ones
 * are refused with the reason on stderr and the next older one is used) and
 * the architecture, weights, optimizer state and *start come from it (its
 * architecture must match --arch if both are given, and the image shape).  Otherwise Glorot init from
 * cfg->seed and *start = step 0.  Errors (agreed): AE_EARG/AE_ESHAPE for a bad
 * spec or shape, AE_EIO/AE_EFORMAT for the checkpoint. */
int train_setup_model(const ParCtx *ctx, const TrainConfig *cfg, int C, int H, int W, int64_t n_train,
                      int nthreads, Model *m, Optimizer *opt, CkptState *start, Err *err);


#endif
