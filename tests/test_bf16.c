/*
 * test_bf16.c - bfloat16 rounding (include/nn/bf16.h) against the IEEE 754
 * definition of round-to-nearest-even, evaluated here in double precision
 * independently of the bit trick the library uses: for a finite float v,
 * the two bfloat16 neighbours lo <= v <= hi are found by truncating the
 * fraction (and adding one bfloat16 ulp), and the nearer one is taken, the
 * one with an even last bit on a tie; beyond the largest finite bfloat16
 * (plus half an ulp) the result is inf.  Checked on every float whose low
 * 16 bits are one of the interesting patterns (0, 1, 0x7FFF, 0x8000, 0x8001,
 * 0xFFFF) for all 2^16 upper halves, and on 1M random bit patterns; the
 * AVX-512 and portable array paths must agree bit for bit, in place too.
 * NaN stays NaN.  Serial (the arrays are small enough to stay serial or use
 * OpenMP either way).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/check.h"
#include "nn/bf16.h"

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Round-to-nearest-even to 8 significant bits, by the definition. */
static float ref_round(float v)
{
    if (isnan(v) || isinf(v)) return v;
    const float lo = from_bits(to_bits(v) & 0xFFFF0000u); /* truncation toward zero */
    if (lo == v) return v;
    /* the next bfloat16 away from zero (may be inf: exponent overflow) */
    const float hi = from_bits((to_bits(v) & 0xFFFF0000u) + 0x10000u);
    const double dlo = fabs((double)v - (double)lo);
    const double dhi = isinf(hi) ? fabs((double)v - ldexp(copysign(1.0, v), 128)) : fabs((double)hi - (double)v);
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (to_bits(lo) >> 16) & 1u ? hi : lo; /* tie: the even one */
}

static void check_one(uint32_t u)
{
    const float v = from_bits(u), got = bf16_round(v), want = ref_round(v);
    if (isnan(v)) {
        if (!isnan(got)) fail_msg("bits 0x%08x: NaN became %g", u, (double)got);
        return;
    }
    if (to_bits(got) != to_bits(want))
        fail_msg("bits 0x%08x (%.9g): got 0x%08x, want 0x%08x", u, (double)v, to_bits(got), to_bits(want));
}

static void test_definition(void **state)
{
    (void)state;
    static const uint32_t low[] = { 0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu };
    for (uint32_t hi = 0; hi < 0x10000u; hi++)
        for (size_t j = 0; j < sizeof low / sizeof low[0]; j++) check_one((hi << 16) | low[j]);
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < 1000000; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        check_one((uint32_t)s);
    }
    /* named cases: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 (even: 1) */
    assert_true(bf16_round(1.0f + 0x1p-8f) == 1.0f);
    assert_true(bf16_round(1.0f + 0x1p-7f + 0x1p-8f) == 1.0f + 0x1p-6f);
    assert_true(isinf(bf16_round(3.4e38f)));
}

static void test_array_paths(void **state)
{
    (void)state;
    const size_t n = 300007; /* not a multiple of 16 or of the chunk */
    float *src = xmalloc(n * sizeof *src), *a = xmalloc(n * sizeof *a), *b = xmalloc(n * sizeof *b);
    uint64_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = from_bits((uint32_t)(s >> 32));
    }
    bf16_round_array(a, src, n);
    bf16_round_array_portable(b, src, n);
    for (size_t i = 0; i < n; i++) {
        if (isnan(src[i])) {
            assert_true(isnan(a[i]) && isnan(b[i]));
            continue;
        }
        if (to_bits(a[i]) != to_bits(b[i]) || to_bits(a[i]) != to_bits(bf16_round(src[i])))
            fail_msg("element %zu: array paths differ", i);
    }
    memcpy(b, src, n * sizeof *b);
    bf16_round_array(b, b, n); /* in place */
    for (size_t i = 0; i < n; i++)
        if (!isnan(src[i]) && to_bits(a[i]) != to_bits(b[i])) fail_msg("element %zu: in place differs", i);
    free(src);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_definition),
        cmocka_unit_test(test_array_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
