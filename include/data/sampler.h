/*
 * sampler.h - which samples each rank trains on, batch by batch.
 *
 * Scheme (data-parallel SGD with a global batch that does not depend on the
 * number of ranks P): every rank computes the same permutation of 0..n-1 for
 * an epoch from one shared seed (no communication); the epoch is cut into
 * global batches of `batch` consecutive permutation entries, the last one
 * possibly shorter (kept, not dropped); each global batch is split into P
 * contiguous slices whose sizes differ by at most one, and rank r trains on
 * slice r.  Summed over ranks, every sample is seen exactly once per epoch.
 * (The slot-offset idea of llm.c's dataloader, but with a shared seed
 * instead of per-rank seeds.)
 *
 * Because slices can differ by one sample (and be empty when the batch is
 * smaller than P), a rank should sum its per-sample losses and gradients and
 * divide by the global batch length after the all-reduce, rather than
 * average locally and divide by P.
 *
 * Pure functions (sampler_block_permutation allocates a scratch array), no
 * MPI, thread-safe.
 */
#ifndef AESIM_SAMPLER_H
#define AESIM_SAMPLER_H

#include <stdint.h>

/* Writes perm[0..n) = a uniformly random permutation of 0..n-1 for the given
 * epoch (Fisher-Yates / Durstenfeld shuffle, Knuth TAOCP vol. 2, 3.4.2,
 * Algorithm P), drawn from rng_seed(seed, RNG_STREAM_EPOCH_BASE + epoch).
 * Same (n, seed, epoch) -> same permutation on every rank and machine.
 * perm: [n].  n >= 0, epoch >= 0 (asserted). */
void sampler_epoch_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch);

/* Block-shuffled order for data sets larger than the page cache (FFCV's
 * "quasi-random" order, Leclerc et al. 2023): the n samples are cut into
 * blocks of `block` consecutive indices (the last one shorter), the blocks
 * are put in a random order, and the samples of each run of `window`
 * consecutive blocks of that order are shuffled together; perm[0..n) is the
 * concatenation of the shuffled windows.  An epoch then reads `window`
 * contiguous runs of the files at a time instead of random images all over
 * them.  Drawn from the same stream as sampler_epoch_permutation (first the
 * block order, then the windows in order, each by Fisher-Yates), so it is
 * the same for every rank and P and resumes exactly from (seed, epoch).
 * block >= 1, window >= 1 (asserted); block = 1 and window >= n give a
 * uniformly random permutation (not the same one as the global shuffle's).
 * perm: [n]; allocates the block order (8 bytes a block) for the call. */
void sampler_block_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, int64_t block,
                               int64_t window);

/* Number of global batches per epoch: ceil(n / batch), the last partial
 * batch kept.  n >= 0, batch > 0 (asserted); 0 when n == 0. */
int64_t sampler_num_batches(int64_t n, int64_t batch);

/* Global batch b (0 <= b < sampler_num_batches) covers permutation entries
 * [*start, *start + *len): start = b*batch, len = min(batch, n - start). */
void sampler_batch_bounds(int64_t n, int64_t batch, int64_t b, int64_t *start, int64_t *len);

/* Splits a global batch of len samples over P ranks as evenly as possible:
 * the first len % P ranks get len / P + 1 samples, the others len / P (which
 * may be 0).  Writes this rank's start offset within the batch and its count.
 * The P slices are contiguous, in rank order, and tile [0, len) exactly.
 * len >= 0, P > 0, 0 <= rank < P (asserted). */
void sampler_rank_slice(int64_t len, int rank, int P, int64_t *begin, int64_t *count);

#endif
