/*
 * proj_head.c - the SimCLR projection head (see include/nn/proj_head.h):
 * two dense layers with a ReLU between, forward and backward, serial.
 */
#include "nn/proj_head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/rng.h"

void proj_head_tensors(const ProjHead *h, ProjHeadTensor t[4])
{
    const size_t w1 = (size_t)h->hid * h->in, w2 = (size_t)h->hid * h->hid;
    t[0] = (ProjHeadTensor){ "0.weight", 0, 2, { h->hid, h->in } };
    t[1] = (ProjHeadTensor){ "0.bias", w1, 1, { h->hid, 0 } };
    t[2] = (ProjHeadTensor){ "2.weight", w1 + (size_t)h->hid, 2, { h->hid, h->hid } };
    t[3] = (ProjHeadTensor){ "2.bias", w1 + (size_t)h->hid + w2, 1, { h->hid, 0 } };
}

/* Offsets of w1, b1, w2, b2 in params (and grads). */
static void offsets(const ProjHead *h, size_t off[4])
{
    ProjHeadTensor t[4];
    proj_head_tensors(h, t);
    for (int k = 0; k < 4; k++) off[k] = t[k].offset;
}

void proj_head_init(ProjHead *h, int in, int hid, int max_rows, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->in = in;
    h->hid = hid;
    h->max_rows = max_rows;
    h->n = (size_t)hid * in + (size_t)hid + (size_t)hid * hid + (size_t)hid;
    h->params = xcalloc(h->n, sizeof(float));
    h->grads = xcalloc(h->n, sizeof(float));
    h->a1 = xmalloc((size_t)max_rows * hid * sizeof(float));
    h->out = xmalloc((size_t)max_rows * hid * sizeof(float));
    h->da1 = xmalloc((size_t)max_rows * hid * sizeof(float));
    size_t off[4];
    offsets(h, off);
    Rng r;
    rng_seed(&r, seed, 0x68656164u);
    const float l1 = (float)sqrt(6.0 / (in + hid)), l2 = (float)sqrt(6.0 / (hid + hid));
    for (size_t i = 0; i < (size_t)hid * in; i++) h->params[off[0] + i] = rng_uniform_f32(&r, -l1, l1);
    for (size_t i = 0; i < (size_t)hid * hid; i++) h->params[off[2] + i] = rng_uniform_f32(&r, -l2, l2);
}

void proj_head_free(ProjHead *h)
{
    free(h->params);
    free(h->grads);
    free(h->a1);
    free(h->out);
    free(h->da1);
    memset(h, 0, sizeof *h);
}

/* y[rows][o] = x[rows][i] W^T + b (W [o][i]), sums in double. */
static void dense(float *y, const float *x, const float *w, const float *b, int rows, int in, int out)
{
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            const float *wo = w + (size_t)o * in, *xr = x + (size_t)r * in;
            double s = b[o];
            for (int i = 0; i < in; i++) s += (double)wo[i] * xr[i];
            y[(size_t)r * out + o] = (float)s;
        }
}

/* dW[o][i] = sum_r dy[r][o] x[r][i]; db[o] = sum_r dy[r][o]; dx[r][i] =
 * sum_o dy[r][o] W[o][i] (dx may be NULL).  Overwrites. */
static void dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int rows,
                           int in, int out)
{
    for (int o = 0; o < out; o++) {
        double sb = 0;
        for (int r = 0; r < rows; r++) sb += dy[(size_t)r * out + o];
        db[o] = (float)sb;
        for (int i = 0; i < in; i++) {
            double s = 0;
            for (int r = 0; r < rows; r++) s += (double)dy[(size_t)r * out + o] * x[(size_t)r * in + i];
            dw[(size_t)o * in + i] = (float)s;
        }
    }
    if (!dx) return;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < in; i++) {
            double s = 0;
            for (int o = 0; o < out; o++) s += (double)dy[(size_t)r * out + o] * w[(size_t)o * in + i];
            dx[(size_t)r * in + i] = (float)s;
        }
}

const float *proj_head_forward(ProjHead *h, const float *x, int rows)
{
    CHECK(rows <= h->max_rows);
    size_t off[4];
    offsets(h, off);
    dense(h->a1, x, h->params + off[0], h->params + off[1], rows, h->in, h->hid);
    for (size_t k = 0; k < (size_t)rows * h->hid; k++)
        if (!(h->a1[k] > 0)) h->a1[k] = 0;
    dense(h->out, h->a1, h->params + off[2], h->params + off[3], rows, h->hid, h->hid);
    return h->out;
}

void proj_head_backward(ProjHead *h, float *dx, const float *dout, const float *x, int rows)
{
    size_t off[4];
    offsets(h, off);
    float *g = h->grads, *p = h->params;
    dense_backward(h->da1, g + off[2], g + off[3], dout, h->a1, p + off[2], rows, h->hid, h->hid);
    for (size_t k = 0; k < (size_t)rows * h->hid; k++)
        if (!(h->a1[k] > 0)) h->da1[k] = 0;
    dense_backward(dx, g + off[0], g + off[1], h->da1, x, p + off[0], rows, h->in, h->hid);
}
