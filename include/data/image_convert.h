/*
 * image_convert.h - turning decoded pixels into the model's input: alpha
 * compositing over a background, grey <-> RGB, centre crop, and area (box)
 * resizing.  All integer arithmetic, so results are exact and
 * reproducible.
 *
 * Definitions (the tests implement the same formulas independently):
 *   compositing   out = (c*a + bg*(255-a) + 127) / 255 (integer division),
 *                 per channel, on 8-bit samples (Porter & Duff "over" on an
 *                 opaque background);
 *   RGB -> grey   L = (19595 R + 38470 G + 7471 B + 32768) >> 16, the ITU-R
 *                 601-2 luma weights 0.299/0.587/0.114 in 16-bit fixed point
 *                 exactly as Pillow's convert("L") (libImaging/Convert.c);
 *   grey -> RGB   R = G = B = L;
 *   crop (fit=crop)  the largest centred w' x h' region with the target's
 *                 aspect ratio: if w*H > W*h then h' = h, w' = round(h*W/H)
 *                 (at least 1), else w' = w, h' = round(w*H/W); the offset
 *                 is floor((w-w')/2), floor((h-h')/2);
 *   squash        the whole image;
 *   area resize   output pixel (i, j) is the mean of the region's pixels
 *                 weighted by how much of each input pixel its footprint
 *                 covers (exact rational weights: the region is cut into
 *                 W x H equal cells; a cell overlaps input pixel k over
 *                 |[j*w', (j+1)*w') ∩ [k*W, (k+1)*W)| units), rounded to
 *                 nearest with halves up.  This is the box/area filter of
 *                 OpenCV's INTER_AREA for any ratio; for whole-number
 *                 reduction factors it equals Pillow's Image.BOX up to
 *                 Pillow's rounding between its two passes (+-1).
 * Threading: pure functions on caller buffers; no allocation except the
 * resize's row accumulator; no MPI.
 */
#ifndef AESIM_IMAGE_CONVERT_H
#define AESIM_IMAGE_CONVERT_H

#include <stdint.h>

#include "data/dataset.h"
#include "data/image_decode.h"

/* Luma of an 8-bit RGB triple (formula above). */
static inline uint8_t image_luma(int r, int g, int b)
{
    return (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16);
}

/* Composites im over bg and converts to C channels, planar:
 * out[C][im->h][im->w].  C is 1 or 3 (asserted). */
void image_to_planar(uint8_t *out, const DecodedImage *im, int C, const uint8_t bg[3]);

/* Converts planar in[C0][hw] to out[C][hw] (C0, C in {1, 3}; grey -> RGB
 * replicates, RGB -> grey is the luma above; C0 == C copies). */
void image_planar_channels(uint8_t *out, int C, const uint8_t *in, int C0, int64_t hw);

/* The source region used for a w x h image and a W x H target (formulas
 * above): *x0, *y0 offset, *rw x *rh size, all within the image. */
void image_fit_region(int *x0, int *y0, int *rw, int *rh, int w, int h, int W, int H, DatasetFit fit);

/* Area-resizes the region (x0, y0, rw, rh) of each of C planes of
 * in[C][h][w] to out[C][H][W].  Sizes >= 1 and the region inside the image
 * (asserted).  Up- and down-scaling both work (upscaling replicates with
 * area weights). */
void image_resize_area(uint8_t *out, int W, int H, const uint8_t *in, int w, int h, int C, int x0, int y0, int rw,
                       int rh);

/* The whole pipeline for one decoded image: composite/convert to C
 * channels, fit region, area resize to out[C][H][W]. */
void image_convert(uint8_t *out, int C, int H, int W, const DecodedImage *im, const uint8_t bg[3], DatasetFit fit);

#endif
