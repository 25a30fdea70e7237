/*
 * tool_ntxent.c - test helper for tests/test_ntxent_torch.py (not a test
 * itself).
 *
 *   tool_ntxent loss IN.npy TAU SCALE OUT.npz
 *       IN: float32 [2n][D]; writes OUT.npz with loss (float64 [1]) and dz
 *       (float32 [2n][D]) = ntxent_loss(dz, z, n, D, TAU, SCALE).
 *   tool_ntxent head IN.npy TAU SCALE HID OUT.npz
 *       The same through a projection head g (proj_head.h, HID units,
 *       Glorot init from seed 5): loss = SCALE-free NT-Xent of g(z), dz =
 *       SCALE * dL/dz, plus the head's initial parameters under PyTorch's
 *       names (0.weight, 0.bias, 2.weight, 2.bias) and their gradients
 *       (g.0.weight ...; SCALE * dL/dparam).
 *   tool_ntxent model ARCH C H W N TAU WEIGHT NOISY.npy CLEAN.npy OUT_DIR [POOL]
 *       N even; builds ARCH for CxHxW, Glorot init (seed 1234) with small
 *       random biases, writes OUT_DIR/init.npz (ckpt_save), runs
 *       model_forward_backward_ex on input NOISY [N][C][H][W] with target
 *       CLEAN and the code hook WEIGHT * NT-Xent(bottleneck rows i, i + N/2
 *       paired, TAU; POOL avg: of each row's channel means, global_avgpool.h,
 *       as the trainer's --contrastive-pool avg; none, the default: of the
 *       rows), inv_count 1/(N*C*H*W), and writes OUT_DIR/ref.npz:
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
#include "nn/global_avgpool.h"
#include "nn/ntxent.h"
#include "nn/proj_head.h"
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

typedef struct Hook { double tau, weight, loss; int pool_c, pool_hw; } Hook;

static void code_grad(void *user, float *dz, const float *z, int N, int D)
{
    Hook *h = user;
    if (!h->pool_c) {
        h->loss = ntxent_loss(dz, z, N / 2, D, h->tau, h->weight);
        return;
    }
    float *zp = xmalloc((size_t)N * h->pool_c * sizeof *zp), *dzp = xmalloc((size_t)N * h->pool_c * sizeof *dzp);
    global_avgpool_forward(zp, z, N, h->pool_c, h->pool_hw);
    h->loss = ntxent_loss(dzp, zp, N / 2, h->pool_c, h->tau, h->weight);
    global_avgpool_backward(dz, dzp, N, h->pool_c, h->pool_hw);
    free(zp);
    free(dzp);
}

/* Reads float32 z[2n][D] from path into *in, or exits 1 with the reason. */
static void read_pairs(const char *path, NpyArray *in)
{
    Err err;
    err_clear(&err);
    if (npy_read(path, in, &err)) die(&err);
    if (in->dtype != NPY_F32 || in->ndim != 2 || in->shape[0] % 2) {
        fprintf(stderr, "tool_ntxent: %s must be float32 [2n][D]\n", path);
        exit(1);
    }
}

static int run_loss(char **argv)
{
    Err err;
    err_clear(&err);
    NpyArray in;
    read_pairs(argv[2], &in);
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

static int run_head(char **argv)
{
    Err err;
    err_clear(&err);
    NpyArray in;
    read_pairs(argv[2], &in);
    int n = (int)(in.shape[0] / 2), D = (int)in.shape[1], hid = atoi(argv[5]);
    ProjHead h;
    proj_head_init(&h, D, hid, 2 * n, 5);
    float *init = xmalloc(h.n * sizeof *init), *dp = xmalloc((size_t)2 * n * hid * sizeof *dp);
    float *dz = xmalloc((size_t)2 * n * D * sizeof *dz);
    memcpy(init, h.params, h.n * sizeof *init);
    const float *g = proj_head_forward(&h, in.data, 2 * n);
    double loss = ntxent_loss(dp, g, n, hid, atof(argv[3]), atof(argv[4]));
    proj_head_backward(&h, dz, dp, in.data, 2 * n);
    ProjHeadTensor ten[4];
    proj_head_tensors(&h, ten);
    NpyArray a[10] = {
        { .name = "loss", .dtype = NPY_F64, .ndim = 1, .shape = { 1 }, .data = &loss },
        { .name = "dz", .dtype = NPY_F32, .ndim = 2, .shape = { 2 * n, D }, .data = dz },
    };
    for (int t = 0; t < 4; t++)
        for (int s = 0; s < 2; s++) {
            NpyArray *x = &a[2 + 2 * t + s];
            snprintf(x->name, sizeof x->name, "%s%s", s ? "g." : "", ten[t].name);
            x->dtype = NPY_F32;
            x->ndim = ten[t].ndim;
            x->shape[0] = ten[t].shape[0];
            x->shape[1] = ten[t].shape[1];
            x->data = (s ? h.grads : init) + ten[t].offset;
        }
    if (npz_write(argv[6], a, 10, &err)) die(&err);
    free(init);
    free(dp);
    free(dz);
    proj_head_free(&h);
    npy_array_free(&in);
    return 0;
}

static int run_model(char **argv)
{
    int C = atoi(argv[3]), H = atoi(argv[4]), W = atoi(argv[5]), N = atoi(argv[6]);
    Hook h = { atof(argv[7]), atof(argv[8]), 0, 0, 0 };
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
    if (argv[12] && strcmp(argv[12], "avg") == 0) {
        int bc, bh, bw;
        model_bottleneck_shape(&m, &bc, &bh, &bw);
        h.pool_c = bc;
        h.pool_hw = bh * bw;
    } else if (argv[12] && strcmp(argv[12], "none") != 0) {
        fprintf(stderr, "tool_ntxent: POOL must be none or avg, not %s\n", argv[12]);
        return 2;
    }
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
    if (argc == 7 && strcmp(argv[1], "head") == 0) return run_head(argv);
    if ((argc == 12 || argc == 13) && strcmp(argv[1], "model") == 0) return run_model(argv);
    fprintf(stderr, "usage: %s loss IN.npy TAU SCALE OUT.npz\n"
                    "       tool_ntxent head IN.npy TAU SCALE HID OUT.npz\n"
                    "       %s model ARCH C H W N TAU WEIGHT NOISY.npy CLEAN.npy OUT_DIR [none|avg]\n", argv[0],
            argv[0]);
    return 2;
}
