/*
 * model.h - the convolutional autoencoder: architecture spec, parameters,
 * forward and backward passes.
 *
 * Shape letters (used throughout aesim): N batch, C/OC channels, H/W height and
 * width, K kernel size, D embedding dim.  Activations are NCHW float32,
 * conv weights [OC][C][K][K] (PyTorch layout).
 *
 * Architecture spec grammar (whitespace- or comma-separated tokens):
 *   cN      conv KxK stride 1 'same' zero padding, N output channels, + ReLU
 *           (K = 3; `cNkK` sets an odd K); the last conv of the model has a
 *           sigmoid instead of ReLU
 *   p       2x2 max-pooling, stride 2 (H and W must be even)
 *   u       2x nearest-neighbour upsampling
 *   |       end of the encoder: the output of the token before it is the
 *           bottleneck (the embedding used for search)
 * e.g. "c16 p c8 p c8 | c16 u c16 u c1".  Presets (exact, from issue 2):
 *   mnist       (28x28x1): c16 p c8 p c8 | c16 u c16 u c1          -> 7x7x8
 *   imagenet32  (32x32x3): c16 c16 p c32 c32 p c8 | c32 u c16 u c16 c3 -> 8x8x8
 *   imagenet64  (64x64x3): c16 c16 p c32 c32 p c32 p c8 | c32 u c32 u c16 u c16 c3 -> 8x8x8
 * A spec is valid for an input CxHxW when: every token parses, channels are in
 * 1..MODEL_MAX_CHANNELS, K is odd and <= MODEL_MAX_KERNEL, every pooling sees
 * even H and W, there is exactly one '|' with at least one layer on each side,
 * the model ends with a conv whose channels equal C, and the output is HxW.
 *
 * Threading: kernels run OpenMP over the images of a batch with single-
 * threaded BLAS inside (see conv2d.h); the Model owns one scratch arena sized
 * for its thread count.  No MPI here: the trainer allreduces model->grads.
 */
#ifndef AESIM_MODEL_H
#define AESIM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "nn/conv2d.h"
#include "base/err.h"

/* Limits that make a spec sane (and keep sizes far from overflow). */
#define MODEL_MAX_LAYERS 64
#define MODEL_MAX_CHANNELS 4096
#define MODEL_MAX_KERNEL 11
/* Longest spec string, bytes including the NUL. */
#define MODEL_SPEC_MAX 1024

/* Arithmetic of the convolutions (issue 16; model_set_precision).
 *   MODEL_FP32  float32 throughout (a new Model; aesim-train resolves its
 *               default --precision auto per CPU, model_precision_resolve).
 *   MODEL_BF16  bf16 mixed precision: every convolution's input, weights
 *               and output gradient (dL/d pre-activation) are rounded to
 *               bfloat16 (nn/bf16.h, round to nearest even) and multiplied
 *               with float32 accumulation; biases, the master weights in
 *               m->params, m->grads, the optimizer, the loss and the
 *               allreduce stay float32, and so do pooling, upsampling and
 *               activations.  The operands are rounded (activations in
 *               place, weights into m->wq, the batch into m->xq); where the
 *               CPU has AVX512_BF16 the direct kernels then multiply them
 *               with VDPBF16PS (conv_direct_bf16.h, m->bf16_kernels), on
 *               other CPUs (or the im2col kernels) the float32 kernels run
 *               on them (the emulation): since bf16 x bf16 products are
 *               exact in float32, both compute the same up to summation
 *               order and subnormals. */
/* MODEL_PRECISION_AUTO is a request, not an arithmetic: the command-line
 * value "auto", turned into MODEL_BF16 or MODEL_FP32 by
 * model_precision_resolve before model_set_precision. */
typedef enum { MODEL_FP32 = 0, MODEL_BF16 = 1, MODEL_PRECISION_AUTO = 2 } ModelPrecision;

typedef enum { LAYER_CONV = 0, LAYER_MAXPOOL = 1, LAYER_UPSAMPLE = 2 } LayerKind;
typedef enum { ACT_RELU = 0, ACT_SIGMOID = 1 } ActKind;

/* One layer: hyper-parameters, shapes, and pointers into the model's blocks. */
typedef struct Layer {
    LayerKind kind;
    ActKind act;          /* conv only */
    Conv2d conv;          /* conv only: w, b, dw, db point into Model blocks */
    int C, H, W;          /* input shape of one image */
    int OC, OH, OW;       /* output shape of one image */
    float *out;           /* [max_batch][OC][OH][OW], post-activation */
} Layer;

/* Parsed architecture, before any allocation. */
typedef struct ModelSpec {
    char text[MODEL_SPEC_MAX];   /* canonical spec, e.g. "c16 p c8 p c8 | c16 u c16 u c1" */
    int C, H, W;                 /* input shape */
    int n_layers, n_encoder;     /* layers [0, n_encoder) form the encoder */
    LayerKind kind[MODEL_MAX_LAYERS];
    int channels[MODEL_MAX_LAYERS];  /* conv output channels */
    int kernel[MODEL_MAX_LAYERS];    /* conv kernel size K */
} ModelSpec;

typedef struct Model {
    ModelSpec spec;
    Layer layers[MODEL_MAX_LAYERS];
    int n_conv;
    size_t n_params;         /* total parameters (all conv weights and biases) */
    float *params;           /* [n_params]: conv0.weight, conv0.bias, conv1.weight, ... */
    float *grads;            /* [n_params] dL/dθ, same order; accumulated by backward */
    int max_batch;           /* images per forward call at most */
    int nthreads;            /* OpenMP threads the kernels use */
    float *input;            /* [max_batch][C][H][W] staging buffer for the caller */
    float *dbuf[2];          /* two [max_batch * largest activation] gradient buffers */
    float *scratch;          /* conv scratch arena, largest layer need */
    float *acts;             /* one block holding every layer's `out` */
    ModelPrecision precision; /* MODEL_FP32 (0) unless model_set_precision */
    float *wq;               /* MODEL_BF16: [n_params] bf16-rounded weights (biases unused), else NULL */
    float *xq;               /* MODEL_BF16: [max_batch][C][H][W] the bf16-rounded batch, else NULL */
    int bf16_kernels;        /* MODEL_BF16: CONV_BF16_* of the direct kernels (conv_direct_bf16.h);
                              * CONV_BF16_OFF (0): float32 kernels on rounded operands */
    int amx;                 /* MODEL_BF16: CONV_AMX_* (nn/conv_amx.h) of the convolutions of the
                              * forward-only passes (model_forward, model_encode) but those fused
                              * with an upsample; CONV_AMX_OFF (0): bf16_kernels there too */
    uint16_t *wamx;          /* amx: every conv's packed AMX weights (conv_amx_pack_weights,
                              * repacked by each forward), layer i's at amx_woff[i]; else NULL */
    size_t amx_woff[MODEL_MAX_LAYERS];
    void *amx_scratch;       /* amx: conv_amx_forward's scratch for the largest layer, else NULL */
} Model;

/* Parses `spec_or_preset` (a preset name or a spec) for input CxHxW into
 * *spec.  Errors: AE_EARG with a message saying which token is wrong or which
 * shape does not work out (and how, e.g. "pooling at 7x7 needs even H and
 * W"), AE_ESHAPE when the output shape does not equal the input's. */
int model_parse(ModelSpec *spec, const char *spec_or_preset, int C, int H, int W, Err *err);

/* The preset for an input shape (28x28x1 -> "mnist", 32x32x3 -> "imagenet32",
 * 64x64x3 -> "imagenet64"), or NULL if there is none. */
const char *model_default_preset(int C, int H, int W);

/* The preset's spec text, or NULL if `name` is not a preset. */
const char *model_preset_spec(const char *name);

/* Allocates the model for a parsed spec: one block each for params, grads,
 * activations, gradient buffers and scratch (never fails: allocation failure
 * ends the job via check.h).  Parameters are zero until model_init_glorot or
 * a checkpoint load.  Free with model_free. */
void model_build(Model *m, const ModelSpec *spec, int max_batch, int nthreads);

/* Bytes model_build and the optimizer (Adam) will allocate for this spec:
 * to refuse, with a message, a model that cannot fit in memory before
 * allocating it. */
double model_memory_bytes(const ModelSpec *spec, int max_batch, int nthreads);
void model_free(Model *m);

/* *out = the precision named by `name`: "fp32" -> MODEL_FP32, "bf16" ->
 * MODEL_BF16, "auto" -> MODEL_PRECISION_AUTO.  Returns AE_OK, or AE_EARG
 * (*out unchanged) naming the value and the accepted ones ("--precision" in
 * the message). */
int model_precision_parse(ModelPrecision *out, const char *name, Err *err);

/* The arithmetic a request gives: MODEL_PRECISION_AUTO -> MODEL_BF16 when
 * all_fast is nonzero (the caller's agreement, over every rank of the job,
 * that conv_bf16_auto_runs_bf16(): the VDPBF16PS kernels run everywhere and
 * the CPU's VDPBF16PS outpaces its float32 FMA, so bf16 is faster and still
 * within the quality gate of the README), else MODEL_FP32 (never the
 * emulation, nor VDPBF16PS where it is slower than float32); MODEL_FP32 and
 * MODEL_BF16 as they are. */
ModelPrecision model_precision_resolve(ModelPrecision request, int all_fast);

/* Why --precision auto runs fp32 on CPUs that have AVX512_BF16, for the log:
 * writes to note[note_size] (NUL-terminated, cut to fit) "auto runs fp32:
 * VDPBF16PS does X.XXx the multiply-adds per second of float32 FMAs on this
 * CPU (bf16 pays from 1.4x); --precision bf16 runs it anyway" ("the slowest
 * rank's CPU" when nranks > 1) and returns 1, when all_fast is 0 and
 * slowest_speedup (the smallest conv_bf16_dot_speedup of the job's ranks) is
 * above 0 (every rank has AVX512_BF16); else writes "" and returns 0 (bf16
 * runs, or a CPU lacks the instruction, which --version says). */
int model_precision_auto_note(char *note, size_t note_size, int all_fast, double slowest_speedup, int nranks);

/* "fp32", "bf16" or "auto" (static string; "?" otherwise). */
const char *model_precision_name(ModelPrecision p);

/* m's arithmetic for logs: "fp32", "bf16 (VDPBF16PS kernels)", "bf16
 * (VDPBF16PS kernels; forward-only passes on AMX tiles)" (m->amx native),
 * "bf16 (VDPBF16PS emulated)" or "bf16 (emulated: float32 kernels on
 * rounded operands)" (static string). */
const char *model_precision_describe(const Model *m);

/* Sets the convolutions' arithmetic (ModelPrecision above) after
 * model_build; MODEL_BF16 allocates m->wq and m->xq (freed by model_free),
 * and where conv_amx_available(CONV_AMX_NATIVE) also sets m->amx to it and
 * allocates m->wamx and m->amx_scratch (model_set_amx).
 * Every later forward rounds the weights from m->params again, so the
 * optimizer keeps updating the float32 master weights.  A backward must
 * follow the forward of the same weights (as model_forward_backward does).
 * With MODEL_BF16 the activations that feed a convolution are stored
 * rounded (layer `out` buffers; the caller's batch x is never modified).
 * MODEL_BF16 picks the VDPBF16PS kernels when
 * conv_bf16_available(CONV_BF16_NATIVE) (m->bf16_kernels = CONV_BF16_NATIVE),
 * else the float32 kernels on rounded operands (CONV_BF16_OFF). */
void model_set_precision(Model *m, ModelPrecision p);

/* MODEL_BF16 only, after model_set_precision: which bf16 arithmetic the
 * direct kernels run (m->bf16_kernels = impl): CONV_BF16_NATIVE (VDPBF16PS),
 * CONV_BF16_EMULATED (the same kernels with the instructions emulated) or
 * CONV_BF16_OFF (float32 kernels on rounded operands); tests and
 * benchmarks compare them.  Returns 1, or 0 (nothing changed) when the
 * model is not MODEL_BF16 or conv_bf16_available(impl) is 0. */
int model_set_bf16_kernels(Model *m, int impl);

/* MODEL_BF16 only, after model_set_precision: whether the forward-only
 * passes (model_forward, model_encode; not model_forward_backward nor
 * model_layer_forward, so training is unchanged) run their convolutions on
 * AMX tiles (nn/conv_amx.h; m->amx = impl): CONV_AMX_NATIVE, CONV_AMX_EMULATED
 * (tests) or CONV_AMX_OFF (the bf16_kernels).  A conv fused with the
 * upsample before it keeps the bf16_kernels; a conv fused with its max-pool
 * runs on AMX, then the pooling (maxpool2x2_forward).  The AMX kernel rounds
 * its input and weights while packing them, so the results are those of
 * the bf16 definition up to float32 summation order.  (Re)allocates
 * m->wamx and m->amx_scratch (freed by model_free and when turned off).
 * Returns 1, or 0 (nothing changed) when the model is not MODEL_BF16 or
 * impl is not CONV_AMX_OFF and conv_amx_available(impl) is 0. */
int model_set_amx(Model *m, int impl);

/* Keras defaults: Glorot-uniform weights, limit sqrt(6 / (fan_in + fan_out))
 * with fan_in = C*K*K, fan_out = OC*K*K (Glorot & Bengio 2010), zero biases.
 * Deterministic for a seed (rng stream 0). */
void model_init_glorot(Model *m, uint64_t seed);

/* Forward pass of N <= max_batch images x[N][C][H][W] (may be m->input).
 * Returns the output [N][C][H][W] in (0,1) (the last layer's `out`).
 * Inference only: with the direct kernel, the `out` of a conv whose max-pool
 * is fused into it is not written (nothing reads it without a backward),
 * nor is the `out` of a fused upsample (model_layer_fused_into); the same
 * holds for model_encode, whose last layer is always written (no fusion
 * crosses the encoder's end).  model_forward_backward keeps every `out` but
 * those of fused upsamples. */
const float *model_forward(Model *m, const float *x, int N);

/* The layer steps model_forward and model_forward_backward are made of, for
 * callers that time or inspect single layers (bench/bench_train --profile).
 *
 * model_layer_forward: layer i on in[N] (the batch x for i = 0, else layer
 * i-1's `out`), writing m->layers[i].out (post-activation); layers fused
 * into a conv (model_layer_fused_into) are computed by that conv's step and
 * their own step does nothing (a fused upsample's `out` is never written):
 * run the steps in order.
 * model_loss_backward: after the forward pass, the MSE loss against the
 * batch x[N] with the output sigmoid's backward (mse_sigmoid_backward):
 * writes dL/d(pre-sigmoid) to g (a [max_batch * largest activation] buffer
 * such as m->dbuf[0]) and returns the sum of squared errors.
 * model_layer_backward: given g = dL/d(output of layer i) (modified in place
 * for an unfused ReLU), writes dL/d(input of layer i) to gnext (not for
 * i = 0) and accumulates the layer's dw/db into m->grads; ReLU backward
 * is fused into the next layer as model_build set it up.  Returns the
 * layer whose step comes next: i - 1, or i - 2 when the step also covered
 * layer i-1 (model_layer_fused_into: a max-pool i with the conv i-1 before
 * it, conv2d_backward_maxpool; a conv i with the upsample i-1 before it,
 * conv2d_backward_upsample); gnext then receives dL/d(input of layer i-1)
 * (nothing when i-1 = 0); -1 when done.  g and gnext are the two
 * m->dbuf buffers, swapped by the caller after each step:
 *   for (i = n - 1; i >= 0; i = next) { next = model_layer_backward(...); swap; } */
void model_layer_forward(Model *m, int i, const float *in, int N);
/* The conv layer whose steps also run layer i, or -1: a max-pool right
 * after a ReLU conv runs inside that conv (i - 1: its forward always, its
 * backward with the direct kernel); an upsample (not the first layer)
 * right before a conv that the direct kernel runs runs inside that conv
 * (i + 1, forward and backward: the upsampled tensor is never stored).
 * A conv fused with the upsample before it keeps the max-pool after it
 * separate, and no fusion crosses the encoder's end (the `|` of the spec).
 * A fused layer's own steps do nothing.  For reports that attribute time
 * to layers. */
int model_layer_fused_into(const Model *m, int i);
double model_loss_backward(Model *m, float *g, const float *x, int N, double inv_count);
int model_layer_backward(Model *m, int i, float *gnext, float *g, const float *x, int N);

/* Encoder only: returns the bottleneck [N][D], D = model_embedding_dim. */
const float *model_encode(Model *m, const float *x, int N);
int model_embedding_dim(const Model *m);
/* Shape of the bottleneck of one image (C, H, W). */
void model_bottleneck_shape(const Model *m, int *C, int *H, int *W);

/* Forward and backward of the MSE reconstruction loss with target = input:
 * L = inv_count * sum over the N images of sum (y - x)^2.  Accumulates dL/dθ
 * into m->grads (call model_zero_grad once per step first) and returns the
 * sum of squared errors (double), so the caller can form the global mean.
 * inv_count is 1 / (global batch images * C*H*W) in data-parallel training. */
double model_forward_backward(Model *m, const float *x, int N, double inv_count);

/* Called by model_forward_backward_hooked as the backward pass walks from
 * the last layer to the first, once after each layer's backward step (for a
 * conv: once its dw and db are complete).  done_offset is the offset in
 * m->grads from which every gradient is final: [done_offset, n_params) will
 * not be written again in this call, so the callee may start communicating
 * it (the trainer's bucketed allreduce, PyTorch DDP's autograd hook).  It
 * never increases and is 0 once the first conv of the model is done; layers
 * without parameters repeat the previous value (n_params before any conv).
 * Called on the calling thread, never inside an OpenMP region; fn must not
 * touch [0, done_offset) of m->grads nor anything else of the model. */
typedef struct ModelGradHook {
    void (*fn)(void *user, size_t done_offset);
    void *user;          /* passed to fn unchanged */
} ModelGradHook;

/* model_forward_backward with a hook (NULL: none, identical to
 * model_forward_backward).  Same result bit for bit: the hook only observes
 * the order in which m->grads is completed. */
double model_forward_backward_hooked(Model *m, const float *x, int N, double inv_count,
                                     const ModelGradHook *hook);

/* Called by model_forward_backward_ex between the forward and the backward
 * pass with the bottleneck z[N][D] (the encoder's output, D =
 * model_embedding_dim); writes dz[N][D] = the gradient of an extra loss term
 * with respect to z (overwritten; the model adds it to the reconstruction
 * gradient arriving at the encoder's end).  May call collectives (the
 * contrastive loss gathers the codes of all ranks); called on the calling
 * thread, outside OpenMP regions. */
typedef struct ModelCodeHook {
    void (*fn)(void *user, float *dz, const float *z, int N, int D);
    void *user;
} ModelCodeHook;

/* model_forward_backward_hooked with the reconstruction target apart from
 * the input (denoising: x is the corrupted image, target the clean one; the
 * loss is inv_count * sum (y - target)^2) and an optional extra gradient at
 * the encoder's end (code: NULL for none).  With target == x and code ==
 * NULL it is model_forward_backward_hooked, bit for bit.  The gradient at
 * the bottleneck is the sum of the decoder's and dz; where the bottleneck
 * layer's ReLU backward is fused into the decoder's first layer, dz is
 * masked by that ReLU (out > 0) before it is added. */
double model_forward_backward_ex(Model *m, const float *x, const float *target, int N, double inv_count,
                                 const ModelGradHook *hook, const ModelCodeHook *code);

void model_zero_grad(Model *m);

/* The gradient slice of every layer with parameters (its dw then db,
 * contiguous in m->grads), from the last layer back: the order
 * model_forward_backward_hooked completes them.  Writes their float counts
 * to sizes[0..return) (room for MODEL_MAX_LAYERS); slice 0 ends at
 * m->n_params and slice k+1 ends where slice k begins (par/grad_sync.h's
 * grad_buckets_partition takes exactly this). */
int model_grad_slices(const Model *m, size_t *sizes);

/* Name of parameter tensor i in 0..2*n_conv ("conv3.weight", "conv3.bias"),
 * its shape (ndim 4 or 1) and its pointer into m->params / m->grads. */
typedef struct ParamTensor {
    char name[32];
    int ndim;
    int64_t shape[4];
    size_t offset, numel;   /* slice of m->params / m->grads */
} ParamTensor;

/* Number of parameter tensors, 2 * (conv layers): weight and bias each. */
int model_num_tensors(const Model *m);

/* Tensor i, 0 <= i < model_num_tensors(m), in checkpoint order (conv0.weight,
 * conv0.bias, conv1.weight, ...); weights [OC][C][K][K] (PyTorch's layout). */
ParamTensor model_tensor(const Model *m, int i);

/* FLOPs of one forward pass of one image, counting 2 per multiply-add of the
 * convolutions (the convention of issue 6). */
double model_forward_flops(const Model *m);

#endif
