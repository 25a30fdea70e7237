/*
 * model.c - autoencoder architecture parsing, allocation, initialisation,
 * forward and backward passes (see include/model/model.h).
 *
 * Data flow: input -> [conv+act | maxpool | upsample]* -> sigmoid output.
 * Each layer's post-activation output is kept for the backward pass, except
 * where a max-pool or upsample is fused into a conv (model_layer_fused_into:
 * the upsampled tensor is never stored; inference also skips a pooled conv's
 * output); the layer kernels (conv2d.c, maxpool.c, upsample.c, act.c,
 * loss.c) do the math.
 * bf16 mixed precision (MODEL_BF16, issue 16): the operands of every
 * convolution are rounded right before it runs (conv_input, layer_conv,
 * round_grad below); the direct kernels then multiply them with VDPBF16PS
 * where the CPU has AVX512_BF16 (Conv2d.bf16, m->bf16_kernels), the float32
 * kernels elsewhere (the emulation).  Where the CPU has AMX, the forward-only
 * passes (model_forward, model_encode) of MODEL_BF16 run the convolutions
 * on AMX tiles instead (m->amx, model_set_amx; amx_layer_forward below).
 * Does not: communicate (the trainer allreduces grads), own an optimizer, or
 * read files.  Threading: the kernels parallelise over images (OpenMP).
 */
#include "model/model.h"

#include <assert.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/act.h"
#include "nn/bf16.h"
#include "nn/conv_amx.h"
#include "nn/conv_direct_bf16.h"
#include "base/check.h"
#include "nn/loss.h"
#include "nn/maxpool.h"
#include "base/rng.h"
#include "nn/upsample.h"

/* Kernel size of a conv token without an explicit `kK`. */
#define MODEL_DEFAULT_KERNEL 3

static const struct { const char *name, *spec; int C, H, W; } PRESETS[] = {
    { "mnist", "c16 p c8 p c8 | c16 u c16 u c1", 1, 28, 28 },
    { "imagenet32", "c16 c16 p c32 c32 p c8 | c32 u c16 u c16 c3", 3, 32, 32 },
    { "imagenet64", "c16 c16 p c32 c32 p c32 p c8 | c32 u c32 u c16 u c16 c3", 3, 64, 64 },
};
#define N_PRESETS (sizeof PRESETS / sizeof PRESETS[0])

const char *model_preset_spec(const char *name)
{
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(name, PRESETS[i].name) == 0) return PRESETS[i].spec;
    return NULL;
}

const char *model_default_preset(int C, int H, int W)
{
    for (size_t i = 0; i < N_PRESETS; i++)
        if (PRESETS[i].C == C && PRESETS[i].H == H && PRESETS[i].W == W) return PRESETS[i].name;
    return NULL;
}

/* Reads one token's conv parameters "cN" or "cNkK"; returns 0 if malformed. */
static int parse_conv_token(const char *tok, int *ch, int *k)
{
    char *end;
    long n = strtol(tok + 1, &end, 10);
    if (end == tok + 1 || !isdigit((unsigned char)tok[1])) return 0;
    long kk = MODEL_DEFAULT_KERNEL;
    if (*end == 'k') {
        const char *ks = end + 1;
        if (!isdigit((unsigned char)*ks)) return 0;
        kk = strtol(ks, &end, 10);
    }
    if (*end != '\0') return 0;
    if (n < 1 || n > MODEL_MAX_CHANNELS || kk < 1 || kk > MODEL_MAX_KERNEL) return 0;
    *ch = (int)n;
    *k = (int)kk;
    return 1;
}

static int parse_text(ModelSpec *s, const char *text, int C, int H, int W, Err *err);

int model_parse(ModelSpec *s, const char *spec_or_preset, int C, int H, int W, Err *err)
{
    const char *text = model_preset_spec(spec_or_preset);
    if (parse_text(s, text ? text : spec_or_preset, C, H, W, err) == AE_OK || !text) return err->code;
    /* A preset on images of another shape: say so, and which one fits. */
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(spec_or_preset, PRESETS[i].name) == 0 &&
            (PRESETS[i].C != C || PRESETS[i].H != H || PRESETS[i].W != W)) {
            const char *fits = model_default_preset(C, H, W);
            size_t len = strlen(err->msg);
            snprintf(err->msg + len, sizeof err->msg - len, " (the preset '%s' is for %dx%dx%d images, these are "
                     "%dx%dx%d (HxWxC): %s%s%s)", PRESETS[i].name, PRESETS[i].H, PRESETS[i].W, PRESETS[i].C, H, W,
                     C, fits ? "use --arch " : "give a spec that fits them", fits ? fits : "",
                     fits ? " or a spec" : "");
        }
    return err->code;
}

static int parse_text(ModelSpec *s, const char *text, int C, int H, int W, Err *err)
{
    memset(s, 0, sizeof *s);
    s->C = C;
    s->H = H;
    s->W = W;
    s->n_encoder = -1;
    if (strlen(text) >= MODEL_SPEC_MAX)
        return err_set(err, AE_EARG, "--arch: spec longer than %d characters", MODEL_SPEC_MAX - 1);
    char buf[MODEL_SPEC_MAX];
    snprintf(buf, sizeof buf, "%s", text);
    int c = C, h = H, w = W;
    for (char *save = NULL, *tok = strtok_r(buf, " ,\t\n", &save); tok; tok = strtok_r(NULL, " ,\t\n", &save)) {
        int i = s->n_layers;
        if (strcmp(tok, "|") == 0) {
            if (s->n_encoder >= 0) return err_set(err, AE_EARG, "--arch '%s': more than one '|'", text);
            if (i == 0) return err_set(err, AE_EARG, "--arch '%s': the encoder before '|' is empty", text);
            s->n_encoder = i;
            continue;
        }
        if (i >= MODEL_MAX_LAYERS)
            return err_set(err, AE_EARG, "--arch '%s': more than %d layers", text, MODEL_MAX_LAYERS);
        if (tok[0] == 'c') {
            int ch, k;
            if (!parse_conv_token(tok, &ch, &k))
                return err_set(err, AE_EARG,
                               "--arch '%s': bad conv token '%s' (expected cN or cNkK, N in 1..%d, odd K <= %d)",
                               text, tok, MODEL_MAX_CHANNELS, MODEL_MAX_KERNEL);
            if (k % 2 == 0)
                return err_set(err, AE_EARG, "--arch '%s': kernel size in '%s' must be odd ('same' padding)", text, tok);
            s->kind[i] = LAYER_CONV;
            s->channels[i] = ch;
            s->kernel[i] = k;
            c = ch;
        } else if (strcmp(tok, "p") == 0) {
            if (h % 2 || w % 2)
                return err_set(err, AE_EARG,
                               "--arch '%s': pooling (token %d) at %dx%d needs even H and W; use an input size "
                               "divisible by 2^(number of poolings)", text, i + 1, h, w);
            s->kind[i] = LAYER_MAXPOOL;
            h /= 2;
            w /= 2;
        } else if (strcmp(tok, "u") == 0) {
            if ((int64_t)h * 2 > 65536 || (int64_t)w * 2 > 65536)
                return err_set(err, AE_EARG, "--arch '%s': upsampling beyond 65536 pixels", text);
            s->kind[i] = LAYER_UPSAMPLE;
            h *= 2;
            w *= 2;
        } else {
            return err_set(err, AE_EARG, "--arch '%s': unknown token '%s' (expected cN, cNkK, p, u or |)", text, tok);
        }
        s->n_layers++;
    }
    if (s->n_encoder < 0)
        return err_set(err, AE_EARG, "--arch '%s': no '|' marking the end of the encoder", text);
    if (s->n_encoder == s->n_layers)
        return err_set(err, AE_EARG, "--arch '%s': the decoder after '|' is empty", text);
    if (s->kind[s->n_layers - 1] != LAYER_CONV)
        return err_set(err, AE_EARG, "--arch '%s': the last layer must be a conv (it gets the sigmoid)", text);
    if (c != C || h != H || w != W)
        return err_set(err, AE_ESHAPE,
                       "--arch '%s': output is %dx%dx%d but the images are %dx%dx%d (HxWxC); the decoder must "
                       "undo every pooling and end with c%d", text, h, w, c, H, W, C, C);
    /* Canonical text: tokens joined by single spaces. */
    size_t len = 0;
    for (int i = 0; i < s->n_layers; i++) {
        if (i == s->n_encoder) len += (size_t)snprintf(s->text + len, sizeof s->text - len, "| ");
        if (s->kind[i] == LAYER_CONV && s->kernel[i] == MODEL_DEFAULT_KERNEL)
            len += (size_t)snprintf(s->text + len, sizeof s->text - len, "c%d ", s->channels[i]);
        else if (s->kind[i] == LAYER_CONV)
            len += (size_t)snprintf(s->text + len, sizeof s->text - len, "c%dk%d ", s->channels[i], s->kernel[i]);
        else
            len += (size_t)snprintf(s->text + len, sizeof s->text - len, "%s ", s->kind[i] == LAYER_MAXPOOL ? "p" : "u");
        CHECK(len < sizeof s->text);
    }
    if (len) s->text[len - 1] = '\0';
    return AE_OK;
}

/* Float counts of the blocks model_build allocates. */
typedef struct ModelSizes {
    size_t params, act_total, act_max, scratch;
} ModelSizes;

static ModelSizes model_sizes(const ModelSpec *spec, int nthreads)
{
    ModelSizes z = { 0, 0, (size_t)spec->C * spec->H * spec->W, 0 };
    int c = spec->C, h = spec->H, w = spec->W;
    for (int i = 0; i < spec->n_layers; i++) {
        if (spec->kind[i] == LAYER_CONV) {
            Conv2d cv = { .C = c, .OC = spec->channels[i], .K = spec->kernel[i] };
            z.params += (size_t)cv.OC * c * cv.K * cv.K + (size_t)cv.OC;
            size_t need = conv2d_scratch_floats(&cv, h, w, nthreads);
            if (need > z.scratch) z.scratch = need;
            c = cv.OC;
        } else if (spec->kind[i] == LAYER_MAXPOOL) {
            h /= 2;
            w /= 2;
        } else {
            h *= 2;
            w *= 2;
        }
        size_t per = (size_t)c * h * w;
        z.act_total += per;
        if (per > z.act_max) z.act_max = per;
    }
    return z;
}

double model_memory_bytes(const ModelSpec *spec, int max_batch, int nthreads)
{
    ModelSizes z = model_sizes(spec, nthreads);
    /* params, grads, Adam m and v; activations, input, two gradient
     * buffers; scratch. */
    double floats = 4.0 * (double)z.params +
                    (double)max_batch * ((double)z.act_total + (double)spec->C * spec->H * spec->W +
                                         2.0 * (double)z.act_max) +
                    (double)z.scratch;
    return floats * sizeof(float);
}

void model_build(Model *m, const ModelSpec *spec, int max_batch, int nthreads)
{
    assert(max_batch >= 1 && nthreads >= 1);
    memset(m, 0, sizeof *m);
    m->spec = *spec;
    m->max_batch = max_batch;
    m->nthreads = nthreads;
    /* Sizes first (shared with model_memory_bytes), then the layers. */
    const ModelSizes z = model_sizes(spec, nthreads);
    int c = spec->C, h = spec->H, w = spec->W;
    int last_conv = -1;
    for (int i = 0; i < spec->n_layers; i++)
        if (spec->kind[i] == LAYER_CONV) last_conv = i;
    for (int i = 0; i < spec->n_layers; i++) {
        Layer *L = &m->layers[i];
        L->kind = spec->kind[i];
        L->C = c;
        L->H = h;
        L->W = w;
        if (L->kind == LAYER_CONV) {
            L->OC = spec->channels[i];
            L->OH = h;
            L->OW = w;
            L->act = i == last_conv ? ACT_SIGMOID : ACT_RELU;
            L->conv.C = c;
            L->conv.OC = L->OC;
            L->conv.K = spec->kernel[i];
            /* ReLU fused into the convolution (conv2d.h CONV_FUSE_*): the
             * forward applies it to its output, and a conv right after a
             * ReLU conv applies that ReLU's backward to its dx. */
            if (L->act == ACT_RELU) L->conv.fuse |= CONV_FUSE_RELU;
            if (i > 0 && m->layers[i - 1].kind == LAYER_CONV && m->layers[i - 1].act == ACT_RELU)
                L->conv.fuse |= CONV_FUSE_DX_RELU;
            m->n_conv++;
        } else {
            L->OC = c;
            L->OH = L->kind == LAYER_MAXPOOL ? h / 2 : h * 2;
            L->OW = L->kind == LAYER_MAXPOOL ? w / 2 : w * 2;
        }
        c = L->OC;
        h = L->OH;
        w = L->OW;
    }
    m->n_params = z.params;
    m->params = xcalloc(m->n_params, sizeof(float));
    m->grads = xcalloc(m->n_params, sizeof(float));
    m->acts = xcalloc_huge(z.act_total * (size_t)max_batch, sizeof(float));
    m->input = xcalloc_huge((size_t)spec->C * spec->H * spec->W * (size_t)max_batch, sizeof(float));
    for (int k = 0; k < 2; k++) m->dbuf[k] = xcalloc_huge(z.act_max * (size_t)max_batch, sizeof(float));
    m->scratch = xcalloc_huge(z.scratch ? z.scratch : 1, sizeof(float));
    /* Carve the blocks into per-layer pointers (llm.c malloc_and_point). */
    size_t p = 0, a = 0;
    for (int i = 0; i < spec->n_layers; i++) {
        Layer *L = &m->layers[i];
        L->out = m->acts + a;
        a += (size_t)L->OC * L->OH * L->OW * (size_t)max_batch;
        if (L->kind != LAYER_CONV) continue;
        size_t nw = (size_t)L->OC * L->C * L->conv.K * L->conv.K;
        L->conv.w = m->params + p;
        L->conv.dw = m->grads + p;
        p += nw;
        L->conv.b = m->params + p;
        L->conv.db = m->grads + p;
        p += (size_t)L->OC;
    }
    assert(p == m->n_params);
}

/* Drops the AMX buffers of m (model_set_amx); m->amx = CONV_AMX_OFF. */
static void amx_free_buffers(Model *m)
{
    free(m->wamx);
    free(m->amx_scratch);
    m->wamx = NULL;
    m->amx_scratch = NULL;
    memset(m->amx_woff, 0, sizeof m->amx_woff);
    m->amx = CONV_AMX_OFF;
}

void model_free(Model *m)
{
    free(m->params);
    free(m->grads);
    free(m->acts);
    free(m->input);
    free(m->dbuf[0]);
    free(m->dbuf[1]);
    free(m->scratch);
    free(m->wq);
    free(m->xq);
    amx_free_buffers(m);
    memset(m, 0, sizeof *m);
}

int model_precision_parse(ModelPrecision *out, const char *name, Err *err)
{
    if (name && strcmp(name, "fp32") == 0) {
        *out = MODEL_FP32;
        return AE_OK;
    }
    if (name && strcmp(name, "bf16") == 0) {
        *out = MODEL_BF16;
        return AE_OK;
    }
    if (name && strcmp(name, "auto") == 0) {
        *out = MODEL_PRECISION_AUTO;
        return AE_OK;
    }
    return err_set(err, AE_EARG, "--precision '%s': unknown; use fp32, bf16 or auto", name ? name : "(null)");
}

ModelPrecision model_precision_resolve(ModelPrecision request, int all_fast)
{
    if (request != MODEL_PRECISION_AUTO) return request;
    return all_fast ? MODEL_BF16 : MODEL_FP32;
}

int model_precision_auto_note(char *note, size_t note_size, int all_fast, double slowest_speedup, int nranks)
{
    if (note_size) note[0] = '\0';
    if (all_fast || slowest_speedup <= 0.0 || !note_size) return 0;
    snprintf(note, note_size,
             "auto runs fp32: VDPBF16PS does %.2fx the multiply-adds per second of float32 FMAs on %s (bf16 pays "
             "from %.1fx); --precision bf16 runs it anyway",
             slowest_speedup, nranks > 1 ? "the slowest rank's CPU" : "this CPU", CONV_BF16_AUTO_MIN_SPEEDUP);
    return 1;
}

const char *model_precision_name(ModelPrecision p)
{
    return p == MODEL_FP32 ? "fp32" : p == MODEL_BF16 ? "bf16" : p == MODEL_PRECISION_AUTO ? "auto" : "?";
}

const char *model_precision_describe(const Model *m)
{
    if (m->precision != MODEL_BF16) return model_precision_name(m->precision);
    if (m->bf16_kernels == CONV_BF16_NATIVE && m->amx == CONV_AMX_NATIVE)
        return "bf16 (VDPBF16PS kernels; forward-only passes on AMX tiles)";
    if (m->bf16_kernels == CONV_BF16_NATIVE) return "bf16 (VDPBF16PS kernels)";
    if (m->bf16_kernels == CONV_BF16_EMULATED) return "bf16 (VDPBF16PS emulated)";
    return "bf16 (emulated: float32 kernels on rounded operands)";
}

void model_set_precision(Model *m, ModelPrecision p)
{
    assert(p == MODEL_FP32 || p == MODEL_BF16); /* AUTO: model_precision_resolve first */
    free(m->wq);
    free(m->xq);
    m->wq = m->xq = NULL;
    m->precision = p;
    m->bf16_kernels = p == MODEL_BF16 && conv_bf16_available(CONV_BF16_NATIVE) ? CONV_BF16_NATIVE : CONV_BF16_OFF;
    amx_free_buffers(m);
    if (p != MODEL_BF16) return;
    m->wq = xcalloc(m->n_params, sizeof(float));
    m->xq = xcalloc_huge((size_t)m->spec.C * m->spec.H * m->spec.W * (size_t)m->max_batch, sizeof(float));
    if (conv_amx_available(CONV_AMX_NATIVE)) model_set_amx(m, CONV_AMX_NATIVE);
}

int model_set_amx(Model *m, int impl)
{
    if (m->precision != MODEL_BF16 || (impl != CONV_AMX_OFF && !conv_amx_available(impl))) return 0;
    amx_free_buffers(m);
    m->amx = impl;
    if (impl == CONV_AMX_OFF) return 1;
    size_t wbytes = 0, sbytes = 64;
    for (int i = 0; i < m->spec.n_layers; i++) {
        const Layer *L = &m->layers[i];
        if (L->kind != LAYER_CONV) continue;
        m->amx_woff[i] = wbytes / sizeof(uint16_t);
        wbytes += (conv_amx_weight_bytes(L->C, L->OC, L->conv.K) + 63) / 64 * 64;
        const size_t s = conv_amx_scratch_bytes(L->C, L->conv.K, L->H, L->W, m->nthreads);
        if (s > sbytes) sbytes = s;
    }
    m->wamx = xmalloc(wbytes ? wbytes : 64);
    m->amx_scratch = xmalloc(sbytes); /* 64-byte aligned (check.h) */
    return 1;
}

/* The Conv2d that layer L's kernels run: L->conv itself (float32), or for
 * MODEL_BF16 a copy whose weights are L's slice of m->wq, rounded from the
 * master weights first when `refresh` (every forward; backward reuses the
 * forward's). */
static Conv2d layer_conv(Model *m, const Layer *L, int refresh)
{
    Conv2d cv = L->conv;
    if (m->precision == MODEL_BF16) {
        float *wq = m->wq + (L->conv.w - m->params);
        if (refresh) bf16_round_array(wq, L->conv.w, (size_t)L->OC * L->C * L->conv.K * L->conv.K);
        cv.w = wq;
        cv.bf16 = m->bf16_kernels;
    }
    return cv;
}

int model_set_bf16_kernels(Model *m, int impl)
{
    if (m->precision != MODEL_BF16 || (impl != CONV_BF16_OFF && !conv_bf16_available(impl))) return 0;
    m->bf16_kernels = impl;
    return 1;
}

/* 1 if MODEL_BF16 runs conv layer L on the VDPBF16PS kernels: they round
 * every operand while packing it, so the model's rounding passes are skipped
 * (the im2col kernels ignore Conv2d.bf16 and stay emulated). */
static int layer_bf16_kernels(const Model *m, const Layer *L)
{
    return m->precision == MODEL_BF16 && m->bf16_kernels &&
           conv2d_kernel_resolve(L->conv.kernel, L->conv.K) == CONV_KERNEL_DIRECT;
}

/* The buffer conv layer L reads as its input, numel floats: `act`, a model
 * activation (rounded in place for emulated MODEL_BF16: its other readers,
 * the ReLU masks and pooling backward, see the same signs and maxima,
 * bf16.h), or when act is NULL the caller's batch x (for emulated MODEL_BF16
 * rounded into m->xq, x itself is the loss target and stays as it is). */
static const float *conv_input(Model *m, const Layer *L, float *act, const float *x, size_t numel)
{
    if (m->precision != MODEL_BF16 || layer_bf16_kernels(m, L)) return act ? act : x;
    if (!act) {
        bf16_round_array(m->xq, x, numel);
        return m->xq;
    }
    bf16_round_array(act, act, numel);
    return act;
}

/* Emulated MODEL_BF16: rounds the output gradient g[numel] of conv layer L
 * in place before its backward. */
static void round_grad(const Model *m, const Layer *L, float *g, size_t numel)
{
    if (m->precision == MODEL_BF16 && !layer_bf16_kernels(m, L)) bf16_round_array(g, g, numel);
}

void model_init_glorot(Model *m, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed, 0);
    for (int i = 0; i < m->spec.n_layers; i++) {
        const Layer *L = &m->layers[i];
        if (L->kind != LAYER_CONV) continue;
        int kk = L->conv.K * L->conv.K;
        float limit = (float)sqrt(6.0 / ((double)L->C * kk + (double)L->OC * kk));
        size_t nw = (size_t)L->OC * L->C * kk;
        for (size_t j = 0; j < nw; j++) L->conv.w[j] = rng_uniform_f32(&rng, -limit, limit);
        memset(L->conv.b, 0, (size_t)L->OC * sizeof(float));
    }
}

/* 1 if layer i is a ReLU conv whose ReLU backward is applied by layer i+1's
 * backward, so g arrives as dL/d(pre-activation): a conv's input gradient
 * (CONV_FUSE_DX_RELU), or a max-pool or upsample run as
 * maxpool2x2_backward_relu / upsample2x_backward_relu.  0 for any other
 * layer (also i < 0 and the last layer). */
static int relu_backward_fused(const Model *m, int i)
{
    if (i < 0 || i + 1 >= m->spec.n_layers || m->layers[i].kind != LAYER_CONV || m->layers[i].act != ACT_RELU)
        return 0;
    const Layer *next = &m->layers[i + 1];
    return next->kind != LAYER_CONV || (next->conv.fuse & CONV_FUSE_DX_RELU);
}

/* 1 if layer i is an upsample (not the first layer) followed by a conv that
 * the direct kernel runs: the conv's steps also do the upsampling
 * (conv2d_forward_upsample / conv2d_backward_upsample) and the upsample's
 * own steps do nothing, so the upsampled tensor is never stored. */
static int upsample_fused(const Model *m, int i)
{
    /* never across the encoder's end: model_encode must write the bottleneck */
    if (i < 1 || i + 1 >= m->spec.n_layers || i + 1 == m->spec.n_encoder || m->layers[i].kind != LAYER_UPSAMPLE ||
        m->layers[i + 1].kind != LAYER_CONV)
        return 0;
    const Conv2d *cv = &m->layers[i + 1].conv;
    return conv2d_kernel_resolve(cv->kernel, cv->K) == CONV_KERNEL_DIRECT && !(cv->fuse & CONV_FUSE_DX_RELU);
}

/* 1 if layer i is a conv with its ReLU fused and layer i+1 a max-pool: the
 * conv's forward step also pools (conv2d_forward_maxpool) and the pool's
 * own step does nothing.  0 otherwise (also i < 0, for a conv already fused
 * with an upsample before it, and when the encoder ends between the two:
 * model_encode stops after the conv and needs its output). */
static int maxpool_fused(const Model *m, int i)
{
    return i >= 0 && i + 1 < m->spec.n_layers && i + 1 != m->spec.n_encoder && m->layers[i].kind == LAYER_CONV &&
           (m->layers[i].conv.fuse & CONV_FUSE_RELU) && m->layers[i + 1].kind == LAYER_MAXPOOL &&
           !upsample_fused(m, i - 1); /* one fusion per conv: upsample -> conv -> pool keeps the pool apart */
}

int model_layer_fused_into(const Model *m, int i)
{
    if (i >= 0 && i < m->spec.n_layers && m->layers[i].kind == LAYER_MAXPOOL && maxpool_fused(m, i - 1)) return i - 1;
    if (upsample_fused(m, i)) return i + 1;
    return -1;
}

/* The conv layer i of a forward-only pass on AMX tiles (m->amx): the
 * weights packed from the master weights (the kernel rounds them and in),
 * bias and fused ReLU in the kernel, then the fused max-pool if any; the
 * caller applies an unfused activation.  Returns 1 when it ran, 0 when
 * layer i stays on the other kernels (AMX off, or fused with an upsample). */
static int amx_layer_forward(Model *m, int i, const float *in, int N)
{
    Layer *L = &m->layers[i];
    if (m->amx == CONV_AMX_OFF || m->precision != MODEL_BF16 || upsample_fused(m, i - 1)) return 0;
    uint16_t *wa = m->wamx + m->amx_woff[i];
    conv_amx_pack_weights(wa, L->conv.w, L->C, L->OC, L->conv.K);
    conv_amx_forward(L->out, in, wa, L->conv.b, N, L->C, L->OC, L->conv.K, L->H, L->W,
                     (L->conv.fuse & CONV_FUSE_RELU) != 0, m->amx_scratch, m->nthreads, m->amx);
    if (maxpool_fused(m, i)) maxpool2x2_forward(m->layers[i + 1].out, L->out, N, L->OC, L->H, L->W);
    return 1;
}

/* model_layer_forward; keep = 0 when no backward follows, so a conv fused
 * with its max-pool need not store its own output (conv2d_forward_maxpool)
 * and MODEL_BF16 may run the convolution on AMX tiles (amx_layer_forward). */
static void layer_forward(Model *m, int i, const float *in, int N, int keep)
{
    assert(i >= 0 && i < m->spec.n_layers && N >= 1 && N <= m->max_batch);
    Layer *L = &m->layers[i];
    const size_t numel = (size_t)N * L->OC * L->OH * L->OW;
    const size_t in_numel = (size_t)N * L->C * L->H * L->W;
    switch (L->kind) {
    case LAYER_CONV: {
        const int amx = !keep && amx_layer_forward(m, i, in, N);
        const Conv2d cv = amx ? L->conv : layer_conv(m, L, 1);
        if (amx) {
            if (maxpool_fused(m, i)) break; /* fused ReLU, pooled */
        } else if (upsample_fused(m, i - 1)) { /* in = the upsample's output, never written */
            const float *up_in = conv_input(m, L, m->layers[i - 2].out, NULL, in_numel / 4);
            conv2d_forward_upsample(L->out, up_in, &cv, N, L->H, L->W, m->scratch, m->nthreads);
        } else if (maxpool_fused(m, i)) {
            in = conv_input(m, L, i > 0 ? m->layers[i - 1].out : NULL, in, in_numel);
            conv2d_forward_maxpool(L->out, keep, m->layers[i + 1].out, in, &cv, N, L->H, L->W, m->scratch,
                                   m->nthreads);
            break;
        } else {
            in = conv_input(m, L, i > 0 ? m->layers[i - 1].out : NULL, in, in_numel);
            conv2d_forward(L->out, in, &cv, N, L->H, L->W, m->scratch, m->nthreads);
        }
        if (!(L->conv.fuse & CONV_FUSE_RELU)) {
            if (L->act == ACT_RELU)
                relu_forward(L->out, L->out, numel);
            else
                sigmoid_forward(L->out, L->out, numel);
        }
        break;
    }
    case LAYER_MAXPOOL:
        if (!maxpool_fused(m, i - 1)) maxpool2x2_forward(L->out, in, N, L->C, L->H, L->W);
        break;
    case LAYER_UPSAMPLE:
        if (!upsample_fused(m, i)) upsample2x_forward(L->out, in, N, L->C, L->H, L->W);
        break;
    }
}

void model_layer_forward(Model *m, int i, const float *in, int N)
{
    layer_forward(m, i, in, N, 1);
}

/* Runs layers [0, n) on x[N]; returns the output of layer n-1.  keep: as
 * layer_forward (1 when backward follows). */
static const float *forward_layers(Model *m, const float *x, int N, int n, int keep)
{
    for (int i = 0; i < n; i++) layer_forward(m, i, i > 0 ? m->layers[i - 1].out : x, N, keep);
    return n > 0 ? m->layers[n - 1].out : x;
}

const float *model_forward(Model *m, const float *x, int N)
{
    return forward_layers(m, x, N, m->spec.n_layers, 0);
}

const float *model_encode(Model *m, const float *x, int N)
{
    return forward_layers(m, x, N, m->spec.n_encoder, 0);
}

void model_bottleneck_shape(const Model *m, int *C, int *H, int *W)
{
    const Layer *L = &m->layers[m->spec.n_encoder - 1];
    *C = L->OC;
    *H = L->OH;
    *W = L->OW;
}

int model_embedding_dim(const Model *m)
{
    int c, h, w;
    model_bottleneck_shape(m, &c, &h, &w);
    return c * h * w;
}

void model_zero_grad(Model *m) { memset(m->grads, 0, m->n_params * sizeof(float)); }

double model_forward_backward(Model *m, const float *x, int N, double inv_count)
{
    return model_forward_backward_hooked(m, x, N, inv_count, NULL);
}

double model_loss_backward(Model *m, float *g, const float *x, int N, double inv_count)
{
    const int n = m->spec.n_layers;
    /* the loss gradient comes with the backward of the output sigmoid (the
     * last layer, a sigmoid conv by model_parse), so layer n-1 gets
     * dL/d(pre-activation) */
    assert(m->layers[n - 1].kind == LAYER_CONV && m->layers[n - 1].act == ACT_SIGMOID);
    const size_t numel = (size_t)N * m->spec.C * m->spec.H * m->spec.W;
    return mse_sigmoid_backward(g, m->layers[n - 1].out, x, numel, inv_count);
}

/* 1 if the backward step of layer i, a max-pool whose forward ran inside
 * the ReLU conv i-1 (maxpool_fused), also runs that conv's backward
 * (conv2d_backward_maxpool: the direct kernel only). */
static int maxpool_backward_fused(const Model *m, int i)
{
    if (!maxpool_fused(m, i - 1)) return 0;
    const Conv2d *cv = &m->layers[i - 1].conv;
    return conv2d_kernel_resolve(cv->kernel, cv->K) == CONV_KERNEL_DIRECT;
}

int model_layer_backward(Model *m, int i, float *gnext, float *g, const float *x, int N)
{
    assert(i >= 0 && i < m->spec.n_layers && N >= 1 && N <= m->max_batch);
    Layer *L = &m->layers[i];
    /* the batch as the first conv read it (emulated MODEL_BF16: rounded in m->xq) */
    const float *xc = m->precision == MODEL_BF16 && m->layers[0].kind == LAYER_CONV &&
                      !layer_bf16_kernels(m, &m->layers[0]) ? m->xq : x;
    const float *in = i > 0 ? m->layers[i - 1].out : x;
    const size_t out_numel = (size_t)N * L->OC * L->OH * L->OW;
    if (L->kind == LAYER_CONV && upsample_fused(m, i - 1)) {
        /* the conv and the upsample before it, a chunk of images at a time */
        if (L->act == ACT_RELU && !relu_backward_fused(m, i)) relu_backward(g, g, L->out, out_numel);
        round_grad(m, L, g, out_numel);
        const Conv2d cv = layer_conv(m, L, 0);
        conv2d_backward_upsample(gnext, g, m->layers[i - 2].out, relu_backward_fused(m, i - 2), &cv, N, L->H,
                                 L->W, m->scratch, m->nthreads);
        return i - 2;
    }
    if (L->kind == LAYER_MAXPOOL && maxpool_backward_fused(m, i)) {
        /* the pool and the conv before it, one image at a time; the pool
         * only routes gradients, so rounding its gradient rounds the conv's */
        Layer *P = &m->layers[i - 1];
        round_grad(m, P, g, out_numel);
        const Conv2d cv = layer_conv(m, P, 0);
        conv2d_backward_maxpool(i > 1 ? gnext : NULL, g, P->out, i > 1 ? m->layers[i - 2].out : xc, &cv, N,
                                P->H, P->W, m->scratch, m->nthreads);
        return i - 2;
    }
    switch (L->kind) {
    case LAYER_CONV: {
        if (L->act == ACT_RELU && !relu_backward_fused(m, i)) relu_backward(g, g, L->out, out_numel);
        round_grad(m, L, g, out_numel);
        const Conv2d cv = layer_conv(m, L, 0);
        /* The input gradient of the first layer is never needed. */
        conv2d_backward(i > 0 ? gnext : NULL, g, i > 0 ? in : xc, &cv, N, L->H, L->W, m->scratch, m->nthreads);
        break;
    }
    case LAYER_MAXPOOL: /* with layer i-1's ReLU backward when it is a ReLU conv */
        if (relu_backward_fused(m, i - 1))
            maxpool2x2_backward_relu(gnext, g, in, N, L->C, L->H, L->W);
        else
            maxpool2x2_backward(gnext, g, in, N, L->C, L->H, L->W);
        break;
    case LAYER_UPSAMPLE:
        if (relu_backward_fused(m, i - 1))
            upsample2x_backward_relu(gnext, g, in, N, L->C, L->H, L->W);
        else
            upsample2x_backward(gnext, g, N, L->C, L->H, L->W);
        break;
    }
    return i - 1;
}

double model_forward_backward_hooked(Model *m, const float *x, int N, double inv_count, const ModelGradHook *hook)
{
    return model_forward_backward_ex(m, x, x, N, inv_count, hook, NULL);
}

/* Adds dz[N][D] (the code hook's gradient w.r.t. the bottleneck) to g =
 * the gradient arriving at the encoder's end; where the bottleneck's ReLU
 * backward is fused into the next layer, g is already w.r.t. the
 * pre-activation, so dz goes through that ReLU (out > 0) first. */
static void add_code_grad(Model *m, float *g, const float *dz, int N)
{
    const int e = m->spec.n_encoder - 1;
    const size_t numel = (size_t)N * model_embedding_dim(m);
    const float *out = m->layers[e].out;
    if (relu_backward_fused(m, e)) {
        for (size_t k = 0; k < numel; k++)
            if (out[k] > 0) g[k] += dz[k];
    } else {
        for (size_t k = 0; k < numel; k++) g[k] += dz[k];
    }
}

double model_forward_backward_ex(Model *m, const float *x, const float *target, int N, double inv_count,
                                 const ModelGradHook *hook, const ModelCodeHook *code)
{
    const int n = m->spec.n_layers;
    size_t done = m->n_params; /* grads [done, n_params) are final */
    forward_layers(m, x, N, n, 1);
    float *dz = NULL;
    if (code) { /* the extra gradient at the bottleneck, before backward overwrites nothing it needs */
        const int D = model_embedding_dim(m);
        dz = xmalloc((size_t)N * D * sizeof *dz);
        code->fn(code->user, dz, m->layers[m->spec.n_encoder - 1].out, N, D);
    }
    /* g holds dL/d(output of layer i) as we walk back */
    float *g = m->dbuf[0], *gnext = m->dbuf[1];
    const double sse = model_loss_backward(m, g, target, N, inv_count);
    for (int i = n - 1; i >= 0;) {
        /* no fusion crosses the encoder's end, so some step starts at the
         * bottleneck layer with g = dL/d(its output) */
        if (dz && i == m->spec.n_encoder - 1) add_code_grad(m, g, dz, N);
        const int next = model_layer_backward(m, i, gnext, g, x, N);
        float *t = g;
        g = gnext;
        gnext = t;
        /* once per layer, also when one step covered two (a fused max-pool) */
        for (; i > next; i--) {
            if (m->layers[i].kind == LAYER_CONV) done = (size_t)(m->layers[i].conv.dw - m->grads);
            if (hook) hook->fn(hook->user, done);
        }
    }
    free(dz);
    return sse;
}

int model_num_tensors(const Model *m) { return 2 * m->n_conv; }

ParamTensor model_tensor(const Model *m, int i)
{
    assert(i >= 0 && i < 2 * m->n_conv);
    ParamTensor t;
    memset(&t, 0, sizeof t);
    int j = 0;
    for (int l = 0; l < m->spec.n_layers; l++) {
        const Layer *L = &m->layers[l];
        if (L->kind != LAYER_CONV) continue;
        if (j == i / 2) {
            int is_bias = i % 2;
            snprintf(t.name, sizeof t.name, "conv%d.%s", j, is_bias ? "bias" : "weight");
            const float *p = is_bias ? L->conv.b : L->conv.w;
            t.offset = (size_t)(p - m->params);
            if (is_bias) {
                t.ndim = 1;
                t.shape[0] = L->OC;
                t.numel = (size_t)L->OC;
            } else {
                t.ndim = 4;
                t.shape[0] = L->OC;
                t.shape[1] = L->C;
                t.shape[2] = t.shape[3] = L->conv.K;
                t.numel = (size_t)L->OC * L->C * L->conv.K * L->conv.K;
            }
            return t;
        }
        j++;
    }
    assert(0 && "tensor index out of range");
    return t;
}

double model_forward_flops(const Model *m)
{
    double f = 0;
    for (int i = 0; i < m->spec.n_layers; i++) {
        const Layer *L = &m->layers[i];
        if (L->kind == LAYER_CONV)
            f += 2.0 * L->OC * L->C * L->conv.K * L->conv.K * (double)L->OH * L->OW;
    }
    return f;
}

int model_grad_slices(const Model *m, size_t *sizes)
{
    int n = 0;
    size_t below = m->n_params;
    for (int i = m->spec.n_layers - 1; i >= 0; i--) {
        const Layer *L = &m->layers[i];
        if (L->kind != LAYER_CONV) continue;
        size_t off = (size_t)(L->conv.dw - m->grads);
        assert(L->conv.db == L->conv.dw + (below - off - (size_t)L->OC));
        sizes[n++] = below - off;
        below = off;
    }
    assert(below == 0);
    return n;
}
