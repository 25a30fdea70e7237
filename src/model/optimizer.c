/*
 * optimizer.c - optimizer state and update dispatch (see optimizer.h).
 * The update kernels are in optim.c; this file only owns the buffers.
 */
#include "model/optimizer.h"

#include <stdlib.h>
#include <string.h>

#include "base/check.h"

const char *optimizer_name(OptKind kind) { return kind == OPT_ADAM ? "adam" : "sgd"; }

void optimizer_init(Optimizer *o, OptKind kind, const AdamConfig *adam, float momentum, size_t n)
{
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->adam = *adam;
    o->momentum = momentum;
    o->n = n;
    o->m = xcalloc(n, sizeof(float));
    if (kind == OPT_ADAM) o->v = xcalloc(n, sizeof(float));
}

void optimizer_free(Optimizer *o)
{
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

void optimizer_step(Optimizer *o, float *params, const float *grads)
{
    o->t++;
    if (o->kind == OPT_ADAM)
        adam_step(params, grads, o->m, o->v, o->n, &o->adam, o->t);
    else
        sgd_step(params, grads, o->m, o->n, o->adam.lr, o->momentum);
}
