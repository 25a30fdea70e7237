/*
 * upsample.c - 2x nearest-neighbour upsampling, forward and backward (see
 * upsample.h).
 *
 * Two per-plane implementations: portable C, and AVX-512F.  Forward copies
 * (each input row of 16 floats becomes 32 with two _mm512_permutexvar_ps,
 * stored to both output rows); backward splits the even and odd columns of
 * two dy rows with _mm512_permutex2var_ps and adds ((a + b) + c) + d lane by
 * lane, the C code's order, so both give the same bits.  Backward with the
 * ReLU fused (upsample2x_backward_relu) also reads the input x and keeps a
 * sum only where x > 0 (a select after the same sum, in both paths).  Row
 * tails use masked loads and stores: nothing outside the rows is read or
 * written.
 * The AVX-512 code is compiled with GCC/Clang target("avx512f") attributes
 * and only called when __builtin_cpu_supports says the CPU has AVX-512F.
 *
 * Threading: OpenMP over the N*C planes (each thread writes whole output
 * planes); serial below UPSAMPLE_OMP_MIN_ELEMS elements.  No BLAS.
 */
#include "nn/upsample.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define UPSAMPLE_HAVE_AVX512 1
#include <immintrin.h>
#else
#define UPSAMPLE_HAVE_AVX512 0
#endif

/* Below this many small-side elements (128 KiB of floats) the loops stay
 * serial: waking an OpenMP team costs more than the work. */
#define UPSAMPLE_OMP_MIN_ELEMS ((size_t)32768)

/* Portable forward of one plane: yp[2H][2W] from xp[H][W]. */
static void forward_plane_scalar(float *yp, const float *xp, int H, int W)
{
    const size_t OW = 2 * (size_t)W;
    for (int i = 0; i < H; i++) {
        const float *src = xp + (size_t)i * W;
        float *even = yp + (size_t)(2 * i) * OW;
        for (int j = 0; j < W; j++) even[2 * j] = even[2 * j + 1] = src[j];
        memcpy(even + OW, even, sizeof(float) * OW);  /* odd row = even row */
    }
}

/* Portable backward of one plane: dxp[H][W] from dyp[2H][2W]; xp[H][W] not
 * NULL: with the ReLU backward fused (+0 where xp is not > 0). */
static void backward_plane_scalar(float *dxp, const float *dyp, const float *xp, int H, int W)
{
    const size_t OW = 2 * (size_t)W;
    for (int i = 0; i < H; i++) {
        const float *r0 = dyp + (size_t)(2 * i) * OW, *r1 = r0 + OW;
        float *d = dxp + (size_t)i * W;
        /* Row-major order over the block, as PyTorch's CPU backward adds. */
        if (!xp) {
            for (int j = 0; j < W; j++) d[j] = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
            continue;
        }
        const float *xr = xp + (size_t)i * W;
        for (int j = 0; j < W; j++) {
            const float s = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
            d[j] = xr[j] > 0.0f ? s : 0.0f;  /* relu_backward's rule */
        }
    }
}

#if UPSAMPLE_HAVE_AVX512

#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Floats per zmm register. */
#define LANES 16

/* Permute indices: each of the first / last 8 lanes twice (forward), and
 * the even / odd columns of 32 floats (backward; bit 4 picks the second
 * operand of _mm512_permutex2var_ps). */
static const int32_t IDX_DUP_LO[LANES] = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7};
static const int32_t IDX_DUP_HI[LANES] = {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
static const int32_t IDX_EVEN[LANES] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t IDX_ODD[LANES] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* Mask of the first n lanes (n clamped to [0, LANES]). */
static __mmask16 lane_mask(int n)
{
    if (n >= LANES) return (__mmask16)0xFFFF;
    if (n <= 0) return 0;
    return (__mmask16)((1u << n) - 1u);
}

/* AVX-512 forward of one plane (same contract as forward_plane_scalar). */
TARGET_AVX512 static void forward_plane_avx512(float *yp, const float *xp, int H, int W)
{
    const size_t OW = 2 * (size_t)W;
    const __m512i dlo = _mm512_loadu_si512(IDX_DUP_LO), dhi = _mm512_loadu_si512(IDX_DUP_HI);
    for (int i = 0; i < H; i++) {
        const float *src = xp + (size_t)i * W;
        float *even = yp + (size_t)(2 * i) * OW, *odd = even + OW;
        for (int j = 0; j < W; j += LANES) {
            const int n = W - j < LANES ? W - j : LANES;
            const __mmask16 m0 = lane_mask(2 * n), m1 = lane_mask(2 * n - LANES);
            const __m512 v = _mm512_maskz_loadu_ps(lane_mask(n), src + j);
            const __m512 lo = _mm512_permutexvar_ps(dlo, v), hi = _mm512_permutexvar_ps(dhi, v);
            _mm512_mask_storeu_ps(even + 2 * j, m0, lo);
            _mm512_mask_storeu_ps(even + 2 * j + LANES, m1, hi);
            _mm512_mask_storeu_ps(odd + 2 * j, m0, lo);
            _mm512_mask_storeu_ps(odd + 2 * j + LANES, m1, hi);
        }
    }
}

/* AVX-512 backward of one plane (same contract as backward_plane_scalar). */
TARGET_AVX512 static void backward_plane_avx512(float *dxp, const float *dyp, const float *xp, int H, int W)
{
    const size_t OW = 2 * (size_t)W;
    const __m512i ev = _mm512_loadu_si512(IDX_EVEN), od = _mm512_loadu_si512(IDX_ODD);
    const __m512 zero = _mm512_setzero_ps();
    for (int i = 0; i < H; i++) {
        const float *r0 = dyp + (size_t)(2 * i) * OW, *r1 = r0 + OW;
        const float *xr = xp ? xp + (size_t)i * W : NULL;
        float *d = dxp + (size_t)i * W;
        for (int j = 0; j < W; j += LANES) {
            const int n = W - j < LANES ? W - j : LANES;
            const __mmask16 m0 = lane_mask(2 * n), m1 = lane_mask(2 * n - LANES);
            const __m512 t0 = _mm512_maskz_loadu_ps(m0, r0 + 2 * j), t1 = _mm512_maskz_loadu_ps(m1, r0 + 2 * j + LANES);
            const __m512 u0 = _mm512_maskz_loadu_ps(m0, r1 + 2 * j), u1 = _mm512_maskz_loadu_ps(m1, r1 + 2 * j + LANES);
            __m512 s = _mm512_add_ps(_mm512_permutex2var_ps(t0, ev, t1), _mm512_permutex2var_ps(t0, od, t1));
            s = _mm512_add_ps(s, _mm512_permutex2var_ps(u0, ev, u1));
            s = _mm512_add_ps(s, _mm512_permutex2var_ps(u0, od, u1));
            if (xr) {  /* ReLU fused: keep the lanes where x > 0 */
                const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(lane_mask(n), xr + j), zero, _CMP_GT_OQ);
                s = _mm512_maskz_mov_ps(pos, s);
            }
            _mm512_mask_storeu_ps(d + j, lane_mask(n), s);
        }
    }
}

#endif /* UPSAMPLE_HAVE_AVX512 */

UpsampleKernel upsample_kernel_resolve(UpsampleKernel k)
{
#if UPSAMPLE_HAVE_AVX512
    if (k != UPSAMPLE_KERNEL_SCALAR && __builtin_cpu_supports("avx512f")) return UPSAMPLE_KERNEL_AVX512;
#else
    (void)k;
#endif
    return UPSAMPLE_KERNEL_SCALAR;
}

/* One plane with the implementation chosen by vec (1: AVX-512, known to be
 * supported); backward with the ReLU mask when xp is not NULL. */
static void forward_plane(float *yp, const float *xp, int H, int W, int vec)
{
#if UPSAMPLE_HAVE_AVX512
    if (vec) {
        forward_plane_avx512(yp, xp, H, W);
        return;
    }
#endif
    (void)vec;
    forward_plane_scalar(yp, xp, H, W);
}

static void backward_plane(float *dxp, const float *dyp, const float *xp, int H, int W, int vec)
{
#if UPSAMPLE_HAVE_AVX512
    if (vec) {
        backward_plane_avx512(dxp, dyp, xp, H, W);
        return;
    }
#endif
    (void)vec;
    backward_plane_scalar(dxp, dyp, xp, H, W);
}

void upsample2x_forward_serial(float *y, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const int vec = upsample_kernel_resolve(UPSAMPLE_KERNEL_AUTO) == UPSAMPLE_KERNEL_AVX512;
    for (size_t pc = 0; pc < planes; pc++) forward_plane(y + pc * out_plane, x + pc * in_plane, H, W, vec);
}

void upsample2x_backward_serial(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const int vec = upsample_kernel_resolve(UPSAMPLE_KERNEL_AUTO) == UPSAMPLE_KERNEL_AVX512;
    for (size_t pc = 0; pc < planes; pc++)
        backward_plane(dx + pc * in_plane, dy + pc * out_plane, x ? x + pc * in_plane : NULL, H, W, vec);
}

void upsample2x_forward_kernel(float *y, const float *x, int N, int C, int H, int W, UpsampleKernel k)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const int vec = upsample_kernel_resolve(k) == UPSAMPLE_KERNEL_AVX512;
    (void)vec;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= UPSAMPLE_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) forward_plane(y + pc * out_plane, x + pc * in_plane, H, W, vec);
}

/* upsample2x_backward_kernel (x = NULL) and upsample2x_backward_relu_kernel
 * (x = the forward input). */
static void backward_all(float *dx, const float *dy, const float *x, int N, int C, int H, int W, UpsampleKernel k)
{
    assert(N >= 1 && C >= 1 && H >= 1 && W >= 1);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = 4 * in_plane;
    const int vec = upsample_kernel_resolve(k) == UPSAMPLE_KERNEL_AVX512;
    (void)vec;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= UPSAMPLE_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++)
        backward_plane(dx + pc * in_plane, dy + pc * out_plane, x ? x + pc * in_plane : NULL, H, W, vec);
}

void upsample2x_backward_kernel(float *dx, const float *dy, int N, int C, int H, int W, UpsampleKernel k)
{
    backward_all(dx, dy, NULL, N, C, H, W, k);
}

void upsample2x_backward_relu_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                     UpsampleKernel k)
{
    assert(x);
    backward_all(dx, dy, x, N, C, H, W, k);
}

void upsample2x_forward(float *y, const float *x, int N, int C, int H, int W)
{
    upsample2x_forward_kernel(y, x, N, C, H, W, UPSAMPLE_KERNEL_AUTO);
}

void upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W)
{
    upsample2x_backward_kernel(dx, dy, N, C, H, W, UPSAMPLE_KERNEL_AUTO);
}

void upsample2x_backward_relu(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    upsample2x_backward_relu_kernel(dx, dy, x, N, C, H, W, UPSAMPLE_KERNEL_AUTO);
}
