/*
 * maxpool.c - 2x2 stride-2 max-pooling, forward and backward (see maxpool.h).
 * Threading: OpenMP over the N*C planes (each thread writes whole planes of
 * y or dx); serial below MAXPOOL_OMP_MIN_ELEMS input elements.
 */
#include "maxpool.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>

/* Below this many input elements (128 KiB of floats) the loops stay serial:
 * waking an OpenMP team costs more than the work. */
#define MAXPOOL_OMP_MIN_ELEMS ((size_t)32768)

/* Row-major position (0..3) of the winner of the window whose top row starts
 * at r0 and bottom row at r1, and its value in *maxval.  The rule is PyTorch's
 * CPU kernel: start at -inf, take a value if it is > the current maximum or
 * NaN, so ties go to the first maximum and NaN propagates. */
static int window_argmax(const float *r0, const float *r1, float *maxval)
{
    const float v[4] = {r0[0], r0[1], r1[0], r1[1]};
    float best = -INFINITY;
    int arg = 0;
    for (int i = 0; i < 4; i++) {
        if (v[i] > best || isnan(v[i])) {
            best = v[i];
            arg = i;
        }
    }
    *maxval = best;
    return arg;
}

void maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int OH = H / 2, OW = W / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= MAXPOOL_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xp = x + pc * in_plane;
        float *yp = y + pc * out_plane;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = xp + (size_t)(2 * oh) * W, *r1 = r0 + W;
            for (int ow = 0; ow < OW; ow++) {
                float m;
                (void)window_argmax(r0 + 2 * ow, r1 + 2 * ow, &m);
                yp[(size_t)oh * OW + ow] = m;
            }
        }
    }
}

void maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int OH = H / 2, OW = W / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= MAXPOOL_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xp = x + pc * in_plane, *dyp = dy + pc * out_plane;
        float *dxp = dx + pc * in_plane;
        for (int oh = 0; oh < OH; oh++) {
            const size_t top = (size_t)(2 * oh) * W;
            for (int ow = 0; ow < OW; ow++) {
                float m;
                const int arg = window_argmax(xp + top + 2 * ow, xp + top + W + 2 * ow, &m);
                float *d0 = dxp + top + 2 * ow, *d1 = d0 + W;
                const float g = dyp[(size_t)oh * OW + ow];
                d0[0] = arg == 0 ? g : 0.0f;
                d0[1] = arg == 1 ? g : 0.0f;
                d1[0] = arg == 2 ? g : 0.0f;
                d1[1] = arg == 3 ? g : 0.0f;
            }
        }
    }
}
