/*
 * act.c - ReLU and sigmoid, forward and backward (see act.h).
 *
 * Two implementations: portable C (one element at a time) and AVX-512F
 * (16 at a time, masked loads/stores for the tail).  ReLU: compare masks
 * and zero-masked moves, the same selections as the C code.  Sigmoid
 * backward: the same float products in the same order.  Sigmoid forward:
 * e = exp(-|x|) by glibc's expf algorithm in double precision (expf_8 below;
 * exp(x) = 2^(k/32) * 2^(r/32) with k = round(x*32/ln2), a 32-entry table
 * of 2^(i/32) and a cubic in r, as Arm optimized-routines' expf which glibc
 * >= 2.28 ships, with the fused multiply-adds of glibc's FMA build), then
 * the same float operations as the C code (1/(1+e) for x >= 0, e/(1+e)
 * below); lanes with |x| >= 88 or NaN, where expf takes its special-case
 * path (overflow, underflow, errno), are recomputed by the C code.
 * The AVX-512 code is compiled with GCC/Clang target("avx512f") attributes
 * and only called when __builtin_cpu_supports says the CPU has AVX-512F.
 * No fused multiply-add is formed from separate float operations: the
 * float code has none to fuse (checked by the bitwise tests).
 *
 * Threading: OpenMP over elements (scalar) or over ACT_CHUNK-element chunks
 * (AVX-512); each thread writes its own elements, so in-place use is safe;
 * serial below ACT_OMP_MIN_ELEMS.  No BLAS.
 */
#include "nn/act.h"

#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define ACT_HAVE_AVX512 1
#include <immintrin.h>
#else
#define ACT_HAVE_AVX512 0
#endif

/* Below this many elements (128 KiB of floats) the loops stay serial: waking
 * an OpenMP team costs microseconds, more than the work itself. */
#define ACT_OMP_MIN_ELEMS ((size_t)32768)

/* The C code's sigmoid of one value. */
static inline float sigmoid_one(float v)
{
    if (v >= 0.0f) return 1.0f / (1.0f + expf(-v));  /* exp(-v) <= 1: no overflow */
    /* 1/(1+exp(-v)) would overflow exp(-v) to inf for v < -88 and flush the
     * result to 0; e/(1+e) with e = exp(v) < 1 keeps tiny outputs (down to
     * the subnormal range) instead. */
    const float e = expf(v);
    return e / (1.0f + e);
}

#if ACT_HAVE_AVX512

#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Floats per zmm register. */
#define LANES 16
/* Elements per OpenMP work item of the AVX-512 path (64 KiB of floats; a
 * multiple of LANES, so only the last chunk has a tail). */
#define ACT_CHUNK ((size_t)16384)

/* glibc expf's data (Arm optimized-routines __exp2f_data, EXP2F_TABLE_BITS
 * 5, as in glibc's sysdeps/ieee754/flt-32/e_exp2f_data.c):
 * EXPF_TAB[i] = bits(2^(i/32)) - (i << 47), so that
 * bits(2^(k/32)) = EXPF_TAB[k % 32] + (k << 47) for integer k. */
static const uint64_t EXPF_TAB[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};
/* 32/ln2 (invln2_scaled). */
#define EXPF_INVLN2N 0x1.71547652b82fep+5
/* 1.5 * 2^52: adding it rounds a double to an integer, kept in the low
 * mantissa bits (shift). */
#define EXPF_SHIFT 0x1.8p+52
/* 2^(r/32) ~= C0 r^3 + C1 r^2 + C2 r + 1 for |r| <= 1/2 (poly_scaled). */
#define EXPF_C0 0x1.c6af84b912394p-20
#define EXPF_C1 0x1.ebfce50fac4f3p-13
#define EXPF_C2 0x1.62e42ff0c52d6p-6
/* Table bits: bits(2^(k/32)) adds k << (52 - 5) to the table entry. */
#define EXPF_TAB_BITS 5
/* expf's special-case threshold: |x| >= 88 (bits 0x42b00000) or NaN. */
#define EXPF_SPECIAL_ABS_BITS 0x42b00000
/* Entries per _mm512_permutex2var_epi64 lookup; bit 4 of k picks the half. */
#define EXPF_TAB_HALF 16
/* Bit 31 of a float (the sign), and the other bits. */
#define FLOAT_SIGN_BIT INT32_MIN
#define FLOAT_ABS_MASK INT32_MAX

/* Mask of the first n lanes (n clamped to [0, LANES]). */
static __mmask16 lane_mask(size_t n)
{
    if (n >= LANES) return (__mmask16)0xFFFF;
    return (__mmask16)((1u << n) - 1u);
}

/* expf of 8 floats with |x| < 88, by glibc's algorithm (e_expf.c, FMA build):
 *   kd = fma(InvLn2N, x, SHIFT)      (k = round(x*32/ln2) in the low bits)
 *   r  = fma(InvLn2N, x, -(kd - SHIFT))
 *   s  = 2^(k/32) from the table
 *   y  = fma(fma(r, C0, C1), r*r, fma(r, C2, 1)) * s, rounded to float. */
TARGET_AVX512 static inline __m256 expf_8(__m256 xf)
{
    const __m512d invln2n = _mm512_set1_pd(EXPF_INVLN2N), shift = _mm512_set1_pd(EXPF_SHIFT);
    const __m512d xd = _mm512_cvtps_pd(xf);
    const __m512d kd0 = _mm512_fmadd_pd(invln2n, xd, shift);
    const __m512i ki = _mm512_castpd_si512(kd0);
    const __m512d kd = _mm512_sub_pd(kd0, shift);
    const __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);
    /* EXPF_TAB[ki % 32]: two 16-entry permutes, picked by bit 4 of ki. */
    const __m512i t0 = _mm512_loadu_si512(EXPF_TAB), t1 = _mm512_loadu_si512(EXPF_TAB + EXPF_TAB_HALF / 2);
    const __m512i t2 = _mm512_loadu_si512(EXPF_TAB + EXPF_TAB_HALF);
    const __m512i t3 = _mm512_loadu_si512(EXPF_TAB + EXPF_TAB_HALF * 3 / 2);
    const __mmask8 upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(EXPF_TAB_HALF));
    __m512i t = _mm512_mask_blend_epi64(upper, _mm512_permutex2var_epi64(t0, ki, t1),
                                        _mm512_permutex2var_epi64(t2, ki, t3));
    t = _mm512_add_epi64(t, _mm512_slli_epi64(ki, 52 - EXPF_TAB_BITS));
    const __m512d s = _mm512_castsi512_pd(t);
    const __m512d z = _mm512_fmadd_pd(r, _mm512_set1_pd(EXPF_C0), _mm512_set1_pd(EXPF_C1));
    const __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(r, _mm512_set1_pd(EXPF_C2), _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
}

/* y[0..n) = sigmoid(x[0..n)) (y == x allowed). */
TARGET_AVX512 static void sigmoid_forward_avx512(float *y, const float *x, size_t n)
{
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32(FLOAT_SIGN_BIT), abs_mask = _mm512_set1_epi32(FLOAT_ABS_MASK);
    const __m512i special_abs = _mm512_set1_epi32(EXPF_SPECIAL_ABS_BITS);
    for (size_t i = 0; i < n; i += LANES) {
        const __mmask16 m = lane_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512i bits = _mm512_castps_si512(v);
        const __mmask16 ge = _mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ);  /* v >= 0 (not NaN) */
        /* u = -|v| as the C code passes it to expf: -v where v >= 0, else v. */
        const __m512 u = _mm512_castsi512_ps(_mm512_mask_xor_epi32(bits, ge, bits, sign));
        const __m256 ulo = _mm512_castps512_ps256(u);
        const __m256 uhi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1));
        const __m512d elo = _mm512_castps_pd(_mm512_castps256_ps512(expf_8(ulo)));
        const __m512 e = _mm512_castpd_ps(_mm512_insertf64x4(elo, _mm256_castps_pd(expf_8(uhi)), 1));
        /* 1/(1+e) where v >= 0, e/(1+e) elsewhere: one division. */
        const __m512 out = _mm512_div_ps(_mm512_mask_blend_ps(ge, e, one), _mm512_add_ps(one, e));
        const __mmask16 special =
            (__mmask16)(m & _mm512_cmpge_epu32_mask(_mm512_and_si512(bits, abs_mask), special_abs));
        if (!special) {
            _mm512_mask_storeu_ps(y + i, m, out);
            continue;
        }
        /* Rare: expf's special cases, by the C code (v saved first: y may be x). */
        float vin[LANES], vout[LANES];
        _mm512_storeu_ps(vin, v);
        _mm512_storeu_ps(vout, out);
        for (int l = 0; l < LANES; l++)
            if (special >> l & 1) vout[l] = sigmoid_one(vin[l]);
        _mm512_mask_storeu_ps(y + i, m, _mm512_loadu_ps(vout));
    }
}

/* y[0..n) = relu(x[0..n)): x where x > 0 or NaN, else +0. */
TARGET_AVX512 static void relu_forward_avx512(float *y, const float *x, size_t n)
{
    const __m512 zero = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += LANES) {
        const __mmask16 m = lane_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __mmask16 keep = _mm512_cmp_ps_mask(v, zero, _CMP_NLE_UQ);  /* !(v <= 0): v > 0 or NaN */
        _mm512_mask_storeu_ps(y + i, m, _mm512_maskz_mov_ps(keep, v));
    }
}

/* dx[0..n) = dy where y > 0, else +0. */
TARGET_AVX512 static void relu_backward_avx512(float *dx, const float *dy, const float *y, size_t n)
{
    const __m512 zero = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += LANES) {
        const __mmask16 m = lane_mask(n - i);
        const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, y + i), zero, _CMP_GT_OQ);
        _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_loadu_ps((__mmask16)(m & pos), dy + i));
    }
}

/* dx[0..n) = (dy * (1 - y)) * y. */
TARGET_AVX512 static void sigmoid_backward_avx512(float *dx, const float *dy, const float *y, size_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += LANES) {
        const __mmask16 m = lane_mask(n - i);
        const __m512 yv = _mm512_maskz_loadu_ps(m, y + i), g = _mm512_maskz_loadu_ps(m, dy + i);
        _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(_mm512_mul_ps(g, _mm512_sub_ps(one, yv)), yv));
    }
}

typedef enum ActOp { OP_RELU_FWD, OP_RELU_BWD, OP_SIGMOID_FWD, OP_SIGMOID_BWD } ActOp;

/* out[0..n) = op(a, b) by the AVX-512 code, OpenMP over ACT_CHUNK chunks
 * (forward: a = x, b unused; backward: a = dy, b = y). */
static void run_avx512(ActOp op, float *out, const float *a, const float *b, size_t n)
{
    const size_t chunks = (n + ACT_CHUNK - 1) / ACT_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t c = 0; c < chunks; c++) {
        const size_t lo = c * ACT_CHUNK, len = n - lo < ACT_CHUNK ? n - lo : ACT_CHUNK;
        switch (op) {
        case OP_RELU_FWD: relu_forward_avx512(out + lo, a + lo, len); break;
        case OP_RELU_BWD: relu_backward_avx512(out + lo, a + lo, b + lo, len); break;
        case OP_SIGMOID_FWD: sigmoid_forward_avx512(out + lo, a + lo, len); break;
        case OP_SIGMOID_BWD: sigmoid_backward_avx512(out + lo, a + lo, b + lo, len); break;
        }
    }
}

#endif /* ACT_HAVE_AVX512 */

ActKernel act_kernel_resolve(ActKernel k)
{
#if ACT_HAVE_AVX512
    if (k != ACT_KERNEL_SCALAR && __builtin_cpu_supports("avx512f")) return ACT_KERNEL_AVX512;
#else
    (void)k;
#endif
    return ACT_KERNEL_SCALAR;
}

void relu_forward_kernel(float *y, const float *x, size_t n, ActKernel k)
{
#if ACT_HAVE_AVX512
    if (act_kernel_resolve(k) == ACT_KERNEL_AVX512) {
        run_avx512(OP_RELU_FWD, y, x, NULL, n);
        return;
    }
#else
    (void)k;
#endif
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = (v > 0.0f || isnan(v)) ? v : 0.0f;  /* torch.relu lets NaN through */
    }
}

void relu_backward_kernel(float *dx, const float *dy, const float *y, size_t n, ActKernel k)
{
#if ACT_HAVE_AVX512
    if (act_kernel_resolve(k) == ACT_KERNEL_AVX512) {
        run_avx512(OP_RELU_BWD, dx, dy, y, n);
        return;
    }
#else
    (void)k;
#endif
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void sigmoid_forward_kernel(float *y, const float *x, size_t n, ActKernel k)
{
#if ACT_HAVE_AVX512
    if (act_kernel_resolve(k) == ACT_KERNEL_AVX512) {
        run_avx512(OP_SIGMOID_FWD, y, x, NULL, n);
        return;
    }
#else
    (void)k;
#endif
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) y[i] = sigmoid_one(x[i]);
}

void sigmoid_backward_kernel(float *dx, const float *dy, const float *y, size_t n, ActKernel k)
{
#if ACT_HAVE_AVX512
    if (act_kernel_resolve(k) == ACT_KERNEL_AVX512) {
        run_avx512(OP_SIGMOID_BWD, dx, dy, y, n);
        return;
    }
#else
    (void)k;
#endif
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ACT_OMP_MIN_ELEMS)
#endif
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i]) * y[i];  /* PyTorch's order of products */
}

void relu_forward(float *y, const float *x, size_t n) { relu_forward_kernel(y, x, n, ACT_KERNEL_AUTO); }

void relu_backward(float *dx, const float *dy, const float *y, size_t n)
{
    relu_backward_kernel(dx, dy, y, n, ACT_KERNEL_AUTO);
}

void sigmoid_forward(float *y, const float *x, size_t n) { sigmoid_forward_kernel(y, x, n, ACT_KERNEL_AUTO); }

void sigmoid_backward(float *dx, const float *dy, const float *y, size_t n)
{
    sigmoid_backward_kernel(dx, dy, y, n, ACT_KERNEL_AUTO);
}
