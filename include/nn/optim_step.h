/*
 * optim_step.h - parameter updates: Adam and SGD with momentum, float32.
 *
 * Both follow the torch.optim single-tensor code paths (PyTorch 1.13,
 * torch/optim/adam.py _single_tensor_adam and sgd.py _single_tensor_sgd)
 * without weight decay, amsgrad, nesterov or dampening.  State (m, v, buf)
 * is owned by the caller, one float per parameter, zero-initialised before
 * the first step.
 *
 * Threading: OpenMP over parameters, serial below a size threshold.
 * No MPI here: gradients arrive already averaged over ranks.
 */
#ifndef AESIM_OPTIM_STEP_H
#define AESIM_OPTIM_STEP_H

#include <stddef.h>
#include <stdint.h>

typedef struct AdamConfig { float lr, beta1, beta2, eps; } AdamConfig;  /* defaults lr 1e-3, 0.9, 0.999, 1e-7 */

/* The defaults above (Keras' Adam; note torch.optim.Adam's default eps is 1e-8). */
#define ADAM_CONFIG_DEFAULT ((AdamConfig){.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-7f})

/* One Adam step on n parameters p[n] with gradient g[n], torch.optim.Adam
 * formula (Kingma & Ba 2015, Algorithm 1, eps added to sqrt(v_hat)):
 *   m = beta1*m + (1-beta1)*g            v = beta2*v + (1-beta2)*g*g
 *   p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
 * t = step number starting at 1 (bias corrections computed in double, as
 * Python does).  m[n], v[n] updated in place. */
void adam_step(float *p, const float *g, float *m, float *v, size_t n, const AdamConfig *c, int64_t t);

/* torch.optim.SGD(momentum=mu, dampening 0, nesterov False):
 * buf = mu*buf + g; p -= lr*buf (buf[n] starts at 0, updated in place). */
void sgd_step(float *p, const float *g, float *buf, size_t n, float lr, float momentum);

#endif
