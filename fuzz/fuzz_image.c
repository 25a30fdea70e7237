/*
 * fuzz_image.c - libFuzzer target for PNG (libpng) and JPEG (libjpeg-turbo)
 * decoding and the conversion pipeline (src/data/image_decode.c,
 * src/data/image_convert.c): decode with a small pixel limit, then composite,
 * crop and area-resize to two target shapes.
 */
#include <stdlib.h>

#include "base/check.h"
#include "data/image_convert.h"
#include "data/image_decode.h"

/* Pixel limit: keeps each run fast and memory small. */
#define FUZZ_MAX_PIXELS (1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    DecodedImage im;
    Err err;
    if (image_decode(&im, data, size, "fuzz.img", FUZZ_MAX_PIXELS, &err) != AE_OK) return 0;
    static const uint8_t bg[3] = {255, 128, 0};
    uint8_t *out = xmalloc(3 * 7 * 5);
    image_convert(out, 3, 7, 5, &im, bg, DATASET_FIT_CROP);
    image_convert(out, 1, 5, 7, &im, bg, DATASET_FIT_SQUASH);
    free(out);
    image_free(&im);
    return 0;
}
