/*
 * loss.c - mean squared error sum and gradient (see loss.h).
 * Threading: OpenMP over elements (a double `reduction` for the sum); serial
 * below LOSS_OMP_MIN_ELEMS.  No MPI: callers allreduce the sum.
 */
#include "loss.h"

/* Below this many elements (128 KiB of floats) the loops stay serial:
 * waking an OpenMP team costs more than the work. */
#define LOSS_OMP_MIN_ELEMS ((size_t)32768)

double mse_sum(const float *y, const float *t, size_t n)
{
    double s = 0.0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(+ : s) if (n >= LOSS_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const double d = (double)y[i] - (double)t[i];
        s += d * d;
    }
    return s;
}

void mse_backward(float *dy, const float *y, const float *t, size_t n, double inv_count)
{
    const float norm = (float)(2.0 * inv_count);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= LOSS_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dy[i] = norm * (y[i] - t[i]);
}
