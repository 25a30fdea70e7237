/*
 * loss.c - mean squared error sum and gradient, and both fused with the
 * sigmoid backward of the output layer (see loss.h).
 *
 * The sum is a double accumulated in index order over each thread's range
 * of elements, the per-thread sums then added in thread order.  The ranges
 * are OpenMP's schedule(static) (thread_range), the schedule mse_sum's
 * `omp parallel for reduction` had before issue 6, so the per-thread sums
 * are the same bits as then; with 1 or 2 threads so is the total (0 + a = a
 * and a + b = b + a exactly), with more the order of the total is now fixed
 * where the reduction added in thread arrival order.
 * mse_sigmoid_backward computes the same sum in the same order, and the
 * gradient of mse_backward + sigmoid_backward in the same float operations:
 * portable C one element at a time, or (CPUs with AVX-512F) vector code for
 * the gradient and the squared differences, block by block, the squares
 * then added to the running sum one by one in index order (the sequential
 * double sum bounds the speed either way; this takes the rest of the work
 * off its path, see fused_range_avx512).  No fused multiply-add anywhere:
 * products are rounded before they are added, as in the C code.
 * The AVX-512 code is compiled with GCC/Clang target("avx512f") attributes
 * and only called when __builtin_cpu_supports says the CPU has AVX-512F.
 *
 * Threading: one OpenMP team over the elements (thread_range); serial below
 * LOSS_OMP_MIN_ELEMS.  No MPI: callers allreduce the sum.  No BLAS.
 */
#include "nn/loss.h"

#include <stdlib.h>

#include "base/check.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LOSS_HAVE_AVX512 1
#include <immintrin.h>
#else
#define LOSS_HAVE_AVX512 0
#endif

/* Below this many elements (128 KiB of floats) the loops stay serial:
 * waking an OpenMP team costs more than the work. */
#define LOSS_OMP_MIN_ELEMS ((size_t)32768)

/* Elements [*lo, *hi) of thread tid of a team of nt under OpenMP's
 * schedule(static) without a chunk size, as GCC expands it
 * (omp-expand.cc expand_omp_for_static_nochunk; libgomp's
 * gomp_iter_static_next is the same): n / nt elements each, one more for
 * each of the first n % nt threads. */
static void thread_range(size_t n, size_t nt, size_t tid, size_t *lo, size_t *hi)
{
    size_t q = n / nt, r = n % nt;
    if (tid < r) {
        q++;
        r = 0;
    }
    *lo = q * tid + r;
    *hi = *lo + q;
}

/* Sum of (y[i]-t[i])^2 for i in [lo, hi), in index order. */
static double sum_range(const float *y, const float *t, size_t lo, size_t hi)
{
    double s = 0.0;
    for (size_t i = lo; i < hi; i++) {
        const double d = (double)y[i] - (double)t[i];
        s += d * d;
    }
    return s;
}

/* s plus sum_range's terms in its order, and dz[i] for i in [lo, hi):
 * mse_backward's then sigmoid_backward's float operations. */
static double fused_range_scalar(double s, float *dz, const float *y, const float *t, size_t lo, size_t hi,
                                 float norm)
{
    for (size_t i = lo; i < hi; i++) {
        const double d = (double)y[i] - (double)t[i];
        s += d * d;
        const float g = norm * (y[i] - t[i]);  /* mse_backward */
        dz[i] = g * (1.0f - y[i]) * y[i];      /* sigmoid_backward (act.c) */
    }
    return s;
}

#if LOSS_HAVE_AVX512

#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Floats and doubles per 256-bit register. */
#define HLANES 8
#define QLANES 4
/* Elements per block of fused_range_avx512: a multiple of HLANES; 64
 * measured fastest among 32..1024 (issue 6; larger blocks stop the vector
 * code from overlapping the chain of additions). */
#define LOSS_BLOCK ((size_t)64)

/* fused_range_scalar(0, ...) on a CPU with AVX-512F: same bits.  Per
 * block of LOSS_BLOCK elements: the gradient and the squared differences
 * with vector code, the squares to a buffer, then the squares added to the
 * running sum one by one in index order, a chain of dependent additions with
 * nothing else on it; the block is small enough for the out-of-order core
 * to run the next block's vector code during the chain.  256-bit registers
 * (AVX, part of every AVX-512F CPU): with 512-bit registers this loop
 * measured ~1.5x slower (issue 6; the chain's 8-byte loads of squares
 * just stored 64 bytes at a time, presumably store forwarding).  The last
 * (hi - lo) % HLANES elements by the C code. */
TARGET_AVX512 static double fused_range_avx512(float *dz, const float *y, const float *t, size_t lo, size_t hi,
                                               float norm)
{
    const __m256 one = _mm256_set1_ps(1.0f), nv = _mm256_set1_ps(norm);
    const size_t vhi = lo + (hi - lo) / HLANES * HLANES;  /* end of the whole groups of HLANES */
    double sq[LOSS_BLOCK];
    double s = 0.0;
    for (size_t b = lo; b < vhi; b += LOSS_BLOCK) {
        const size_t bn = vhi - b < LOSS_BLOCK ? vhi - b : LOSS_BLOCK;  /* a multiple of HLANES */
        for (size_t j = 0; j < bn; j += HLANES) {
            const size_t i = b + j;
            const __m256 yv = _mm256_loadu_ps(y + i), tv = _mm256_loadu_ps(t + i);
            const __m256 g = _mm256_mul_ps(nv, _mm256_sub_ps(yv, tv));
            _mm256_storeu_ps(dz + i, _mm256_mul_ps(_mm256_mul_ps(g, _mm256_sub_ps(one, yv)), yv));
            /* (double)y - (double)t and its square: exact conversions, then
             * the C code's two roundings; low and high 4 lanes. */
            const __m256d dlo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(yv)),
                                              _mm256_cvtps_pd(_mm256_castps256_ps128(tv)));
            const __m256d dhi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(yv, 1)),
                                              _mm256_cvtps_pd(_mm256_extractf128_ps(tv, 1)));
            _mm256_storeu_pd(sq + j, _mm256_mul_pd(dlo, dlo));
            _mm256_storeu_pd(sq + j + QLANES, _mm256_mul_pd(dhi, dhi));
        }
        for (size_t j = 0; j < bn; j++) s += sq[j];  /* index order, as sum_range */
    }
    return fused_range_scalar(s, dz, y, t, vhi, hi, norm);
}

#endif /* LOSS_HAVE_AVX512 */

/* The sum of squared errors, by thread ranges added in thread order; with
 * dz != NULL also the fused gradient (vec: by the AVX-512 code). */
static double run(float *dz, const float *y, const float *t, size_t n, float norm, int vec)
{
    size_t nt_max = 1, nt_used = 1;
#ifdef _OPENMP
    nt_max = (size_t)omp_get_max_threads();
#endif
    double *part = xcalloc(nt_max, sizeof(double));
    (void)vec;
#ifdef _OPENMP
#pragma omp parallel if (n >= LOSS_OMP_MIN_ELEMS)
#endif
    {
        size_t nt = 1, tid = 0, lo, hi;
#ifdef _OPENMP
        nt = (size_t)omp_get_num_threads();
        tid = (size_t)omp_get_thread_num();
#endif
        CHECK(nt <= nt_max);
        thread_range(n, nt, tid, &lo, &hi);
        double s;
        if (!dz)
            s = sum_range(y, t, lo, hi);
#if LOSS_HAVE_AVX512
        else if (vec)
            s = fused_range_avx512(dz, y, t, lo, hi, norm);
#endif
        else
            s = fused_range_scalar(0.0, dz, y, t, lo, hi, norm);
        part[tid] = s;
        if (tid == 0) nt_used = nt;
    }
    double s = 0.0;
    for (size_t k = 0; k < nt_used; k++) s += part[k];
    free(part);
    return s;
}

double mse_sum(const float *y, const float *t, size_t n) { return run(NULL, y, t, n, 0.0f, 0); }

void mse_backward(float *dy, const float *y, const float *t, size_t n, double inv_count)
{
    const float norm = (float)(2.0 * inv_count);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= LOSS_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dy[i] = norm * (y[i] - t[i]);
}

double mse_sigmoid_backward_kernel(float *dz, const float *y, const float *t, size_t n, double inv_count,
                                   ActKernel k)
{
    return run(dz, y, t, n, (float)(2.0 * inv_count), act_kernel_resolve(k) == ACT_KERNEL_AVX512);
}

double mse_sigmoid_backward(float *dz, const float *y, const float *t, size_t n, double inv_count)
{
    return mse_sigmoid_backward_kernel(dz, y, t, n, inv_count, ACT_KERNEL_AUTO);
}
