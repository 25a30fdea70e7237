/*
 * gemm_bf16.c - bf16 GEMM on VDPBF16PS (see gemm_bf16.h for the contract
 * and the method).
 *
 * Loop order as gemm_avx512.c's nn: 32-column panel j0 -> k block p0
 * (GEMM_BF16_KC values, GEMM_BF16_KC / 2 pairs) -> 8-row block i0.  The B
 * panel is packed once per (j0, p0): rows 2q and 2q+1 are rounded to
 * bfloat16 together (VCVTNE2PS2BF16) and interleaved (VPERMW) so that lane
 * j holds the pair (B[2q][j], B[2q+1][j]).  The A block (8 rows x kc) is
 * packed per (j0, p0, i0) row by row: k is contiguous in A's rows, so one
 * conversion of 32 consecutive floats already gives 16 pairs in order.  Odd k: the last pair's second value is zero in
 * both.  Rows past m repeat row m-1 and are not stored.
 * Serial; no allocation; no global state.
 */
#include "nn/gemm_bf16.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && (__GNUC__ >= 10 || defined(__clang__))
#define AESIM_HAVE_BF16_KERNELS 1
#include <immintrin.h>
#else
#define AESIM_HAVE_BF16_KERNELS 0
#endif

#if AESIM_HAVE_BF16_KERNELS

#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* Floats per zmm. */
#define LANES 16
/* Register block: MR rows x NR columns of C (2 zmm per row). */
#define MR 8
#define NR 32
/* k block in values (GEMM_BF16_KC / 2 pairs): the packed B panel is
 * KC/2 x 2 zmm = 8 KiB, as the float32 kernel's. */
#define GEMM_BF16_KC 128
#define KQ (GEMM_BF16_KC / 2)

int gemm_bf16_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
}

static __mmask16 lane_mask(int n)
{
    if (n >= LANES) return (__mmask16)0xFFFF;
    if (n <= 0) return 0;
    return (__mmask16)((1u << n) - 1u);
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* panel[2q + h] (q < kq): lanes j of half h = columns h*16 + j, as pairs
 * (B[2q][col], B[2q+1][col]) rounded to bfloat16; zero past nr columns and
 * past kc rows.  B rows are ldb floats apart. */
TARGET_BF16 static void pack_b(__m512i *panel, const float *b, int ldb, int kc, int nr)
{
    /* VPERMW index: word 2j <- word j (row 2q), word 2j+1 <- word 16+j (row 2q+1) */
    static const short idx_words[32] = { 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                         8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31 };
    const __m512i idx = _mm512_loadu_si512(idx_words);
    const __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr - LANES);
    const int kq = (kc + 1) / 2;
    for (int q = 0; q < kq; q++) {
        const float *r0 = b + (size_t)(2 * q) * (size_t)ldb;
        const int has1 = 2 * q + 1 < kc;
        const float *r1 = r0 + ldb;
        for (int h = 0; h < 2; h++) {
            const __mmask16 m = h ? m1 : m0;
            const __m512 lo = _mm512_maskz_loadu_ps(m, r0 + h * LANES);
            const __m512 hi = has1 ? _mm512_maskz_loadu_ps(m, r1 + h * LANES) : _mm512_setzero_ps();
            const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* words 0-15 row 2q, 16-31 row 2q+1 */
            panel[2 * q + h] = _mm512_permutexvar_epi16(idx, both);
        }
    }
}

/* ap[r * KQ + q] = pair (A(r, 2q), A(r, 2q+1)) rounded, for q < (kc+1)/2
 * (rounded up to 16 pairs), A(r, p) = ar[r][p]; zero past kc. */
TARGET_BF16 static void pack_a(uint32_t *ap, const float *const ar[MR], int kc)
{
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < kc; p += 2 * LANES) {
            const __m512 lo = _mm512_maskz_loadu_ps(lane_mask(kc - p), ar[r] + p);
            const __m512 hi = _mm512_maskz_loadu_ps(lane_mask(kc - p - LANES), ar[r] + p + LANES);
            _mm512_store_si512(ap + (size_t)r * KQ + p / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
}

/* One row pair of C: c[0..nr) = acc (+ beta*C on the first k block, + C after). */
TARGET_BF16 static void store_row(float *c, __m512 lo, __m512 hi, int nr, int first, float beta)
{
    const __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr - LANES);
    if (first && beta == 0.0f) {
        _mm512_mask_storeu_ps(c, m0, lo);
        _mm512_mask_storeu_ps(c + LANES, m1, hi);
        return;
    }
    const __m512 old0 = _mm512_maskz_loadu_ps(m0, c), old1 = _mm512_maskz_loadu_ps(m1, c + LANES);
    const __m512 f = _mm512_set1_ps(first ? beta : 1.0f);
    _mm512_mask_storeu_ps(c, m0, _mm512_fmadd_ps(f, old0, lo));
    _mm512_mask_storeu_ps(c + LANES, m1, _mm512_fmadd_ps(f, old1, hi));
}

TARGET_BF16 static void kernel_8x32(float *c, int ldc, const uint32_t *ap, const __m512i *panel, int kq, int mr,
                                    int nr, int first, float beta)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int q = 0; q < kq; q++) {
        const __m512bh b0 = (__m512bh)panel[2 * q], b1 = (__m512bh)panel[2 * q + 1];
#define AESIM_ROW(r)                                                    \
    {                                                                   \
        const __m512bh av = (__m512bh)_mm512_set1_epi32((int)ap[(r) * KQ + q]); \
        c##r##0 = _mm512_dpbf16_ps(c##r##0, av, b0);                    \
        c##r##1 = _mm512_dpbf16_ps(c##r##1, av, b1);                    \
    }
        AESIM_ROW(0) AESIM_ROW(1) AESIM_ROW(2) AESIM_ROW(3)
        AESIM_ROW(4) AESIM_ROW(5) AESIM_ROW(6) AESIM_ROW(7)
#undef AESIM_ROW
    }
    const __m512 lo[MR] = {c00, c10, c20, c30, c40, c50, c60, c70};
    const __m512 hi[MR] = {c01, c11, c21, c31, c41, c51, c61, c71};
    for (int r = 0; r < mr; r++) store_row(c + (size_t)r * (size_t)ldc, lo[r], hi[r], nr, first, beta);
}

TARGET_BF16 void gemm_bf16_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    assert(m >= 1 && n >= 1 && k >= 1);
    __m512i panel[KQ * 2];
    uint32_t ap[KQ * MR] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < n; j0 += NR) {
        const int nr = min_int(n - j0, NR);
        for (int p0 = 0; p0 < k; p0 += GEMM_BF16_KC) {
            const int kc = min_int(k - p0, GEMM_BF16_KC), kq = (kc + 1) / 2;
            pack_b(panel, b + (size_t)p0 * (size_t)n + (size_t)j0, n, kc, nr);
            for (int i0 = 0; i0 < m; i0 += MR) {
                const int mr = min_int(m - i0, MR);
                const float *ar[MR];
                for (int r = 0; r < MR; r++) ar[r] = a + (size_t)(i0 + (r < mr ? r : mr - 1)) * (size_t)k + (size_t)p0;
                pack_a(ap, ar, kc);
                kernel_8x32(c + (size_t)i0 * (size_t)n + (size_t)j0, n, ap, panel, kq, mr, nr, p0 == 0, beta);
            }
        }
    }
}

#else /* no bf16 kernels in this build: never selected (supported() is 0) */

int gemm_bf16_supported(void) { return 0; }

void gemm_bf16_nn(float *c, const float *a, const float *b, int m, int n, int k, float beta)
{
    (void)c; (void)a; (void)b; (void)m; (void)n; (void)k; (void)beta;
    assert(0 && "gemm_bf16_nn without AVX512_BF16 kernels");
}

#endif
