/*
 * im2col.c - unfold/fold for KxK stride-1 'same' convolution (see im2col.h).
 *
 * For each column-matrix row (c, ki, kj) the source is the channel plane
 * shifted by (ki - K/2, kj - K/2), so each output row oh is one contiguous
 * run of the input row ih = oh + ki - K/2 (memcpy-able), with zeros where
 * the shift leaves the image.  Serial; no allocation.
 */
#include "im2col.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

/* Columns ow whose source iw = ow + dx lies in [0, W): [*lo, *hi). */
static void valid_range(int W, int dx, int *lo, int *hi)
{
    *lo = dx < 0 ? -dx : 0;
    *hi = dx > 0 ? W - dx : W;
    if (*hi < *lo) *hi = *lo;  /* shift wider than the image: nothing valid */
}

void im2col(float *col, const float *x, int C, int H, int W, int K)
{
    assert(C >= 1 && H >= 1 && W >= 1 && K >= 1 && K % 2 == 1);
    const int pad = K / 2;
    const size_t plane = (size_t)H * W;
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * plane;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                float *row = col + ((size_t)(c * K + ki) * K + kj) * plane;
                const int dy = ki - pad, dx = kj - pad;
                int lo, hi;
                valid_range(W, dx, &lo, &hi);
                for (int oh = 0; oh < H; oh++) {
                    float *dst = row + (size_t)oh * W;
                    const int ih = oh + dy;
                    if (ih < 0 || ih >= H || hi == lo) {
                        memset(dst, 0, sizeof(float) * (size_t)W);
                        continue;
                    }
                    const float *src = xc + (size_t)ih * W;
                    for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
                    memcpy(dst + lo, src + lo + dx, sizeof(float) * (size_t)(hi - lo));
                    for (int ow = hi; ow < W; ow++) dst[ow] = 0.0f;
                }
            }
        }
    }
}

void col2im(float *x, const float *col, int C, int H, int W, int K)
{
    assert(C >= 1 && H >= 1 && W >= 1 && K >= 1 && K % 2 == 1);
    const int pad = K / 2;
    const size_t plane = (size_t)H * W;
    for (int c = 0; c < C; c++) {
        float *xc = x + (size_t)c * plane;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                const float *row = col + ((size_t)(c * K + ki) * K + kj) * plane;
                const int dy = ki - pad, dx = kj - pad;
                int lo, hi;
                valid_range(W, dx, &lo, &hi);
                for (int oh = 0; oh < H; oh++) {
                    const int ih = oh + dy;
                    if (ih < 0 || ih >= H) continue;
                    const float *src = row + (size_t)oh * W;
                    float *dst = xc + (size_t)ih * W;
                    for (int ow = lo; ow < hi; ow++) dst[ow + dx] += src[ow];
                }
            }
        }
    }
}
