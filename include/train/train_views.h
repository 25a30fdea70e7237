/*
 * train_views.h - what one training step feeds the model when the
 * embedding options are on (--noise, --augment, --contrastive): the input
 * images (views, corrupted), the clean reconstruction targets, and the
 * NT-Xent gradient at the bottleneck over the GLOBAL batch.
 *
 * Per step, a rank holding cnt images at positions [off, off + cnt) of a
 * global batch of len images builds V views of each (V = 2 with
 * --contrastive, else 1): rows [0, cnt) of the model's input are view 0,
 * rows [cnt, 2 cnt) view 1.  Each view is augment_view of the image (or the
 * image itself without --augment), drawn from augment_rng(seed, epoch,
 * global position, view); the target is that view, the input is the view
 * corrupted by --noise.  The reconstruction loss is the MSE over all V*len
 * views of the global batch.  With --contrastive W, the codes of every rank
 * are gathered (par_allgatherv_f32) into the global order (view 0 of
 * positions 0..len-1, then view 1), every rank evaluates the same NT-Xent
 * loss over those 2*len rows (ntxent.h) and keeps W * dL/dz of its own rows:
 * that is the backward of the all-gather (the sum over ranks of each rank's
 * share), and the result does not depend on P.  With --contrastive-pool avg
 * each row is first pooled to its C channel means (global_avgpool.h): the
 * gather moves C floats per row instead of D, and each dz value of a channel
 * is its mean's gradient / (H*W).  With --contrastive-head N, NT-Xent
 * compares g(pooled rows) (proj_head.h): every rank runs the head forward
 * and backward over all 2*len gathered rows, so every rank gets the same
 * head gradient without an allreduce, and applies the update
 * (train_views_head_step) with its own optimizer state of the model's kind
 * and hyper-parameters; rank 0's head weights are then broadcast (one
 * small MPI_Bcast per step), so the ranks' heads stay identical even where
 * their OpenBLAS thread counts, and so NT-Xent's roundings, differ.
 * Labels are never read.  Collective when contrastive: every rank calls
 * train_views_step once per step, also with cnt = 0.
 */
#ifndef AESIM_TRAIN_VIEWS_H
#define AESIM_TRAIN_VIEWS_H

#include <stdint.h>

#include "model/ckpt.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "nn/proj_head.h"
#include "par/par.h"
#include "train/train_args.h"

typedef struct TrainViews {
    const ParCtx *ctx;
    const TrainConfig *cfg;
    int views;             /* V: 2 with --contrastive, else 1 */
    size_t chw;            /* floats per image */
    float *clean;          /* [max images per rank][chw] the rank's images as loaded */
    float *target;         /* [V * max images per rank][chw] reconstruction targets */
    float *zall, *dzall;   /* [V * global batch][D] gathered codes, their gradient */
    float *zsend;          /* [V * max images per rank][D] this rank's codes in send order */
    int *counts;           /* [P] floats each rank contributes to the gather */
    int D;
    int pool_c, pool_hw;   /* bottleneck channels C and H*W (--contrastive-pool avg) */
    /* --contrastive-head (head.n == 0: none) */
    ProjHead head;
    Optimizer head_opt;
    float *dp;             /* [V * global batch][N] NT-Xent gradient at the head's output */
    NpyArray members[12];  /* the head's checkpoint members (CkptState.extra) */
    int n_members;
    /* the current step */
    int64_t len, off, cnt;
    double contrastive_loss; /* NT-Xent loss of the last step (unweighted), 0 without */
} TrainViews;

/* 1 if cfg asks for any of noise, views or contrastive (else the trainer
 * takes the plain path, unchanged). */
int train_views_active(const TrainConfig *cfg);

/* Images per rank the model must hold for one step: V times the largest
 * slice of a global batch. */
int train_views_per_rank(const TrainConfig *cfg, int64_t slice);

void train_views_init(TrainViews *v, const ParCtx *ctx, const TrainConfig *cfg, const Model *m, int64_t max_slice);
void train_views_free(TrainViews *v);

/* --contrastive-head: builds the head (Glorot from st->seed) and its
 * optimizer (opt's kind and hyper-parameters, step count opt->t); on a
 * resumed run (ck with arrays, rank 0) restores head.0.weight, head.0.bias,
 * head.2.weight, head.2.bias and their opt.m./opt.v. moments from ck, or,
 * when ck has none (trained without a head), starts a new head (optimizer
 * step count 0) and says so (AE_EFORMAT instead when ck, version >= 6,
 * records a head: damaged or edited);
 * rank 0's head is then broadcast.  Sets st->extra/n_extra so that every
 * checkpoint carries the head.  No-op without --contrastive-head.
 * Collective.  Errors (agreed): AE_EFORMAT when ck's head has another
 * shape (another --contrastive-head N or bottleneck). */
int train_views_head_setup(TrainViews *v, const Optimizer *opt, const Checkpoint *ck, CkptState *st, Err *err);

/* The head's optimizer step with the gradient of the last
 * train_views_step, then rank 0's head weights broadcast (call after the
 * model's optimizer step; no-op without a head).  Collective with a head. */
void train_views_head_step(TrainViews *v);

/* One step: images[cnt][chw] are this rank's images (positions [off, off +
 * cnt) of the global batch of len images that starts at position `first` of
 * the epoch).  Builds the inputs in m->input and the targets, runs forward
 * and backward (accumulating into m->grads, with the grad hook as
 * model_forward_backward_hooked) and returns this rank's sum of squared
 * errors over its V*cnt views; the caller divides the global sum by
 * V * len * chw.  The reconstruction gradient is scaled so; the NT-Xent
 * term's weight is cfg->contrastive (its loss: v->contrastive_loss). */
double train_views_step(TrainViews *v, Model *m, const float *images, uint64_t seed, int64_t epoch, int64_t first,
                        int64_t off, int64_t cnt, int64_t len, const ModelGradHook *hook);

#endif
