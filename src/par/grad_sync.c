/*
 * grad_sync.c - bucketed gradient allreduce overlapped with the backward pass
 * (see include/par/grad_sync.h).
 *
 * Does: the DDP bucket partition, starting each bucket's MPI_Iallreduce from
 * the model's per-layer backward hook, testing pending buckets at each later
 * hook call (the only progress Open MPI makes without a progress thread), and
 * the final wait; times what it does.  Does not: touch gradients itself (MPI
 * sums them in place) or reduce the loss.  MPI only through par.h; main
 * thread only, never inside an OpenMP region.
 */
#include "par/grad_sync.h"

#include <assert.h>
#include <string.h>

#include "base/timer.h"

/* Bytes per KiB (the unit of --bucket-kib). */
#define GRAD_SYNC_KIB 1024

int grad_buckets_partition(GradBucket *out, const size_t *sizes, int n, size_t cap_floats)
{
    size_t total = 0;
    for (int k = 0; k < n; k++) total += sizes[k];
    /* Walk the slices top down; `top` is where the open bucket ends. */
    size_t top = total, count = 0;
    int nb = 0;
    for (int k = 0; k < n; k++) {
        count += sizes[k];
        if (cap_floats > 0 && count >= cap_floats) {
            out[nb++] = (GradBucket){ top - count, count };
            top -= count;
            count = 0;
        }
    }
    if (count > 0) out[nb++] = (GradBucket){ top - count, count };
    return nb;
}

void grad_sync_init(GradSync *s, const ParCtx *ctx, float *grads, size_t n_params, const size_t *slices,
                    int n_slices, int bucket_kib)
{
    assert(bucket_kib >= 0);
    assert(n_slices >= 0 && n_slices <= GRAD_SYNC_MAX_SLICES);
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->grads = grads;
    s->n_params = n_params;
    s->blocking = bucket_kib == 0;
    size_t cap = (size_t)bucket_kib * GRAD_SYNC_KIB / sizeof(float);
    s->n_buckets = grad_buckets_partition(s->buckets, slices, n_slices, s->blocking ? 0 : cap);
}

void grad_sync_begin(GradSync *s)
{
    for (int b = 0; b < s->n_buckets; b++) assert(!par_request_pending(&s->reqs[b]));
    s->started = 0;
    s->comm_in_backward_s = 0;
    s->exposed_s = 0;
    s->early_floats = 0;
}

/* Starts every bucket not yet started whose slice lies in [done, n_params). */
static void start_ready(GradSync *s, size_t done)
{
    while (s->started < s->n_buckets && s->buckets[s->started].offset >= done) {
        const GradBucket *bk = &s->buckets[s->started];
        par_iallreduce_sum_f32(s->ctx, s->grads + bk->offset, bk->count, &s->reqs[s->started]);
        s->started++;
    }
}

void grad_sync_on_grads_done(void *sync, size_t done_offset)
{
    GradSync *s = sync;
    if (s->blocking || done_offset == 0) return;
    double t0 = timer_now();
    start_ready(s, done_offset);
    par_test_all(s->reqs, s->started);
    s->comm_in_backward_s += timer_now() - t0;
}

void grad_sync_finish(GradSync *s)
{
    double t0 = timer_now();
    if (s->blocking) {
        par_allreduce_sum_f32(s->ctx, s->grads, s->n_params);
    } else {
        for (int b = 0; b < s->started; b++)
            if (!par_request_pending(&s->reqs[b])) s->early_floats += s->buckets[b].count;
        start_ready(s, 0);
        par_wait_all(s->reqs, s->n_buckets);
    }
    s->exposed_s = timer_now() - t0;
}
