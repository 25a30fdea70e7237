/*
 * tool_model_ref.c - runs the aesim model on seeded data and writes every
 * intermediate result for tests/test_model_torch.py to compare with PyTorch.
 *
 * usage: tool_model_ref ARCH C H W N STEPS OPTIMIZER OUT_DIR
 * Writes OUT_DIR/init.npz (checkpoint before training, via ckpt_save),
 * OUT_DIR/final.npz (checkpoint after STEPS optimizer steps) and
 * OUT_DIR/ref.npz with: x [STEPS][N][C][H][W] (batch of each step), y0 (output
 * of step 0's batch before any update), z0 (bottleneck of that batch), loss
 * [STEPS] (mean squared error per pixel before each update), and
 * grad.convJ.weight / grad.convJ.bias (gradients of step 0).
 * The convolution kernel is AESIM_KERNEL's (conv2d.h CONV2D_KERNEL_ENV; auto
 * when unset), so the test can run the model's paths for every kernel (the
 * direct kernel fuses pooling and upsampling into the convolutions, the
 * others do not).  AESIM_PRECISION=bf16 (when set: fp32 or bf16) runs the
 * model in bf16 mixed precision (model.h MODEL_BF16; tests/test_bf16_torch.py);
 * AESIM_BF16_KERNELS=float32|emulated|native then picks the bf16 arithmetic
 * (model_set_bf16_kernels; unset: the model's own choice), and
 * AESIM_AMX=off|emulated|native the AMX convolutions of the forward-only
 * passes, y0 and z0 (model_set_amx; unset: the model's own choice).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "model/ckpt.h"
#include "nn/conv2d.h"
#include "nn/conv_amx.h"
#include "nn/conv_direct_bf16.h"
#include "model/model.h"
#include "data/npy.h"
#include "model/optimizer.h"
#include "base/rng.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* One name per implementation for both AESIM_BF16_KERNELS and AESIM_AMX. */
_Static_assert((int)CONV_BF16_NATIVE == (int)CONV_AMX_NATIVE && (int)CONV_BF16_EMULATED == (int)CONV_AMX_EMULATED &&
                   (int)CONV_BF16_OFF == (int)CONV_AMX_OFF,
               "CONV_BF16_* and CONV_AMX_* values differ");

static void die(const Err *e)
{
    fprintf(stderr, "tool_model_ref: %s\n", e->msg);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s ARCH C H W N STEPS adam|sgd OUT_DIR\n", argv[0]);
        return 2;
    }
    int C = atoi(argv[2]), H = atoi(argv[3]), W = atoi(argv[4]), N = atoi(argv[5]), steps = atoi(argv[6]);
    const char *out = argv[8];
    Err err;
    err_clear(&err);
    ModelSpec spec;
    if (model_parse(&spec, argv[1], C, H, W, &err)) die(&err);
    Model m;
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads(); /* OMP_NUM_THREADS decides, as in the programs */
#endif
    ConvKernel kernel;
    if (conv2d_kernel_parse(&kernel, getenv(CONV2D_KERNEL_ENV), &err)) die(&err);
    model_build(&m, &spec, N, nthreads);
    if (getenv("AESIM_PRECISION")) {
        ModelPrecision prec;
        if (model_precision_parse(&prec, getenv("AESIM_PRECISION"), &err)) die(&err);
        model_set_precision(&m, prec);
        /* AESIM_BF16_KERNELS: float32 = the float32 kernels on rounded operands,
         * emulated = the bf16 kernels with VDPBF16PS emulated, native = on
         * VDPBF16PS; AESIM_AMX: off, emulated or native AMX convolutions in
         * the forward-only passes (unset: the model's choice) */
        static const struct { const char *var; int (*set)(Model *, int); } PICK[] = {
            {"AESIM_BF16_KERNELS", model_set_bf16_kernels}, {"AESIM_AMX", model_set_amx}};
        for (int k = 0; k < 2; k++) {
            const char *v = getenv(PICK[k].var);
            if (!v || prec != MODEL_BF16) continue;
            const int impl = strcmp(v, "native") == 0 ? CONV_BF16_NATIVE : strcmp(v, "emulated") == 0 ? CONV_BF16_EMULATED : 0;
            if (!PICK[k].set(&m, impl)) {
                fprintf(stderr, "tool_model_ref: %s=%s: not available on this CPU\n", PICK[k].var, v);
                return 2;
            }
        }
        static const char *how[] = {"float32 kernels on rounded operands", "VDPBF16PS kernels",
                                    "bf16 kernels, VDPBF16PS emulated"};
        static const char *amx[] = {"", "; forward-only passes on AMX tiles", "; forward-only passes on AMX emulated"};
        printf("precision %s%s%s%s%s\n", model_precision_name(prec), prec == MODEL_BF16 ? " (" : "",
               prec == MODEL_BF16 ? how[m.bf16_kernels] : "", prec == MODEL_BF16 ? amx[m.amx] : "",
               prec == MODEL_BF16 ? ")" : "");
    }
    for (int i = 0; i < spec.n_layers; i++)
        if (m.layers[i].kind == LAYER_CONV) m.layers[i].conv.kernel = kernel;
    model_init_glorot(&m, 1234);
    /* Non-zero biases so that their paths are tested too. */
    Rng rng;
    rng_seed(&rng, 99, 1);
    for (int i = 0; i < model_num_tensors(&m); i++) {
        ParamTensor t = model_tensor(&m, i);
        if (t.ndim == 1)
            for (size_t j = 0; j < t.numel; j++) m.params[t.offset + j] = rng_uniform_f32(&rng, -0.05f, 0.05f);
    }
    Optimizer opt;
    AdamConfig ac = { 1e-3f, 0.9f, 0.999f, 1e-7f };
    optimizer_init(&opt, strcmp(argv[7], "sgd") == 0 ? OPT_SGD : OPT_ADAM, &ac, 0.9f, m.n_params);
    CkptState st = { .seed = 1234, .batch_size = N };
    char path[4096];
    snprintf(path, sizeof path, "%s/init.npz", out);
    if (ckpt_save(path, &m, &opt, &st, &err)) die(&err);

    size_t chw = (size_t)C * H * W, img = (size_t)N * chw;
    int D = model_embedding_dim(&m);
    float *x = xmalloc((size_t)steps * img * sizeof(float));
    for (size_t i = 0; i < (size_t)steps * img; i++) x[i] = rng_uniform_f32(&rng, 0.f, 1.f);
    float *y0 = xmalloc(img * sizeof(float)), *z0 = xmalloc((size_t)N * D * sizeof(float));
    float *g0 = xmalloc(m.n_params * sizeof(float));
    double *loss = xmalloc((size_t)steps * sizeof(double));
    memcpy(z0, model_encode(&m, x, N), (size_t)N * D * sizeof(float));
    for (int s = 0; s < steps; s++) {
        model_zero_grad(&m);
        double sse = model_forward_backward(&m, x + (size_t)s * img, N, 1.0 / (double)img);
        loss[s] = sse / (double)img;
        if (s == 0) {
            memcpy(y0, model_forward(&m, x, N), img * sizeof(float));
            memcpy(g0, m.grads, m.n_params * sizeof(float));
        }
        optimizer_step(&opt, m.params, m.grads);
    }
    st.step = steps;
    st.batch = steps; /* batches of N images done in the first epoch: a position ckpt_read accepts */
    snprintf(path, sizeof path, "%s/final.npz", out);
    if (ckpt_save(path, &m, &opt, &st, &err)) die(&err);

    int nt = model_num_tensors(&m), n = 0;
    NpyArray *a = xcalloc((size_t)nt + 4, sizeof *a);
    a[n] = (NpyArray){ .name = "x", .dtype = NPY_F32, .ndim = 5, .shape = { steps, N, C, H, W }, .data = x };
    n++;
    a[n] = (NpyArray){ .name = "y0", .dtype = NPY_F32, .ndim = 4, .shape = { N, C, H, W }, .data = y0 };
    n++;
    a[n] = (NpyArray){ .name = "z0", .dtype = NPY_F32, .ndim = 2, .shape = { N, D }, .data = z0 };
    n++;
    a[n] = (NpyArray){ .name = "loss", .dtype = NPY_F64, .ndim = 1, .shape = { steps }, .data = loss };
    n++;
    for (int i = 0; i < nt; i++) {
        ParamTensor t = model_tensor(&m, i);
        NpyArray *g = &a[n++];
        snprintf(g->name, sizeof g->name, "grad.%s", t.name);
        g->dtype = NPY_F32;
        g->ndim = t.ndim;
        memcpy(g->shape, t.shape, sizeof t.shape);
        g->data = g0 + t.offset;
    }
    snprintf(path, sizeof path, "%s/ref.npz", out);
    if (npz_write(path, a, n, &err)) die(&err);
    free(a);
    free(x);
    free(y0);
    free(z0);
    free(g0);
    free(loss);
    optimizer_free(&opt);
    model_free(&m);
    return 0;
}
