/*
 * search_input.h - how aesim-search turns a query image into the model's
 * input, and how it reports a distance: shared by `aesim-search query`
 * (search.c) and the serve request parser (http_api.c), so both see the
 * same pixels and print the same numbers.  Pure functions; no MPI, no
 * threads of their own.
 */
#ifndef AESIM_SEARCH_INPUT_H
#define AESIM_SEARCH_INPUT_H

#include <stdint.h>

#include "data/image_decode.h"
#include "search/knn.h"

/* Background under transparent pixels of query images: white, as for image
 * folders (dataset.h bg default). */
extern const uint8_t SEARCH_IMAGE_BG[3];

/* Local.  A decoded PNG/JPEG as the model's input: composited over
 * SEARCH_IMAGE_BG, converted to C channels and resized to H x W with the box
 * filter after a centre crop (image_convert.h), as the dataset layer does
 * for image folders.  pix[C][H][W] uint8 is the converted image, out (may be
 * NULL) the same as floats / 255 (what search_encode takes). */
void search_image_to_input(float *out, uint8_t *pix, const DecodedImage *im, int C, int H, int W);

/* The distance reported to users: squared L2, or 1 - cosine similarity
 * (KNN_IP scores). */
double search_out_dist(KnnMetric metric, float d);

#endif
