/*
 * testutil.h - helpers shared by the C unit tests (cmocka).
 *
 * check_tensor compares a result with a reference element-wise with the
 * tolerance atol + rtol*|ref| and, on failure, prints the max absolute error,
 * the max relative error and the worst index (llm.c test_gpt2 check_tensor).
 * Test-only RNG: splitmix64, explicit state.
 * Bit-exact helpers for the kernel tests that compare an AVX-512 path with
 * its scalar twin: float <-> bits, fills with a bit pattern, guard zones.
 */
#ifndef AESIM_TESTUTIL_H
#define AESIM_TESTUTIL_H

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Returns 1 if every |got[i]-ref[i]| <= atol + rtol*|ref[i]| (NaN fails). */
static inline int check_tensor_d(const char *name, const double *got, const double *ref, size_t n,
                                 double atol, double rtol)
{
    double max_abs = 0, max_rel = 0;
    size_t worst = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - ref[i]);
        double r = e / (fabs(ref[i]) > 1e-30 ? fabs(ref[i]) : 1e-30);
        if (!(e <= atol + rtol * fabs(ref[i]))) {
            if (!bad || e > fabs(got[worst] - ref[worst])) worst = i;
            bad++;
        }
        if (e > max_abs || isnan(e)) max_abs = e;
        if (r > max_rel || isnan(r)) max_rel = r;
    }
    if (bad) {
        fprintf(stderr, "  %s: %zu/%zu outside atol %.1e + rtol %.1e; max abs err %.3e, max rel err %.3e, "
                "worst index %zu (got %.9g, ref %.9g)\n",
                name, bad, n, atol, rtol, max_abs, max_rel, worst, got[worst], ref[worst]);
        return 0;
    }
    return 1;
}

static inline int check_tensor(const char *name, const float *got, const float *ref, size_t n,
                               double atol, double rtol)
{
    double max_abs = 0, max_rel = 0;
    size_t worst = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]);
        double r = e / (fabs(ref[i]) > 1e-30 ? fabs(ref[i]) : 1e-30);
        if (!(e <= atol + rtol * fabs(ref[i]))) {
            if (!bad || e > fabs((double)got[worst] - ref[worst])) worst = i;
            bad++;
        }
        if (e > max_abs || isnan(e)) max_abs = e;
        if (r > max_rel || isnan(r)) max_rel = r;
    }
    if (bad) {
        fprintf(stderr, "  %s: %zu/%zu outside atol %.1e + rtol %.1e; max abs err %.3e, max rel err %.3e, "
                "worst index %zu (got %.9g, ref %.9g)\n",
                name, bad, n, atol, rtol, max_abs, max_rel, worst, (double)got[worst], (double)ref[worst]);
        return 0;
    }
    return 1;
}

/* splitmix64: test-only deterministic RNG. */
static inline uint64_t test_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform float in [lo, hi). */
static inline float test_rng_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((test_rng_next(s) >> 40) * (1.0 / 16777216.0));
}

static inline void test_fill_uniform(float *x, size_t n, uint64_t *s, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = test_rng_uniform(s, lo, hi);
}

/* NaN in every element: an output a kernel must overwrite, or scratch it
 * must not read before writing. */
static inline void test_fill_nan(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = NAN;
}

/* Floats after each output that no implementation may touch, and the bit
 * patterns of that guard and of "not yet written" outputs. */
#define GUARD_FLOATS 64
#define GUARD_BITS 0x7fbadbadu
#define FILL_BITS_A 0xdeadbeefu
#define FILL_BITS_B 0x12345678u
/* Quiet-NaN bits, the payload field and the sign bit of a float32. */
#define QNAN_BITS 0x7fc00000u
#define NAN_PAYLOAD_MASK 0x003fffffu
#define SIGN_BIT 0x80000000u

/* The float whose IEEE-754 bits are u. */
static inline float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* a[0..n) = the float with bits `bits`. */
static inline void fill_bits(float *a, size_t n, uint32_t bits)
{
    for (size_t i = 0; i < n; i++) a[i] = from_bits(bits);
}

#endif
