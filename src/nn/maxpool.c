/*
 * maxpool.c - 2x2 stride-2 max-pooling, forward and backward (see maxpool.h).
 *
 * Two per-plane implementations with the same window rule: portable C
 * (window_argmax, one window at a time) and AVX-512F (16 windows at a time:
 * the 32 floats of each of the two rows are split into even and odd columns
 * with _mm512_permutex2var_ps, giving the four window entries a b / c d in
 * four registers; the running maximum takes b, then c, then d where
 * "value > max or value is NaN", with compare masks; backward turns the
 * three "taken" masks into one winner mask per entry and interleaves the
 * four masked copies of dy back into the two dx rows).  Both only select
 * and copy values, never compute them, so they agree bit for bit.
 * Backward with the ReLU fused (maxpool2x2_backward_relu) also drops each
 * window's dy when the window's maximum, the winner's value, is not > 0:
 * one more compare on the maximum both paths already have.  Row
 * tails (W/2 not a multiple of 16) use masked loads and stores: nothing
 * outside the rows is read or written.
 * The AVX-512 code is compiled with GCC/Clang target("avx512f") attributes
 * (no -mavx512f needed) and only called when __builtin_cpu_supports says
 * the CPU has AVX-512F; other compilers/architectures get the C path only.
 *
 * Threading: OpenMP over the N*C planes (each thread writes whole planes of
 * y or dx); serial below MAXPOOL_OMP_MIN_ELEMS input elements.  No BLAS.
 */
#include "nn/maxpool.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MAXPOOL_HAVE_AVX512 1
#include <immintrin.h>
#else
#define MAXPOOL_HAVE_AVX512 0
#endif

/* Below this many input elements (128 KiB of floats) the loops stay serial:
 * waking an OpenMP team costs more than the work. */
#define MAXPOOL_OMP_MIN_ELEMS ((size_t)32768)

/* Row-major position (0..3) of the winner of the window whose top row starts
 * at r0 and bottom row at r1, and its value in *maxval.  The rule is PyTorch's
 * CPU kernel: start at -inf, take a value if it is > the current maximum or
 * NaN, so ties go to the first maximum and NaN propagates. */
static int window_argmax(const float *r0, const float *r1, float *maxval)
{
    const float v[4] = {r0[0], r0[1], r1[0], r1[1]};
    float best = -INFINITY;
    int arg = 0;
    for (int i = 0; i < 4; i++) {
        if (v[i] > best || isnan(v[i])) {
            best = v[i];
            arg = i;
        }
    }
    *maxval = best;
    return arg;
}

/* Portable forward of one plane: yp[H/2][W/2] from xp[H][W]. */
static void forward_plane_scalar(float *yp, const float *xp, int H, int W)
{
    const int OH = H / 2, OW = W / 2;
    for (int oh = 0; oh < OH; oh++) {
        const float *r0 = xp + (size_t)(2 * oh) * W, *r1 = r0 + W;
        for (int ow = 0; ow < OW; ow++) {
            float m;
            (void)window_argmax(r0 + 2 * ow, r1 + 2 * ow, &m);
            yp[(size_t)oh * OW + ow] = m;
        }
    }
}

/* Portable backward of one plane: dxp[H][W] from dyp[H/2][W/2] and xp[H][W];
 * relu != 0: with the ReLU backward fused (a winner that is not > 0 gets +0). */
static void backward_plane_scalar(float *dxp, const float *dyp, const float *xp, int H, int W, int relu)
{
    const int OH = H / 2, OW = W / 2;
    for (int oh = 0; oh < OH; oh++) {
        const size_t top = (size_t)(2 * oh) * W;
        for (int ow = 0; ow < OW; ow++) {
            float m;
            const int arg = window_argmax(xp + top + 2 * ow, xp + top + W + 2 * ow, &m);
            float *d0 = dxp + top + 2 * ow, *d1 = d0 + W;
            /* m is the winner's value: relu_backward's rule on it. */
            const float g = relu && !(m > 0.0f) ? 0.0f : dyp[(size_t)oh * OW + ow];
            d0[0] = arg == 0 ? g : 0.0f;
            d0[1] = arg == 1 ? g : 0.0f;
            d1[0] = arg == 2 ? g : 0.0f;
            d1[1] = arg == 3 ? g : 0.0f;
        }
    }
}

#if MAXPOOL_HAVE_AVX512

#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Floats per zmm register = windows per step. */
#define LANES 16

/* _mm512_permutex2var_ps indices (bit 4 picks the second operand):
 * even / odd columns of 32 floats, and the inverse interleave of two
 * 16-float halves (low and high output halves). */
static const int32_t IDX_EVEN[LANES] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t IDX_ODD[LANES] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
static const int32_t IDX_ZIP_LO[LANES] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
static const int32_t IDX_ZIP_HI[LANES] = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

/* Mask of the first n lanes (n clamped to [0, LANES]). */
static __mmask16 lane_mask(int n)
{
    if (n >= LANES) return (__mmask16)0xFFFF;
    if (n <= 0) return 0;
    return (__mmask16)((1u << n) - 1u);
}

/* The four entries of `n` windows (n <= LANES) starting at r0 (top row) and
 * r1 (bottom row): a = (0,0), b = (0,1), c = (1,0), d = (1,1); lanes past n
 * are 0 (masked loads: nothing past the 2n floats of each row is read). */
typedef struct Windows { __m512 a, b, c, d; } Windows;

TARGET_AVX512 static inline Windows load_windows(const float *r0, const float *r1, int n)
{
    const __mmask16 m0 = lane_mask(2 * n), m1 = lane_mask(2 * n - LANES);
    const __m512i ev = _mm512_loadu_si512(IDX_EVEN), od = _mm512_loadu_si512(IDX_ODD);
    const __m512 t0 = _mm512_maskz_loadu_ps(m0, r0), t1 = _mm512_maskz_loadu_ps(m1, r0 + LANES);
    const __m512 u0 = _mm512_maskz_loadu_ps(m0, r1), u1 = _mm512_maskz_loadu_ps(m1, r1 + LANES);
    Windows w;
    w.a = _mm512_permutex2var_ps(t0, ev, t1);
    w.b = _mm512_permutex2var_ps(t0, od, t1);
    w.c = _mm512_permutex2var_ps(u0, ev, u1);
    w.d = _mm512_permutex2var_ps(u0, od, u1);
    return w;
}

/* Lanes where v replaces the running maximum m: v > m or v is NaN
 * (window_argmax's rule; a NaN m is replaced only by another NaN). */
TARGET_AVX512 static inline __mmask16 takes(__m512 v, __m512 m)
{
    return (__mmask16)(_mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
}

/* Maximum of 16 windows by window_argmax's rule; *tb, *tc, *td = lanes where
 * b, c, d took over (in that order).  Starting from a equals starting from
 * -inf: a is taken unless a == -inf, and then the maximum is -inf either way. */
TARGET_AVX512 static inline __m512 windows_max(Windows w, __mmask16 *tb, __mmask16 *tc, __mmask16 *td)
{
    __m512 m = w.a;
    *tb = takes(w.b, m);
    m = _mm512_mask_mov_ps(m, *tb, w.b);
    *tc = takes(w.c, m);
    m = _mm512_mask_mov_ps(m, *tc, w.c);
    *td = takes(w.d, m);
    return _mm512_mask_mov_ps(m, *td, w.d);
}

/* y[0..ow) = maxima of the windows of rows r0, r1 (2*ow floats each). */
TARGET_AVX512 static void forward_row_avx512(float *y, const float *r0, const float *r1, int ow)
{
    for (int j = 0; j < ow; j += LANES) {
        const int n = ow - j < LANES ? ow - j : LANES;
        __mmask16 tb, tc, td;
        const __m512 m = windows_max(load_windows(r0 + 2 * j, r1 + 2 * j, n), &tb, &tc, &td);
        _mm512_mask_storeu_ps(y + j, lane_mask(n), m);
    }
}

/* dx rows d0, d1 (2*ow floats each) of the windows of x rows r0, r1: g[j]
 * at each window's winner, +0 elsewhere; relu != 0: +0 also at winners
 * whose value (the window maximum) is not > 0. */
TARGET_AVX512 static void backward_row_avx512(float *d0, float *d1, const float *g, const float *r0, const float *r1,
                                              int ow, int relu)
{
    const __m512i zlo = _mm512_loadu_si512(IDX_ZIP_LO), zhi = _mm512_loadu_si512(IDX_ZIP_HI);
    const __m512 zero = _mm512_setzero_ps();
    for (int j = 0; j < ow; j += LANES) {
        const int n = ow - j < LANES ? ow - j : LANES;
        const __mmask16 m0 = lane_mask(2 * n), m1 = lane_mask(2 * n - LANES);
        __mmask16 tb, tc, td;
        const __m512 m = windows_max(load_windows(r0 + 2 * j, r1 + 2 * j, n), &tb, &tc, &td);
        /* Lanes whose dy is kept: all n, or (ReLU fused) those with m > 0. */
        __mmask16 keep = lane_mask(n);
        if (relu) keep = (__mmask16)(keep & _mm512_cmp_ps_mask(m, zero, _CMP_GT_OQ));
        /* The winner is the last entry that took over. */
        const __mmask16 wd = td, wc = (__mmask16)(tc & ~td), wb = (__mmask16)(tb & ~(tc | td));
        const __mmask16 wa = (__mmask16)~(tb | tc | td);
        const __m512 gv = _mm512_maskz_loadu_ps(keep, g + j);
        const __m512 ga = _mm512_maskz_mov_ps(wa, gv), gb = _mm512_maskz_mov_ps(wb, gv);
        const __m512 gc = _mm512_maskz_mov_ps(wc, gv), gd = _mm512_maskz_mov_ps(wd, gv);
        _mm512_mask_storeu_ps(d0 + 2 * j, m0, _mm512_permutex2var_ps(ga, zlo, gb));
        _mm512_mask_storeu_ps(d0 + 2 * j + LANES, m1, _mm512_permutex2var_ps(ga, zhi, gb));
        _mm512_mask_storeu_ps(d1 + 2 * j, m0, _mm512_permutex2var_ps(gc, zlo, gd));
        _mm512_mask_storeu_ps(d1 + 2 * j + LANES, m1, _mm512_permutex2var_ps(gc, zhi, gd));
    }
}

/* AVX-512 forward of one plane (same contract as forward_plane_scalar). */
TARGET_AVX512 static void forward_plane_avx512(float *yp, const float *xp, int H, int W)
{
    const int OH = H / 2, OW = W / 2;
    for (int oh = 0; oh < OH; oh++) {
        const float *r0 = xp + (size_t)(2 * oh) * W;
        forward_row_avx512(yp + (size_t)oh * OW, r0, r0 + W, OW);
    }
}

/* AVX-512 backward of one plane (same contract as backward_plane_scalar). */
TARGET_AVX512 static void backward_plane_avx512(float *dxp, const float *dyp, const float *xp, int H, int W, int relu)
{
    const int OH = H / 2, OW = W / 2;
    for (int oh = 0; oh < OH; oh++) {
        const size_t top = (size_t)(2 * oh) * W;
        for (int q = 0; q < 2 * W; q += 16) _mm_prefetch((const char *)(xp + top + 4 * (size_t)W + q), _MM_HINT_T0);
        backward_row_avx512(dxp + top, dxp + top + W, dyp + (size_t)oh * OW, xp + top, xp + top + W, OW, relu);
    }
}

#endif /* MAXPOOL_HAVE_AVX512 */

MaxpoolKernel maxpool_kernel_resolve(MaxpoolKernel k)
{
#if MAXPOOL_HAVE_AVX512
    if (k != MAXPOOL_KERNEL_SCALAR && __builtin_cpu_supports("avx512f")) return MAXPOOL_KERNEL_AVX512;
#else
    (void)k;
#endif
    return MAXPOOL_KERNEL_SCALAR;
}

/* One plane of the forward / backward with the implementation chosen by
 * vec (1: AVX-512, known to be supported). */
static void forward_plane(float *yp, const float *xp, int H, int W, int vec)
{
#if MAXPOOL_HAVE_AVX512
    if (vec) {
        forward_plane_avx512(yp, xp, H, W);
        return;
    }
#endif
    (void)vec;
    forward_plane_scalar(yp, xp, H, W);
}

static void backward_plane(float *dxp, const float *dyp, const float *xp, int H, int W, int relu, int vec)
{
#if MAXPOOL_HAVE_AVX512
    if (vec) {
        backward_plane_avx512(dxp, dyp, xp, H, W, relu);
        return;
    }
#endif
    (void)vec;
    backward_plane_scalar(dxp, dyp, xp, H, W, relu);
}

void maxpool2x2_forward_kernel(float *y, const float *x, int N, int C, int H, int W, MaxpoolKernel k)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int vec = maxpool_kernel_resolve(k) == MAXPOOL_KERNEL_AVX512;
    (void)vec;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= MAXPOOL_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++) forward_plane(y + pc * out_plane, x + pc * in_plane, H, W, vec);
}

void maxpool2x2_forward_serial(float *y, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int vec = maxpool_kernel_resolve(MAXPOOL_KERNEL_AUTO) == MAXPOOL_KERNEL_AVX512;
    for (size_t pc = 0; pc < planes; pc++) forward_plane(y + pc * out_plane, x + pc * in_plane, H, W, vec);
}

void maxpool2x2_backward_relu_serial(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int vec = maxpool_kernel_resolve(MAXPOOL_KERNEL_AUTO) == MAXPOOL_KERNEL_AVX512;
    for (size_t pc = 0; pc < planes; pc++)
        backward_plane(dx + pc * in_plane, dy + pc * out_plane, x + pc * in_plane, H, W, 1, vec);
}

/* maxpool2x2_backward_kernel (relu = 0) and maxpool2x2_backward_relu_kernel
 * (relu = 1). */
static void backward_all(float *dx, const float *dy, const float *x, int N, int C, int H, int W, MaxpoolKernel k,
                         int relu)
{
    assert(N >= 1 && C >= 1 && H >= 2 && W >= 2 && H % 2 == 0 && W % 2 == 0);
    const size_t planes = (size_t)N * C, in_plane = (size_t)H * W, out_plane = in_plane / 4;
    const int vec = maxpool_kernel_resolve(k) == MAXPOOL_KERNEL_AVX512;
    (void)vec;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (planes * in_plane >= MAXPOOL_OMP_MIN_ELEMS)
#endif
    for (size_t pc = 0; pc < planes; pc++)
        backward_plane(dx + pc * in_plane, dy + pc * out_plane, x + pc * in_plane, H, W, relu, vec);
}

void maxpool2x2_backward_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                MaxpoolKernel k)
{
    backward_all(dx, dy, x, N, C, H, W, k, 0);
}

void maxpool2x2_backward_relu_kernel(float *dx, const float *dy, const float *x, int N, int C, int H, int W,
                                     MaxpoolKernel k)
{
    backward_all(dx, dy, x, N, C, H, W, k, 1);
}

void maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W)
{
    maxpool2x2_forward_kernel(y, x, N, C, H, W, MAXPOOL_KERNEL_AUTO);
}

void maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    maxpool2x2_backward_kernel(dx, dy, x, N, C, H, W, MAXPOOL_KERNEL_AUTO);
}

void maxpool2x2_backward_relu(float *dx, const float *dy, const float *x, int N, int C, int H, int W)
{
    maxpool2x2_backward_relu_kernel(dx, dy, x, N, C, H, W, MAXPOOL_KERNEL_AUTO);
}
