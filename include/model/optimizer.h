/*
 * optimizer.h - optimizer state over the model's flat parameter block:
 * Adam first/second moments or SGD momentum buffers, the step count, and the
 * hyper-parameters.  The update math lives in optim.h (adam_step, sgd_step).
 *
 * Every rank holds the same state and applies the same update to the same
 * averaged gradient, so parameters stay bitwise identical across ranks.
 * Single-threaded dispatch; no MPI; no I/O (checkpoints: ckpt.h).
 */
#ifndef AESIM_OPTIMIZER_H
#define AESIM_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

#include "nn/optim_step.h"

typedef enum { OPT_ADAM = 0, OPT_SGD = 1 } OptKind;

/* The hyper-parameter ranges aesim-train accepts (--lr, --beta1, --beta2,
 * --eps, --momentum; train_args.c) and that a checkpoint's meta.hparams must
 * hold (ckpt.h), inclusive.  The values are used as float: the beta bounds
 * stay below 1 after rounding to float (beta2 = 1 would make Adam's bias
 * correction 1 - beta2^t zero: a division by zero at the first step). */
#define OPTIMIZER_LR_MIN 0.0
#define OPTIMIZER_LR_MAX 1e3
#define OPTIMIZER_BETA1_MAX 0.999999
#define OPTIMIZER_BETA2_MAX 0.9999999 /* float 0.99999988 */
#define OPTIMIZER_EPS_MIN 1e-30
#define OPTIMIZER_EPS_MAX 1.0
#define OPTIMIZER_MOMENTUM_MAX 0.999999

typedef struct Optimizer {
    OptKind kind;
    AdamConfig adam;   /* lr, beta1, beta2, eps (Adam); lr also used by SGD */
    float momentum;    /* SGD momentum mu */
    size_t n;          /* parameters */
    float *m;          /* [n] Adam first moment, or SGD momentum buffer */
    float *v;          /* [n] Adam second moment (NULL for SGD) */
    int64_t t;         /* steps taken so far (Adam bias correction uses t+1) */
} Optimizer;

/* Name of a kind ("adam", "sgd"). */
const char *optimizer_name(OptKind kind);

/* Allocates zeroed state for n parameters (allocation failure ends the job). */
void optimizer_init(Optimizer *o, OptKind kind, const AdamConfig *adam, float momentum, size_t n);
void optimizer_free(Optimizer *o);

/* Applies one update p -= f(g) to params[n] with gradient grads[n] and
 * increments t. */
void optimizer_step(Optimizer *o, float *params, const float *grads);

#endif
