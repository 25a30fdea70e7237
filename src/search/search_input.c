/*
 * search_input.c - query image -> model input, and the reported distance
 * (see include/search_input.h).
 */
#include "search/search_input.h"

#include "data/image_convert.h"

const uint8_t SEARCH_IMAGE_BG[3] = { 255, 255, 255 };

void search_image_to_input(float *out, uint8_t *pix, const DecodedImage *im, int C, int H, int W)
{
    image_convert(pix, C, H, W, im, SEARCH_IMAGE_BG, DATASET_FIT_CROP);
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    if (out)
        for (size_t j = 0; j < chw; j++) out[j] = (float)pix[j] / 255.0f;
}

double search_out_dist(KnnMetric metric, float d) { return metric == KNN_IP ? 1.0 - (double)d : (double)d; }
