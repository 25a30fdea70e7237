/*
 * augment.c - random views and input corruptions of one image (see
 * include/augment.h).  Does not: batch, allocate or know about ranks (the
 * trainer seeds one Rng per image from its global position).
 */
#include "data/augment.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "AUG" in the top bytes: apart from the sampler's "EPOCH" and the split's
 * "SPLIT" streams (rng.h) and from the small weight-init streams. */
#define AUGMENT_STREAM_BASE 0x4155470000000000ull
/* SimCLR's aspect-ratio range of the random resized crop. */
#define AUGMENT_ASPECT_MIN (3.0 / 4.0)
#define AUGMENT_ASPECT_MAX (4.0 / 3.0)
/* --augment default: a crop keeping at least half the area (Fashion-MNIST's
 * 28x28 objects fill the frame; SimCLR's 0.08 is for 224x224 photos), a
 * flip, a 2-pixel shift. */
#define AUGMENT_DEFAULT_CROP 0.5
#define AUGMENT_DEFAULT_SHIFT 2

int augment_has_views(const AugmentConfig *a) { return a->crop_min > 0 || a->flip || a->shift > 0; }

int augment_parse(AugmentConfig *a, const char *spec, Err *err)
{
    char buf[256];
    if (strlen(spec) >= sizeof buf) return err_set(err, AE_EARG, "--augment: value too long");
    snprintf(buf, sizeof buf, "%s", spec);
    int any = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), any = 1) {
        char *end;
        if (strcmp(t, "none") == 0) {
            a->crop_min = 0;
            a->flip = 0;
            a->shift = 0;
        } else if (strcmp(t, "default") == 0) {
            a->crop_min = AUGMENT_DEFAULT_CROP;
            a->flip = 1;
            a->shift = AUGMENT_DEFAULT_SHIFT;
        } else if (strcmp(t, "flip") == 0) {
            a->flip = 1;
        } else if (strncmp(t, "crop:", 5) == 0) {
            double v = strtod(t + 5, &end);
            if (end == t + 5 || *end || !(v > 0 && v <= 1))
                return err_set(err, AE_EARG, "--augment: '%s': crop:MIN needs 0 < MIN <= 1 (area fraction)", t);
            a->crop_min = v;
        } else if (strncmp(t, "shift:", 6) == 0) {
            long v = strtol(t + 6, &end, 10);
            if (end == t + 6 || *end || v < 0 || v > AUGMENT_MAX_SHIFT)
                return err_set(err, AE_EARG, "--augment: '%s': shift:PX needs 0 <= PX <= %d", t, AUGMENT_MAX_SHIFT);
            a->shift = (int)v;
        } else {
            return err_set(err, AE_EARG, "--augment: unknown item '%s' (expected default, none, crop:MIN, flip, "
                           "shift:PX)", t);
        }
    }
    if (!any) return err_set(err, AE_EARG, "--augment: empty value (try --augment default)");
    return AE_OK;
}

int augment_parse_noise(AugmentConfig *a, const char *spec, Err *err)
{
    char *end;
    if (strcmp(spec, "none") == 0) {
        a->noise = NOISE_NONE;
        a->noise_level = 0;
    } else if (strncmp(spec, "gauss:", 6) == 0) {
        double v = strtod(spec + 6, &end);
        if (end == spec + 6 || *end || !(v > 0 && v <= AUGMENT_GAUSS_SIGMA_MAX))
            return err_set(err, AE_EARG, "--noise '%s': gauss:SIGMA needs 0 < SIGMA <= 1 (images are in [0,1])",
                           spec);
        a->noise = NOISE_GAUSS;
        a->noise_level = v;
    } else if (strncmp(spec, "mask:", 5) == 0) {
        double v = strtod(spec + 5, &end);
        if (end == spec + 5 || *end || !(v > 0 && v < 1))
            return err_set(err, AE_EARG, "--noise '%s': mask:RATIO needs 0 < RATIO < 1", spec);
        a->noise = NOISE_MASK;
        a->noise_level = v;
    } else {
        return err_set(err, AE_EARG, "--noise '%s': expected gauss:SIGMA, mask:RATIO or none", spec);
    }
    return AE_OK;
}

void augment_views_text(char *out, size_t cap, const AugmentConfig *a)
{
    if (!augment_has_views(a)) {
        snprintf(out, cap, "none");
        return;
    }
    char crop[32] = "", shift[32] = "";
    if (a->crop_min > 0) snprintf(crop, sizeof crop, "crop:%g", a->crop_min);
    if (a->shift > 0) snprintf(shift, sizeof shift, "shift:%d", a->shift);
    snprintf(out, cap, "%s%s%s%s%s", crop, crop[0] && (a->flip || shift[0]) ? "," : "", a->flip ? "flip" : "",
             a->flip && shift[0] ? "," : "", shift);
}

void augment_noise_text(char *out, size_t cap, const AugmentConfig *a)
{
    if (a->noise == NOISE_GAUSS)
        snprintf(out, cap, "gauss:%g", a->noise_level);
    else if (a->noise == NOISE_MASK)
        snprintf(out, cap, "mask:%g", a->noise_level);
    else
        snprintf(out, cap, "none");
}

void augment_rng(Rng *r, uint64_t seed, int64_t epoch, int64_t position, int view)
{
    assert(epoch >= 0 && epoch < (1 << 20) && position >= 0 && position < (INT64_C(1) << 34) && view >= 0 &&
           view < 4);
    rng_seed(r, seed, AUGMENT_STREAM_BASE + ((uint64_t)epoch << 36 | (uint64_t)position << 2 | (uint64_t)view));
}

/* Bilinear sample of plane p[H][W] at (y, x), coordinates clamped to the
 * image (edge pixels repeat). */
static float bilinear(const float *p, int H, int W, double y, double x)
{
    if (y < 0) y = 0;
    if (x < 0) x = 0;
    if (y > H - 1) y = H - 1;
    if (x > W - 1) x = W - 1;
    int y0 = (int)y, x0 = (int)x;
    int y1 = y0 + 1 < H ? y0 + 1 : y0, x1 = x0 + 1 < W ? x0 + 1 : x0;
    double fy = y - y0, fx = x - x0;
    double top = p[y0 * W + x0] * (1 - fx) + p[y0 * W + x1] * fx;
    double bot = p[y1 * W + x0] * (1 - fx) + p[y1 * W + x1] * fx;
    return (float)(top * (1 - fy) + bot * fy);
}

void augment_view(float *out, const float *in, int C, int H, int W, const AugmentConfig *a, Rng *r)
{
    assert(out != in);
    /* draws in a fixed order: area, aspect, crop x, crop y, flip, dx, dy */
    double area = 1, aspect = 1;
    double u_area = rng_uniform_f64(r), u_aspect = rng_uniform_f64(r);
    double u_x = rng_uniform_f64(r), u_y = rng_uniform_f64(r);
    int flip = (rng_next_u64(r) >> 63) != 0;
    int dx = 0, dy = 0;
    if (a->shift > 0) {
        dx = (int)rng_below(r, (uint64_t)(2 * a->shift + 1)) - a->shift;
        dy = (int)rng_below(r, (uint64_t)(2 * a->shift + 1)) - a->shift;
    }
    if (!a->flip) flip = 0;
    double cw = W, ch = H, x0 = 0, y0 = 0;
    if (a->crop_min > 0) {
        area = a->crop_min + (1 - a->crop_min) * u_area;
        aspect = exp(log(AUGMENT_ASPECT_MIN) + (log(AUGMENT_ASPECT_MAX) - log(AUGMENT_ASPECT_MIN)) * u_aspect);
        cw = sqrt(area * aspect) * W;
        ch = sqrt(area / aspect) * H;
        if (cw > W) cw = W;
        if (ch > H) ch = H;
        x0 = (W - cw) * u_x;
        y0 = (H - ch) * u_y;
    }
    const double sx = cw / W, sy = ch / H;
    for (int c = 0; c < C; c++) {
        const float *p = in + (size_t)c * H * W;
        float *o = out + (size_t)c * H * W;
        for (int oy = 0; oy < H; oy++) {
            for (int ox = 0; ox < W; ox++) {
                /* shift: output (oy, ox) shows view pixel (oy - dy, ox - dx), zero outside */
                int vy = oy - dy, vx = ox - dx;
                if (vy < 0 || vy >= H || vx < 0 || vx >= W) {
                    o[oy * W + ox] = 0;
                    continue;
                }
                if (flip) vx = W - 1 - vx;
                /* pixel centres: view pixel v covers crop coordinates (v + 0.5) * s */
                o[oy * W + ox] = bilinear(p, H, W, y0 + (vy + 0.5) * sy - 0.5, x0 + (vx + 0.5) * sx - 0.5);
            }
        }
    }
}

void augment_noise(float *x, int C, int H, int W, const AugmentConfig *a, Rng *r)
{
    const size_t hw = (size_t)H * W;
    if (a->noise == NOISE_GAUSS) {
        for (size_t k = 0; k < (size_t)C * hw; k++) {
            float v = x[k] + rng_normal_f32(r, 0.0f, (float)a->noise_level);
            x[k] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
    } else if (a->noise == NOISE_MASK) {
        for (size_t k = 0; k < hw; k++)
            if (rng_uniform_f64(r) < a->noise_level)
                for (int c = 0; c < C; c++) x[(size_t)c * hw + k] = 0;
    }
}
