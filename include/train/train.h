/*
 * train.h - the data-parallel training loop of aesim-train.
 *
 * Per step: this rank's slice of the global batch (sampler.h) -> forward and
 * backward (model.h) -> in-place sum over ranks of the flat gradient block
 * (grad_sync.h: buckets of cfg->bucket_kib KiB started with MPI_Iallreduce
 * while backward still runs, or one blocking MPI_Allreduce after it when
 * bucket_kib is 0), then one small allreduce of (loss sum, stop request) ->
 * optimizer step (optimizer.h), identical on every rank.  The loss of each
 * rank is scaled by 1 / (global batch * C*H*W), so the summed gradient is
 * exactly the mean over all samples of the global batch, whatever P and
 * however unevenly the batch splits.
 * Around the loop: progress line and metrics CSV (rank 0), validation loss
 * and PSNR (sharded over ranks), a reconstruction grid PNG after each epoch,
 * checkpoints every N steps and at the end (rank 0, atomic).
 * Collective: every rank calls train_run with the same configuration.
 */
#ifndef AESIM_TRAIN_H
#define AESIM_TRAIN_H

#include "model/ckpt.h"
#include "data/dataset.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "par/par.h"
#include "train/train_args.h"

/* What a finished run reports (valid on every rank). */
typedef struct TrainResult {
    CkptState state;       /* where training stopped */
    double last_train_loss;/* mean loss of the last step */
    double val_loss;       /* mean squared error per pixel on the validation set */
    double val_psnr_db;    /* 10 log10(1 / val_loss) */
    double images_per_s;   /* global training images per second of training steps
                              (validation, grids and checkpoints excluded) */
    double seconds;        /* wall time of the loop, everything included */
    int64_t steps_run;     /* optimizer steps taken by this run (0: nothing to train) */
    /* Communication per step, this rank's means over the run (0 when no step
     * ran; the summary line gives min/avg/max over ranks): */
    double allreduce_ms;   /* exposed: backward end -> gradients and loss summed */
    double comm_ms;        /* allreduce_ms + time in MPI calls during backward */
    double overlap;        /* share of the gradient (floats) whose allreduce had
                              completed when backward returned (0 with --bucket-kib 0) */
    int stopped;           /* 1: a stop signal (signals.h) ended training early, after a
                              checkpoint; val_loss/val_psnr_db are then NaN (not measured) */
} TrainResult;

/* Trains from *start (step/epoch/batch; zero for a fresh run) until
 * cfg->epochs or cfg->max_steps, or until a stop signal.  Returns AE_OK, or a
 * collective error (the same code on every rank, message in err):
 *   AE_ENUMERIC when the loss, the summed gradient or the updated weights
 *     hold NaN/Inf; the message names the step, nothing is saved after the
 *     previous step, so the last checkpoint stays the last good one.  That is
 *     the divergence test: the loss is the MSE of sigmoid outputs against
 *     targets in [0, 1], bounded by 1, so a "loss > X * first loss" rule could
 *     never fire; divergence shows up as overflow to Inf/NaN.
 *   AE_EIO when an output cannot be written (the message names the file and
 *     the errno text, and which checkpoint is intact).
 * Stop signals (signals.h: SIGTERM, SIGINT, SIGUSR1, to any rank or to
 * mpirun): handlers are installed for the duration of the call; the request
 * is agreed in the per-step allreduce, every rank finishes the step, rank 0
 * appends the metrics row and writes a checkpoint (validation is skipped),
 * res->stopped = 1 and AE_OK is returned on every rank.
 * Checkpoints: OUT/ckpt-stepN.npz + OUT/checkpoint.npz every
 * cfg->ckpt_every steps and at each epoch end, cfg->keep kept (ckpt.h).
 * ck: the checkpoint of a resumed run (train_setup_model; read on rank 0,
 * empty elsewhere and on a fresh start): the projection head of
 * --contrastive-head is restored from it (train_views.h).
 * Test-only fault injection: if the environment variable
 * AESIM_FAULT_NAN_STEP=K is set (K >= 1), the highest rank writes a NaN into
 * its local gradient at step K before the allreduce (of its bucket).  Never
 * set it otherwise.
 * Every path out of a step (error, NaN, stop signal) leaves after the
 * gradient allreduce has completed: no MPI request stays pending.
 * At the end, rank 0 prints one line of per-phase times (ms per step,
 * min/avg/max over ranks; "allreduce" is the exposed communication after
 * backward) ending with the overlap (share of the gradient reduced before
 * backward ended) and the time in MPI calls during backward; metrics.csv rows
 * carry allreduce_ms, comm_ms and overlap (rank 0's, metrics.h; empty with
 * one rank, which has no gradient communication, and the summary line then
 * gives the phase times alone).
 * metrics.csv rows: a step row (val_loss empty) every cfg->csv_every steps,
 * and for the steps left before a stop or an epoch end, holds the means over
 * its steps (train loss, images per second of step time, communication); an
 * epoch row (val_loss filled), at the same step as the step row before it,
 * holds the same means over the epoch's steps of this run, as the log's
 * "epoch N/M:" line prints them. */
int train_run(const ParCtx *ctx, const TrainConfig *cfg, Model *m, Optimizer *opt, const Dataset *train,
              const Dataset *val, const CkptState *start, const Checkpoint *ck, TrainResult *res, Err *err);

/* Mean squared error per pixel of the model on ds (sharded over ranks,
 * at most `limit` images if limit > 0); NaN when no image was evaluated.
 * Collective.  If var_ratio is not NULL, *var_ratio = (variance of the
 * reconstructions across the evaluated images) / (variance of the images
 * themselves), each the per-pixel variance averaged over the C*H*W pixels:
 * near 0 for a collapsed network, whose ReLUs no longer fire so that it
 * outputs (almost) the same image whatever its input (1e-4..1e-5 measured
 * on MNIST);
 * about 1 for a good reconstruction; NaN when the images do not vary or
 * none was evaluated.  Cost: four doubles per pixel summed over the images
 * and one allreduce of 4*C*H*W + 2 doubles: every rank must pass var_ratio
 * NULL, or every rank non-NULL.  NaN outputs give a NaN ratio. */
double train_evaluate(const ParCtx *ctx, Model *m, const Dataset *ds, int64_t limit, double *var_ratio);

#endif
