/*
 * grad_sync.h - the gradient allreduce of data-parallel training, overlapped
 * with the backward pass (issue 6).
 *
 * What it does: cuts the flat gradient block m->grads into buckets of whole
 * conv layers, in the order the backward pass completes them (last layer
 * first), and starts a non-blocking in-place allreduce (par.h
 * par_iallreduce_sum_f32) of each bucket as soon as its last layer's backward
 * is done, while the earlier layers are still being differentiated; after
 * backward it waits for the rest.  This is PyTorch DDP's gradient bucketing
 * (Li et al., "PyTorch Distributed", VLDB 2020, section 3.2.3; reducer.cpp
 * compute_bucket_assignment_by_size) and Horovod's tensor fusion.
 * A bucket size of 0 keeps one blocking allreduce of the whole block after
 * backward (the behaviour before issue 6).
 * Buckets are slices of one contiguous block, so nothing is copied: layer
 * i's weights and bias lie just below layer i+1's in memory (model.h), and a
 * bucket of consecutive layers is one contiguous slice.
 * The result does not depend on the bucket size beyond float rounding: each
 * element is still the sum over ranks of the same values, only the
 * reduction algorithm MPI picks for a message size may add in another order.
 * Every rank gets the same bits.
 *
 * What it does not do: compute gradients, scale them, or reduce the loss
 * (the trainer does); progress communication while a layer's kernel runs
 * (Open MPI has no asynchronous progress thread by default, so transfers
 * advance only at the per-layer hook calls and in the final wait).
 *
 * Threading/MPI: all calls on the rank's main thread (MPI_THREAD_FUNNELED),
 * outside OpenMP regions.  Collective: every rank builds the same buckets
 * from the same model and starts them in the same order (a rank whose batch
 * slice is empty starts them all in grad_sync_finish).
 */
#ifndef AESIM_GRAD_SYNC_H
#define AESIM_GRAD_SYNC_H

#include <stddef.h>

#include "par/par.h"

/* Most gradient slices (layers with parameters) one GradSync handles. */
#define GRAD_SYNC_MAX_SLICES 64

/* Default bucket size, KiB (aesim-train --bucket-kib).  DDP's 25 MB default
 * is larger than our whole models (mnist 22 KB, imagenet64 189 KB of float
 * gradients), so it would never overlap anything.  Measured on 2 ranks
 * (imagenet64, batch 64; README scaling section): over TCP between two
 * network namespaces the exposed allreduce per step was 26-52 ms with one
 * blocking allreduce, 10-13 ms with 64 KiB buckets (3 buckets, ~30% of the
 * gradient reduced before backward ended) and 9-10 ms with 16 KiB (7
 * buckets, 84%); on shared memory every size gave the same step time (the
 * allreduce costs < 1 ms there).  Smaller buckets mean more messages, each
 * paying the network latency: for models much larger than ours, raise it. */
#define GRAD_SYNC_BUCKET_KIB_DEFAULT 16
/* Largest accepted --bucket-kib (1 GiB): beyond the largest model anyway. */
#define GRAD_SYNC_BUCKET_KIB_MAX (1 << 20)

/* One bucket: the slice [offset, offset + count) of the gradient block. */
typedef struct GradBucket {
    size_t offset, count;   /* floats */
} GradBucket;

/* Pure partition function (no MPI, no allocation).
 * sizes[0..n): float counts of the per-layer gradient slices in completion
 * order: slice 0 is the LAST slice in memory and ends at total = sum of
 * sizes, slice k+1 ends where slice k begins.  Slices are packed into
 * buckets in that order, whole (a slice is never split, as in DDP); a
 * bucket is closed as soon as its count reaches cap_floats (>= cap_floats,
 * DDP's rule), so every bucket but the last holds at least cap_floats floats
 * and a slice larger than the cap gets a bucket of its own.  cap_floats == 0
 * means no limit: one bucket holding everything.  Zero-size slices join the
 * open bucket; an empty bucket is never emitted.
 * Writes the buckets in completion order to out[0..return) (out has room for
 * n entries) and returns their number (0 when the total is 0).  Bucket b's
 * offset is its lowest float; buckets tile [0, total) without gaps, from the
 * top down. */
int grad_buckets_partition(GradBucket *out, const size_t *sizes, int n, size_t cap_floats);

/* Per-rank state of the overlapped allreduce of one model's gradients. */
typedef struct GradSync {
    const ParCtx *ctx;
    float *grads;                          /* the model's gradient block */
    size_t n_params;                       /* floats in grads */
    int blocking;                          /* bucket size 0: one blocking allreduce */
    int n_buckets;
    GradBucket buckets[GRAD_SYNC_MAX_SLICES];  /* completion order */
    ParRequest reqs[GRAD_SYNC_MAX_SLICES];     /* reqs[b]: bucket b's allreduce */
    int started;                           /* buckets started in this step */
    /* Measurements of the current step (reset by grad_sync_begin). */
    double comm_in_backward_s;   /* seconds inside MPI calls made from the hook */
    double exposed_s;            /* seconds in grad_sync_finish (after backward) */
    size_t early_floats;         /* floats whose allreduce completed before backward returned */
} GradSync;

/* Sets up *s for the gradient block grads[0..n_params) (which must outlive
 * s) with buckets of bucket_kib KiB (0 = blocking, one allreduce after
 * backward).  slices[0..n_slices), n_slices <= GRAD_SYNC_MAX_SLICES: the
 * per-layer gradient slices in the order backward completes them, as
 * grad_buckets_partition takes them (a model gives them with
 * model_grad_slices: par/ knows no model).  Every rank must pass the same
 * arguments.  No allocation. */
void grad_sync_init(GradSync *s, const ParCtx *ctx, float *grads, size_t n_params, const size_t *slices,
                    int n_slices, int bucket_kib);

/* Starts a step: no bucket started, measurements zeroed.  Asserts that no
 * request of the previous step is still pending. */
void grad_sync_begin(GradSync *s);

/* The hook body: a ModelGradHook.fn (model/model.h) with user = the GradSync.
 * Starts, in order, every bucket not yet started that lies wholly in
 * [done_offset, n_params), then drives progress of all pending buckets
 * (par_test_all).  Its time counts in comm_in_backward_s.  Does nothing when
 * blocking (pass no hook to the model then: nothing to overlap) or when
 * done_offset is 0: the backward pass is over then, and the last buckets
 * start in grad_sync_finish, whose time is the exposed communication (so a
 * model that fits in one bucket reports no overlap, as it has none; and the
 * caller may still write to the gradients between backward and finish). */
void grad_sync_on_grads_done(void *sync, size_t done_offset);

/* After backward: counts early_floats, starts the buckets not yet started
 * (all of them when this rank ran no backward), waits for every bucket
 * (blocking: one par_allreduce_sum_f32 of the whole block).  On return the
 * whole block holds the sum over ranks and nothing is pending, so any path
 * may leave after it.  Collective. */
void grad_sync_finish(GradSync *s);

#endif
