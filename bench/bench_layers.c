/*
 * bench_layers.c - milliseconds per call of the memory-bound layers
 * (issue 6): 2x2 max-pooling, 2x nearest upsampling, ReLU and sigmoid,
 * forward and backward, at the imagenet64 training shapes (batch 128); the
 * pooling / upsampling backward with the ReLU backward fused
 * (*_backward_relu) next to the two passes it replaces; and the output
 * layer's loss + gradient, mse_sum + mse_backward + sigmoid_backward (three
 * passes) against mse_sigmoid_backward (one).
 *
 * Each row: WARMUP_CALLS untimed calls, then --runs timed calls; prints the median
 * and min ms per call and the effective bandwidth = bytes that must move
 * (each input read once, each output written once; write-allocate reads
 * not counted) / median time.  Activations are timed out of place (y != x,
 * dx != dy) so repeated calls see the same values.
 * --kernel scalar|avx512|auto picks the implementation (maxpool.h,
 * upsample.h, act.h *_kernel functions; avx512 falls back to scalar on a CPU
 * without AVX-512F, as printed).
 * Usage: bench_layers [--threads 1,2] [--runs 5] [--n 128] [--kernel auto]
 * Not run by launch/bench.sh; build by hand like the other bench/ programs:
 *   mpicc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Iinclude -Ibench -fopenmp
 *     -DAESIM_MPI=1 -DAESIM_OMP=1 bench/bench_layers.c bench/bench_common.c build/libaesim.a
 *     $(pkg-config --cflags --libs openblas libpng zlib libzip jansson libjpeg) -lm
 * Threading: OpenMP thread count set per row with omp_set_num_threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/act.h"
#include "bench_common.h"
#include "base/check.h"
#include "nn/loss.h"
#include "nn/maxpool.h"
#include "base/timer.h"
#include "nn/upsample.h"

#if AESIM_OMP
#include <omp.h>
#endif

/* Untimed calls before the timed ones: the first touches fresh pages, and
 * the next few still run slower on this VM (measured: 7 ms, 4 ms, 2.7 ms,
 * then a steady 1.8 ms for the 64x64 max-pool forward). */
#define WARMUP_CALLS 4
/* Bytes per float element. */
#define FLOAT_BYTES 4.0
/* Milliseconds per second and bytes per GB, for the printed units. */
#define MS_PER_S 1e3
#define BYTES_PER_GB 1e9

typedef enum Op {
    OP_POOL_FWD, OP_POOL_BWD, OP_UP_FWD, OP_UP_BWD, OP_RELU_FWD, OP_RELU_BWD, OP_SIG_FWD, OP_SIG_BWD,
    OP_POOL_BWD_RELU2,  /* maxpool backward, then relu_backward over dx (model.c before issue 6's fusion) */
    OP_POOL_BWD_RELU,   /* maxpool2x2_backward_relu */
    OP_UP_BWD_RELU2,    /* upsample backward, then relu_backward over dx */
    OP_UP_BWD_RELU,     /* upsample2x_backward_relu */
    OP_LOSS3,           /* mse_sum + mse_backward + sigmoid_backward */
    OP_LOSS1            /* mse_sigmoid_backward */
} Op;

typedef struct Row {
    Op op;
    const char *name;
    int C, H, W;   /* layer input shape per image */
} Row;

static const Row ROWS[] = {
    {OP_POOL_FWD, "maxpool fwd", 16, 64, 64}, {OP_POOL_BWD, "maxpool bwd", 16, 64, 64},
    {OP_POOL_FWD, "maxpool fwd", 32, 32, 32}, {OP_POOL_BWD, "maxpool bwd", 32, 32, 32},
    {OP_UP_FWD, "upsample fwd", 16, 32, 32},  {OP_UP_BWD, "upsample bwd", 16, 32, 32},
    {OP_UP_FWD, "upsample fwd", 32, 16, 16},  {OP_UP_BWD, "upsample bwd", 32, 16, 16},
    {OP_RELU_FWD, "relu fwd", 16, 64, 64},    {OP_RELU_BWD, "relu bwd", 16, 64, 64},
    {OP_SIG_FWD, "sigmoid fwd", 3, 64, 64},   {OP_SIG_BWD, "sigmoid bwd", 3, 64, 64},
    {OP_POOL_BWD_RELU2, "pool+relu 2p", 16, 64, 64}, {OP_POOL_BWD_RELU, "pool+relu 1p", 16, 64, 64},
    {OP_POOL_BWD_RELU2, "pool+relu 2p", 32, 32, 32}, {OP_POOL_BWD_RELU, "pool+relu 1p", 32, 32, 32},
    {OP_UP_BWD_RELU2, "up+relu 2p", 16, 32, 32},     {OP_UP_BWD_RELU, "up+relu 1p", 16, 32, 32},
    {OP_UP_BWD_RELU2, "up+relu 2p", 32, 16, 16},     {OP_UP_BWD_RELU, "up+relu 1p", 32, 16, 16},
    {OP_LOSS3, "mse+sig 3p", 3, 64, 64},             {OP_LOSS1, "mse+sig 1p", 3, 64, 64},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Buffers big enough for every row: a (input), b (output), c (second input). */
typedef struct Bufs { float *a, *b, *c; } Bufs;

/* Keeps the loss rows' sums observable (written, never read). */
static volatile double g_sink;

/* Implementation choice, as each module spells it. */
typedef struct Kernels { MaxpoolKernel pool; UpsampleKernel up; ActKernel act; } Kernels;

/* Runs one call of row r on N images; returns the bytes it must move. */
static double run_once(const Row *r, int N, Bufs *m, Kernels k)
{
    const size_t n = (size_t)N * r->C * r->H * r->W;
    switch (r->op) {
    case OP_POOL_FWD:
        maxpool2x2_forward_kernel(m->b, m->a, N, r->C, r->H, r->W, k.pool);
        return FLOAT_BYTES * (n + n / 4);
    case OP_POOL_BWD:
        maxpool2x2_backward_kernel(m->b, m->c, m->a, N, r->C, r->H, r->W, k.pool);
        return FLOAT_BYTES * (2 * n + n / 4);
    case OP_UP_FWD: upsample2x_forward_kernel(m->b, m->a, N, r->C, r->H, r->W, k.up); return FLOAT_BYTES * (n + 4 * n);
    case OP_UP_BWD: upsample2x_backward_kernel(m->b, m->a, N, r->C, r->H, r->W, k.up); return FLOAT_BYTES * (4 * n + n);
    case OP_RELU_FWD: relu_forward_kernel(m->b, m->a, n, k.act); return FLOAT_BYTES * 2 * n;
    case OP_RELU_BWD: relu_backward_kernel(m->b, m->c, m->a, n, k.act); return FLOAT_BYTES * 3 * n;
    case OP_SIG_FWD: sigmoid_forward_kernel(m->b, m->a, n, k.act); return FLOAT_BYTES * 2 * n;
    case OP_SIG_BWD: sigmoid_backward_kernel(m->b, m->c, m->a, n, k.act); return FLOAT_BYTES * 3 * n;
    case OP_POOL_BWD_RELU2: /* a = x (layer input, the ReLU output), c = dy */
        maxpool2x2_backward_kernel(m->b, m->c, m->a, N, r->C, r->H, r->W, k.pool);
        relu_backward_kernel(m->b, m->b, m->a, n, k.act);
        return FLOAT_BYTES * (2 * n + n / 4);
    case OP_POOL_BWD_RELU:
        maxpool2x2_backward_relu_kernel(m->b, m->c, m->a, N, r->C, r->H, r->W, k.pool);
        return FLOAT_BYTES * (2 * n + n / 4);
    case OP_UP_BWD_RELU2: /* a = x (n floats), c = dy (4n floats) */
        upsample2x_backward_kernel(m->b, m->c, N, r->C, r->H, r->W, k.up);
        relu_backward_kernel(m->b, m->b, m->a, n, k.act);
        return FLOAT_BYTES * (4 * n + 2 * n);
    case OP_UP_BWD_RELU:
        upsample2x_backward_relu_kernel(m->b, m->c, m->a, N, r->C, r->H, r->W, k.up);
        return FLOAT_BYTES * (4 * n + 2 * n);
    case OP_LOSS3: /* a = y (output), c = t (target) */
        g_sink = mse_sum(m->a, m->c, n);
        mse_backward(m->b, m->a, m->c, n, 1.0 / (double)n);
        sigmoid_backward_kernel(m->b, m->b, m->a, n, k.act);
        return FLOAT_BYTES * 3 * n;
    case OP_LOSS1:
        g_sink = mse_sigmoid_backward(m->b, m->a, m->c, n, 1.0 / (double)n);
        return FLOAT_BYTES * 3 * n;
    }
    return 0.0;
}

int main(int argc, char **argv)
{
    int runs = (int)bench_opt_int(argc, argv, "--runs", 5, 1);
    const int N = (int)bench_opt_int(argc, argv, "--n", 128, 1);
    const char *threads = bench_opt_str(argc, argv, "--threads", "1,2");
    const char *kname = bench_opt_str(argc, argv, "--kernel", "auto");
    Kernels kern = {MAXPOOL_KERNEL_AUTO, UPSAMPLE_KERNEL_AUTO, ACT_KERNEL_AUTO};
    if (strcmp(kname, "scalar") == 0) kern = (Kernels){MAXPOOL_KERNEL_SCALAR, UPSAMPLE_KERNEL_SCALAR, ACT_KERNEL_SCALAR};
    else if (strcmp(kname, "avx512") == 0) kern = (Kernels){MAXPOOL_KERNEL_AVX512, UPSAMPLE_KERNEL_AVX512, ACT_KERNEL_AVX512};
    else if (strcmp(kname, "auto") != 0) runs = 0;
    if (runs < 1 || runs > BENCH_MAX_RUNS) {
        fprintf(stderr, "bench_layers: --runs 1..%d, --kernel auto|scalar|avx512\n", BENCH_MAX_RUNS);
        return 2;
    }
    printf("# kernels run: maxpool %s, upsample %s, act %s\n",
           maxpool_kernel_resolve(kern.pool) == MAXPOOL_KERNEL_AVX512 ? "avx512" : "scalar",
           upsample_kernel_resolve(kern.up) == UPSAMPLE_KERNEL_AVX512 ? "avx512" : "scalar",
           act_kernel_resolve(kern.act) == ACT_KERNEL_AVX512 ? "avx512" : "scalar");
    size_t most = 0;
    for (size_t k = 0; k < COUNT(ROWS); k++) {
        const size_t n = (size_t)N * ROWS[k].C * ROWS[k].H * ROWS[k].W * 4;  /* upsample output is 4x */
        if (n > most) most = n;
    }
    Bufs m = {xmalloc(sizeof(float) * most), xmalloc(sizeof(float) * most), xmalloc(sizeof(float) * most)};
    /* Inputs in [-1, 1): sign changes for ReLU, no ties to speak of for pooling. */
    uint64_t s = 1;
    for (size_t i = 0; i < most; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        m.a[i] = (float)((double)(s >> 40) / (double)(1ull << 23)) - 1.0f;
        m.c[i] = 0.5f * m.a[i];
        m.b[i] = 0.0f;
    }
    printf("%-14s %-12s %3s %9s %9s %8s\n", "layer", "shape", "thr", "median_ms", "min_ms", "GB/s");
    char list[64];
    snprintf(list, sizeof list, "%s", threads);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const int t = atoi(tok);
        if (t < 1) continue;
#if AESIM_OMP
        omp_set_num_threads(t);
#endif
        for (size_t k = 0; k < COUNT(ROWS); k++) {
            const Row *r = &ROWS[k];
            double sec[BENCH_MAX_RUNS], bytes = 0.0;
            for (int i = 0; i < WARMUP_CALLS; i++) bytes = run_once(r, N, &m, kern);
            for (int i = 0; i < runs; i++) {
                const double t0 = timer_now();
                run_once(r, N, &m, kern);
                sec[i] = timer_now() - t0;
            }
            double lo = sec[0];
            for (int i = 1; i < runs; i++) lo = sec[i] < lo ? sec[i] : lo;
            const double med = bench_median(sec, runs);
            char shape[32];
            snprintf(shape, sizeof shape, "%dx%dx%d", r->C, r->H, r->W);
            printf("%-14s %-12s %3d %9.3f %9.3f %8.2f\n", r->name, shape, t, med * MS_PER_S, lo * MS_PER_S,
                   bytes / med / BYTES_PER_GB);
        }
    }
    free(m.a);
    free(m.b);
    free(m.c);
    return 0;
}
