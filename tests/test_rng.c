/*
 * test_rng.c - rng.h against published reference outputs and statistics.
 *
 * References nobody here wrote:
 *   - xoshiro256** from the state {1, 2, 3, 4}: the first ten outputs of the
 *     authors' xoshiro256starstar.c as recorded in the rand_xoshiro crate's
 *     `reference` test (and in many other ports);
 *   - splitmix64 from state 0: the first outputs of the reference
 *     splitmix64.c (Steele et al. 2014), as published in many ports.
 * Statistics: chi-square goodness of fit at p = 0.001 (fixed seeds, so the
 * test is deterministic; a correct generator fails one in a thousand seeds,
 * a biased one fails by orders of magnitude).  Critical values of the
 * chi-square distribution from standard tables (NIST/SEMATECH e-Handbook
 * 1.3.6.7.4).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <math.h>

#include "base/rng.h"

/* Upper 0.1% critical values of chi-square with 2, 6 and 9 degrees of freedom. */
#define CHI2_P001_DOF2 13.816
#define CHI2_P001_DOF6 22.458
#define CHI2_P001_DOF9 27.877

static double chi_square(const int64_t *count, int bins, double expected_each)
{
    double x = 0;
    for (int b = 0; b < bins; b++) {
        double d = (double)count[b] - expected_each;
        x += d * d / expected_each;
    }
    return x;
}

static void test_xoshiro_reference_vector(void **state)
{
    (void)state;
    static const uint64_t expected[10] = {
        11520ull,
        0ull,
        1509978240ull,
        1215971899390074240ull,
        1216172134540287360ull,
        607988272756665600ull,
        16172922978634559625ull,
        8476171486693032832ull,
        10595114339597558777ull,
        2904607092377533576ull,
    };
    Rng r = {{1, 2, 3, 4}};
    for (int i = 0; i < 10; i++) assert_int_equal(rng_next_u64(&r), expected[i]);
}

static void test_splitmix_reference_vector(void **state)
{
    (void)state;
    static const uint64_t expected[4] = {0xE220A8397B1DCDAFull, 0x6E789E6AA1B965F4ull, 0x06C45D188009454Full,
                                         0xF88BB8A8724C81ECull};
    uint64_t s = 0;
    for (int i = 0; i < 4; i++) assert_int_equal(rng_splitmix64(&s), expected[i]);
}

static void test_seed_reproducible(void **state)
{
    (void)state;
    Rng a, b;
    rng_seed(&a, 1234, 5);
    rng_seed(&b, 1234, 5);
    for (int i = 0; i < 1000; i++) assert_int_equal(rng_next_u64(&a), rng_next_u64(&b));
    /* Reseeding restarts the sequence. */
    rng_seed(&a, 1234, 5);
    Rng c;
    rng_seed(&c, 1234, 5);
    assert_memory_equal(a.s, c.s, sizeof a.s);
}

/* Fraction of equal bits between two sequences: 1/2 for independent ones. */
static void assert_uncorrelated(Rng *a, Rng *b)
{
    const int draws = 1000;
    int64_t same = 0;
    for (int i = 0; i < draws; i++) same += 64 - __builtin_popcountll(rng_next_u64(a) ^ rng_next_u64(b));
    /* 64000 fair bits: mean 32000, standard deviation 126; allow 6 sd. */
    double mean = 64.0 * draws / 2, sd = sqrt(64.0 * draws) / 2;
    assert_true(fabs((double)same - mean) < 6 * sd);
}

static void test_streams_and_seeds_differ(void **state)
{
    (void)state;
    enum { K = 64 };
    uint64_t first[3 * K];
    for (int i = 0; i < K; i++) {
        Rng r;
        rng_seed(&r, 42, (uint64_t)i);
        first[i] = rng_next_u64(&r);
        rng_seed(&r, (uint64_t)i, 0);
        first[K + i] = rng_next_u64(&r);
        rng_seed(&r, 42, RNG_STREAM_EPOCH_BASE + (uint64_t)i);
        first[2 * K + i] = rng_next_u64(&r);
    }
    /* All distinct, except that (seed 42, stream 0) appears twice. */
    assert_int_equal(first[0], first[K + 42]);
    for (int i = 0; i < 3 * K; i++)
        for (int j = i + 1; j < 3 * K; j++)
            if (!(i == 0 && j == K + 42)) assert_true(first[i] != first[j]);
    Rng a, b;
    rng_seed(&a, 7, 0);
    rng_seed(&b, 7, 1);
    assert_uncorrelated(&a, &b);
    rng_seed(&a, 7, 0);
    rng_seed(&b, 8, 0);
    assert_uncorrelated(&a, &b);
}

static void test_below_small_n_chi_square(void **state)
{
    (void)state;
    enum { N = 7, DRAWS = 70000 };
    int64_t count[N] = {0};
    Rng r;
    rng_seed(&r, 2024, 3);
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = rng_below(&r, N);
        assert_true(v < N);
        count[v]++;
    }
    assert_true(chi_square(count, N, (double)DRAWS / N) < CHI2_P001_DOF6);
    for (int i = 0; i < 100; i++) assert_int_equal(rng_below(&r, 1), 0);
}

/* n = 3 * 2^62: plain `x % n` would put half of the mass below 2^62 (first
 * third), and the multiply-shift without rejection would give multiples of
 * 3 twice the weight of the others.  Both show up here. */
static void test_below_large_n_unbiased(void **state)
{
    (void)state;
    enum { DRAWS = 30000 };
    const uint64_t n = 3ull << 62;
    int64_t third[3] = {0}, mod3[3] = {0};
    Rng r;
    rng_seed(&r, 99, 0);
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = rng_below(&r, n);
        assert_true(v < n);
        third[v >> 62]++;
        mod3[v % 3]++;
    }
    assert_true(chi_square(third, 3, DRAWS / 3.0) < CHI2_P001_DOF2);
    assert_true(chi_square(mod3, 3, DRAWS / 3.0) < CHI2_P001_DOF2);
    assert_true(rng_below(&r, UINT64_MAX) < UINT64_MAX);
}

static void test_uniform_range_and_moments(void **state)
{
    (void)state;
    enum { DRAWS = 100000, BINS = 10 };
    const float lo = -1.0f, hi = 3.0f;
    int64_t count[BINS] = {0};
    double sum = 0;
    float mn = hi, mx = lo;
    Rng r;
    rng_seed(&r, 5, 0);
    for (int i = 0; i < DRAWS; i++) {
        float x = rng_uniform_f32(&r, lo, hi);
        assert_true(x >= lo && x < hi);
        sum += x;
        mn = x < mn ? x : mn;
        mx = x > mx ? x : mx;
        int b = (int)((x - lo) / (hi - lo) * BINS);
        count[b < BINS ? b : BINS - 1]++;
    }
    /* Mean 1, standard deviation of the mean (hi-lo)/sqrt(12*DRAWS) = 0.0037. */
    assert_true(fabs(sum / DRAWS - 1.0) < 0.015);
    assert_true(mn < lo + 0.01f && mx > hi - 0.01f);
    assert_true(chi_square(count, BINS, (double)DRAWS / BINS) < CHI2_P001_DOF9);
}

/* Intervals one float ulp wide: lo + (hi-lo)*u rounds to hi for u near 1,
 * which must not be returned. */
static void test_uniform_narrow_interval_stays_open(void **state)
{
    (void)state;
    Rng r;
    rng_seed(&r, 11, 0);
    const float los[3] = {1.0f, 1e8f, -2.5f};
    for (int k = 0; k < 3; k++) {
        float lo = los[k], hi = nextafterf(lo, INFINITY);
        for (int i = 0; i < 20000; i++) assert_true(rng_uniform_f32(&r, lo, hi) == lo);
    }
    for (int i = 0; i < 20000; i++) {
        double u = rng_uniform_f64(&r);
        assert_true(u >= 0.0 && u < 1.0);
    }
}

static void test_normal_moments(void **state)
{
    (void)state;
    enum { DRAWS = 100000 };
    Rng r;
    rng_seed(&r, 17, 0);
    double s1 = 0, s2 = 0;
    for (int i = 0; i < DRAWS; i++) {
        double z = rng_normal_f32(&r, 2.0f, 0.5f);
        assert_true(isfinite(z));
        s1 += z;
        s2 += z * z;
    }
    double mean = s1 / DRAWS, var = s2 / DRAWS - mean * mean;
    /* sd of the mean 0.5/sqrt(N) = 0.0016; of the variance ~ 0.25*sqrt(2/N) = 0.0011. */
    assert_true(fabs(mean - 2.0) < 0.01);
    assert_true(fabs(var - 0.25) < 0.01);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xoshiro_reference_vector),
        cmocka_unit_test(test_splitmix_reference_vector),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_streams_and_seeds_differ),
        cmocka_unit_test(test_below_small_n_chi_square),
        cmocka_unit_test(test_below_large_n_unbiased),
        cmocka_unit_test(test_uniform_range_and_moments),
        cmocka_unit_test(test_uniform_narrow_interval_stays_open),
        cmocka_unit_test(test_normal_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
