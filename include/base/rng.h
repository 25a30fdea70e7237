/*
 * rng.h - explicit-state pseudo-random numbers (never rand()).
 *
 * Generator: xoshiro256** 1.0 (D. Blackman, S. Vigna, "Scrambled linear
 * pseudorandom number generators", ACM TOMS 47(4), 2021; reference code
 * https://prng.di.unimi.it/xoshiro256starstar.c), 256-bit state, period
 * 2^256 - 1.  The state is filled from a 64-bit seed with splitmix64
 * (G. Steele, D. Lea, C. Flood, "Fast splittable pseudorandom number
 * generators", OOPSLA 2014; https://prng.di.unimi.it/splitmix64.c), as the
 * xoshiro authors recommend.
 *
 * Streams: rng_seed(r, seed, stream) gives a different state for every
 * (seed, stream) pair by hashing both through splitmix64.  Streams are
 * statistically independent (distinct random points in a 2^256 cycle), not
 * provably non-overlapping; with the sequence lengths used here the chance of
 * overlap is negligible.  Stream numbers reserved by the library:
 *   RNG_STREAM_EPOCH_BASE + epoch   the per-epoch sample permutation (sampler.h)
 *   RNG_STREAM_SPLIT                the train/validation split (dataset.h)
 * Other users (weight init, augmentation) pick small stream numbers (< 2^32).
 *
 * Not cryptographic.  No global state: an Rng belongs to one thread; give
 * each thread or rank its own stream.  No MPI.
 */
#ifndef AESIM_RNG_H
#define AESIM_RNG_H

#include <stdint.h>

/* Reserved stream numbers (see above).  "EPOCH" / "SPLIT" in ASCII, so they
 * cannot collide with small user stream numbers; the epoch is added to the
 * low 24 bits of RNG_STREAM_EPOCH_BASE. */
#define RNG_STREAM_EPOCH_BASE 0x45504F4348000000ull
#define RNG_STREAM_SPLIT 0x53504C4954000000ull

typedef struct Rng {
    uint64_t s[4]; /* xoshiro256** state; never all zero */
} Rng;

/* One step of splitmix64: advances *state by the golden-ratio increment and
 * returns the mixed value (Steele et al. 2014).  Used for seeding; exposed so
 * tests can check it against the published vectors. */
uint64_t rng_splitmix64(uint64_t *state);

/* Seeds r for the pair (seed, stream): the four state words are consecutive
 * splitmix64 outputs starting from a splitmix64 hash of seed and stream.
 * Same (seed, stream) -> same sequence on every machine and rank. */
void rng_seed(Rng *r, uint64_t seed, uint64_t stream);

/* Next 64 random bits (one xoshiro256** step). */
uint64_t rng_next_u64(Rng *r);

/* Uniform float in [lo, hi): lo + (hi - lo) * u with u a multiple of 2^-24 in
 * [0, 1) taken from the top 24 bits; a result that rounds up to hi is
 * replaced by the largest float below hi.  Requires lo < hi (asserted). */
float rng_uniform_f32(Rng *r, float lo, float hi);

/* Uniform double in [0, 1) with 53 random bits (multiple of 2^-53). */
double rng_uniform_f64(Rng *r);

/* Unbiased uniform integer in [0, n), n > 0 (asserted), by Lemire's
 * multiply-and-reject method (D. Lemire, "Fast random integer generation in
 * an interval", ACM TOMS 29(1), 2019): the high 64 bits of a 128-bit product,
 * rejecting the few low products that would bias the result. */
uint64_t rng_below(Rng *r, uint64_t n);

/* Normal N(mean, std^2) float by the Box-Muller transform (G. Box, M. Muller,
 * Ann. Math. Stat. 29(2), 1958), computed in double; one normal per call (the
 * second Box-Muller value is dropped so the state stays one Rng). */
float rng_normal_f32(Rng *r, float mean, float std);

#endif
