/*
 * proj_head.h - SimCLR's projection head g(h) = W2 ReLU(W1 h + b1) + b2:
 * the small MLP between the encoder's representation and the contrastive
 * loss (T. Chen et al., "A Simple Framework for Contrastive Learning of
 * Visual Representations", ICML 2020, section 2.1 and 4.2: the loss is
 * taken on g(h), the representation used afterwards is h, which then keeps
 * more of the image than g(h) does).  PyTorch twin: nn.Sequential(
 * nn.Linear(in, hid), nn.ReLU(), nn.Linear(hid, hid)), whose state_dict
 * names are 0.weight [hid][in], 0.bias [hid], 2.weight [hid][hid], 2.bias.
 *
 * Parameters: one float block params[n] = w1 [hid][in], b1 [hid],
 * w2 [hid][hid], b2 [hid] (row-major, as nn.Linear's weight), gradients in
 * grads[n] with the same layout.  Glorot-uniform weights, zero biases, as
 * aesim's convolutions (Keras defaults).
 *
 * Threading: none (serial loops in a fixed order): every rank that runs the
 * same rows with the same weights gets the same bits (the trainer has each
 * rank compute the head's gradient over the whole gathered global batch,
 * so no allreduce is needed).  Allocation failure ends the job (check.h); no other
 * errors.
 */
#ifndef AESIM_PROJ_HEAD_H
#define AESIM_PROJ_HEAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct ProjHead {
    int in, hid;      /* input width (the representation) and hidden = output width */
    int max_rows;     /* rows a forward pass may take */
    size_t n;         /* parameters: hid*in + hid + hid*hid + hid */
    float *params;    /* [n] w1, b1, w2, b2 */
    float *grads;     /* [n] same layout; proj_head_backward overwrites */
    float *a1;        /* [max_rows][hid] ReLU(W1 x + b1) of the last forward */
    float *out;       /* [max_rows][hid] g(x) of the last forward */
    float *da1;       /* [max_rows][hid] work array of the backward */
} ProjHead;

/* Allocates a head for in >= 1 inputs and hid >= 1 units, up to max_rows
 * rows per pass, with Glorot-uniform weights (limit sqrt(6 / (fan_in +
 * fan_out))) drawn from rng stream (seed, 0x68656164 "head") and zero
 * biases. */
void proj_head_init(ProjHead *h, int in, int hid, int max_rows, uint64_t seed);
void proj_head_free(ProjHead *h);

/* One parameter tensor of the head: its PyTorch state_dict name ("0.weight",
 * "0.bias", "2.weight", "2.bias"), offset in params (and grads), shape. */
typedef struct ProjHeadTensor {
    const char *name;
    size_t offset;
    int ndim;
    int64_t shape[2];
} ProjHeadTensor;

/* The four tensors w1 [hid][in], b1 [hid], w2 [hid][hid], b2 [hid], in
 * that order. */
void proj_head_tensors(const ProjHead *h, ProjHeadTensor t[4]);

/* out[rows][hid] = W2 ReLU(W1 x + b1) + b2 for x[rows][in], rows <=
 * max_rows; returns h->out (valid until the next forward). */
const float *proj_head_forward(ProjHead *h, const float *x, int rows);

/* Backward of the last forward (same x and rows): given dout[rows][hid],
 * overwrites h->grads with dL/d(params) and dx[rows][in] with dL/dx (dx
 * may be NULL).  Sums run in double. */
void proj_head_backward(ProjHead *h, float *dx, const float *dout, const float *x, int rows);

#endif
