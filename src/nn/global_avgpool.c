/*
 * global_avgpool.c - global average pooling over each NCHW channel plane
 * and its backward (see include/nn/global_avgpool.h).
 */
#include "nn/global_avgpool.h"

#include <stddef.h>

void global_avgpool_forward(float *y, const float *x, int N, int C, int HW)
{
    const double inv = 1.0 / HW;
    for (size_t p = 0; p < (size_t)N * C; p++) {
        const float *xp = x + p * HW;
        double s = 0;
        for (int k = 0; k < HW; k++) s += xp[k];
        y[p] = (float)(s * inv);
    }
}

void global_avgpool_backward(float *dx, const float *dy, int N, int C, int HW)
{
    for (size_t p = 0; p < (size_t)N * C; p++) {
        const float g = dy[p] / (float)HW;
        float *dp = dx + p * HW;
        for (int k = 0; k < HW; k++) dp[k] = g;
    }
}
