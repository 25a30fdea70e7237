/*
 * augment.h - seeded input corruptions and augmentations for training
 * better search embeddings without labels: denoising (--noise) and random
 * views (--augment) of one image.
 *
 * Views (augment_view, SimCLR's geometric augmentations, Chen et al. 2020,
 * sec. 3 and appendix A): a random resized crop (area fraction uniform in
 * [crop_min, 1], aspect ratio log-uniform in [3/4, 4/3], resampled to HxW
 * bilinearly with clamped edges), a horizontal flip with probability 1/2,
 * then a translation by up to `shift` pixels each way with zero fill.
 * Corruptions (augment_noise, the denoising autoencoder of P. Vincent et
 * al., ICML 2008): additive Gaussian noise clamped to [0, 1], or masking
 * (each pixel, all channels, set to 0 with probability `ratio`).
 *
 * Randomness: every draw comes from one Rng seeded per (seed, epoch, global
 * position in the epoch, view) (augment_rng), so an image gets the same
 * view whichever rank trains it and however many ranks there are.
 * Pure functions on one image (CHW float32 in [0, 1]); no allocation, no
 * MPI, thread-safe.
 */
#ifndef AESIM_AUGMENT_H
#define AESIM_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/rng.h"

typedef enum { NOISE_NONE = 0, NOISE_GAUSS = 1, NOISE_MASK = 2 } NoiseKind;

/* Limits of --augment shift:PX (pixels) and --noise gauss:SIGMA, also what
 * a checkpoint may record (ckpt.h); mask:RATIO is in (0, 1), crop:MIN in
 * (0, 1]. */
#define AUGMENT_MAX_SHIFT 64
#define AUGMENT_GAUSS_SIGMA_MAX 1.0

typedef struct AugmentConfig {
    double crop_min;   /* random resized crop: smallest area fraction (0 = no crop) */
    int flip;          /* 1: horizontal flip with probability 1/2 */
    int shift;         /* translate by up to this many pixels in x and y (0 = none) */
    NoiseKind noise;   /* corruption of the network's input (the target stays clean) */
    double noise_level;/* gauss: sigma (pixel units, images in [0, 1]); mask: ratio */
} AugmentConfig;

/* Parses --augment's value, a comma-separated list of crop:MIN (0 < MIN
 * <= 1), flip, shift:PX (0..AUGMENT_MAX_SHIFT), "default" (=
 * crop:0.5,flip,shift:2) or "none" (no views: crop, flip and shift off),
 * into a (other fields untouched).  AE_EARG with a message naming the bad
 * item. */
int augment_parse(AugmentConfig *a, const char *spec, Err *err);

/* Parses --noise's value gauss:SIGMA (0 < SIGMA <= AUGMENT_GAUSS_SIGMA_MAX),
 * mask:RATIO (0 < RATIO < 1) or none into a->noise / a->noise_level.
 * AE_EARG on error. */
int augment_parse_noise(AugmentConfig *a, const char *spec, Err *err);

/* The views of a as an --augment value into out[cap]: e.g.
 * "crop:0.5,flip,shift:2", or "none".  The noise of a as a --noise value:
 * "gauss:0.1", "mask:0.25" or "none".  augment_parse / augment_parse_noise
 * read them back to the same settings (%g: 6 significant digits). */
void augment_views_text(char *out, size_t cap, const AugmentConfig *a);
void augment_noise_text(char *out, size_t cap, const AugmentConfig *a);

/* 1 if a makes views (crop, flip or shift), 0 otherwise. */
int augment_has_views(const AugmentConfig *a);

/* The Rng of one image's view: stream AUGMENT_STREAM_BASE + epoch, position
 * and view packed (epoch < 2^20, position < 2^34, view < 4; asserted). */
void augment_rng(Rng *r, uint64_t seed, int64_t epoch, int64_t position, int view);

/* out[C][H][W] = a random view of in[C][H][W] (out != in).  Draws from r
 * in a fixed order whatever the options. */
void augment_view(float *out, const float *in, int C, int H, int W, const AugmentConfig *a, Rng *r);

/* In place: corrupts x[C][H][W] as a->noise says (nothing for NOISE_NONE). */
void augment_noise(float *x, int C, int H, int W, const AugmentConfig *a, Rng *r);

#endif
