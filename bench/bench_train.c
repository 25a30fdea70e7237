/*
 * bench_train.c - throughput of aesim's training step and encoder, and a
 * per-layer profile of the training step (issue 6).
 *
 * Workloads (--mode):
 *   train   one data-parallel Adam step per iteration, exactly the step of
 *           aesim-train (train.c): model_zero_grad -> model_forward_backward
 *           with inv_count = 1/(B*C*H*W) -> allreduce(grads, loss) ->
 *           optimizer_step; the global batch B is split over the ranks with
 *           sampler_rank_slice, as aesim-train does;
 *   encode  model_encode of B images (one rank).
 * The batch is one fixed set of B random images uniform in [0, 1), in
 * memory for the whole run (no data loading is timed); --data-out saves it
 * as .npy so bench/torch_train.py times PyTorch on the same data.
 * --precision fp32|bf16 (model.h MODEL_BF16, as aesim-train --precision):
 * bf16 rows are variant "..., bf16" with "precision": "bf16" (issue 16;
 * emulated on every CPU today: rounded operands, float32 kernels);
 * --amx off|emulated|native: the AMX convolutions of model_encode
 * (model_set_amx; default: the model's choice, native where the CPU has AMX).
 * Timing: --warmup steps untimed, then --runs runs of --steps steps each,
 * each run timed on rank 0 between barriers.
 * --profile P (train, one rank): P more steps run through the layer steps
 * of model_forward_backward (model.h model_layer_forward / _backward) with
 * a timer around each, giving per-layer forward / backward milliseconds
 * (medians over the P steps).
 * Then, for each conv, conv2d_forward and conv2d_backward alone under every
 * convolution kernel the CPU runs (conv2d.h: generic = im2col + OpenBLAS,
 * avx512 = im2col + aesim's AVX-512 GEMMs, direct = direct KxK AVX-512),
 * same N, threads, fuse flags and scratch size as the model, on the model's
 * own activations (time_conv_kernels; medians over P calls): the
 * measurement behind the per-shape kernel choice of issue 6.
 *
 * FLOPs: 2 x multiply-adds of the convolutions (model_forward_flops);
 * training = 3 x forward (forward, input grad, weight grad).
 * Output: JSON lines (bench_common.h) on rank 0.
 * Threading/MPI: run under mpirun for several ranks (par.h); threads per
 * rank set by threads_setup (OpenMP over images, BLAS single-threaded).
 * Does not: read real data, write checkpoints, or validate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "base/check.h"
#include "nn/conv2d.h"
#include "nn/conv_amx.h"
#include "model/model.h"
#include "data/npy.h"
#include "model/optimizer.h"
#include "par/par.h"
#include "base/rng.h"
#include "data/sampler.h"
#include "base/threads.h"
#include "base/timer.h"
#include "nn/upsample.h"

/* Seeds of the random batch and of the weights: any fixed values. */
#define BENCH_DATA_SEED 6u
#define BENCH_WEIGHT_SEED 42u
/* Extra rows of the profile after the layers: loss, optimizer, zero_grad. */
#define PROFILE_EXTRA_ROWS 3
/* Most profiled steps kept. */
#define PROFILE_MAX_STEPS 64

/* Input shapes of the presets (the inverse of model_default_preset). */
static const struct { int C, H, W; } PRESET_SHAPES[] = { { 1, 28, 28 }, { 3, 32, 32 }, { 3, 64, 64 } };

static int preset_shape(const char *name, int *C, int *H, int *W)
{
    for (size_t i = 0; i < sizeof PRESET_SHAPES / sizeof PRESET_SHAPES[0]; i++) {
        const char *p = model_default_preset(PRESET_SHAPES[i].C, PRESET_SHAPES[i].H, PRESET_SHAPES[i].W);
        if (p && strcmp(p, name) == 0) {
            *C = PRESET_SHAPES[i].C;
            *H = PRESET_SHAPES[i].H;
            *W = PRESET_SHAPES[i].W;
            return 1;
        }
    }
    return 0;
}

/* FLOPs of one image through conv layer L forward (2 x MACs). */
static double conv_flops(const Layer *L)
{
    return 2.0 * L->OC * L->C * L->conv.K * L->conv.K * (double)L->OH * L->OW;
}

/* Forward FLOPs of one image through layers [0, n). */
static double layers_flops(const Model *m, int n)
{
    double f = 0;
    for (int i = 0; i < n; i++)
        if (m->layers[i].kind == LAYER_CONV) f += conv_flops(&m->layers[i]);
    return f;
}

/* One training step of aesim-train on this rank's n images x (global batch
 * B); returns the global sum of squared errors. */
static double train_step(const ParCtx *ctx, Model *m, Optimizer *opt, const float *x, int n, int B)
{
    size_t chw = (size_t)m->spec.C * m->spec.H * m->spec.W;
    model_zero_grad(m);
    double sse = n ? model_forward_backward(m, x, n, 1.0 / ((double)B * (double)chw)) : 0;
    par_allreduce_sum_f32(ctx, m->grads, m->n_params);
    par_allreduce_sum_f64(ctx, &sse, 1);
    optimizer_step(opt, m->params, m->grads);
    return sse;
}

static const char *layer_desc(char *buf, size_t len, const Model *m, int i)
{
    const Layer *L = &m->layers[i];
    switch (L->kind) {
    case LAYER_CONV:
        snprintf(buf, len, "%sconv%dx%d %d->%d @%dx%d%s%s", model_layer_fused_into(m, i - 1) == i ? "upsample+" : "",
                 L->conv.K, L->conv.K, L->C, L->OC, L->H, L->W, L->act == ACT_SIGMOID ? " +sigmoid" : "",
                 model_layer_fused_into(m, i + 1) == i ? " +maxpool" : "");
        return buf;
    case LAYER_MAXPOOL:
        snprintf(buf, len, "maxpool %d @%dx%d", L->C, L->H, L->W);
        break;
    case LAYER_UPSAMPLE:
        snprintf(buf, len, "upsample %d @%dx%d", L->C, L->H, L->W);
        break;
    }
    const int into = model_layer_fused_into(m, i);
    if (into >= 0) {
        const size_t used = strlen(buf);
        snprintf(buf + used, len - used, " (in #%d)", into);
    }
    return buf;
}

/* model_forward_backward with a timer around each layer: the same layer
 * steps (model.h model_layer_forward / model_loss_backward /
 * model_layer_backward) in the same order.  tf[i], tb[i] receive layer i's
 * forward / backward seconds, tf[n_layers] the loss (mse_sigmoid_backward:
 * the loss, its gradient and the output sigmoid's backward, which the last
 * conv's row therefore excludes).  A max-pool or upsample fused into a
 * conv (model_layer_fused_into) runs inside that conv's steps: its time is
 * on the conv's row, its own row is ~0 (with the direct kernel; the others
 * fuse the max-pool in the forward only, so its backward row stays). */
static double profiled_forward_backward(Model *m, const float *x, int N, double inv_count, double *tf, double *tb)
{
    const int n = m->spec.n_layers;
    for (int i = 0; i < n; i++) {
        const double t0 = timer_now();
        model_layer_forward(m, i, i > 0 ? m->layers[i - 1].out : x, N);
        tf[i] = timer_now() - t0;
    }
    float *g = m->dbuf[0], *gnext = m->dbuf[1];
    double t0 = timer_now();
    const double sse = model_loss_backward(m, g, x, N, inv_count);
    tf[n] = timer_now() - t0;
    for (int i = n - 1; i >= 0;) {
        t0 = timer_now();
        const int next = model_layer_backward(m, i, gnext, g, x, N);
        /* a step that covered two layers (a conv and the max-pool after it
         * or the upsample before it) counts on the conv */
        const double dt = timer_now() - t0;
        for (int j = i; j > next; j--) tb[j] = m->layers[j].kind == LAYER_CONV ? dt : 0.0;
        float *t = g;
        g = gnext;
        gnext = t;
        i = next;
    }
    return sse;
}

/* Kernels the profile times for every conv (conv2d.h ConvKernel), in the
 * order of the JSON "kernels" object. */
static const ConvKernel PROFILE_KERNELS[] = { CONV_KERNEL_GENERIC, CONV_KERNEL_AVX512, CONV_KERNEL_DIRECT };
#define PROFILE_N_KERNELS ((int)(sizeof PROFILE_KERNELS / sizeof PROFILE_KERNELS[0]))

/* 1 if this CPU/build runs kernel k itself for KxK convolutions (not a
 * fallback to another kernel: conv2d_kernel_resolve). */
static int kernel_runs(ConvKernel k, int K) { return conv2d_kernel_resolve(k, K) == k; }

/* Seconds of conv2d_forward (fwd[j]) and conv2d_backward (bwd[j]) of conv
 * layer i of m on N images, under each kernel PROFILE_KERNELS[j] the CPU runs
 * (kernel_runs; the others get 0 = not run): median of `reps` timed calls
 * after one untimed warm-up call of each, the kernels taking turns within
 * each repetition so that load from other jobs spreads over all of them.
 * Same thread count (m->nthreads), fuse flags and scratch size
 * (conv2d_scratch_floats) as the model; the data are the model's own: the
 * layer's input activations of the last forward (the previous layer's out
 * (an upsample fused into the conv is computed here, as it is never stored),
 * or x for layer 0) and, as dy, the gradient buffer m->dbuf[0] as the last
 * backward left it.  The backward computes dx except for layer 0, as
 * model_forward_backward does; y and dx go to m->dbuf[1], dw/db to private
 * buffers, so m's activations and gradients are not changed (dbuf[1] is). */
static void time_conv_kernels(Model *m, int i, const float *x, int N, int reps, double *fwd, double *bwd)
{
    const Layer *L = &m->layers[i];
    Conv2d c = L->conv;
    const size_t wn = (size_t)c.OC * c.C * c.K * c.K;
    c.dw = xcalloc(wn + (size_t)c.OC, sizeof(float));
    c.db = c.dw + wn;
    const size_t scratch_n = conv2d_scratch_floats(&c, L->H, L->W, m->nthreads);
    float *scratch = xcalloc(scratch_n, sizeof(float));
    const float *in = i > 0 ? m->layers[i - 1].out : x;
    /* an upsample fused into this conv never stores its output: make it */
    if (i > 1 && model_layer_fused_into(m, i - 1) == i)
        upsample2x_forward(m->layers[i - 1].out, m->layers[i - 2].out, N, L->C, L->H / 2, L->W / 2);
    const float *dy = m->dbuf[0];
    float *out = m->dbuf[1]; /* y[N][OC][H][W], then dx[N][C][H][W] */
    double *tf = xcalloc((size_t)PROFILE_N_KERNELS * reps, sizeof(double));
    double *tb = xcalloc((size_t)PROFILE_N_KERNELS * reps, sizeof(double));
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        for (int j = 0; j < PROFILE_N_KERNELS; j++) {
            if (!kernel_runs(PROFILE_KERNELS[j], c.K)) continue;
            c.kernel = PROFILE_KERNELS[j];
            double t0 = timer_now();
            conv2d_forward(out, in, &c, N, L->H, L->W, scratch, m->nthreads);
            double t1 = timer_now();
            conv2d_backward(i > 0 ? out : NULL, dy, in, &c, N, L->H, L->W, scratch, m->nthreads);
            double t2 = timer_now();
            if (r >= 0) {
                tf[(size_t)j * reps + r] = t1 - t0;
                tb[(size_t)j * reps + r] = t2 - t1;
            }
        }
    }
    for (int j = 0; j < PROFILE_N_KERNELS; j++) {
        int run = kernel_runs(PROFILE_KERNELS[j], c.K);
        fwd[j] = run ? bench_median(tf + (size_t)j * reps, reps) : 0;
        bwd[j] = run ? bench_median(tb + (size_t)j * reps, reps) : 0;
    }
    free(tf);
    free(tb);
    free(scratch);
    free(c.dw);
}

/* Per-layer profile of P training steps on N images (one rank).  Prints one
 * JSON line per layer and per extra row (loss, Adam step, zero_grad):
 * "kind": "layer", workload, index, desc, type (conv/maxpool/upsample/
 * other), N C H W OC K, fwd_s/bwd_s (median seconds in the step), fwd_flop/
 * bwd_flop, steps (P), threads; conv rows also: "kernel" (the kernel the
 * step ran), "auto" (what CONV_KERNEL_AUTO runs for this K), "kernel_reps"
 * (P) and "kernels": {"generic"|"avx512"|"direct": [fwd_s, bwd_s]} with the
 * medians of time_conv_kernels for every kernel the CPU runs. */
static void run_profile(const char *workload, Model *m, Optimizer *opt, const float *x, int N, int P)
{
    const int nl = m->spec.n_layers, rows = nl + PROFILE_EXTRA_ROWS;
    size_t chw = (size_t)m->spec.C * m->spec.H * m->spec.W;
    double inv = 1.0 / ((double)N * (double)chw);
    double *tf = xcalloc((size_t)rows * PROFILE_MAX_STEPS, sizeof(double));
    double *tb = xcalloc((size_t)rows * PROFILE_MAX_STEPS, sizeof(double));
    double *col = xmalloc(PROFILE_MAX_STEPS * sizeof(double));
    for (int s = 0; s < P; s++) {
        double *f = tf + (size_t)s * rows, *b = tb + (size_t)s * rows;
        double t0 = timer_now();
        model_zero_grad(m);
        f[nl + 2] = timer_now() - t0;
        profiled_forward_backward(m, x, N, inv, f, b);
        t0 = timer_now();
        optimizer_step(opt, m->params, m->grads);
        f[nl + 1] = timer_now() - t0;
    }
    for (int i = 0; i < rows; i++) {
        char desc[96];
        const Layer *L = i < nl ? &m->layers[i] : NULL;
        if (L)
            layer_desc(desc, sizeof desc, m, i);
        else
            snprintf(desc, sizeof desc, "%s",
                     i == nl ? "mse loss+sigmoid bwd" : i == nl + 1 ? "adam step" : "zero_grad");
        for (int s = 0; s < P; s++) col[s] = tf[(size_t)s * rows + i];
        double fwd = bench_median(col, P);
        for (int s = 0; s < P; s++) col[s] = tb[(size_t)s * rows + i];
        double bwd = bench_median(col, P);
        double ff = 0, fb = 0, kf[PROFILE_N_KERNELS], kb[PROFILE_N_KERNELS];
        const int conv = L && L->kind == LAYER_CONV;
        if (conv) {
            ff = conv_flops(L) * N;
            fb = ff * (i > 0 ? 2.0 : 1.0); /* weight grad, plus input grad except layer 0 */
            time_conv_kernels(m, i, x, N, P, kf, kb);
        }
        printf("{\"kind\": \"layer\", \"workload\": ");
        bench_print_json_string(stdout, workload);
        printf(", \"index\": %d, \"desc\": ", i);
        bench_print_json_string(stdout, desc);
        if (L)
            printf(", \"type\": \"%s\", \"N\": %d, \"C\": %d, \"H\": %d, \"W\": %d, \"OC\": %d, \"K\": %d",
                   L->kind == LAYER_CONV ? "conv" : L->kind == LAYER_MAXPOOL ? "maxpool" : "upsample", N, L->C,
                   L->H, L->W, L->OC, L->kind == LAYER_CONV ? L->conv.K : 0);
        else
            printf(", \"type\": \"other\"");
        printf(", \"fwd_s\": %.6g, \"bwd_s\": %.6g, \"fwd_flop\": %.6g, \"bwd_flop\": %.6g, \"steps\": %d, "
               "\"threads\": %d",
               fwd, bwd, ff, fb, P, m->nthreads);
        if (conv) {
            const int K = L->conv.K;
            printf(", \"kernel\": \"%s\", \"auto\": \"%s\", \"kernel_reps\": %d, \"kernels\": {",
                   conv2d_kernel_name(conv2d_kernel_resolve(L->conv.kernel, K)),
                   conv2d_kernel_name(conv2d_kernel_resolve(CONV_KERNEL_AUTO, K)), P);
            for (int j = 0, first = 1; j < PROFILE_N_KERNELS; j++) {
                if (!kernel_runs(PROFILE_KERNELS[j], K)) continue;
                printf("%s\"%s\": [%.6g, %.6g]", first ? "" : ", ", conv2d_kernel_name(PROFILE_KERNELS[j]), kf[j],
                       kb[j]);
                first = 0;
            }
            printf("}");
        }
        printf("}\n");
    }
    fflush(stdout);
    free(tf);
    free(tb);
    free(col);
}

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    const char *preset = bench_opt_str(argc, argv, "--preset", "imagenet64");
    const char *mode = bench_opt_str(argc, argv, "--mode", "train");
    const char *data_out = bench_opt_str(argc, argv, "--data-out", NULL);
    const char *variant_opt = bench_opt_str(argc, argv, "--variant", NULL);
    const char *precision_opt = bench_opt_str(argc, argv, "--precision", "fp32");
    const char *amx_opt = bench_opt_str(argc, argv, "--amx", NULL);
    int B = (int)bench_opt_int(argc, argv, "--batch", 128, 1);
    int threads = (int)bench_opt_int(argc, argv, "--threads", 0, 0);
    int steps = (int)bench_opt_int(argc, argv, "--steps", 5, 1);
    int warmup = (int)bench_opt_int(argc, argv, "--warmup", 2, 0);
    int runs = (int)bench_opt_int(argc, argv, "--runs", 3, 1);
    int profile = (int)bench_opt_int(argc, argv, "--profile", 0, 0);
    int encode = strcmp(mode, "encode") == 0;
    if ((!encode && strcmp(mode, "train") != 0) || runs > BENCH_MAX_RUNS || profile > PROFILE_MAX_STEPS ||
        ((encode || profile) && ctx.size != 1)) {
        par_err0(&ctx, "bench_train: --mode train|encode, --runs <= %d, --profile <= %d; encode and profile "
                       "run on one rank\n", BENCH_MAX_RUNS, PROFILE_MAX_STEPS);
        par_abort(2);
    }
    int C, H, W;
    ModelSpec spec;
    Err err;
    err_clear(&err);
    if (!preset_shape(preset, &C, &H, &W) || model_parse(&spec, preset, C, H, W, &err) != AE_OK) {
        par_err0(&ctx, "bench_train: unknown preset '%s' (mnist, imagenet32, imagenet64) %s\n", preset, err.msg);
        par_abort(2);
    }
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(threads, cpus.cpus, cpus.sharing, ctx.local_size);

    /* The global batch, identical on every rank; this rank's slice. */
    size_t chw = (size_t)C * H * W;
    float *batch = xmalloc((size_t)B * chw * sizeof(float));
    Rng rng;
    rng_seed(&rng, BENCH_DATA_SEED, 0);
    for (size_t i = 0; i < (size_t)B * chw; i++) batch[i] = rng_uniform_f32(&rng, 0.0f, 1.0f);
    int64_t off = 0, cnt = B;
    if (!encode) sampler_rank_slice(B, ctx.rank, ctx.size, &off, &cnt);
    const float *x = batch + (size_t)off * chw;
    if (data_out && ctx.rank == 0) {
        NpyArray a = { .name = "", .dtype = NPY_F32, .ndim = 4, .shape = { B, C, H, W }, .data = batch };
        if (npy_write(data_out, &a, &err) != AE_OK) {
            fprintf(stderr, "bench_train: %s\n", err.msg);
            par_abort(1);
        }
    }

    Model m;
    model_build(&m, &spec, cnt > 0 ? (int)cnt : 1, plan.omp_threads);
    model_init_glorot(&m, BENCH_WEIGHT_SEED);
    ModelPrecision precision;
    if (model_precision_parse(&precision, precision_opt, &err) != AE_OK) {
        par_err0(&ctx, "bench_train: %s\n", err.msg);
        par_abort(2);
    }
    model_set_precision(&m, precision);
    if (amx_opt) { /* --amx off|emulated|native: model_set_amx (default: the model's choice) */
        const int impl = strcmp(amx_opt, "native") == 0 ? CONV_AMX_NATIVE
                         : strcmp(amx_opt, "emulated") == 0 ? CONV_AMX_EMULATED : CONV_AMX_OFF;
        if (!model_set_amx(&m, impl)) {
            par_err0(&ctx, "bench_train: --amx %s: needs --precision bf16 and a CPU that runs it\n", amx_opt);
            par_abort(2);
        }
    }
    if (ctx.rank == 0 && m.precision == MODEL_BF16)
        fprintf(stderr, "bench_train: forward-only convolutions on AMX: %s\n",
                m.amx == CONV_AMX_NATIVE ? "native" : m.amx == CONV_AMX_EMULATED ? "emulated" : "off");
    /* GEMM kernel of every conv, read once here (conv2d.h CONV2D_KERNEL_ENV;
     * unset = auto, as model_build leaves it), so one build times both paths. */
    ConvKernel kernel;
    if (conv2d_kernel_parse(&kernel, getenv(CONV2D_KERNEL_ENV), &err) != AE_OK) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        par_abort(1);
    }
    for (int i = 0; i < m.spec.n_layers; i++)
        if (m.layers[i].kind == LAYER_CONV) m.layers[i].conv.kernel = kernel;
    if (ctx.rank == 0)
        fprintf(stderr, "bench_train: conv kernel %s (runs %s)\n", conv2d_kernel_name(kernel),
                conv2d_kernel_name(conv2d_kernel_resolve(kernel, 3)));
    AdamConfig adam = ADAM_CONFIG_DEFAULT;
    Optimizer opt;
    optimizer_init(&opt, OPT_ADAM, &adam, 0.0f, m.n_params);
    CHECK(layers_flops(&m, m.spec.n_layers) == model_forward_flops(&m));

    char workload[128], variant[96], extra[256];
    snprintf(workload, sizeof workload, "%s %s B=%d", encode ? "encode" : "train", preset, B);
    if (variant_opt)
        snprintf(variant, sizeof variant, "%s", variant_opt);
    else
        snprintf(variant, sizeof variant, "%d rank%s x %d thread%s%s", ctx.size, ctx.size > 1 ? "s" : "",
                 plan.omp_threads, plan.omp_threads > 1 ? "s" : "", precision == MODEL_BF16 ? ", bf16" : "");

    double first_loss = 0, last_loss = 0, sec[BENCH_MAX_RUNS];
    for (int s = 0; s < warmup; s++) {
        if (encode)
            model_encode(&m, x, B);
        else
            first_loss = train_step(&ctx, &m, &opt, x, (int)cnt, B) / ((double)B * chw);
    }
    for (int r = 0; r < runs; r++) {
        par_barrier(&ctx);
        double t0 = timer_now();
        for (int s = 0; s < steps; s++) {
            if (encode)
                model_encode(&m, x, B);
            else
                last_loss = train_step(&ctx, &m, &opt, x, (int)cnt, B) / ((double)B * chw);
        }
        par_barrier(&ctx);
        sec[r] = timer_now() - t0;
        par_log0(&ctx, "# %s %s run %d: %.3f s for %d steps (%.1f images/s)\n", workload, variant, r + 1, sec[r],
                 steps, (double)steps * B / sec[r]);
    }
    double flop = encode ? layers_flops(&m, m.spec.n_encoder) : 3.0 * model_forward_flops(&m);
    snprintf(extra, sizeof extra,
             "\"ranks\": %d, \"threads\": %d, \"steps\": %d, \"warmup\": %d, \"loss_first\": %.6g, "
             "\"loss_last\": %.6g, \"params\": %zu, \"precision\": \"%s\", \"arithmetic\": \"%s\"",
             ctx.size, plan.omp_threads, steps, warmup, first_loss, last_loss, m.n_params,
             model_precision_name(precision), model_precision_describe(&m));
    if (ctx.rank == 0)
        bench_print_result(stdout, workload, "aesim", variant, sec, runs, (double)steps * B, flop, 0, extra);
    if (profile > 0) run_profile(workload, &m, &opt, x, B, profile);

    optimizer_free(&opt);
    model_free(&m);
    free(batch);
    par_finalize(&ctx);
    return 0;
}
