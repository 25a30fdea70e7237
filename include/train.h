/*
 * train.h - the data-parallel training loop of aesim-train.
 *
 * Per step: this rank's slice of the global batch (sampler.h) -> forward and
 * backward (model.h) -> one in-place MPI_Allreduce(SUM) of the flat gradient
 * block and one of (loss sum) -> optimizer step (optimizer.h), identical on
 * every rank.  The loss of each rank is scaled by 1 / (global batch * C*H*W),
 * so the summed gradient is exactly the mean over all samples of the global
 * batch, whatever P and however unevenly the batch splits.
 * Around the loop: progress line and metrics CSV (rank 0), validation loss
 * and PSNR (sharded over ranks), a reconstruction grid PNG after each epoch,
 * checkpoints every N steps and at the end (rank 0, atomic).
 * Collective: every rank calls train_run with the same configuration.
 */
#ifndef AESIM_TRAIN_H
#define AESIM_TRAIN_H

#include "ckpt.h"
#include "dataset.h"
#include "model.h"
#include "optimizer.h"
#include "par.h"
#include "train_args.h"

/* What a finished run reports (valid on every rank). */
typedef struct TrainResult {
    CkptState state;       /* where training stopped */
    double last_train_loss;/* mean loss of the last step */
    double val_loss;       /* mean squared error per pixel on the validation set */
    double val_psnr_db;    /* 10 log10(1 / val_loss) */
    double images_per_s;   /* global training throughput, whole run */
    double seconds;        /* wall time of the loop */
} TrainResult;

/* Trains from *start (step/epoch/batch; zero for a fresh run) until
 * cfg->epochs or cfg->max_steps.  Returns AE_OK, or a collective error
 * (the same code on every rank, message in err): AE_ENUMERIC when the loss
 * or gradient becomes NaN/Inf (the last checkpoint is kept), AE_EIO when
 * an output cannot be written. */
int train_run(const ParCtx *ctx, const TrainConfig *cfg, Model *m, Optimizer *opt, const Dataset *train,
              const Dataset *val, const CkptState *start, TrainResult *res, Err *err);

/* Mean squared error per pixel of the model on ds (sharded over ranks,
 * at most `limit` images if limit > 0).  Collective. */
double train_evaluate(const ParCtx *ctx, Model *m, const Dataset *ds, int64_t limit);

#endif
