/*
 * bench_limits.c - the machine's limits that the benchmark table compares
 * aesim against (issue 6):
 *   sgemm     OpenBLAS cblas_sgemm GFLOP/s for a square n x n x n product
 *             (2 n^3 FLOPs), at the benchmark's thread count and at 1 thread;
 *   mem_read  read bandwidth GB/s (10^9 bytes/s) of an OpenMP sum over a
 *             large float array (much larger than any cache), the read half
 *             of STREAM (J. McCalpin, STREAM benchmark, "sum" kernel), with
 *             8 independent AVX-512 accumulators where the CPU has AVX-512F
 *             (one SSE chain was add-latency bound at ~11 GB/s per core);
 *   fma_peak  the cores' float32 FMA peak GFLOP/s: independent chains of
 *             fused multiply-adds on registers only, with the widest
 *             vector ISA the CPU reports (AVX-512F, AVX2+FMA, else SSE
 *             mul+add), one loop per OpenMP thread.  OpenBLAS picks its own
 *             kernel at run time (DYNAMIC_ARCH; OPENBLAS_CORETYPE), which may
 *             use a narrower ISA than the CPU has: the gap between sgemm and
 *             fma_peak shows it.
 * Also prints the OpenBLAS build (openblas_get_config) and the measured
 * VDPBF16PS rate (conv_bf16_dot_speedup) as an "info" line.
 *
 * Output: JSON lines, see bench_common.h ("limit": name, threads, unit,
 * values[runs]).  Usage (run by launch/bench.sh):
 *   bench_limits --threads T --gemm-n 2048 --mem-mib 1024 --runs 5
 * Threading: sgemm runs with OpenBLAS threads = T (no OpenMP around it); the
 * sum runs with T OpenMP threads and no BLAS.  No MPI.
 * Does not: measure write bandwidth, latency or per-core turbo effects.
 */
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "base/check.h"
#include "base/rng.h"
#include "base/timer.h"
#include "nn/conv_direct_bf16.h"

/* Declared by OpenBLAS; repeated in case another cblas.h is picked up. */
void openblas_set_num_threads(int num_threads);
char *openblas_get_config(void);

/* Full sweeps of the array per timed bandwidth run, so that one run lasts
 * ~0.1 s or more even at tens of GB/s on a 1 GiB array. */
#define MEM_SWEEPS_PER_RUN 4
/* Seed of the random matrices (values do not matter for speed, but NaN or
 * denormals could, so they are drawn uniform in [-1, 1)). */
#define LIMITS_SEED 20240601u

/* Independent FMA chains per thread: more than latency (4 cycles) x FMA
 * ports (2) so the loop is throughput-bound; fits the 16 ymm registers. */
#define FMA_CHAINS 10
/* Loop trips per thread per timed run (~0.1-0.5 s on current cores). */
#define FMA_ITERS 40000000L
/* acc = acc * FMA_A + FMA_B converges to 1: no overflow, no denormals. */
#define FMA_A 0.999f
#define FMA_B 0.001f

__attribute__((target("avx512f"))) static float fma_loop_avx512(long iters)
{
    __m512 acc[FMA_CHAINS];
    const __m512 a = _mm512_set1_ps(FMA_A), b = _mm512_set1_ps(FMA_B);
    for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    float s = 0;
    for (int c = 0; c < FMA_CHAINS; c++) s += _mm512_reduce_add_ps(acc[c]);
    return s;
}

__attribute__((target("avx2,fma"))) static float fma_loop_avx2(long iters)
{
    __m256 acc[FMA_CHAINS];
    const __m256 a = _mm256_set1_ps(FMA_A), b = _mm256_set1_ps(FMA_B);
    for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float lanes[8], s = 0;
    for (int c = 0; c < FMA_CHAINS; c++) {
        _mm256_storeu_ps(lanes, acc[c]);
        for (int l = 0; l < 8; l++) s += lanes[l];
    }
    return s;
}

static float fma_loop_sse(long iters)
{
    __m128 acc[FMA_CHAINS];
    const __m128 a = _mm_set1_ps(FMA_A), b = _mm_set1_ps(FMA_B);
    for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int c = 0; c < FMA_CHAINS; c++) acc[c] = _mm_add_ps(_mm_mul_ps(acc[c], a), b);
    float lanes[4], s = 0;
    for (int c = 0; c < FMA_CHAINS; c++) {
        _mm_storeu_ps(lanes, acc[c]);
        for (int l = 0; l < 4; l++) s += lanes[l];
    }
    return s;
}

static void print_limit(const char *name, int threads, const char *unit, const double *v, int n, const char *extra)
{
    printf("{\"kind\": \"limit\", \"name\": \"%s\", \"threads\": %d, \"unit\": \"%s\", \"values\": [", name, threads,
           unit);
    for (int i = 0; i < n; i++) printf("%s%.6g", i ? ", " : "", v[i]);
    printf("]%s%s}\n", extra ? ", " : "", extra ? extra : "");
    fflush(stdout);
}

/* GFLOP/s of runs sgemm calls C = A x B on n x n matrices with `threads`
 * OpenBLAS threads, one warm-up call first. */
static void bench_sgemm(int n, int threads, int runs)
{
    size_t nn = (size_t)n * (size_t)n;
    float *a = xmalloc(nn * sizeof(float)), *b = xmalloc(nn * sizeof(float)), *c = xmalloc(nn * sizeof(float));
    Rng rng;
    rng_seed(&rng, LIMITS_SEED, 0);
    for (size_t i = 0; i < nn; i++) {
        a[i] = rng_uniform_f32(&rng, -1.0f, 1.0f);
        b[i] = rng_uniform_f32(&rng, -1.0f, 1.0f);
    }
    openblas_set_num_threads(threads);
    double gf[BENCH_MAX_RUNS];
    for (int r = -1; r < runs; r++) {
        double t0 = timer_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = timer_now() - t0;
        if (r >= 0) gf[r] = 2.0 * (double)n * n * n / t * 1e-9;
    }
    char extra[64];
    snprintf(extra, sizeof extra, "\"n\": %d", n);
    print_limit("sgemm", threads, "GFLOP/s", gf, runs, extra);
    free(a);
    free(b);
    free(c);
}

/* Independent vector partial sums in the AVX-512 read loop: enough to hide
 * the add latency, so the loop is limited by memory, not by one dependency
 * chain (a single 4-wide SSE chain, what -O2 makes of the plain loop, tops
 * out near 11 GB/s per core here: measured). */
#define READ_CHAINS 8
#define READ_LANES 16

/* sum of x[0..n) with READ_CHAINS independent 16-float accumulators. */
__attribute__((target("avx512f"))) static float sum_avx512(const float *x, size_t n)
{
    __m512 acc[READ_CHAINS];
    for (int c = 0; c < READ_CHAINS; c++) acc[c] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + READ_CHAINS * READ_LANES <= n; i += READ_CHAINS * READ_LANES)
        for (int c = 0; c < READ_CHAINS; c++) acc[c] = _mm512_add_ps(acc[c], _mm512_loadu_ps(x + i + c * READ_LANES));
    float s = 0;
    for (int c = 0; c < READ_CHAINS; c++) s += _mm512_reduce_add_ps(acc[c]);
    for (; i < n; i++) s += x[i];
    return s;
}

/* GB/s of an OpenMP float sum over mib MiB with `threads` threads (AVX-512
 * with independent accumulators where the CPU has it, else the compiler's
 * simd reduction). */
static void bench_mem_read(size_t mib, int threads, int runs)
{
    size_t n = mib * ((size_t)1 << 20) / sizeof(float);
    float *x = xmalloc(n * sizeof(float));
    omp_set_num_threads(threads);
    /* First touch by the thread that later reads each part (static schedule
     * in both loops), so pages land near their reader. */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = (float)(i & 0xff);
    /* (the AVX-512 sum splits x into the same static blocks) */
    double gbs[BENCH_MAX_RUNS];
    double check = 0;
    const int avx512 = __builtin_cpu_supports("avx512f");
    for (int r = -1; r < runs; r++) {
        double t0 = timer_now();
        for (int s = 0; s < MEM_SWEEPS_PER_RUN; s++) {
            float sum = 0;
            if (avx512) {
                /* each thread sums its static block, as the loop below splits it */
#pragma omp parallel reduction(+ : sum)
                {
                    const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
                    const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
                    sum += sum_avx512(x + lo, hi - lo);
                }
            } else {
                /* simd reduction lets the compiler keep several vector partial
                 * sums (reassociation is allowed by the pragma, not by flags). */
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
                for (size_t i = 0; i < n; i++) sum += x[i];
            }
            check += sum;
        }
        double t = timer_now() - t0;
        if (r >= 0) gbs[r] = (double)MEM_SWEEPS_PER_RUN * (double)n * sizeof(float) / t * 1e-9;
    }
    char extra[96];
    /* The checksum is printed so the sums cannot be optimised away. */
    snprintf(extra, sizeof extra, "\"mib\": %zu, \"checksum\": %.6g", mib, check);
    print_limit("mem_read", threads, "GB/s", gbs, runs, extra);
    free(x);
}

/* GFLOP/s of FMA_CHAINS register FMA chains on each of `threads` threads. */
static void bench_fma_peak(int threads, int runs)
{
    __builtin_cpu_init();
    int isa = __builtin_cpu_supports("avx512f") ? 512 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 256 : 128;
    /* FLOPs per chain step and lane: 2 for an FMA or for SSE's mul + add. */
    double flop = 2.0 * (isa / 32) * FMA_CHAINS * (double)FMA_ITERS * threads;
    double gf[BENCH_MAX_RUNS], check = 0;
    for (int r = -1; r < runs; r++) {
        double t0 = timer_now();
#pragma omp parallel num_threads(threads) reduction(+ : check)
        check += isa == 512 ? fma_loop_avx512(FMA_ITERS) : isa == 256 ? fma_loop_avx2(FMA_ITERS) : fma_loop_sse(FMA_ITERS);
        double t = timer_now() - t0;
        if (r >= 0) gf[r] = flop / t * 1e-9;
    }
    char extra[96];
    snprintf(extra, sizeof extra, "\"isa\": \"%s\", \"checksum\": %.6g",
             isa == 512 ? "AVX-512F" : isa == 256 ? "AVX2+FMA" : "SSE mul+add", check);
    print_limit("fma_peak", threads, "GFLOP/s", gf, runs, extra);
}

int main(int argc, char **argv)
{
    int threads = (int)bench_opt_int(argc, argv, "--threads", 2, 1);
    int n = (int)bench_opt_int(argc, argv, "--gemm-n", 2048, 64);
    size_t mib = (size_t)bench_opt_int(argc, argv, "--mem-mib", 1024, 1);
    int runs = (int)bench_opt_int(argc, argv, "--runs", 5, 1);
    CHECK(runs <= BENCH_MAX_RUNS);

    printf("{\"kind\": \"info\", \"openblas_config\": ");
    bench_print_json_string(stdout, openblas_get_config());
    /* VDPBF16PS's multiply-adds per second over float32 FMAs' (0 without
     * AVX512_BF16): what --precision auto decides bf16 by. */
    printf(", \"threads\": %d, \"bf16_dot_speedup\": %.3f}\n", threads, conv_bf16_dot_speedup());
    fflush(stdout);

    bench_sgemm(n, threads, runs);
    if (threads != 1) bench_sgemm(n, 1, runs);
    bench_fma_peak(threads, runs);
    bench_mem_read(mib, threads, runs);
    if (threads != 1) bench_mem_read(mib, 1, runs);
    return 0;
}
