/*
 * image_convert.c - compositing, channel conversion, crop and area resize
 * (see include/data/image_convert.h for the exact definitions).
 *
 * Integer arithmetic throughout so that results do not depend on the
 * compiler or the thread count.  Serial; callers parallelise over images.
 * No MPI.
 */
#include "data/image_convert.h"

#include "base/check.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* 8-bit sample maximum (opaque alpha). */
#define SAMPLE_MAX 255

static uint8_t over(int c, int a, int bg)
{
    return (uint8_t)((c * a + bg * (SAMPLE_MAX - a) + SAMPLE_MAX / 2) / SAMPLE_MAX);
}

void image_to_planar(uint8_t *out, const DecodedImage *im, int C, const uint8_t bg[3])
{
    assert(C == 1 || C == 3);
    int64_t hw = (int64_t)im->w * im->h;
    int ch = im->channels;
    uint8_t *o0 = out, *o1 = out + (C == 3 ? hw : 0), *o2 = out + (C == 3 ? 2 * hw : 0);
    for (int64_t i = 0; i < hw; i++) {
        const uint8_t *s = im->px + i * ch;
        int r, g, b;
        if (ch <= 2) r = g = b = s[0];
        else {
            r = s[0];
            g = s[1];
            b = s[2];
        }
        if (ch == 2 || ch == 4) {
            int a = s[ch - 1];
            r = over(r, a, bg[0]);
            g = over(g, a, bg[1]);
            b = over(b, a, bg[2]);
        }
        if (C == 1) {
            o0[i] = image_luma(r, g, b);
        } else {
            o0[i] = (uint8_t)r;
            o1[i] = (uint8_t)g;
            o2[i] = (uint8_t)b;
        }
    }
}

void image_planar_channels(uint8_t *out, int C, const uint8_t *in, int C0, int64_t hw)
{
    assert((C == 1 || C == 3) && (C0 == 1 || C0 == 3));
    if (C == C0) {
        memcpy(out, in, (size_t)(C * hw));
    } else if (C == 3) {
        for (int c = 0; c < 3; c++) memcpy(out + c * hw, in, (size_t)hw);
    } else {
        for (int64_t i = 0; i < hw; i++) out[i] = image_luma(in[i], in[hw + i], in[2 * hw + i]);
    }
}

void image_fit_region(int *x0, int *y0, int *rw, int *rh, int w, int h, int W, int H, DatasetFit fit)
{
    *x0 = *y0 = 0;
    *rw = w;
    *rh = h;
    if (fit == DATASET_FIT_SQUASH) return;
    int64_t lhs = (int64_t)w * H, rhs = (int64_t)W * h;
    if (lhs > rhs) { /* wider than the target: keep the height */
        int64_t cw = ((int64_t)h * W * 2 + H) / (2 * (int64_t)H); /* round(h*W/H), halves up */
        if (cw < 1) cw = 1;
        if (cw > w) cw = w;
        *rw = (int)cw;
        *x0 = (w - *rw) / 2;
    } else if (lhs < rhs) {
        int64_t chh = ((int64_t)w * H * 2 + W) / (2 * (int64_t)W);
        if (chh < 1) chh = 1;
        if (chh > h) chh = h;
        *rh = (int)chh;
        *y0 = (h - *rh) / 2;
    }
}

/* Overlap weights of one axis: output cell j covers [j*n, (j+1)*n) and
 * input pixel k covers [k*N, (k+1)*N) on a common grid of n*N units (n
 * input pixels, N output cells).  first[j] is the first input pixel with a
 * non-zero weight, count[j] how many, wt the weights (sum n per cell). */
typedef struct AxisWeights {
    int *first, *count;
    int64_t *wt;  /* [N][maxcount] */
    int maxcount;
} AxisWeights;

static void axis_weights(AxisWeights *a, int n, int N)
{
    /* A cell spans n units and a pixel N units: it touches at most
     * n/N + 2 pixels. */
    a->maxcount = n / N + 2;
    a->first = xmalloc((size_t)N * sizeof *a->first);
    a->count = xmalloc((size_t)N * sizeof *a->count);
    a->wt = xcalloc((size_t)N * (size_t)a->maxcount, sizeof *a->wt);
    for (int j = 0; j < N; j++) {
        int64_t lo = (int64_t)j * n, hi = lo + n;
        int k0 = (int)(lo / N), k1 = (int)((hi - 1) / N);
        a->first[j] = k0;
        a->count[j] = k1 - k0 + 1;
        assert(a->count[j] <= a->maxcount);
        for (int k = k0; k <= k1; k++) {
            int64_t plo = (int64_t)k * N, phi = plo + N;
            int64_t ov = (hi < phi ? hi : phi) - (lo > plo ? lo : plo);
            a->wt[(size_t)j * a->maxcount + (k - k0)] = ov;
        }
    }
}

static void axis_free(AxisWeights *a)
{
    free(a->first);
    free(a->count);
    free(a->wt);
}

void image_resize_area(uint8_t *out, int W, int H, const uint8_t *in, int w, int h, int C, int x0, int y0, int rw,
                       int rh)
{
    assert(W >= 1 && H >= 1 && rw >= 1 && rh >= 1 && x0 >= 0 && y0 >= 0 && x0 + rw <= w && y0 + rh <= h);
    if (rw == W && rh == H) { /* identity: copy the region */
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                memcpy(out + ((size_t)c * H + y) * W, in + ((size_t)c * h + y0 + y) * w + x0, (size_t)W);
        return;
    }
    AxisWeights ax, ay;
    axis_weights(&ax, rw, W);
    axis_weights(&ay, rh, H);
    /* Horizontal pass into tmp[rh][W] (sums of weight * sample <= rw*255),
     * then vertical; the total area of a cell is rw * rh units^2. */
    int64_t *tmp = xmalloc((size_t)rh * (size_t)W * sizeof *tmp);
    int64_t area = (int64_t)rw * rh;
    for (int c = 0; c < C; c++) {
        const uint8_t *plane = in + (size_t)c * h * w;
        for (int y = 0; y < rh; y++) {
            const uint8_t *row = plane + (size_t)(y0 + y) * w + x0;
            for (int j = 0; j < W; j++) {
                const int64_t *wt = ax.wt + (size_t)j * ax.maxcount;
                int64_t s = 0;
                for (int k = 0; k < ax.count[j]; k++) s += wt[k] * row[ax.first[j] + k];
                tmp[(size_t)y * W + j] = s;
            }
        }
        uint8_t *op = out + (size_t)c * H * W;
        for (int i = 0; i < H; i++) {
            const int64_t *wt = ay.wt + (size_t)i * ay.maxcount;
            for (int j = 0; j < W; j++) {
                int64_t s = 0;
                for (int k = 0; k < ay.count[i]; k++) s += wt[k] * tmp[(size_t)(ay.first[i] + k) * W + j];
                int64_t v = (2 * s + area) / (2 * area); /* round half up */
                op[(size_t)i * W + j] = (uint8_t)(v > SAMPLE_MAX ? SAMPLE_MAX : v);
            }
        }
    }
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
}

void image_convert(uint8_t *out, int C, int H, int W, const DecodedImage *im, const uint8_t bg[3], DatasetFit fit)
{
    int x0, y0, rw, rh;
    image_fit_region(&x0, &y0, &rw, &rh, im->w, im->h, W, H, fit);
    if (rw == W && rh == H && x0 == 0 && y0 == 0 && im->w == W && im->h == H) {
        image_to_planar(out, im, C, bg);
        return;
    }
    uint8_t *planar = xmalloc((size_t)C * im->w * im->h);
    image_to_planar(planar, im, C, bg);
    image_resize_area(out, W, H, planar, im->w, im->h, C, x0, y0, rw, rh);
    free(planar);
}
