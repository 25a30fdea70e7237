/*
 * upsample.c - 2x nearest-neighbour upsampling, forward and backward (see
 * upsample.h).  Threading: OpenMP over the N*C planes (each thread writes
 * whole output planes); serial below UPSAMPLE_OMP_MIN_ELEMS elements.
 */
#include "upsample.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

/* Below this many small-side elements (128 KiB of floats) the loops stay
 * serial: waking an OpenMP team costs more than the work. */
#define UPSAMPLE_OMP_MIN_ELEMS ((size_t)32768)

void upsample2x_forward(float *y, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const size_t OW = 2 * (size_t)W;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= UPSAMPLE_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xp = x + pc * in_plane;
        float *yp = y + pc * out_plane;
        for (int i = 0; i < H; i++) {
            const float *src = xp + (size_t)i * W;
            float *even = yp + (size_t)(2 * i) * OW;
            for (int j = 0; j < W; j++) even[2 * j] = even[2 * j + 1] = src[j];
            memcpy(even + OW, even, sizeof(float) * OW);  /* odd row = even row */
        }
    }
}

void upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const size_t OW = 2 * (size_t)W;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= UPSAMPLE_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) {
        const float *dyp = dy + pc * out_plane;
        float *dxp = dx + pc * in_plane;
        for (int i = 0; i < H; i++) {
            const float *r0 = dyp + (size_t)(2 * i) * OW, *r1 = r0 + OW;
            float *d = dxp + (size_t)i * W;
            /* Row-major order over the block, as PyTorch's CPU backward adds. */
            for (int j = 0; j < W; j++) d[j] = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
        }
    }
}
