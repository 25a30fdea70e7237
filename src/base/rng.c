/*
 * rng.c - xoshiro256** seeded by splitmix64, plus bounded integers (Lemire),
 * uniform floats and Box-Muller normals (see include/base/rng.h for sources).
 * Does not provide jump-ahead or cryptographic randomness.
 * Pure functions of the caller's Rng: thread-safe as long as each thread
 * uses its own Rng.  No MPI.
 */
#include "base/rng.h"

#include <assert.h>
#include <math.h>

/* splitmix64 constants (Steele et al. 2014): the increment is 2^64 / golden
 * ratio, the two multipliers are those of the reference splitmix64.c. */
#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ull
#define SPLITMIX_MUL1 0xBF58476D1CE4E5B9ull
#define SPLITMIX_MUL2 0x94D049BB133111EBull

/* Bits of a 64-bit output used for a float / double mantissa. */
#define FLOAT_BITS 24
#define DOUBLE_BITS 53

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* The splitmix64 output function (finaliser) of a 64-bit value. */
static inline uint64_t splitmix_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * SPLITMIX_MUL1;
    z = (z ^ (z >> 27)) * SPLITMIX_MUL2;
    return z ^ (z >> 31);
}

uint64_t rng_splitmix64(uint64_t *state)
{
    *state += SPLITMIX_GAMMA;
    return splitmix_mix(*state);
}

void rng_seed(Rng *r, uint64_t seed, uint64_t stream)
{
    /* Hash the stream first so that nearby (seed, stream) pairs start far
     * apart in splitmix64's sequence; the final xor cannot map two streams
     * of one seed to the same start because splitmix_mix is a bijection. */
    uint64_t sm = splitmix_mix(seed + SPLITMIX_GAMMA) ^ splitmix_mix(stream ^ SPLITMIX_MUL1);
    for (int i = 0; i < 4; i++) r->s[i] = rng_splitmix64(&sm);
    /* The all-zero state is the one fixed point of xoshiro; splitmix64
     * cannot produce four zero words in a row, but keep the invariant
     * explicit. */
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) r->s[0] = SPLITMIX_GAMMA;
}

uint64_t rng_next_u64(Rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

float rng_uniform_f32(Rng *r, float lo, float hi)
{
    assert(lo < hi);
    const float scale = 1.0f / (float)(1ul << FLOAT_BITS);
    float u = (float)(rng_next_u64(r) >> (64 - FLOAT_BITS)) * scale;
    float x = lo + (hi - lo) * u;
    /* Rounding of lo + (hi-lo)*u can land exactly on hi when u is close to
     * 1 and the interval is narrow relative to lo; keep the interval open. */
    if (x >= hi) x = nextafterf(hi, lo);
    return x;
}

double rng_uniform_f64(Rng *r)
{
    return (double)(rng_next_u64(r) >> (64 - DOUBLE_BITS)) * (1.0 / (double)(1ull << DOUBLE_BITS));
}

/* Full 64x64 -> 128-bit product as (hi, lo), in portable C11. */
static inline void mul64x64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    const uint64_t mask = 0xFFFFFFFFull;
    uint64_t a0 = a & mask, a1 = a >> 32, b0 = b & mask, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & mask) + (p10 & mask);
    *lo = (mid << 32) | (p00 & mask);
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

uint64_t rng_below(Rng *r, uint64_t n)
{
    assert(n > 0);
    uint64_t hi, lo;
    mul64x64(rng_next_u64(r), n, &hi, &lo);
    if (lo < n) {
        /* threshold = 2^64 mod n: products whose low word falls below it
         * belong to an incomplete last copy of [0, n) and are redrawn. */
        uint64_t threshold = (0 - n) % n;
        while (lo < threshold) mul64x64(rng_next_u64(r), n, &hi, &lo);
    }
    return hi;
}

float rng_normal_f32(Rng *r, float mean, float std)
{
    /* u1 in (0, 1] so that log(u1) is finite. */
    double u1 = 1.0 - rng_uniform_f64(r);
    double u2 = rng_uniform_f64(r);
    const double two_pi = 6.283185307179586476925286766559;
    double z = sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
    return (float)((double)mean + (double)std * z);
}
