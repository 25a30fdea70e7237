/*
 * conv_direct_bf16.c - VDPBF16PS direct convolution kernels (design and
 * layouts: include/nn/conv_direct_bf16.h; the float32 kernels they mirror:
 * conv_direct.c).
 *
 * Register tiles as in conv_direct.c: the pass keeps R pixel vectors x 8
 * output channels of float32 accumulators (3 x 8 for 5..8 channels, 6 x
 * 3..4, 8 x 1..2) and feeds them per (tap, input-channel pair) with R
 * masked word loads and 8 pair broadcasts; vectors whose lanes are all
 * inside the image load without a mask (8 loop variants for R <= 3).  The
 * weight gradient keeps 4 output x 6 input channels of accumulators for one
 * tap (or 6 (channel, tap) pairs when the layer has fewer than 6 input
 * channels) and feeds them per 32-pixel vector with 4 loads of g and 6 of x,
 * flushing into the caller's lane partials every WG_GROUP vectors.
 */
#include "nn/conv_direct_bf16.h"

#include "base/timer.h"
#include "nn/bf16.h"

#include <assert.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && (__GNUC__ >= 11 || defined(__clang__))
#define HAVE_BF16_KERNELS 1
#include <immintrin.h>
#else
#define HAVE_BF16_KERNELS 0
#endif

/* Pixels per 16-lane word vector (pass) and per bfloat16 vector (weight gradient). */
#define LANES 16
#define LANES_BF 32
/* Output channels per packed weight block = accumulator columns of a pass tile. */
#define CO_BLK 8
#define R_MAX 8
#define TILE_R_WIDE 3
#define TILE_R_MID 6
#define TILE_R_NARROW 8
/* Weight-gradient tile (output x input channels) and group (32-pixel vectors). */
#define WG_CO 4
#define WG_CI 6
#define WG_GROUP 32
/* How far ahead the packers prefetch their float32 source (2 KiB). */
#define PREFETCH_FLOATS 512

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

size_t conv_bf16_weight_words(int CI, int CO, int kk)
{
    return (size_t)ceil_div(CO, CO_BLK) * kk * ceil_div(CI, 2) * CO_BLK;
}

/* The bfloat16 bits of v rounded to nearest even. */
static uint32_t bf16_bits(float v)
{
    const float r = bf16_round(v);
    uint32_t u;
    memcpy(&u, &r, sizeof u);
    return u >> 16;
}

void conv_bf16_pack_weights(uint32_t *wp, const float *w, int C, int OC, int kk, int input_grad)
{
    const int CI = input_grad ? OC : C, CO = input_grad ? C : OC, ci2 = ceil_div(CI, 2);
    memset(wp, 0, sizeof(uint32_t) * conv_bf16_weight_words(CI, CO, kk));
    for (int oc = 0; oc < OC; oc++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < kk; t++) {
                const uint32_t b = bf16_bits(w[((size_t)oc * C + c) * kk + t]);
                /* the pass's input channel i (paired), output channel o, tap u */
                const int i = input_grad ? oc : c, o = input_grad ? c : oc, u = input_grad ? kk - 1 - t : t;
                wp[(((size_t)(o / CO_BLK) * kk + u) * ci2 + i / 2) * CO_BLK + o % CO_BLK] |= b << (16 * (i % 2));
            }
}

size_t conv_bf16_mask_words(int K, int H, int W)
{
    return (size_t)ceil_div(H * W, LANES_BF) * K * K;
}

void conv_bf16_build_masks(uint32_t *mask, int K, int H, int W)
{
    const int kk = K * K, pad = K / 2, hw = H * W;
    memset(mask, 0, sizeof(uint32_t) * conv_bf16_mask_words(K, H, W));
    int h = 0, w = 0;
    for (int p = 0; p < hw; p++) {
        uint32_t *mv = mask + (size_t)(p / LANES_BF) * kk;
        const uint32_t bit = 1u << (p % LANES_BF);
        for (int ky = 0; ky < K; ky++) {
            const int hy = h + ky - pad;
            if (hy < 0 || hy >= H) continue;
            for (int kx = 0; kx < K; kx++) {
                const int wx = w + kx - pad;
                if (wx >= 0 && wx < W) mv[ky * K + kx] |= bit;
            }
        }
        if (++w == W) {
            w = 0;
            h++;
        }
    }
}

#if HAVE_BF16_KERNELS

static __mmask16 tail16(size_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* Tap offsets in pixels: off[t] = (ky - K/2) * W + (kx - K/2). */
static void tap_offsets(int *off, int K, int W)
{
    const int pad = K / 2;
    for (int t = 0; t < K * K; t++) off[t] = (t / K - pad) * W + (t % K - pad);
}

/* Largest K*K (conv2d.h CONV_DIRECT_MAX_TAPS). */
#define MAX_TAPS 121

/* A run of consecutive 32-pixel vectors [v0, v1) of image n. */
typedef struct Segment {
    int64_t n;
    int v0, v1;
} Segment;

/* pairs from plain bfloat16 planes: no rounding, so one version serves both
 * implementations (AVX-512F/BW/VL). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) void conv_bf16_pairs_from_plain(uint32_t *dst,
                                                                                      const uint16_t *src, int n,
                                                                                      int CI, size_t hw)
{
    const int ci2 = ceil_div(CI, 2);
    for (int img = 0; img < n; img++)
        for (int c2 = 0; c2 < ci2; c2++) {
            const uint16_t *lo = src + ((size_t)img * CI + 2 * c2) * hw;
            const uint16_t *hi = 2 * c2 + 1 < CI ? lo + hw : NULL;
            uint32_t *d = dst + ((size_t)img * ci2 + c2) * hw;
            for (size_t p = 0; p < hw; p += LANES) {
                const __mmask16 m = tail16(hw - p);
                const __m512i a = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo + p));
                const __m512i b = hi ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi + p)), 16)
                                     : _mm512_setzero_si512();
                _mm512_mask_storeu_epi32(d + p, m, _mm512_or_si512(a, b));
            }
        }
}

/* The AVX512_BF16 variant. */
#define KNAME(x) x##_native
#define TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define INLINE_TARGET static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512bf16")))
#define DPBF16(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh)(a), (__m512bh)(b))
#define CVTNE2PS(hi, lo) ((__m512i)_mm512_cvtne2ps_pbh((hi), (lo)))
#include "conv_direct_bf16_kernels.inc"

/* The same kernels on AVX-512F/BW only.  VDPBF16PS per lane (Intel SDM):
 * acc += hi(a) * hi(b), then acc += lo(a) * lo(b), each product exact in
 * float32 (two 8-bit significands); here two FMAs whose products are exact
 * too, so the result is the instruction's except for subnormals (VDPBF16PS
 * treats them as zero).  VCVTNE2PS2BF16: nn/bf16.h's rounding on 16 lanes,
 * then the high halves narrowed (VPMOVDW). */
__attribute__((target("avx512f"))) static inline __m512 bf16_lo(__m512i v)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

__attribute__((target("avx512f"))) static inline __m512 bf16_hi(__m512i v)
{
    return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xFFFF0000u)));
}

__attribute__((target("avx512f"))) static inline __m512 dpbf16_emulated(__m512 acc, __m512i a, __m512i b)
{
    acc = _mm512_fmadd_ps(bf16_hi(a), bf16_hi(b), acc);
    return _mm512_fmadd_ps(bf16_lo(a), bf16_lo(b), acc);
}

#include "bf16_round16.inc"

__attribute__((target("avx512f"))) static inline __m512i cvtne2ps_emulated(__m512 hi, __m512 lo)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(round16_emulated(lo)), round16_emulated(hi), 1);
}

#define KNAME(x) x##_emulated
#define TARGET __attribute__((target("avx512f,avx512bw")))
#define INLINE_TARGET static inline __attribute__((always_inline, target("avx512f,avx512bw")))
#define DPBF16(acc, a, b) dpbf16_emulated((acc), (a), (b))
#define CVTNE2PS(hi, lo) cvtne2ps_emulated((hi), (lo))
#include "conv_direct_bf16_kernels.inc"

static const ConvBf16Kernels KERNELS_NATIVE = {pack_pairs_native, pack_plain_native, pass_native, wgrad_native};
static const ConvBf16Kernels KERNELS_EMULATED = {pack_pairs_emulated, pack_plain_emulated, pass_emulated,
                                                 wgrad_emulated};

int conv_bf16_available(int impl)
{
    __builtin_cpu_init();
    const int bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    if (impl == CONV_BF16_EMULATED) return bw;
    if (impl == CONV_BF16_NATIVE) return bw && __builtin_cpu_supports("avx512bf16");
    return 0;
}

/* The dot-rate probe (conv_bf16_dot_speedup): 14 independent accumulator
 * chains in zmm2..zmm15 (latency x issue rate of either instruction is at
 * most 12 on the CPUs we know), the whole loop in inline assembly, so that
 * every build times the instruction itself and no load or store (at -O1 GCC
 * keeps intrinsics' vectors in memory: a C loop would time store forwarding). */
#define PROBE_ITERS 16384
#define PROBE_TRIALS 7
#define PROBE_14(INSN)                                                                                                \
    INSN " %%zmm1, %%zmm0, %%zmm2\n\t" INSN " %%zmm1, %%zmm0, %%zmm3\n\t" INSN " %%zmm1, %%zmm0, %%zmm4\n\t"          \
    INSN " %%zmm1, %%zmm0, %%zmm5\n\t" INSN " %%zmm1, %%zmm0, %%zmm6\n\t" INSN " %%zmm1, %%zmm0, %%zmm7\n\t"          \
    INSN " %%zmm1, %%zmm0, %%zmm8\n\t" INSN " %%zmm1, %%zmm0, %%zmm9\n\t" INSN " %%zmm1, %%zmm0, %%zmm10\n\t"         \
    INSN " %%zmm1, %%zmm0, %%zmm11\n\t" INSN " %%zmm1, %%zmm0, %%zmm12\n\t" INSN " %%zmm1, %%zmm0, %%zmm13\n\t"       \
    INSN " %%zmm1, %%zmm0, %%zmm14\n\t" INSN " %%zmm1, %%zmm0, %%zmm15\n\t"
/* Zeroes the accumulators, broadcasts the 32-bit words *a and *b to zmm0 and
 * zmm1, then runs PROBE_ITERS x 14 instructions INSN. */
#define PROBE_LOOP(INSN)                                                                                              \
    __asm__ volatile("vpxord %%zmm2, %%zmm2, %%zmm2\n\t"                                                              \
                     "vmovdqa64 %%zmm2, %%zmm3\n\tvmovdqa64 %%zmm2, %%zmm4\n\tvmovdqa64 %%zmm2, %%zmm5\n\t"           \
                     "vmovdqa64 %%zmm2, %%zmm6\n\tvmovdqa64 %%zmm2, %%zmm7\n\tvmovdqa64 %%zmm2, %%zmm8\n\t"           \
                     "vmovdqa64 %%zmm2, %%zmm9\n\tvmovdqa64 %%zmm2, %%zmm10\n\tvmovdqa64 %%zmm2, %%zmm11\n\t"         \
                     "vmovdqa64 %%zmm2, %%zmm12\n\tvmovdqa64 %%zmm2, %%zmm13\n\tvmovdqa64 %%zmm2, %%zmm14\n\t"        \
                     "vmovdqa64 %%zmm2, %%zmm15\n\t"                                                                 \
                     "vpbroadcastd (%[a]), %%zmm0\n\tvpbroadcastd (%[b]), %%zmm1\n\t"                                \
                     "1:\n\t" PROBE_14(INSN) "dec %[n]\n\tjnz 1b\n\t"                                                \
                     : [n] "+r"(n)                                                                                    \
                     : [a] "r"(a), [b] "r"(b)                                                                         \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",       \
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory")

/* Seconds for PROBE_ITERS x 14 instructions of one kind (fma: VFMADD231PS,
 * else VDPBF16PS) on the 32-bit words *a and *b in every lane. */
__attribute__((noinline, target("avx512f,avx512bw,avx512bf16"))) static double probe(int fma, const uint32_t *a,
                                                                                     const uint32_t *b)
{
    long n = PROBE_ITERS;
    const double t0 = timer_now();
    if (fma)
        PROBE_LOOP("vfmadd231ps");
    else
        PROBE_LOOP("vdpbf16ps");
    return timer_now() - t0;
}

double conv_bf16_dot_speedup(void)
{
    static double cached = -1.0;
    if (cached >= 0.0) return cached;
    if (!conv_bf16_available(CONV_BF16_NATIVE)) return cached = 0.0;
    /* Small values, so that the sums stay normal and finite: 0.5 and 0.25
     * as float32, and as bfloat16 pairs (both halves of a word hold one). */
    const float ab[2] = {0.5f, 0.25f};
    uint32_t f32[2], pair[2];
    memcpy(f32, ab, sizeof f32);
    for (int i = 0; i < 2; i++) pair[i] = bf16_bits(ab[i]) * 0x10001u;
    double best_fma = 1e30, best_dp = 1e30;
    probe(1, &f32[0], &f32[1]); /* warm-up: the core's wide-vector power state */
    probe(0, &pair[0], &pair[1]);
    for (int t = 0; t < PROBE_TRIALS; t++) {
        const double f = probe(1, &f32[0], &f32[1]), d = probe(0, &pair[0], &pair[1]);
        if (f < best_fma) best_fma = f;
        if (d < best_dp) best_dp = d;
    }
    /* VDPBF16PS: 32 multiply-adds per instruction, VFMADD231PS: 16. */
    cached = best_dp > 0.0 ? 2.0 * best_fma / best_dp : 0.0;
    return cached;
}

int conv_bf16_auto_runs_bf16(void)
{
    return conv_bf16_available(CONV_BF16_NATIVE) && conv_bf16_dot_speedup() >= CONV_BF16_AUTO_MIN_SPEEDUP;
}

const ConvBf16Kernels *conv_bf16_kernels(int impl)
{
    assert(conv_bf16_available(impl));
    return impl == CONV_BF16_NATIVE ? &KERNELS_NATIVE : &KERNELS_EMULATED;
}

#else /* no AVX-512 kernels in this build: never called (available() is 0) */

int conv_bf16_available(int impl)
{
    (void)impl;
    return 0;
}

double conv_bf16_dot_speedup(void)
{
    return 0.0;
}

int conv_bf16_auto_runs_bf16(void)
{
    return 0;
}

void conv_bf16_pairs_from_plain(uint32_t *dst, const uint16_t *src, int n, int CI, size_t hw)
{
    (void)dst; (void)src; (void)n; (void)CI; (void)hw;
    assert(0 && "conv_bf16_pairs_from_plain without AVX-512 support");
}

const ConvBf16Kernels *conv_bf16_kernels(int impl)
{
    (void)impl;
    assert(0 && "conv_bf16_kernels without AVX-512 support");
    return NULL;
}

#endif
