/*
 * optim.c - Adam and SGD-with-momentum updates (see optim_step.h).
 *
 * The float operations follow torch.optim's single-tensor path in order
 * (PyTorch 1.13 adam.py/_single_tensor_adam, sgd.py/_single_tensor_sgd), with
 * the per-step scalars (bias corrections) in double as Python computes them.
 * Threading: OpenMP over parameters (each thread owns its elements); serial
 * below OPTIM_OMP_MIN_ELEMS.
 */
#include "nn/optim_step.h"

#include <assert.h>
#include <math.h>

/* Below this many parameters (128 KiB of floats) the loops stay serial:
 * waking an OpenMP team costs more than the work. */
#define OPTIM_OMP_MIN_ELEMS ((size_t)32768)

void adam_step(float *p, const float *g, float *m, float *v, size_t n, const AdamConfig *c, int64_t t)
{
    assert(t >= 1);
    const double bias_correction1 = 1.0 - pow((double)c->beta1, (double)t);
    const double bias_correction2 = 1.0 - pow((double)c->beta2, (double)t);
    const float step_size = (float)((double)c->lr / bias_correction1);
    const float bc2_sqrt = (float)sqrt(bias_correction2);
    const float beta1 = c->beta1, beta2 = c->beta2, eps = c->eps;
    const float one_minus_beta1 = (float)(1.0 - (double)beta1);
    const float one_minus_beta2 = (float)(1.0 - (double)beta2);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= OPTIM_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i];
        const float mi = m[i] * beta1 + one_minus_beta1 * gi;
        const float vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;  /* eps outside the sqrt (Algorithm 1) */
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] + (-step_size) * (mi / denom);
    }
}

void sgd_step(float *p, const float *g, float *buf, size_t n, float lr, float momentum)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= OPTIM_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const float b = buf[i] * momentum + g[i];
        buf[i] = b;
        p[i] = p[i] + (-lr) * b;
    }
}
