/*
 * sampler.c - per-epoch shuffle and the split of each global batch over
 * ranks (see include/data/sampler.h for the scheme).  Does not load data or talk
 * to MPI: every rank calls the same pure functions with the same seed.
 * Thread-safe (no shared state).
 */
#include "data/sampler.h"

#include "base/check.h"
#include "base/rng.h"

#include <assert.h>
#include <stdlib.h>

void sampler_epoch_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch)
{
    assert(n >= 0 && epoch >= 0);
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    Rng r;
    rng_seed(&r, seed, RNG_STREAM_EPOCH_BASE + (uint64_t)epoch);
    /* Durstenfeld's in-place Fisher-Yates: position i takes a uniformly
     * chosen element among the i+1 not yet placed (j in [0, i]). */
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Durstenfeld's Fisher-Yates over a[0..m). */
static void shuffle(int64_t *a, int64_t m, Rng *r)
{
    for (int64_t i = m - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(r, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

void sampler_block_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, int64_t block,
                               int64_t window)
{
    assert(n >= 0 && epoch >= 0 && block >= 1 && window >= 1);
    if (n == 0) return;
    Rng r;
    rng_seed(&r, seed, RNG_STREAM_EPOCH_BASE + (uint64_t)epoch);
    const int64_t nb = (n + block - 1) / block;
    /* The block order, kept in a separate array: perm is filled window by
     * window from the front. */
    int64_t *order = xmalloc((size_t)nb * sizeof *order);
    for (int64_t b = 0; b < nb; b++) order[b] = b;
    shuffle(order, nb, &r);
    int64_t at = 0;
    for (int64_t w0 = 0; w0 < nb; w0 += window) {
        const int64_t start = at;
        for (int64_t b = w0; b < nb && b < w0 + window; b++) {
            const int64_t lo = order[b] * block, hi = lo + block < n ? lo + block : n;
            for (int64_t i = lo; i < hi; i++) perm[at++] = i;
        }
        shuffle(perm + start, at - start, &r);
    }
    free(order);
    assert(at == n);
}

int64_t sampler_num_batches(int64_t n, int64_t batch)
{
    assert(n >= 0 && batch > 0);
    return n / batch + (n % batch != 0);
}

void sampler_batch_bounds(int64_t n, int64_t batch, int64_t b, int64_t *start, int64_t *len)
{
    assert(batch > 0 && b >= 0 && b < sampler_num_batches(n, batch));
    *start = b * batch;
    int64_t rest = n - *start;
    *len = rest < batch ? rest : batch;
}

void sampler_rank_slice(int64_t len, int rank, int P, int64_t *begin, int64_t *count)
{
    assert(len >= 0 && P > 0 && rank >= 0 && rank < P);
    int64_t base = len / P, extra = len % P;
    *count = base + (rank < extra);
    *begin = (int64_t)rank * base + (rank < extra ? rank : extra);
}
