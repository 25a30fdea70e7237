/*
 * im2col.c - unfold/fold for KxK stride-1 'same' convolution (see im2col.h).
 *
 * For each column-matrix row (c, ki, kj) the source is the channel plane
 * shifted by (ki - K/2, kj - K/2), so each output row oh is one contiguous
 * run of the input row ih = oh + ki - K/2 (memcpy-able), with zeros where
 * the shift leaves the image.  col2im adds each such run back; its AVX-512
 * variant (GCC target attribute, chosen by the caller) vectorises that add.
 * Serial; no allocation.
 */
#include "nn/im2col.h"

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

/* dst[i] += src[i] for i in [0, n): one row segment of the fold. */
typedef void (*RowAdd)(float *dst, const float *src, int n);

static void row_add_scalar(float *dst, const float *src, int n)
{
    for (int i = 0; i < n; i++) dst[i] += src[i];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

/* Floats per zmm register. */
#define ZMM_FLOATS 16

__attribute__((target("avx512f"))) static void row_add_avx512(float *dst, const float *src, int n)
{
    int i = 0;
    for (; i + ZMM_FLOATS <= n; i += ZMM_FLOATS)
        _mm512_storeu_ps(dst + i, _mm512_add_ps(_mm512_loadu_ps(dst + i), _mm512_loadu_ps(src + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + i), _mm512_maskz_loadu_ps(m, src + i)));
    }
}
#else
#define row_add_avx512 row_add_scalar
#endif

static void col2im_rows(float *x, const float *col, int C, int H, int W, int K, RowAdd add)
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
                    if (hi > lo) add(dst + lo + dx, src + lo, hi - lo);
                }
            }
        }
    }
}

void col2im(float *x, const float *col, int C, int H, int W, int K)
{
    col2im_rows(x, col, C, H, W, K, row_add_scalar);
}

void col2im_avx512(float *x, const float *col, int C, int H, int W, int K)
{
    col2im_rows(x, col, C, H, W, K, row_add_avx512);
}
