/*
 * tool_ntxent.c - test helper for tests/test_ntxent_torch.py (not a test
 * itself).
 *
 *   tool_ntxent loss IN.npy TAU SCALE OUT.npz
 *       IN: float32 [2n][D]; writes OUT.npz with loss (float64 [1]) and dz
 *       (float32 [2n][D]) = ntxent_loss(dz, z, n, D, TAU, SCALE).
 *   tool_ntxent model ARCH C H W N TAU WEIGHT NOISY.npy CLEAN.npy OUT_DIR
 *       N even; builds ARCH for CxHxW, Glorot init (seed 1234) with small
 *       random biases, writes OUT_DIR/init.npz (ckpt_save), runs
 *       model_forward_backward_ex on input NOISY [N][C][H][W] with target
 *       CLEAN and the code hook WEIGHT * NT-Xent(bottleneck rows i, i + N/2
 *       paired, TAU), inv_count 1/(N*C*H*W), and writes OUT_DIR/ref.npz:
 *       sse (float64 [1]), closs (float64 [1], unweighted NT-Xent) and
 *       grad.convJ.weight / grad.convJ.bias.
 * On error prints the message and exits 1.  No MPI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "model/ckpt.h"
#include "model/model.h"
#include "data/npy.h"
#include "nn/ntxent.h"
#include "model/optimizer.h"
#include "base/rng.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static void die(const Err *e)
{
    fprintf(stderr, "tool_ntxent: %s\n", e->msg);
    exit(1);
}

typedef struct Hook { double tau, weight, loss; } Hook;

static void code_grad(void *user, float *dz, const float *z, int N, int D)
{
    Hook *h = user;
    h->loss = ntxent_loss(dz, z, N / 2, D, h->tau, h->weight);
}

static int run_loss(char **argv)
{
    Err err;
    err_clear(&err);
    NpyArray in;
    if (npy_read(argv[2], &in, &err)) die(&err);
    if (in.dtype != NPY_F32 || in.ndim != 2 || in.shape[0] % 2) {
        fprintf(stderr, "tool_ntxent: %s must be float32 [2n][D]\n", argv[2]);
        return 1;
    }
    int n = (int)(in.shape[0] / 2), D = (int)in.shape[1];
    float *dz = xmalloc((size_t)2 * n * D * sizeof *dz);
    double loss = ntxent_loss(dz, in.data, n, D, atof(argv[3]), atof(argv[4]));
    NpyArray a[2] = {
        { .name = "loss", .dtype = NPY_F64, .ndim = 1, .shape = { 1 }, .data = &loss },
        { .name = "dz", .dtype = NPY_F32, .ndim = 2, .shape = { 2 * n, D }, .data = dz },
    };
    if (npz_write(argv[5], a, 2, &err)) die(&err);
    free(dz);
    npy_array_free(&in);
    return 0;
}

static int run_model(char **argv)
{
    int C = atoi(argv[3]), H = atoi(argv[4]), W = atoi(argv[5]), N = atoi(argv[6]);
    Hook h = { atof(argv[7]), atof(argv[8]), 0 };
    const char *out = argv[11];
    Err err;
    err_clear(&err);
    ModelSpec spec;
    if (model_parse(&spec, argv[2], C, H, W, &err)) die(&err);
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    Model m;
    model_build(&m, &spec, N, nthreads);
    model_init_glorot(&m, 1234);
    Rng rng;
    rng_seed(&rng, 99, 1);
    for (int i = 0; i < model_num_tensors(&m); i++) {
        ParamTensor t = model_tensor(&m, i);
        if (t.ndim == 1)
            for (size_t j = 0; j < t.numel; j++) m.params[t.offset + j] = rng_uniform_f32(&rng, -0.05f, 0.05f);
    }
    Optimizer opt;
    AdamConfig ac = { 1e-3f, 0.9f, 0.999f, 1e-7f };
    optimizer_init(&opt, OPT_ADAM, &ac, 0.9f, m.n_params);
    CkptState st = { .seed = 1234, .batch_size = N };
    char path[4096];
    snprintf(path, sizeof path, "%s/init.npz", out);
    if (ckpt_save(path, &m, &opt, &st, &err)) die(&err);
    NpyArray noisy, clean;
    if (npy_read(argv[9], &noisy, &err) || npy_read(argv[10], &clean, &err)) die(&err);
    size_t img = (size_t)N * C * H * W;
    if (npy_numel(&noisy) != (int64_t)img || npy_numel(&clean) != (int64_t)img || noisy.dtype != NPY_F32 ||
        clean.dtype != NPY_F32) {
        fprintf(stderr, "tool_ntxent: inputs must be float32 [N][C][H][W]\n");
        return 1;
    }
    const ModelCodeHook code = { code_grad, &h };
    model_zero_grad(&m);
    double sse = model_forward_backward_ex(&m, noisy.data, clean.data, N, 1.0 / (double)img, NULL,
                                           h.weight > 0 ? &code : NULL);
    int nt = model_num_tensors(&m), n = 0;
    NpyArray *a = xcalloc((size_t)nt + 2, sizeof *a);
    a[n++] = (NpyArray){ .name = "sse", .dtype = NPY_F64, .ndim = 1, .shape = { 1 }, .data = &sse };
    a[n++] = (NpyArray){ .name = "closs", .dtype = NPY_F64, .ndim = 1, .shape = { 1 }, .data = &h.loss };
    for (int i = 0; i < nt; i++) {
        ParamTensor t = model_tensor(&m, i);
        NpyArray *g = &a[n++];
        snprintf(g->name, sizeof g->name, "grad.%s", t.name);
        g->dtype = NPY_F32;
        g->ndim = t.ndim;
        memcpy(g->shape, t.shape, sizeof t.shape);
        g->data = m.grads + t.offset;
    }
    snprintf(path, sizeof path, "%s/ref.npz", out);
    if (npz_write(path, a, n, &err)) die(&err);
    free(a);
    npy_array_free(&noisy);
    npy_array_free(&clean);
    optimizer_free(&opt);
    model_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "loss") == 0) return run_loss(argv);
    if (argc == 12 && strcmp(argv[1], "model") == 0) return run_model(argv);
    fprintf(stderr, "usage: %s loss IN.npy TAU SCALE OUT.npz\n"
                    "       %s model ARCH C H W N TAU WEIGHT NOISY.npy CLEAN.npy OUT_DIR\n", argv[0], argv[0]);
    return 2;
}
