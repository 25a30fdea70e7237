/*
 * act.c - ReLU and sigmoid, forward and backward (see act.h).
 * Threading: OpenMP over elements (each thread writes its own elements, so
 * in-place use is safe); serial below ACT_OMP_MIN_ELEMS.
 */
#include "act.h"

#include <math.h>

/* Below this many elements (128 KiB of floats) the loops stay serial: waking
 * an OpenMP team costs microseconds, more than the work itself. */
#define ACT_OMP_MIN_ELEMS ((size_t)32768)

void relu_forward(float *y, const float *x, size_t n)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = (v > 0.0f || isnan(v)) ? v : 0.0f;  /* torch.relu lets NaN through */
    }
}

void relu_backward(float *dx, const float *dy, const float *y, size_t n)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void sigmoid_forward(float *y, const float *x, size_t n)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        if (v >= 0.0f) {
            y[i] = 1.0f / (1.0f + expf(-v));  /* exp(-v) <= 1: no overflow */
        } else {
            /* 1/(1+exp(-v)) would overflow exp(-v) to inf for v < -88 and
             * flush the result to 0; e/(1+e) with e = exp(v) < 1 keeps tiny
             * outputs (down to the subnormal range) instead. */
            const float e = expf(v);
            y[i] = e / (1.0f + e);
        }
    }
}

void sigmoid_backward(float *dx, const float *dy, const float *y, size_t n)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i]) * y[i];  /* PyTorch's order of products */
}
