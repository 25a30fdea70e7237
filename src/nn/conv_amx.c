/*
 * conv_amx.c - the forward KxK convolution on AMX bfloat16 tiles (design,
 * layouts and TDPBF16PS semantics: include/nn/conv_amx.h; the tile loop,
 * shared by both implementations: conv_amx_kernels.inc).
 *
 * Per thread: one packed image P (pair planes with zero border; the border
 * and the zero pair planes past ceil(C/2) are written once per call, the
 * interior per image) and a 4 KB buffer for the 4 accumulator tiles.
 *
 * GCC 12 pitfalls: _tile_loadconfig declares only 8 bytes of its 64-byte
 * operand (nn/amx_tile.h's amx_tile_loadconfig replaces it); and the tile
 * load and store macros are asm statements without memory operands, so
 * compiler barriers separate them from the C code that writes P and reads
 * buf.
 */
#include "nn/conv_amx.h"

#include "base/team.h"
#include "nn/amx_tile.h"
#include "nn/bf16.h"

#include <assert.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define HAVE_AMX_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#else
#define HAVE_AMX_BUILD 0
#endif

/* Geometry of one layer (conv_amx.h's layouts). */
typedef struct Geom {
    int C, OC, K, H, W;
    int Kc, nch, npp;  /* channels per A/B tile; chunks; pair planes packed (nch * Kc/2) */
    int nob;           /* 16-channel output blocks */
    int Wp, pad;       /* padded row (words); border */
    int rows16;        /* W % 16 == 0: q = y*W + x (blocks inside one row), else q = y*Wp + x */
    int nq;            /* 16-pixel blocks over q, a multiple of 4 */
    size_t S;          /* words per pair plane (stride), >= the last tile row read */
} Geom;

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

/* Word offset in a padded pair plane of the top-left tap of pixel block
 * q0 (16 pixels q0..q0+15): its first pixel's (y, x) at (y*Wp + x). */
static inline size_t qbase(const Geom *g, int q0)
{
    return g->rows16 ? (size_t)(q0 / g->W) * g->Wp + (size_t)(q0 % g->W) : (size_t)q0;
}

static Geom geom(int C, int OC, int K, int H, int W)
{
    Geom g;
    g.C = C; g.OC = OC; g.K = K; g.H = H; g.W = W;
    const int Cp = 2 * ceil_div(C, 2);
    g.Kc = Cp < 32 ? Cp : 32;
    g.nch = ceil_div(Cp, g.Kc);
    g.npp = g.nch * g.Kc / 2;
    g.nob = ceil_div(OC, 16);
    g.pad = K / 2;
    g.Wp = W + K - 1;
    g.rows16 = W % 16 == 0;
    g.nq = ceil_div(ceil_div(H * (g.rows16 ? W : g.Wp), 16), 4) * 4;
    /* last word a B tile reads: block nq-1's 16 words + (K-1)*Wp + (K-1) */
    const size_t need = qbase(&g, (g.nq - 1) * 16) + 16 + (size_t)(K - 1) * g.Wp + (size_t)(K - 1);
    g.S = (need + 15) / 16 * 16;
    return g;
}

static size_t round64(size_t b)
{
    return (b + 63) / 64 * 64;
}

size_t conv_amx_weight_bytes(int C, int OC, int K)
{
    const Geom g = geom(C, OC, K, 1, 1);
    return (size_t)g.nob * K * K * g.nch * 16 * g.Kc * sizeof(uint16_t);
}

/* The bfloat16 bits of v rounded to nearest even. */
static uint16_t bf16_bits(float v)
{
    const float r = bf16_round(v);
    uint32_t u;
    memcpy(&u, &r, sizeof u);
    return (uint16_t)(u >> 16);
}

void conv_amx_pack_weights(uint16_t *wa, const float *w, int C, int OC, int K)
{
    const Geom g = geom(C, OC, K, 1, 1);
    const int KK = K * K, Kc = g.Kc;
    memset(wa, 0, conv_amx_weight_bytes(C, OC, K));
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < KK; t++) {
                const int ob = o / 16, r = o % 16, ch = c / Kc, k = c % Kc;
                wa[((((size_t)ob * KK + t) * g.nch + ch) * 16 + r) * Kc + k] = bf16_bits(w[((size_t)o * C + c) * KK + t]);
            }
}

static size_t thread_bytes(const Geom *g)
{
    return round64((size_t)g->npp * g->S * sizeof(uint32_t)) + 4096;
}

size_t conv_amx_scratch_bytes(int C, int K, int H, int W, int nthreads)
{
    const Geom g = geom(C, 16, K, H, W);
    return thread_bytes(&g) * (size_t)(nthreads > 0 ? nthreads : 1);
}

#if HAVE_AMX_BUILD

#define COMPILER_BARRIER() __asm__ volatile("" ::: "memory")

#include "bf16_round16.inc"

/* 16 floats rounded to bfloat16 (bf16_round), zero-extended into the low
 * halves of 16 words. */
__attribute__((target("avx512f"))) static inline __m512i round16(__m512 v)
{
    return _mm512_cvtepu16_epi32(round16_emulated(v));
}

/* 16 words (low half bf16(lo[i]), high half bf16(hi[i])): the emulation's
 * pair packing (the native one: pair16_native). */
__attribute__((target("avx512f"))) static inline __m512i pair16_emulated(__m512 lo, __m512 hi)
{
    return _mm512_or_si512(round16(lo), _mm512_slli_epi32(round16(hi), 16));
}

/* A finished accumulator tile buf[16 oc][16 q] (float32) of output channels
 * oc0.. at pixels q0..q0+15: + bias, ReLU, stored to the pixels inside the
 * image of the channels < OC. */
__attribute__((target("avx512f"))) static void finish(const Geom *g, const float *buf, int oc0, int q0, float *y,
                                                      const float *bias, int relu)
{
    const size_t hw = (size_t)g->H * g->W;
    const __m512 zero = _mm512_setzero_ps();
    const int nr = g->OC - oc0 < 16 ? g->OC - oc0 : 16;
    if (g->rows16) { /* q = y*W + x: 16 pixels of one row, all inside or all past the last row */
        if ((size_t)q0 >= hw) return;
        for (int r = 0; r < nr; r++) {
            __m512 v = _mm512_load_ps(buf + r * 16);
            if (bias) v = _mm512_add_ps(v, _mm512_set1_ps(bias[oc0 + r]));
            if (relu) v = _mm512_max_ps(zero, v); /* MAXPS returns the second operand for NaN */
            _mm512_storeu_ps(y + (size_t)(oc0 + r) * hw + q0, v);
        }
        return;
    }
    /* q = y*Wp + x: runs of pixels inside the image, split at row ends */
    int seg_s[16], seg_len[16];
    size_t seg_pos[16];
    int nseg = 0;
    for (int s = 0; s < 16;) {
        const int q = q0 + s, yy = q / g->Wp, xx = q % g->Wp;
        if (yy >= g->H) break;
        const int len = 16 - s < g->Wp - xx ? 16 - s : g->Wp - xx;
        if (xx < g->W) {
            seg_s[nseg] = s;
            seg_len[nseg] = len < g->W - xx ? len : g->W - xx;
            seg_pos[nseg] = (size_t)yy * g->W + xx;
            nseg++;
        }
        s += len;
    }
    if (nseg == 0) return;
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int r = 0; r < nr; r++) {
        __m512 v = _mm512_load_ps(buf + r * 16);
        if (bias) v = _mm512_add_ps(v, _mm512_set1_ps(bias[oc0 + r]));
        if (relu) v = _mm512_max_ps(zero, v); /* MAXPS returns the second operand for NaN */
        float *yr = y + (size_t)(oc0 + r) * hw;
        for (int i = 0; i < nseg; i++) {
            const __m512 sh = _mm512_permutexvar_ps(_mm512_add_epi32(iota, _mm512_set1_epi32(seg_s[i])), v);
            _mm512_mask_storeu_ps(yr + seg_pos[i], (__mmask16)((1u << seg_len[i]) - 1u), sh);
        }
    }
}

/* ---- native: AMX-TILE, AMX-BF16 ---- */

static inline void native_config(const uint8_t *rows, const uint8_t *colsb)
{
    AmxTileCfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = rows[t];
        cfg.colsb[t] = colsb[t];
    }
    amx_tile_loadconfig(&cfg);
}

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")

/* VCVTNE2PS2BF16 then the two halves interleaved into words (lo low). */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static inline __m512i pair16_native(__m512 lo, __m512 hi)
{
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

#define KNAME(x) x##_native
#define TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))
#define PAIR16(lo, hi) pair16_native((lo), (hi))
#define TSTATE (void)0
#define TCONFIG(rows, colsb) native_config((rows), (colsb))
#define TZERO(i) _tile_zero(i)
#define TLOAD(i, p, stride) _tile_loadd(i, (p), (stride))
#define TDP(c, a, b) _tile_dpbf16ps(c, a, b)
#define TSTORE(i, p, stride) _tile_stored(i, (p), (stride))
#define TRELEASE() _tile_release()
#include "conv_amx_kernels.inc"

#pragma GCC pop_options

/* ---- emulated: the 8 tiles as memory, TDPBF16PS on AVX-512F ---- */

typedef struct EmuTiles {
    _Alignas(64) uint32_t d[8][16][16];
    uint8_t rows[8], colsb[8];
} EmuTiles;

static void emu_config(EmuTiles *e, const uint8_t *rows, const uint8_t *colsb)
{
    memcpy(e->rows, rows, 8);
    memcpy(e->colsb, colsb, 8);
    memset(e->d, 0, sizeof e->d);
}

static void emu_load(EmuTiles *e, int i, const void *p, size_t stride)
{
    for (int r = 0; r < e->rows[i]; r++) memcpy(e->d[i][r], (const char *)p + (size_t)r * stride, e->colsb[i]);
}

static void emu_store(const EmuTiles *e, int i, void *p, size_t stride)
{
    for (int r = 0; r < e->rows[i]; r++) memcpy((char *)p + (size_t)r * stride, e->d[i][r], e->colsb[i]);
}

/* v with the lanes whose float32 exponent is 0 (zero or subnormal) set to +0. */
__attribute__((target("avx512f"))) static inline __m512 daz(__m512 v)
{
    return _mm512_maskz_mov_ps(_mm512_test_epi32_mask(_mm512_castps_si512(v), _mm512_set1_epi32(0x7F800000)), v);
}

/* TDPBF16PS c += a x b (Intel SDM pseudocode order: per pair k, the even
 * product, then the odd one), each product exact in float32; subnormal
 * bfloat16 inputs as zero, subnormal results flushed to zero. */
__attribute__((target("avx512f"))) static void emu_dp(EmuTiles *e, int c, int a, int b)
{
    const int pairs = e->colsb[a] / 4;
    __m512 blo[16], bhi[16];
    for (int k = 0; k < pairs; k++) {
        const __m512i w = _mm512_load_si512(e->d[b][k]);
        blo[k] = daz(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        bhi[k] = daz(_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u))));
    }
    for (int m = 0; m < e->rows[c]; m++) {
        __m512 acc = _mm512_castsi512_ps(_mm512_load_si512(e->d[c][m]));
        const __m512i arow = _mm512_load_si512(e->d[a][m]);
        const __m512 alo = daz(_mm512_castsi512_ps(_mm512_slli_epi32(arow, 16)));
        const __m512 ahi = daz(_mm512_castsi512_ps(_mm512_and_si512(arow, _mm512_set1_epi32((int)0xFFFF0000u))));
        for (int k = 0; k < pairs; k++) {
            const __m512i ik = _mm512_set1_epi32(k);
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(ik, alo), blo[k], acc);
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(ik, ahi), bhi[k], acc);
        }
        _mm512_store_si512(e->d[c][m], _mm512_castps_si512(daz(acc)));
    }
}

#define KNAME(x) x##_emulated
#define TARGET __attribute__((target("avx512f,avx512bw")))
#define PAIR16(lo, hi) pair16_emulated((lo), (hi))
#define TSTATE                                                                                                        \
    EmuTiles emu_tiles_;                                                                                              \
    EmuTiles *const et = &emu_tiles_
#define TCONFIG(rows, colsb) emu_config(et, (rows), (colsb))
#define TZERO(i) memset(et->d[i], 0, sizeof et->d[i])
#define TLOAD(i, p, stride) emu_load(et, i, (p), (stride))
#define TDP(c, a, b) emu_dp(et, c, a, b)
#define TSTORE(i, p, stride) emu_store(et, i, (p), (stride))
#define TRELEASE() (void)et
#include "conv_amx_kernels.inc"

/* ---- availability ---- */

static int g_native_ok;
static pthread_once_t g_native_once = PTHREAD_ONCE_INIT;

/* Linux arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 when granted.
 * A raw system call (no <unistd.h> in kernels: tests/check_layers.py). */
static long request_tile_permission(void)
{
#ifdef __linux__
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(158L /* SYS_arch_prctl */), "D"(0x1023L), "S"(18L)
                     : "rcx", "r11", "memory");
    return ret;
#else
    return -1;
#endif
}

static void native_probe(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return; /* amx-bf16, amx-tile */
    if (!((b >> 16) & 1) || !((b >> 30) & 1)) return; /* avx512f, avx512bw */
    /* the OS must save the AVX-512 and tile state (XCR0 bits 5-7, 17-18) */
    __cpuid(1, a, b, c, d);
    if (!((c >> 27) & 1)) return; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE0u) != 0xE0u || (lo & 0x60000u) != 0x60000u) return;
    if (request_tile_permission() != 0) return;
    g_native_ok = 1;
}

int conv_amx_available(int impl)
{
    if (impl == CONV_AMX_NATIVE) {
        pthread_once(&g_native_once, native_probe);
        return g_native_ok;
    }
    if (impl == CONV_AMX_EMULATED) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }
    return 0;
}

void conv_amx_forward(float *y, const float *x, const uint16_t *wa, const float *bias, int N, int C, int OC, int K,
                      int H, int W, int relu, void *scratch, int nthreads, int impl)
{
    assert(conv_amx_available(impl));
    assert(N >= 1 && C >= 1 && OC >= 1 && H >= 1 && W >= 1 && K >= 1 && K <= CONV_AMX_MAX_K && K % 2 == 1);
    const Geom g = geom(C, OC, K, H, W);
    const size_t tb = thread_bytes(&g), pbytes = tb - 4096;
    int team = nthreads < 1 ? 1 : nthreads;
    if (team > N) team = N;
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id(), nt = team_size();
        char *mine = (char *)scratch + (size_t)tid * tb;
        uint32_t *P = (uint32_t *)mine;
        float *buf = (float *)(mine + pbytes);
        memset(P, 0, pbytes);
        const int n0 = (int)((int64_t)N * tid / nt), n1 = (int)((int64_t)N * (tid + 1) / nt);
        if (n1 > n0) {
            if (impl == CONV_AMX_NATIVE)
                run_native(&g, y, x, wa, bias, relu, P, buf, n0, n1);
            else
                run_emulated(&g, y, x, wa, bias, relu, P, buf, n0, n1);
        }
    }
}

#else /* no AMX build: never called (available() is 0) */

int conv_amx_available(int impl)
{
    (void)impl;
    return 0;
}

void conv_amx_forward(float *y, const float *x, const uint16_t *wa, const float *bias, int N, int C, int OC, int K,
                      int H, int W, int relu, void *scratch, int nthreads, int impl)
{
    (void)y; (void)x; (void)wa; (void)bias; (void)N; (void)C; (void)OC; (void)K; (void)H; (void)W;
    (void)relu; (void)scratch; (void)nthreads; (void)impl;
    assert(0 && "conv_amx_forward without AMX support in this build");
}

#endif
