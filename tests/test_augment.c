/*
 * test_augment.c - augment.h: views and corruptions of one image.
 *
 * References independent of the implementation: a flip is a mirror of the
 * rows, a shift moves pixels by whole positions with zero fill (checked
 * against a direct loop over every candidate offset), a random resized
 * crop of area 1 and aspect 1 is the identity, bilinear sampling of a
 * linear ramp gives the ramp at the sampled coordinates (exact for
 * bilinear interpolation), Gaussian noise has the requested mean and
 * standard deviation (before clamping; tested in the middle of [0, 1]),
 * masking zeroes a binomial share of the pixels in all channels at once.
 * Determinism: the same (seed, epoch, position, view) gives the same view,
 * another position another one (what makes views independent of the rank
 * count).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "data/augment.h"

#define H 12
#define W 10
#define C 2

static void fill(float *x)
{
    for (int i = 0; i < C * H * W; i++) x[i] = (float)((i * 37) % 101) / 100.0f;
}

static void test_flip_is_mirror_or_identity(void **state)
{
    (void)state;
    float x[C * H * W], y[C * H * W];
    fill(x);
    AugmentConfig a = { 0 };
    a.flip = 1;
    int flips = 0;
    for (int pos = 0; pos < 200; pos++) {
        Rng r;
        augment_rng(&r, 7, 0, pos, 0);
        augment_view(y, x, C, H, W, &a, &r);
        int same = memcmp(x, y, sizeof x) == 0, mirror = 1;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++)
                    mirror &= y[(c * H + i) * W + j] == x[(c * H + i) * W + (W - 1 - j)];
        assert_true(same || mirror);
        flips += mirror && !same;
    }
    /* binomial(200, 1/2): 100 +- 5 sigma */
    assert_in_range(flips, 65, 135);
}

static void test_shift_moves_whole_pixels_with_zero_fill(void **state)
{
    (void)state;
    float x[C * H * W], y[C * H * W];
    fill(x);
    AugmentConfig a = { 0 };
    a.shift = 3;
    int seen[7][7] = { { 0 } };
    for (int pos = 0; pos < 400; pos++) {
        Rng r;
        augment_rng(&r, 1, 2, pos, 1);
        augment_view(y, x, C, H, W, &a, &r);
        int found = 0;
        for (int dy = -3; dy <= 3 && !found; dy++)
            for (int dx = -3; dx <= 3 && !found; dx++) {
                int ok = 1;
                for (int c = 0; c < C && ok; c++)
                    for (int i = 0; i < H && ok; i++)
                        for (int j = 0; j < W && ok; j++) {
                            int si = i - dy, sj = j - dx;
                            float ref = si < 0 || si >= H || sj < 0 || sj >= W ? 0.0f : x[(c * H + si) * W + sj];
                            ok = fabsf(y[(c * H + i) * W + j] - ref) < 1e-6f;
                        }
                if (ok) {
                    found = 1;
                    seen[dy + 3][dx + 3]++;
                }
            }
        assert_true(found);
    }
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 7; j++) assert_true(seen[i][j] > 0); /* every offset in range occurs */
}

static void test_crop_samples_a_ramp_exactly(void **state)
{
    (void)state;
    /* x = ramp in the column index: any crop resampled bilinearly is still
     * a ramp, affine in the output column with slope (crop width / W) and
     * constant down the columns; values stay in the image's range */
    float x[C * H * W], y[C * H * W];
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) x[(c * H + i) * W + j] = (float)j / (W - 1);
    AugmentConfig a = { 0 };
    a.crop_min = 0.3;
    for (int pos = 0; pos < 50; pos++) {
        Rng r;
        augment_rng(&r, 3, 1, pos, 0);
        augment_view(y, x, C, H, W, &a, &r);
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H; i++) {
                const float *row = y + (c * H + i) * W;
                assert_true(fabsf(row[0] - y[c * H * W]) < 1e-6f); /* same in every row */
                double slope = row[1] - row[0];
                assert_true(slope > 0 && slope <= 1.0 / (W - 1) + 1e-6);
                for (int j = 1; j < W - 1; j++) {
                    /* affine away from the clamped edges */
                    if (row[j - 1] <= 0 || row[j + 1] >= 1) continue;
                    assert_true(fabs((row[j + 1] - row[j]) - (row[j] - row[j - 1])) < 1e-5);
                }
                for (int j = 0; j < W; j++) assert_true(row[j] >= 0 && row[j] <= 1);
            }
    }
}

static void test_full_crop_is_identity(void **state)
{
    (void)state;
    float x[C * H * W], y[C * H * W];
    fill(x);
    AugmentConfig a = { 0 }; /* no crop, no flip, no shift: the same image */
    Rng r;
    augment_rng(&r, 1, 0, 0, 0);
    augment_view(y, x, C, H, W, &a, &r);
    assert_memory_equal(x, y, sizeof x);
}

static void test_same_position_same_view(void **state)
{
    (void)state;
    float x[C * H * W], y1[C * H * W], y2[C * H * W], y3[C * H * W];
    fill(x);
    AugmentConfig a = { 0 };
    Err err;
    assert_int_equal(augment_parse(&a, "default", &err), AE_OK);
    assert_int_equal(augment_parse_noise(&a, "gauss:0.1", &err), AE_OK);
    Rng r;
    augment_rng(&r, 5, 3, 12345, 1);
    augment_view(y1, x, C, H, W, &a, &r);
    augment_noise(y1, C, H, W, &a, &r);
    augment_rng(&r, 5, 3, 12345, 1);
    augment_view(y2, x, C, H, W, &a, &r);
    augment_noise(y2, C, H, W, &a, &r);
    assert_memory_equal(y1, y2, sizeof y1);
    augment_rng(&r, 5, 3, 12346, 1);
    augment_view(y3, x, C, H, W, &a, &r);
    augment_noise(y3, C, H, W, &a, &r);
    assert_true(memcmp(y1, y3, sizeof y1) != 0);
}

static void test_gauss_noise_moments(void **state)
{
    (void)state;
    enum { N = 64 * 64 };
    static float x[N];
    for (int i = 0; i < N; i++) x[i] = 0.5f;
    AugmentConfig a = { 0 };
    Err err;
    assert_int_equal(augment_parse_noise(&a, "gauss:0.05", &err), AE_OK);
    Rng r;
    augment_rng(&r, 9, 0, 0, 0);
    augment_noise(x, 1, 64, 64, &a, &r);
    double s = 0, s2 = 0;
    for (int i = 0; i < N; i++) {
        s += x[i] - 0.5;
        s2 += (x[i] - 0.5) * (x[i] - 0.5);
    }
    double mean = s / N, sd = sqrt(s2 / N - mean * mean);
    /* standard error of the mean 0.05/64; of the sd about 0.05/sqrt(2N) */
    assert_true(fabs(mean) < 5 * 0.05 / 64);
    assert_true(fabs(sd - 0.05) < 5 * 0.05 / sqrt(2.0 * N));
}

static void test_mask_zeroes_all_channels_of_a_pixel(void **state)
{
    (void)state;
    enum { HH = 64, WW = 64, CC = 3 };
    static float x[CC * HH * WW];
    for (int i = 0; i < CC * HH * WW; i++) x[i] = 1.0f;
    AugmentConfig a = { 0 };
    Err err;
    assert_int_equal(augment_parse_noise(&a, "mask:0.25", &err), AE_OK);
    Rng r;
    augment_rng(&r, 9, 0, 1, 0);
    augment_noise(x, CC, HH, WW, &a, &r);
    int zeros = 0;
    for (int k = 0; k < HH * WW; k++) {
        int z0 = x[k] == 0;
        for (int c = 1; c < CC; c++) assert_int_equal(x[c * HH * WW + k] == 0, z0);
        zeros += z0;
    }
    /* binomial(4096, 0.25): mean 1024, sd 27.7; 5 sigma */
    assert_in_range(zeros, 1024 - 139, 1024 + 139);
}

static void test_parse_errors(void **state)
{
    (void)state;
    AugmentConfig a = { 0 };
    Err err;
    assert_int_equal(augment_parse(&a, "rotate", &err), AE_EARG);
    assert_non_null(strstr(err.msg, "rotate"));
    assert_int_equal(augment_parse(&a, "crop:0", &err), AE_EARG);
    assert_int_equal(augment_parse(&a, "shift:99", &err), AE_EARG);
    assert_int_equal(augment_parse_noise(&a, "gauss:2", &err), AE_EARG);
    assert_int_equal(augment_parse_noise(&a, "mask:1", &err), AE_EARG);
    assert_int_equal(augment_parse_noise(&a, "salt", &err), AE_EARG);
    assert_int_equal(augment_parse(&a, "crop:0.3,flip,shift:2", &err), AE_OK);
    /* The text forms read back to the same settings; none turns them off. */
    char text[64];
    AugmentConfig b = { 0 };
    augment_views_text(text, sizeof text, &a);
    assert_string_equal(text, "crop:0.3,flip,shift:2");
    assert_int_equal(augment_parse(&b, text, &err), AE_OK);
    assert_true(b.crop_min == a.crop_min && b.flip == a.flip && b.shift == a.shift);
    assert_int_equal(augment_parse(&b, "none", &err), AE_OK);
    assert_false(augment_has_views(&b));
    augment_views_text(text, sizeof text, &b);
    assert_string_equal(text, "none");
    assert_int_equal(augment_parse_noise(&b, "mask:0.25", &err), AE_OK);
    augment_noise_text(text, sizeof text, &b);
    assert_string_equal(text, "mask:0.25");
    assert_int_equal(augment_parse_noise(&b, "none", &err), AE_OK);
    assert_int_equal(b.noise, NOISE_NONE);
    augment_noise_text(text, sizeof text, &b);
    assert_string_equal(text, "none");
    assert_true(a.crop_min == 0.3 && a.flip == 1 && a.shift == 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flip_is_mirror_or_identity),
        cmocka_unit_test(test_shift_moves_whole_pixels_with_zero_fill),
        cmocka_unit_test(test_crop_samples_a_ramp_exactly),
        cmocka_unit_test(test_full_crop_is_identity),
        cmocka_unit_test(test_same_position_same_view),
        cmocka_unit_test(test_gauss_noise_moments),
        cmocka_unit_test(test_mask_zeroes_all_channels_of_a_pixel),
        cmocka_unit_test(test_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
