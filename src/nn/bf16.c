/*
 * bf16.c - bfloat16 rounding of float32 arrays (see include/nn/bf16.h for
 * the definition and why it is enough for bf16 products).
 *
 * The rounding is integer arithmetic on the float's bits (round to nearest
 * even on bit 16), the method of PyTorch's c10::BFloat16 round_to_nearest_even
 * (written from its description).  The AVX-512F path does the same on 16
 * lanes; NaN lanes are kept NaN by OR-ing the quiet bit.
 * Threading: OpenMP over chunks (each thread writes its own), serial below
 * BF16_OMP_MIN_ELEMS.  No allocation, no state.
 */
#include "nn/bf16.h"

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define AESIM_HAVE_AVX512_KERNELS 1
#include <immintrin.h>
#define TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define AESIM_HAVE_AVX512_KERNELS 0
#endif

/* Elements below which the array rounding stays serial (thread start-up
 * costs about as much as rounding this many floats), and the OpenMP chunk:
 * 64 KiB of floats, a few L2-resident pieces per thread. */
#define BF16_OMP_MIN_ELEMS 65536
#define BF16_CHUNK 16384

/* Bits of a float32: exponent all ones = inf/NaN; the quiet-NaN bit. */
#define F32_EXP_MASK 0x7F800000u
#define F32_ABS_MASK 0x7FFFFFFFu
#define F32_QUIET_BIT 0x00400000u

float bf16_round(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & F32_ABS_MASK) > F32_EXP_MASK) {
        u |= F32_QUIET_BIT; /* NaN: keep it NaN (the rounding below could carry into inf) */
    } else {
        u += 0x7FFFu + ((u >> 16) & 1u);
        u &= 0xFFFF0000u;
    }
    memcpy(&v, &u, sizeof v);
    return v;
}

static void round_portable(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = bf16_round(src[i]);
}

#if AESIM_HAVE_AVX512_KERNELS
TARGET_AVX512 static void round_avx512(float *dst, const float *src, size_t n)
{
    const __m512i abs_mask = _mm512_set1_epi32((int)F32_ABS_MASK), exp_mask = _mm512_set1_epi32((int)F32_EXP_MASK);
    const __m512i quiet = _mm512_set1_epi32((int)F32_QUIET_BIT), half = _mm512_set1_epi32(0x7FFF);
    const __m512i one = _mm512_set1_epi32(1), keep = _mm512_set1_epi32((int)0xFFFF0000u);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), exp_mask);
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        r = _mm512_and_si512(r, keep);
        r = _mm512_mask_or_epi32(r, nan, u, quiet);
        _mm512_mask_storeu_epi32(dst + i, m, r);
    }
}
#endif

static int cpu_avx512f(void)
{
#if AESIM_HAVE_AVX512_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

int bf16_cpu_native(void)
{
#if AESIM_HAVE_AVX512_KERNELS && defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") ? 1 : 0;
#else
    return 0;
#endif
}

static void round_chunks(float *dst, const float *src, size_t n, int avx512)
{
    const size_t chunks = (n + BF16_CHUNK - 1) / BF16_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= BF16_OMP_MIN_ELEMS)
#endif
    for (size_t c = 0; c < chunks; c++) {
        const size_t lo = c * BF16_CHUNK, len = n - lo < BF16_CHUNK ? n - lo : BF16_CHUNK;
#if AESIM_HAVE_AVX512_KERNELS
        if (avx512) {
            round_avx512(dst + lo, src + lo, len);
            continue;
        }
#endif
        round_portable(dst + lo, src + lo, len);
    }
    (void)avx512;
}

void bf16_round_array(float *dst, const float *src, size_t n)
{
    round_chunks(dst, src, n, cpu_avx512f());
}

void bf16_round_array_portable(float *dst, const float *src, size_t n)
{
    round_chunks(dst, src, n, 0);
}
