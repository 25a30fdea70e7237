/*
 * gemm_avx512.c - AVX-512 SGEMM kernels for the convolution GEMMs (see
 * gemm_avx512.h for the contract and the method).
 *
 * nn / tn: loop order j-panel (32 columns of C) -> k block (GEMM_AVX512_KC)
 * -> 8-row block of A.  The kc x 32 panel of B is packed once per (j, k
 * block) into a 64-byte aligned stack buffer (B rows are n floats apart,
 * often 16 KiB, which would alias in L1), then reused by every 8-row block;
 * A is read in place through 8 row pointers (rows past m repeat the last
 * row and their results are dropped), one broadcast per row and k step.
 * nt: dot products of contiguous rows, 8 rows of A x 3 rows of B per tile,
 * k blocks of GEMM_AVX512_KC_DOT floats, 16-lane partial sums reduced once
 * per tile and k block.
 * Serial; no allocation; no global state.  Built only for x86 GCC/Clang
 * (target attributes); elsewhere the entry points forward to gemm.h.
 */
#include "nn/gemm_avx512.h"

#include "nn/gemm.h"

#include <assert.h>
#include <stddef.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define AESIM_HAVE_AVX512_KERNELS 1
#include <immintrin.h>
#else
#define AESIM_HAVE_AVX512_KERNELS 0
#endif

#if AESIM_HAVE_AVX512_KERNELS

#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Floats per zmm register. */
#define LANES 16
/* nn/tn register block: MR rows x NR columns of C (2 zmm per row, 16 accumulators). */
#define MR 8
#define NR 32
/* nn/tn k block: the packed B panel is KC x NR floats = 8 KiB (L1d is 48 KiB).
 * Block sizes and rounding (issue 6, measured): KC 256 / KC_DOT 2048 run the
 * conv GEMMs alone ~10% (nn) and ~20% (nt) faster, but their summation order
 * moves tests/test_model_torch.py's 10-step Adam trajectory on imagenet32
 * across a kink (a ReLU or max-pool choice flips at step 7, all gradients
 * then differ by ~0.1%); 64 / 256 keep it within bound.  That check is
 * sensitive to ANY change of rounding, see the issue 6 report. */
#define GEMM_AVX512_KC 64
/* nt_bcast k block (the kNN distance GEMM, whose candidates are re-scored
 * exactly, so its rounding is free): panel 16 KiB.  The kNN's C tile is
 * 512 x 512 floats (1 MiB, not in L2; knn.c) and is re-read and re-written once
 * per k block.  Measured (Zen 5, 2 threads, N = 1,000,000, D = 512, 3 x 1000
 * queries, runs interleaved): KC 64 205-278 queries/s, 128 235-295 (+10%),
 * 256 171-185 (the 32 KiB panel and the 8 rows of A no longer fit in L1). */
#define GEMM_AVX512_KC_NT 128
/* nt_packed_a register block: PMR rows of packed A x NR columns (24
 * accumulators: 12 broadcasts and 2 panel loads per 24 FMAs), and its k
 * block.  Measured (issue 16, 2026-12-05, Zen 5, 1 thread, C = A[504][512]
 * x B[512][512]^T tiles over 262,144 streamed rows of B, GFLOP/s of a
 * 220 FMA peak): nt_bcast (8 rows of A read in place, k block 128) 152-160;
 * packed A, 8 rows: k block 128 / 256 / 512 173 / 181 / 186; 12 rows: 178 /
 * 177 / 195; 14 rows, 512: 183.  The kernel alone, in L1: 12 rows 196.
 * A 512 k block keeps the C tile in registers for the whole D = 512 (no
 * re-read of the 1 MiB C tile per k block); its panel (64 KiB) streams from
 * L2, two loads per 24 FMAs. */
#define GEMM_AVX512_KC_NTP 512
#define PMR 12
/* nt register block: DMR rows of A x DNR rows of B (24 accumulators). */
#define DMR 8
#define DNR 3
/* nt k block: DMR + DNR rows of 1 KiB stay in L1 while a tile runs. */
#define GEMM_AVX512_KC_DOT 256

int gemm_avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

/* Mask of the first n lanes (n clamped to [0, LANES]). */
static __mmask16 lane_mask(int n)
{
    if (n >= LANES) return (__mmask16)0xFFFF;
    if (n <= 0) return 0;
    return (__mmask16)((1u << n) - 1u);
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* panel[kc][NR] = B[0..kc)[0..nr) (rows ldb floats apart), zero beyond nr. */
TARGET_AVX512 static void pack_b(float *panel, const float *b, int ldb, int kc, int nr)
{
    const __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr - LANES);
    for (int p = 0; p < kc; p++) {
        const float *src = b + (size_t)p * (size_t)ldb;
        _mm512_store_ps(panel + (size_t)p * NR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(panel + (size_t)p * NR + LANES, _mm512_maskz_loadu_ps(m1, src + LANES));
    }
}

/* In-register transpose of the 16 x 16 block r[0..15] (row i = r[i]):
 * afterwards r[i] holds column i.  Three rounds of lane shuffles
 * (unpack, shuffle within 128-bit lanes, then 128-bit lane shuffles twice;
 * the classic AVX-512 16x16 float transpose): 64 shuffles, no memory. */
TARGET_AVX512 static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* panel[kc][NR] = B^T: panel[p][j] = B[j][p] for j < nr (rows of B ldb
 * floats apart), zero beyond nr.  Blocks of 16 rows x 16 k values are
 * loaded row by row (16 consecutive floats each), transposed in registers
 * (transpose16) and stored as 16 panel half-rows.  Replaced a version that
 * scattered each loaded vector down a panel column (VSCATTERDPS): for the
 * few-query kNN tiles, where one packed panel serves few rows of A, that
 * packing cost as much as the products (issue 14's micro-batches). */
TARGET_AVX512 static void pack_bt(float *panel, const float *b, int ldb, int kc, int nr)
{
    for (int h = 0; h < NR; h += LANES) {
        for (int p = 0; p < kc; p += LANES) {
            const __mmask16 m = lane_mask(kc - p);
            __m512 r[16];
            for (int j = 0; j < LANES; j++)
                r[j] = h + j < nr ? _mm512_maskz_loadu_ps(m, b + (size_t)(h + j) * (size_t)ldb + p) : _mm512_setzero_ps();
            transpose16(r);
            const int np = kc - p < LANES ? kc - p : LANES;
            for (int i = 0; i < np; i++) _mm512_store_ps(panel + (size_t)(p + i) * NR + h, r[i]);
        }
    }
}

/* One accumulated row pair of C: c[0..nr) = acc (+ old C as the mode says). */
TARGET_AVX512 static void store_row(float *c, __m512 lo, __m512 hi, int nr, int first, float beta)
{
    const __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr - LANES);
    if (first && beta == 0.0f) {
        _mm512_mask_storeu_ps(c, m0, lo);
        _mm512_mask_storeu_ps(c + LANES, m1, hi);
        return;
    }
    const __m512 old0 = _mm512_maskz_loadu_ps(m0, c), old1 = _mm512_maskz_loadu_ps(m1, c + LANES);
    if (first) {
        const __m512 vb = _mm512_set1_ps(beta);
        lo = _mm512_fmadd_ps(vb, old0, lo);
        hi = _mm512_fmadd_ps(vb, old1, hi);
    } else {
        lo = _mm512_add_ps(lo, old0);
        hi = _mm512_add_ps(hi, old1);
    }
    _mm512_mask_storeu_ps(c, m0, lo);
    _mm512_mask_storeu_ps(c + LANES, m1, hi);
}

/* C tile [mr][nr] (rows ldc apart) op= sum_p A(r, p) * panel[p][.], where
 * A(r, p) = ar[r][p * ks].  first: this is the first k block (apply beta). */
TARGET_AVX512 static void kernel_8x32(float *c, int ldc, const float *const ar[MR], ptrdiff_t ks,
                                      const float *panel, int kc, int mr, int nr, int first, float beta)
{
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3];
    const float *a4 = ar[4], *a5 = ar[5], *a6 = ar[6], *a7 = ar[7];
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    ptrdiff_t o = 0;
    for (int p = 0; p < kc; p++, o += ks) {
        const __m512 b0 = _mm512_load_ps(panel + (size_t)p * NR);
        const __m512 b1 = _mm512_load_ps(panel + (size_t)p * NR + LANES);
#define AESIM_ROW(r)                                            \
    {                                                           \
        const __m512 av = _mm512_set1_ps(a##r[o]);              \
        c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);             \
        c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);             \
    }
        AESIM_ROW(0) AESIM_ROW(1) AESIM_ROW(2) AESIM_ROW(3)
        AESIM_ROW(4) AESIM_ROW(5) AESIM_ROW(6) AESIM_ROW(7)
#undef AESIM_ROW
    }
    const __m512 lo[MR] = {c00, c10, c20, c30, c40, c50, c60, c70};
    const __m512 hi[MR] = {c01, c11, c21, c31, c41, c51, c61, c71};
    for (int r = 0; r < mr; r++) store_row(c + (size_t)r * (size_t)ldc, lo[r], hi[r], nr, first, beta);
}

/* C[m][n] = A x B + beta*C with A(i, p) = a[i * a_rs + p * a_ks] and B
 * stored [k][n] (b_trans 0) or [n][k] (b_trans 1, B^T is packed). */
TARGET_AVX512 static void gemm_bcast(float *c, const float *a, ptrdiff_t a_rs, ptrdiff_t a_ks, const float *b,
                                     int b_trans, int m, int n, int k, float beta, int kcb)
{
    float panel[GEMM_AVX512_KC_NT * NR] __attribute__((aligned(64)));
    assert(kcb <= GEMM_AVX512_KC_NT);
    for (int j0 = 0; j0 < n; j0 += NR) {
        const int nr = min_int(n - j0, NR);
        for (int p0 = 0; p0 < k; p0 += kcb) {
            const int kc = min_int(k - p0, kcb);
            if (b_trans) {
                /* the same k block of the next 32 rows of B, fetched while
                 * this one is multiplied: with few rows of A, a panel's
                 * products are too short to hide 32 rows' memory latency */
                const int nn = min_int(n - j0 - NR, NR);
                for (int j = 0; j < nn; j++) {
                    const char *row = (const char *)(b + (size_t)(j0 + NR + j) * (size_t)k + (size_t)p0);
                    for (int off = 0; off < kc * (int)sizeof(float); off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
                }
                pack_bt(panel, b + (size_t)j0 * (size_t)k + (size_t)p0, k, kc, nr);
            }
            else pack_b(panel, b + (size_t)p0 * (size_t)n + (size_t)j0, n, kc, nr);
            for (int i0 = 0; i0 < m; i0 += MR) {
                const int mr = min_int(m - i0, MR);
                const float *ar[MR];
                for (int r = 0; r < MR; r++) {
                    const ptrdiff_t i = i0 + (r < mr ? r : mr - 1);
                    ar[r] = a + i * a_rs + (ptrdiff_t)p0 * a_ks;
                }
                kernel_8x32(c + (size_t)i0 * (size_t)n + (size_t)j0, n, ar, a_ks, panel, kc, mr, nr, p0 == 0,
                            beta);
            }
        }
    }
}

void gemm_avx512_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    gemm_bcast(c, a, k, 1, b, 0, m, n, k, beta, GEMM_AVX512_KC);
}

void gemm_avx512_tn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    gemm_bcast(c, a, 1, m, b, 0, m, n, k, beta, GEMM_AVX512_KC);
}

void gemm_avx512_nt_bcast(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    gemm_bcast(c, a, k, 1, b, 1, m, n, k, beta, GEMM_AVX512_KC_NT);
}

size_t gemm_avx512_pack_a_nt_floats(int m, int k)
{
    assert(m >= 1 && k >= 1);
    return (size_t)((m + PMR - 1) / PMR) * PMR * (size_t)k;
}

/* Packed A: for each k block p0 (GEMM_AVX512_KC_NTP wide, kc = its width),
 * for each block ib of PMR rows, kc x PMR floats [p][r] = A(ib*PMR + r,
 * p0 + p), rows past m repeating row m - 1; block (p0, ib) starts at
 * p0 * mp + ib * PMR * kc, mp = m rounded up to PMR. */
void gemm_avx512_pack_a_nt(float *ap, const float *a, int m, int k)
{
    assert(m >= 1 && k >= 1);
    const int nib = (m + PMR - 1) / PMR;
    for (int p0 = 0; p0 < k; p0 += GEMM_AVX512_KC_NTP) {
        const int kc = min_int(k - p0, GEMM_AVX512_KC_NTP);
        for (int ib = 0; ib < nib; ib++) {
            float *d = ap + (size_t)p0 * (size_t)nib * PMR + (size_t)ib * PMR * (size_t)kc;
            for (int r = 0; r < PMR; r++) {
                const float *src = a + (size_t)min_int(ib * PMR + r, m - 1) * (size_t)k + (size_t)p0;
                for (int p = 0; p < kc; p++) d[(size_t)p * PMR + (size_t)r] = src[p];
            }
        }
    }
}

/* C tile [mr][nr] (rows ldc apart) op= sum_p ap[p][r] * panel[p][.];
 * first: store, else add to C. */
TARGET_AVX512 static void kernel_12x32(float *c, int ldc, const float *ap, const float *panel, int kc, int mr, int nr,
                                       int first)
{
    __m512 lo[PMR], hi[PMR];
    for (int r = 0; r < PMR; r++) lo[r] = hi[r] = _mm512_setzero_ps();
    for (int p = 0; p < kc; p++) {
        const __m512 b0 = _mm512_load_ps(panel + (size_t)p * NR);
        const __m512 b1 = _mm512_load_ps(panel + (size_t)p * NR + LANES);
        const float *arow = ap + (size_t)p * PMR;
#pragma GCC unroll 12
        for (int r = 0; r < PMR; r++) {
            const __m512 av = _mm512_set1_ps(arow[r]);
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
        }
    }
    for (int r = 0; r < mr; r++) store_row(c + (size_t)r * (size_t)ldc, lo[r], hi[r], nr, first, 0.0f);
}

TARGET_AVX512 void gemm_avx512_nt_packed_a(float *c, const float *ap, const float *b, int m, int n, int k)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    float panel[GEMM_AVX512_KC_NTP * NR] __attribute__((aligned(64)));
    const int nib = (m + PMR - 1) / PMR;
    for (int j0 = 0; j0 < n; j0 += NR) {
        const int nr = min_int(n - j0, NR);
        for (int p0 = 0; p0 < k; p0 += GEMM_AVX512_KC_NTP) {
            const int kc = min_int(k - p0, GEMM_AVX512_KC_NTP);
            /* the same k block of the next 32 rows of B, fetched while this
             * one is multiplied (as in gemm_bcast) */
            const int nn = min_int(n - j0 - NR, NR);
            for (int j = 0; j < nn; j++) {
                const char *row = (const char *)(b + (size_t)(j0 + NR + j) * (size_t)k + (size_t)p0);
                for (int off = 0; off < kc * (int)sizeof(float); off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
            }
            pack_bt(panel, b + (size_t)j0 * (size_t)k + (size_t)p0, k, kc, nr);
            const float *apk = ap + (size_t)p0 * (size_t)nib * PMR;
            for (int ib = 0; ib < nib; ib++)
                kernel_12x32(c + (size_t)ib * PMR * (size_t)n + (size_t)j0, n, apk + (size_t)ib * PMR * (size_t)kc,
                             panel, kc, min_int(m - ib * PMR, PMR), nr, p0 == 0);
        }
    }
}

/* C tile [mr][nr] op= dot(ar[r][0..kc), br[q][0..kc)). */
TARGET_AVX512 static void dot_tile_8x3(float *c, int ldc, const float *const ar[DMR], const float *const br[DNR],
                                       int kc, int mr, int nr, int first, float beta)
{
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3];
    const float *a4 = ar[4], *a5 = ar[5], *a6 = ar[6], *a7 = ar[7];
    const float *q0 = br[0], *q1 = br[1], *q2 = br[2];
    __m512 s00 = _mm512_setzero_ps(), s01 = s00, s02 = s00, s10 = s00, s11 = s00, s12 = s00;
    __m512 s20 = s00, s21 = s00, s22 = s00, s30 = s00, s31 = s00, s32 = s00;
    __m512 s40 = s00, s41 = s00, s42 = s00, s50 = s00, s51 = s00, s52 = s00;
    __m512 s60 = s00, s61 = s00, s62 = s00, s70 = s00, s71 = s00, s72 = s00;
#define AESIM_DROW(r, LOAD)                                     \
    {                                                           \
        const __m512 av = LOAD(a##r);                           \
        s##r##0 = _mm512_fmadd_ps(av, b0, s##r##0);             \
        s##r##1 = _mm512_fmadd_ps(av, b1, s##r##1);             \
        s##r##2 = _mm512_fmadd_ps(av, b2, s##r##2);             \
    }
#define AESIM_DSTEP(LOAD)                                                               \
    {                                                                                   \
        const __m512 b0 = LOAD(q0), b1 = LOAD(q1), b2 = LOAD(q2);                       \
        AESIM_DROW(0, LOAD) AESIM_DROW(1, LOAD) AESIM_DROW(2, LOAD) AESIM_DROW(3, LOAD) \
        AESIM_DROW(4, LOAD) AESIM_DROW(5, LOAD) AESIM_DROW(6, LOAD) AESIM_DROW(7, LOAD) \
    }
    int p = 0;
    for (; p + LANES <= kc; p += LANES) {
#define AESIM_FULL(ptr) _mm512_loadu_ps((ptr) + p)
        AESIM_DSTEP(AESIM_FULL)
#undef AESIM_FULL
    }
    if (p < kc) {
        const __mmask16 tail = lane_mask(kc - p);
#define AESIM_TAIL(ptr) _mm512_maskz_loadu_ps(tail, (ptr) + p)
        AESIM_DSTEP(AESIM_TAIL)
#undef AESIM_TAIL
    }
#undef AESIM_DSTEP
#undef AESIM_DROW
    const __m512 acc[DMR][DNR] = {{s00, s01, s02}, {s10, s11, s12}, {s20, s21, s22}, {s30, s31, s32},
                                  {s40, s41, s42}, {s50, s51, s52}, {s60, s61, s62}, {s70, s71, s72}};
    for (int r = 0; r < mr; r++) {
        float *crow = c + (size_t)r * (size_t)ldc;
        for (int q = 0; q < nr; q++) {
            const float s = _mm512_reduce_add_ps(acc[r][q]);
            if (!first) crow[q] += s;
            else if (beta == 0.0f) crow[q] = s;
            else crow[q] = s + beta * crow[q];
        }
    }
}

TARGET_AVX512 static void gemm_dot(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    for (int p0 = 0; p0 < k; p0 += GEMM_AVX512_KC_DOT) {
        const int kc = min_int(k - p0, GEMM_AVX512_KC_DOT);
        for (int j0 = 0; j0 < n; j0 += DNR) {
            const int nr = min_int(n - j0, DNR);
            const float *br[DNR];
            for (int q = 0; q < DNR; q++) br[q] = b + (size_t)(j0 + (q < nr ? q : nr - 1)) * (size_t)k + (size_t)p0;
            for (int i0 = 0; i0 < m; i0 += DMR) {
                const int mr = min_int(m - i0, DMR);
                const float *ar[DMR];
                for (int r = 0; r < DMR; r++)
                    ar[r] = a + (size_t)(i0 + (r < mr ? r : mr - 1)) * (size_t)k + (size_t)p0;
                dot_tile_8x3(c + (size_t)i0 * (size_t)n + (size_t)j0, n, ar, br, kc, mr, nr, p0 == 0, beta);
            }
        }
    }
}

void gemm_avx512_nt(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    gemm_dot(c, a, b, m, n, k, beta);
}

#else /* !AESIM_HAVE_AVX512_KERNELS: never selected (supported() is 0); forward to cblas for safety. */

int gemm_avx512_supported(void) { return 0; }

/* Without the kernels the "packed" A is A itself. */
size_t gemm_avx512_pack_a_nt_floats(int m, int k) { return (size_t)m * (size_t)k; }

void gemm_avx512_pack_a_nt(float *ap, const float *a, int m, int k)
{
    for (size_t i = 0; i < (size_t)m * (size_t)k; i++) ap[i] = a[i];
}

void gemm_avx512_nt_packed_a(float *c, const float *ap, const float *b, int m, int n, int k)
{
    gemm_nt(c, ap, b, m, n, k, 0.0f);
}

void gemm_avx512_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    gemm_nn(c, a, b, m, n, k, beta);
}

void gemm_avx512_tn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    gemm_tn(c, a, b, m, n, k, beta);
}

void gemm_avx512_nt(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    gemm_nt(c, a, b, m, n, k, beta);
}

void gemm_avx512_nt_bcast(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    gemm_nt(c, a, b, m, n, k, beta);
}

#endif
