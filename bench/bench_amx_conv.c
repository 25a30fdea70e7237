/*
 * bench_amx_conv.c - spike: a forward 3x3 convolution (stride 1, pad 1,
 * bias, optional ReLU) on AMX bf16 tiles (TDPBF16PS), timed against aesim's
 * float32 direct kernel and its VDPBF16PS kernel (conv2d.h) at the
 * imagenet64 training shapes.  Measurement only: nothing in src/ uses it.
 *
 * The AMX kernel (per image, OpenMP over the images of the batch):
 *   layout  the input as bf16 channel-PAIR planes with a 1-pixel zero border:
 *           P[Cp/2][H+2][W+2] 32-bit words, word = (channel 2j low half,
 *           channel 2j+1 high half), Cp = C rounded up to even (aesim's
 *           conv_bf16 pack_pairs layout plus the border).  That is exactly
 *           the VNNI layout of a TDPBF16PS B operand whose K is the channel
 *           and whose N is 16 consecutive pixels: a B tile for tap (dy, dx)
 *           and 16 output pixels (y, x0..x0+15) is a tileload of 16 rows of
 *           64 bytes at &P[j][y+dy][x0+dx], row stride = one pair plane
 *           (implicit GEMM by shifted rows: no im2col);
 *   A       the weights, [OC/16][tap][Cp/Kc][16 oc][Kc] bf16 (Kc = K per
 *           tile = min(Cp, 32) channels), packed per call;
 *   C       16 output channels x 16 pixels float32: rows are output
 *           channels, so a C tile is 16 NCHW row pieces: stored to a 1 KB
 *           buffer, bias + ReLU added, written to the NCHW output;
 *   blocking 4 C tiles kept across the whole K loop (9 taps x C chunks):
 *           OC = 16: 1 A x 4 pixel blocks; OC >= 32: 2 A (oc blocks) x 2 B
 *           (pixel blocks).
 * Variants timed (all 2 threads, batch 128, one call = the whole batch):
 *   fp32     conv2d_forward, CONV_KERNEL_DIRECT, float32 (aesim today)
 *   vdpbf16  conv2d_forward, CONV_KERNEL_DIRECT, bf16 = CONV_BF16_NATIVE
 *   amx      NCHW float32 in -> pair planes (per image, thread buffer) ->
 *            AMX -> NCHW float32 out; weights packed in the call
 *   amx-pre  input already in the pair-plane layout (whole batch, border
 *            included), output written as the next layer's pair planes
 *            (bf16, border kept zero): no layout conversion at all
 *   amx-core input pre-packed, C tiles stored to a per-thread 1 KB buffer
 *            only (compute + tile loads, no output traffic)
 *   amx-lib  the library kernel, conv_amx_forward (nn/conv_amx.h), NCHW
 *            float32 in and out, weights packed in the call (as amx)
 * Weight gradient (wgrad_bench, C = OC = 32 @32x32): dW[OC][C*9] +=
 *   dY[OC][HW] x im2col[C*9][HW]^T with M = OC (A = dY as plain bf16
 *   planes, 16 oc x 32 pixels), N = 16 input channels of one tap, K =
 *   pixels: B = the input as pixel-PAIR channels-last words
 *   X2[H+2][(W+2)/2][C] (two copies: pairs from even and from odd padded
 *   columns, for even and odd dx); 4 accumulators (2 oc x 2 c blocks) per
 *   tap, kept across one image.  Timed against conv2d_backward(dx = NULL)
 *   (weight + bias gradient) in fp32 and VDPBF16PS.
 * PyTorch's peer: bench/torch_conv_bf16.py (same shapes, autocast bf16,
 * channels_last).
 * Correctness: amx vs the float32 direct conv on the same inputs and
 * weights rounded to bf16 (bf16_round_array): max abs error and max abs
 * error / max |y|; amx-pre checked against amx after unpacking.
 * Timing: rounds of one call per variant (variants interleaved), after two
 * warm-up rounds; median and min of --runs rounds.
 * Usage: bench_amx_conv [--runs 7] [--n 128] [--threads 2] [--relu 1]
 * On a CPU (or a compiler) without AMX it prints
 * "AMX not available on this CPU; skipped" and exits 0.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "bench_common.h"
#include "base/timer.h"
#include "nn/bf16.h"
#include "nn/conv2d.h"
#include "nn/amx_tile.h"
#include "nn/conv_amx.h"
#include "nn/conv_direct_bf16.h"

#if AESIM_OMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define HAVE_AMX_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define HAVE_AMX_BUILD 0
#endif

void openblas_set_num_threads(int num_threads);

#define MAX_ROUNDS BENCH_MAX_RUNS
#define WARMUP_ROUNDS 2

typedef struct Shape { int C, OC, H, W; const char *name; } Shape;
static const Shape SHAPES[] = {
    {3, 16, 64, 64, "3->16 @64x64"},
    {16, 16, 64, 64, "16->16 @64x64"},
    {16, 32, 32, 32, "16->32 @32x32"},
    {32, 32, 32, 32, "32->32 @32x32"},
    {32, 32, 16, 16, "32->32 @16x16"},
};
#define NSHAPES ((int)(sizeof(SHAPES) / sizeof(SHAPES[0])))

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void *xalloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, (bytes + 63) / 64 * 64) != 0) { fprintf(stderr, "out of memory\n"); exit(1); }
    memset(p, 0, bytes);
    return p;
}

/* The float32 reference weight gradient of one image pair (dy, x) for
 * checking: dw[o][c][t] += sum_p dy[o][p] * x[c][p + off(t)]. */
static void ref_wgrad(double *dw, const float *dy, const float *x, int C, int OC, int H, int W)
{
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < 9; t++) {
                const int ddy = t / 3 - 1, ddx = t % 3 - 1;
                double s = 0;
                for (int y = 0; y < H; y++) {
                    const int yy = y + ddy;
                    if (yy < 0 || yy >= H) continue;
                    for (int xx = 0; xx < W; xx++) {
                        const int xs = xx + ddx;
                        if (xs < 0 || xs >= W) continue;
                        s += (double)dy[((size_t)o * H + y) * W + xx] * x[((size_t)c * H + yy) * W + xs];
                    }
                }
                dw[((size_t)o * C + c) * 9 + t] += s;
            }
}

#if HAVE_AMX_BUILD

static int amx_available(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return 0;   /* amx-bf16, amx-tile */
    if (!((b >> 16) & 1) || !((b >> 30) & 1)) return 0;   /* avx512f, avx512bw */
    __cpuid_count(7, 1, a, b, c, d);
    if (!((a >> 5) & 1)) return 0;                        /* avx512_bf16 */
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: the kernel grants the tile state. */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0;
    return 1;
}

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")

/* Geometry of one layer for the AMX kernel. */
typedef struct Amx {
    int C, OC, H, W, relu;
    int Cp, Kc, nch;      /* channels rounded up to even; K (channels) per tile; chunks */
    int Hp, Wp;           /* padded plane */
    size_t plane;         /* words per pair plane (Hp*Wp) */
    size_t img_words;     /* words per packed image (Cp/2 * plane) */
    uint16_t *wa;         /* packed A: [OC/16][9][nch][16][Kc] bf16 */
    const float *bias;
} Amx;

static void amx_setup(Amx *a, int C, int OC, int H, int W, int relu, const float *bias)
{
    a->C = C; a->OC = OC; a->H = H; a->W = W; a->relu = relu; a->bias = bias;
    a->Cp = (C + 1) & ~1;
    a->Kc = a->Cp < 32 ? a->Cp : 32;
    a->nch = (a->Cp + a->Kc - 1) / a->Kc;
    a->Hp = H + 2; a->Wp = W + 2;
    a->plane = (size_t)a->Hp * a->Wp;
    a->img_words = (size_t)(a->Cp / 2) * a->plane;
    a->wa = xalloc((size_t)(OC / 16) * 9 * a->nch * 16 * a->Kc * sizeof(uint16_t));
}

static inline uint16_t bf16_bits(float v)
{
    return (uint16_t)(_mm_cvtsi128_si32((__m128i)_mm_cvtneps_pbh(_mm_set1_ps(v))) & 0xffff);
}

/* w[OC][C][3][3] float32 -> A tiles (rounded to bf16, zero padding). */
static void amx_pack_weights(const Amx *a, const float *w)
{
    const int Kc = a->Kc;
    for (int ob = 0; ob < a->OC / 16; ob++)
        for (int t = 0; t < 9; t++)
            for (int ch = 0; ch < a->nch; ch++) {
                uint16_t *dst = a->wa + (((size_t)ob * 9 + t) * a->nch + ch) * 16 * Kc;
                for (int r = 0; r < 16; r++)
                    for (int k = 0; k < Kc; k++) {
                        const int c = ch * Kc + k, o = ob * 16 + r;
                        dst[r * Kc + k] = c < a->C ? bf16_bits(w[((size_t)o * a->C + c) * 9 + t]) : 0;
                    }
            }
}

/* Interleaves the 16 bf16 of lo and of hi into 16 words (lo low half). */
static inline __m512i pair16(__m512 lo, __m512 hi)
{
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    /* cvtne2ps(b, a): elements 0..15 from a, 16..31 from b */
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* One image x[C][H][W] float32 -> pair planes P (interior only: the border
 * is zero from the allocation and never written).  W % 16 == 0. */
static void amx_pack_input(const Amx *a, uint32_t *P, const float *x)
{
    const size_t hw = (size_t)a->H * a->W;
    for (int j = 0; j < a->Cp / 2; j++) {
        const float *x0 = x + (size_t)(2 * j) * hw;
        const float *x1 = 2 * j + 1 < a->C ? x0 + hw : NULL;
        uint32_t *pj = P + (size_t)j * a->plane;
        for (int y = 0; y < a->H; y++)
            for (int xx = 0; xx < a->W; xx += 16) {
                const size_t s = (size_t)y * a->W + xx;
                __m512 lo = _mm512_loadu_ps(x0 + s);
                __m512 hi = x1 ? _mm512_loadu_ps(x1 + s) : _mm512_setzero_ps();
                _mm512_storeu_si512(pj + (size_t)(y + 1) * a->Wp + xx + 1, pair16(lo, hi));
            }
    }
}

enum { OUT_NCHW = 0, OUT_PAIRS = 1, OUT_NONE = 2 };

/* A finished 16 oc x 16 pixel tile buf (float32) of output channels
 * oc0..oc0+15 at pixels (y, x0..x0+15): + bias, ReLU, to the output. */
static inline void amx_finish(const Amx *a, const float *buf, int oc0, int y, int x0, void *out, int mode)
{
    if (mode == OUT_NONE) return;
    const __m512 zero = _mm512_setzero_ps();
    if (mode == OUT_NCHW) {
        float *o = (float *)out + (size_t)oc0 * a->H * a->W + (size_t)y * a->W + x0;
        for (int r = 0; r < 16; r++) {
            __m512 v = _mm512_add_ps(_mm512_load_ps(buf + r * 16), _mm512_set1_ps(a->bias[oc0 + r]));
            if (a->relu) v = _mm512_max_ps(v, zero);
            _mm512_storeu_ps(o + (size_t)r * a->H * a->W, v);
        }
    } else { /* the next layer's pair planes, same H, W */
        uint32_t *o = (uint32_t *)out + (size_t)(oc0 / 2) * a->plane + (size_t)(y + 1) * a->Wp + x0 + 1;
        for (int r = 0; r < 16; r += 2) {
            __m512 v0 = _mm512_add_ps(_mm512_load_ps(buf + r * 16), _mm512_set1_ps(a->bias[oc0 + r]));
            __m512 v1 = _mm512_add_ps(_mm512_load_ps(buf + r * 16 + 16), _mm512_set1_ps(a->bias[oc0 + r + 1]));
            if (a->relu) { v0 = _mm512_max_ps(v0, zero); v1 = _mm512_max_ps(v1, zero); }
            _mm512_storeu_si512(o + (size_t)(r / 2) * a->plane, pair16(v0, v1));
        }
    }
}

static void amx_config(const Amx *a)
{
    AmxTileCfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 4; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }   /* C */
    if (a->OC == 16) {
        cfg.rows[4] = 16; cfg.colsb[4] = (uint16_t)(a->Kc * 2);            /* A */
        for (int t = 5; t < 8; t++) { cfg.rows[t] = (uint8_t)(a->Kc / 2); cfg.colsb[t] = 64; } /* B */
    } else {
        for (int t = 4; t < 6; t++) { cfg.rows[t] = 16; cfg.colsb[t] = (uint16_t)(a->Kc * 2); }
        for (int t = 6; t < 8; t++) { cfg.rows[t] = (uint8_t)(a->Kc / 2); cfg.colsb[t] = 64; }
    }
    amx_tile_loadconfig(&cfg);
}

/* The convolution of one packed image P into out (mode OUT_*).  buf: 4 KB,
 * 64-byte aligned.  Tiles configured by amx_config. */
static void amx_conv_image(const Amx *a, const uint32_t *P, void *out, int mode, float *buf)
{
    const int W = a->W, nblk = a->H * a->W / 16, Kc = a->Kc, nch = a->nch;
    const size_t bstride = a->plane * 4, astride = (size_t)Kc * 2;
    const size_t asz = (size_t)16 * Kc;  /* bf16 per A tile */
    if (a->OC == 16) {
        for (int b = 0; b < nblk; b += 4) {
            int yy[4], xx[4];
            for (int i = 0; i < 4; i++) { yy[i] = (b + i) * 16 / W; xx[i] = (b + i) * 16 % W; }
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int t = 0; t < 9; t++) {
                const int dy = t / 3, dx = t % 3;
                for (int ch = 0; ch < nch; ch++) {
                    const uint32_t *pb = P + (size_t)ch * (Kc / 2) * a->plane + (size_t)dy * a->Wp + dx;
                    _tile_loadd(4, a->wa + ((size_t)t * nch + ch) * asz, astride);
                    _tile_loadd(5, pb + (size_t)yy[0] * a->Wp + xx[0], bstride);
                    _tile_dpbf16ps(0, 4, 5);
                    _tile_loadd(6, pb + (size_t)yy[1] * a->Wp + xx[1], bstride);
                    _tile_dpbf16ps(1, 4, 6);
                    _tile_loadd(7, pb + (size_t)yy[2] * a->Wp + xx[2], bstride);
                    _tile_dpbf16ps(2, 4, 7);
                    _tile_loadd(5, pb + (size_t)yy[3] * a->Wp + xx[3], bstride);
                    _tile_dpbf16ps(3, 4, 5);
                }
            }
            _tile_stored(0, buf, 64); _tile_stored(1, buf + 256, 64);
            _tile_stored(2, buf + 512, 64); _tile_stored(3, buf + 768, 64);
            for (int i = 0; i < 4; i++) amx_finish(a, buf + 256 * i, 0, yy[i], xx[i], out, mode);
        }
    } else {
        for (int ob = 0; ob < a->OC / 16; ob += 2)
            for (int b = 0; b < nblk; b += 2) {
                const int y0 = b * 16 / W, x0 = b * 16 % W, y1 = (b + 1) * 16 / W, x1 = (b + 1) * 16 % W;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int t = 0; t < 9; t++) {
                    const int dy = t / 3, dx = t % 3;
                    for (int ch = 0; ch < nch; ch++) {
                        const uint32_t *pb = P + (size_t)ch * (Kc / 2) * a->plane + (size_t)dy * a->Wp + dx;
                        const uint16_t *wa0 = a->wa + (((size_t)ob * 9 + t) * nch + ch) * asz;
                        _tile_loadd(4, wa0, astride);
                        _tile_loadd(6, pb + (size_t)y0 * a->Wp + x0, bstride);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_loadd(7, pb + (size_t)y1 * a->Wp + x1, bstride);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_loadd(5, wa0 + (size_t)9 * nch * asz, astride);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, buf, 64); _tile_stored(1, buf + 256, 64);
                _tile_stored(2, buf + 512, 64); _tile_stored(3, buf + 768, 64);
                amx_finish(a, buf, ob * 16, y0, x0, out, mode);
                amx_finish(a, buf + 256, ob * 16, y1, x1, out, mode);
                amx_finish(a, buf + 512, ob * 16 + 16, y0, x0, out, mode);
                amx_finish(a, buf + 768, ob * 16 + 16, y1, x1, out, mode);
            }
    }
}

/* Per-thread buffers: a packed image (zero border) and the tile buffer. */
typedef struct AmxThread { uint32_t *P; float *buf; } AmxThread;

/* The calling OpenMP thread's buffers in th[]. */
static AmxThread *thread_buffers(AmxThread *th)
{
#if AESIM_OMP
    return &th[omp_get_thread_num()];
#else
    return &th[0];
#endif
}

/* (c) NCHW float32 x[N][C][H][W] -> y[N][OC][H][W], weights packed here. */
static void amx_forward_nchw(const Amx *a, float *y, const float *x, const float *w, int N, AmxThread *th)
{
    amx_pack_weights(a, w);
#pragma omp parallel
    {
        AmxThread *me = thread_buffers(th);
        amx_config(a);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            amx_pack_input(a, me->P, x + (size_t)n * a->C * a->H * a->W);
            amx_conv_image(a, me->P, y + (size_t)n * a->OC * a->H * a->W, OUT_NCHW, me->buf);
        }
        _tile_release();
    }
}

/* (d)/(e) pre-packed input pairs[N][img_words] -> out (pair planes of the
 * next layer, [N][OC/2][Hp][Wp], or nothing). */
static void amx_forward_pre(const Amx *a, void *out, const uint32_t *in, int N, int mode, AmxThread *th)
{
    const size_t out_words = (size_t)(a->OC / 2) * a->plane;
#pragma omp parallel
    {
        AmxThread *me = thread_buffers(th);
        amx_config(a);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++)
            amx_conv_image(a, in + (size_t)n * a->img_words,
                           mode == OUT_PAIRS ? (void *)((uint32_t *)out + (size_t)n * out_words) : NULL, mode,
                           me->buf);
        _tile_release();
    }
}

/* ---- weight gradient sketch: dW[OC][C*9] += dY[OC][HW] x im2col[C*9][HW]^T
 * M = OC (A = dY plain bf16 planes, 16 oc rows x 32 pixels, row stride one
 * plane), N = C per tap (16 channels), K = pixels (32 per tile).  B must be
 * VNNI: row r = pixel pair (2r, 2r+1) x 16 channels -> the input as
 * "pixel-pair channels-last" X2[H+2][(W+2)/2][C][2]; a tap shift by an odd
 * number of pixels breaks the pairs, so a second copy shifted by one pixel
 * (X2o) serves odd dx.  A pixel row is W pixels = W/32 K-tiles.  C tiles:
 * [OC/16] x [C/16] per tap, 9 taps: for OC = C = 32, 36 C tiles -> 9 passes
 * of 4 accumulators (or keep 4 across a whole image and loop taps outside).
 * Implemented below for C = OC = 32 (tile 2x2 = 2 oc blocks x 2 c blocks). */
typedef struct Wg {
    int C, OC, H, W, Wp2;       /* Wp2 = padded width rounded to even */
    size_t xrow;                /* words per padded X2 row: Wp2/2 * C */
} Wg;

/* x[C][H][W] float -> X2e (pairs start at even padded column) and X2o (odd),
 * words [Hp][Wp2/2][C]; border zero from allocation.  tmp: W + 34 uint16. */
static void wg_pack_x(const Wg *g, uint32_t *X2e, uint32_t *X2o, const float *x, uint16_t *tmp)
{
    const int H = g->H, W = g->W, C = g->C;
    const size_t hw = (size_t)H * W;
    memset(tmp, 0, (size_t)(W + 34) * 2);
    for (int y = 0; y < H; y++)
        for (int c = 0; c < C; c++) {
            const float *row = x + c * hw + (size_t)y * W;
            for (int q = 0; q < W; q += 32) /* tmp[1 + i] = bf16(row[i]): padded column i + 1 */
                _mm512_storeu_si512(tmp + 1 + q, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + q + 16),
                                                                             _mm512_loadu_ps(row + q)));
            uint32_t *de = X2e + (size_t)(y + 1) * g->xrow + c, *dd = X2o + (size_t)(y + 1) * g->xrow + c;
            for (int j = 0; j < (W + 2) / 2; j++) {
                uint32_t e, o;
                memcpy(&e, tmp + 2 * j, 4);
                memcpy(&o, tmp + 2 * j + 1, 4);
                de[(size_t)j * C] = e;
                dd[(size_t)j * C] = o;
            }
        }
}

/* dy[OC][H][W] float -> plain bf16 planes. */
static void wg_pack_dy(uint16_t *d, const float *dy, size_t n)
{
    for (size_t i = 0; i < n; i += 32) {
        __m512 a = _mm512_loadu_ps(dy + i), b = _mm512_loadu_ps(dy + i + 16);
        _mm512_storeu_si512(d + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
}

/* Accumulates one image into acc[9][OC/16][C/16][16][16] float (C = OC = 32,
 * W % 32 == 0).  Tiles: C 0..3 (oc blk x c blk), A 4,5, B 6,7; K = 32 pixels. */
static void wg_image(const Wg *g, float *acc, const uint16_t *dY, const uint32_t *X2e, const uint32_t *X2o)
{
    const int H = g->H, W = g->W, C = g->C;
    const size_t hw = (size_t)H * W;
    for (int t = 0; t < 9; t++) {
        const int dy = t / 3, dx = t % 3;
        /* output pixel x0 reads padded column x0 + dx: even pairs when dx even */
        const uint32_t *X = (dx & 1) ? X2o : X2e;
        float *at = acc + (size_t)t * 4 * 256;
        _tile_loadd(0, at, 64); _tile_loadd(1, at + 256, 64);
        _tile_loadd(2, at + 512, 64); _tile_loadd(3, at + 768, 64);
        for (int y = 0; y < H; y++)
            for (int x0 = 0; x0 < W; x0 += 32) {
                const uint16_t *a0 = dY + (size_t)y * W + x0;
                const uint32_t *b0 = X + (size_t)(y + dy) * g->xrow + (size_t)((x0 + dx) / 2) * C;
                _tile_loadd(4, a0, hw * 2);               /* oc 0..15 x 32 px */
                _tile_loadd(5, a0 + 16 * hw, hw * 2);     /* oc 16..31 */
                _tile_loadd(6, b0, (size_t)C * 4);        /* 16 px pairs x c 0..15 */
                _tile_loadd(7, b0 + 16, (size_t)C * 4);   /* c 16..31 */
                _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
            }
        _tile_stored(0, at, 64); _tile_stored(1, at + 256, 64);
        _tile_stored(2, at + 512, 64); _tile_stored(3, at + 768, 64);
    }
}

/* Times the AMX weight gradient of C = OC = 32 at HxW against aesim's
 * conv2d_backward with dx = NULL (weight + bias gradient only), fp32 and
 * VDPBF16PS; checks it against a double reference on the first images. */
static void wgrad_bench(int N, int T, int runs, int H, int W)
{
    const int C = 32, OC = 32;
    const size_t hw = (size_t)H * W, nx = (size_t)N * C * hw, ny = (size_t)N * OC * hw;
    float *x = xalloc(nx * 4), *dy = xalloc(ny * 4);
    for (size_t i = 0; i < nx; i++) x[i] = frand();
    for (size_t i = 0; i < ny; i++) dy[i] = frand();
    bf16_round_array(x, x, nx);
    bf16_round_array(dy, dy, ny);
    float *w = xalloc((size_t)OC * C * 9 * 4), *b = xalloc(OC * 4), *dw = xalloc((size_t)OC * C * 9 * 4),
          *db = xalloc(OC * 4);
    Conv2d l32 = {.C = C, .OC = OC, .K = 3, .w = w, .b = b, .dw = dw, .db = db, .kernel = CONV_KERNEL_DIRECT};
    Conv2d lvd = l32;
    lvd.bf16 = CONV_BF16_NATIVE;
    const int have_vdp = conv_bf16_available(CONV_BF16_NATIVE);
    float *scratch = xalloc(conv2d_scratch_floats(&lvd, H, W, T) * 4 + 4096);
    Wg g = {.C = C, .OC = OC, .H = H, .W = W, .Wp2 = (W + 2 + 1) & ~1};
    g.xrow = (size_t)(g.Wp2 / 2) * C;
    const size_t xw = (size_t)(H + 2) * g.xrow;
    /* per thread: X2e, X2o, dY16, acc, tmp; and a pre-packed batch */
    uint32_t *X2e[64], *X2o[64];
    uint16_t *d16[64], *tmp[64];
    float *acc[64];
    for (int t = 0; t < T; t++) {
        X2e[t] = xalloc(xw * 4 + 256); X2o[t] = xalloc(xw * 4 + 256);
        d16[t] = xalloc((size_t)OC * hw * 2 + 256); tmp[t] = xalloc((size_t)(W + 64) * 2);
        acc[t] = xalloc(9 * 1024 * 4);
    }
    uint32_t *pe = xalloc((size_t)N * xw * 4), *po = xalloc((size_t)N * xw * 4);
    uint16_t *pd = xalloc((size_t)N * OC * hw * 2);
    for (int n = 0; n < N; n++) {
        wg_pack_x(&g, pe + n * xw, po + n * xw, x + n * C * hw, tmp[0]);
        wg_pack_dy(pd + n * OC * hw, dy + n * OC * hw, OC * hw);
    }
    double sec[4][MAX_ROUNDS];
    double maxerr = 0, maxref = 0;
    for (int r = -WARMUP_ROUNDS - 1; r < runs; r++)
        for (int v = 0; v < 4; v++) {
            if (v == 1 && !have_vdp) continue;
            const int nn = r == -WARMUP_ROUNDS - 1 ? 4 : N; /* first round: the check on 4 images */
            if (r == -WARMUP_ROUNDS - 1 && v < 2) continue;
            double t0 = timer_now();
            if (v == 0) conv2d_backward(NULL, dy, x, &l32, N, H, W, scratch, T);
            else if (v == 1) conv2d_backward(NULL, dy, x, &lvd, N, H, W, scratch, T);
            else {
#pragma omp parallel
                {
#if AESIM_OMP
                    const int me = omp_get_thread_num();
#else
                    const int me = 0;
#endif
                    AmxTileCfg cfg;
                    memset(&cfg, 0, sizeof cfg);
                    cfg.palette = 1;
                    for (int k = 0; k < 8; k++) { cfg.rows[k] = 16; cfg.colsb[k] = 64; }
                    amx_tile_loadconfig(&cfg);
                    memset(acc[me], 0, 9 * 1024 * 4);
#pragma omp for schedule(static)
                    for (int n = 0; n < nn; n++) {
                        if (v == 2) {
                            wg_pack_x(&g, X2e[me], X2o[me], x + n * C * hw, tmp[me]);
                            wg_pack_dy(d16[me], dy + n * OC * hw, OC * hw);
                            wg_image(&g, acc[me], d16[me], X2e[me], X2o[me]);
                        } else {
                            wg_image(&g, acc[me], pd + n * OC * hw, pe + n * xw, po + n * xw);
                        }
                    }
                    _tile_release();
                }
                /* reduce the thread partials into dw[OC][C][9] */
                for (int o = 0; o < OC; o++)
                    for (int c = 0; c < C; c++)
                        for (int k = 0; k < 9; k++) {
                            float s = 0;
                            for (int t = 0; t < T; t++)
                                s += acc[t][(size_t)k * 1024 + ((o / 16) * 2 + c / 16) * 256 + (o % 16) * 16 + c % 16];
                            dw[((size_t)o * C + c) * 9 + k] += s;
                        }
            }
            const double dt = timer_now() - t0;
            if (r == -WARMUP_ROUNDS - 1) {
                if (v != 2) continue;
                double *ref = calloc((size_t)OC * C * 9, sizeof(double));
                for (int n = 0; n < nn; n++) ref_wgrad(ref, dy + n * OC * hw, x + n * C * hw, C, OC, H, W);
                for (size_t i = 0; i < (size_t)OC * C * 9; i++) {
                    maxerr = fmax(maxerr, fabs(dw[i] - ref[i]));
                    maxref = fmax(maxref, fabs(ref[i]));
                }
                free(ref);
                memset(dw, 0, (size_t)OC * C * 9 * 4);
                continue;
            }
            if (r >= 0) sec[v][r] = dt;
        }
    printf("# wgrad 32->32 @%dx%d check (4 images): amx vs double reference max abs err %.3g, max |dw| %.3g, rel %.3g\n",
           H, W, maxerr, maxref, maxerr / maxref);
    static const char *names[4] = {"fp32 (dW+db)", "vdpbf16 (dW+db)", "amx (+pack)", "amx-pre"};
    const double flop = 2.0 * N * OC * C * 9.0 * hw;
    for (int v = 0; v < 4; v++) {
        if (v == 1 && !have_vdp) continue;
        const double med = bench_median(sec[v], runs);
        printf("wgrad 32->32@%-3d %-16s %9.3f ms %9.4f ms/img %10.1f GFLOP/s\n", H, names[v], med * 1e3,
               med * 1e3 / N, flop / med * 1e-9);
        char wl[96];
        snprintf(wl, sizeof wl, "conv3x3 wgrad 32->32 @%dx%d B=%d", H, W, N);
        bench_print_result(stdout, wl, "aesim", names[v], sec[v], runs, N, flop / N, 0, NULL);
    }
    for (int t = 0; t < T; t++) { free(X2e[t]); free(X2o[t]); free(d16[t]); free(tmp[t]); free(acc[t]); }
    free(pe); free(po); free(pd); free(x); free(dy); free(w); free(b); free(dw); free(db); free(scratch);
}

#pragma GCC pop_options

#endif /* HAVE_AMX_BUILD */

int main(int argc, char **argv)
{
    const int runs = (int)bench_opt_int(argc, argv, "--runs", 7, 1);
    const int N = (int)bench_opt_int(argc, argv, "--n", 128, 1);
    const int T = (int)bench_opt_int(argc, argv, "--threads", 2, 1);
    const int relu = (int)bench_opt_int(argc, argv, "--relu", 1, 0) != 0;
    if (runs > MAX_ROUNDS) { fprintf(stderr, "bench_amx_conv: --runs 1..%d\n", MAX_ROUNDS); return 2; }
#if !HAVE_AMX_BUILD
    (void)N; (void)T; (void)relu; (void)ref_wgrad; (void)frand; (void)xalloc; (void)SHAPES;
    printf("AMX not available on this CPU; skipped (built without AMX support: needs gcc >= 11 on x86-64)\n");
    return 0;
#else
    if (!amx_available()) {
        (void)ref_wgrad;
        printf("AMX not available on this CPU; skipped\n");
        return 0;
    }
    const int have_vdp = conv_bf16_available(CONV_BF16_NATIVE);
#if AESIM_OMP
    omp_set_num_threads(T);
#endif
    openblas_set_num_threads(1);
    printf("# bench_amx_conv: N=%d threads=%d relu=%d runs=%d (median, min of rounds; variants interleaved)\n", N, T,
           relu, runs);
    printf("%-15s %-9s %9s %9s %9s %10s\n", "shape", "variant", "ms", "min ms", "ms/img", "GFLOP/s");

    for (int si = 0; si < NSHAPES; si++) {
        const Shape *s = &SHAPES[si];
        const int C = s->C, OC = s->OC, H = s->H, W = s->W;
        const size_t nin = (size_t)N * C * H * W, nout = (size_t)N * OC * H * W;
        float *x = xalloc(nin * 4), *y32 = xalloc(nout * 4), *yvd = xalloc(nout * 4), *yam = xalloc(nout * 4);
        float *w = xalloc((size_t)OC * C * 9 * 4), *b = xalloc((size_t)OC * 4);
        for (size_t i = 0; i < nin; i++) x[i] = frand();
        const float ws = 1.0f / sqrtf((float)C * 9);
        for (size_t i = 0; i < (size_t)OC * C * 9; i++) w[i] = frand() * ws;
        for (int i = 0; i < OC; i++) b[i] = frand() * 0.1f;
        /* pre-round to bf16: the float32 conv is then the exact-product reference */
        bf16_round_array(x, x, nin);
        bf16_round_array(w, w, (size_t)OC * C * 9);

        Conv2d l32 = {.C = C, .OC = OC, .K = 3, .w = w, .b = b, .kernel = CONV_KERNEL_DIRECT,
                      .fuse = relu ? CONV_FUSE_RELU : 0u, .bf16 = CONV_BF16_OFF};
        Conv2d lvd = l32;
        lvd.bf16 = CONV_BF16_NATIVE;
        float *scratch = xalloc(conv2d_scratch_floats(&lvd, H, W, T) * 4 + 4096);

        Amx a;
        amx_setup(&a, C, OC, H, W, relu, b);
        AmxThread th[64];
        if (T > 64) { fprintf(stderr, "bench_amx_conv: --threads 1..64\n"); exit(2); }
        for (int t = 0; t < T; t++) {
            th[t].P = xalloc(a.img_words * 4 + 256);
            th[t].buf = xalloc(4096);
        }
        /* pre-packed batch and next-layer output planes */
        uint32_t *pre = xalloc((size_t)N * a.img_words * 4 + 256);
        amx_pack_weights(&a, w);
        for (int n = 0; n < N; n++) amx_pack_input(&a, pre + (size_t)n * a.img_words, x + (size_t)n * C * H * W);
        const size_t out_words = (size_t)(OC / 2) * a.plane;
        uint32_t *outp = xalloc((size_t)N * out_words * 4 + 256);
        float *ylib = xalloc(nout * 4);
        uint16_t *walib = xalloc(conv_amx_weight_bytes(C, OC, 3));
        void *slib = xalloc(conv_amx_scratch_bytes(C, 3, H, W, T));
        const int have_lib = conv_amx_available(CONV_AMX_NATIVE);

        /* correctness */
        conv2d_forward(y32, x, &l32, N, H, W, scratch, T);
        amx_forward_nchw(&a, yam, x, w, N, th);
        double maxabs = 0, maxy = 0, maxvd = 0;
        for (size_t i = 0; i < nout; i++) {
            maxabs = fmax(maxabs, fabs((double)yam[i] - y32[i]));
            maxy = fmax(maxy, fabs((double)y32[i]));
        }
        double maxlib = 0;
        if (have_lib) {
            conv_amx_pack_weights(walib, w, C, OC, 3);
            conv_amx_forward(ylib, x, walib, b, N, C, OC, 3, H, W, relu, slib, T, CONV_AMX_NATIVE);
            for (size_t i = 0; i < nout; i++) maxlib = fmax(maxlib, fabs((double)ylib[i] - y32[i]));
        }
        if (have_vdp) {
            conv2d_forward(yvd, x, &lvd, N, H, W, scratch, T);
            for (size_t i = 0; i < nout; i++) maxvd = fmax(maxvd, fabs((double)yvd[i] - y32[i]));
        }
        amx_forward_pre(&a, outp, pre, N, OUT_PAIRS, th);
        double maxpre = 0;
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                for (int yy = 0; yy < H; yy++)
                    for (int xx = 0; xx < W; xx++) {
                        const uint32_t wd = outp[(size_t)n * out_words + (size_t)(o / 2) * a.plane +
                                                 (size_t)(yy + 1) * a.Wp + xx + 1];
                        const uint32_t bits = (o & 1) ? (wd & 0xffff0000u) : (wd << 16);
                        float v;
                        memcpy(&v, &bits, 4);
                        const float ref = bf16_round(yam[(((size_t)n * OC + o) * H + yy) * W + xx]);
                        maxpre = fmax(maxpre, fabs((double)v - ref));
                    }
        printf("# %s check: amx vs fp32 (bf16-rounded x, w): max abs err %.3g, max |y| %.3g, rel %.3g; "
               "vdpbf16 vs fp32 max abs %.3g; amx-pre (bf16 out) vs bf16(amx) max abs %.3g; amx-lib vs fp32 max abs %.3g\n",
               s->name, maxabs, maxy, maxabs / maxy, maxvd, maxpre, maxlib);

        enum { V_FP32, V_VDP, V_AMX, V_PRE, V_CORE, V_LIB, NV };
        static const char *vname[NV] = {"fp32", "vdpbf16", "amx", "amx-pre", "amx-core", "amx-lib"};
        double t[NV][MAX_ROUNDS];
        for (int r = -WARMUP_ROUNDS; r < runs; r++)
            for (int v = 0; v < NV; v++) {
                if ((v == V_VDP && !have_vdp) || (v == V_LIB && !have_lib)) continue;
                const double t0 = timer_now();
                switch (v) {
                case V_FP32: conv2d_forward(y32, x, &l32, N, H, W, scratch, T); break;
                case V_VDP: conv2d_forward(yvd, x, &lvd, N, H, W, scratch, T); break;
                case V_AMX: amx_forward_nchw(&a, yam, x, w, N, th); break;
                case V_PRE: amx_forward_pre(&a, outp, pre, N, OUT_PAIRS, th); break;
                case V_CORE: amx_forward_pre(&a, NULL, pre, N, OUT_NONE, th); break;
                case V_LIB:
                    conv_amx_pack_weights(walib, w, C, OC, 3);
                    conv_amx_forward(ylib, x, walib, b, N, C, OC, 3, H, W, relu, slib, T, CONV_AMX_NATIVE);
                    break;
                }
                if (r >= 0) t[v][r] = timer_now() - t0;
            }
        const double flop = 2.0 * N * OC * C * 9.0 * H * W;
        for (int v = 0; v < NV; v++) {
            if ((v == V_VDP && !have_vdp) || (v == V_LIB && !have_lib)) continue;
            double mn = t[v][0];
            for (int r = 1; r < runs; r++) mn = fmin(mn, t[v][r]);
            const double med = bench_median(t[v], runs);
            printf("%-15s %-9s %9.3f %9.3f %9.4f %10.1f\n", s->name, vname[v], med * 1e3, mn * 1e3, med * 1e3 / N,
                   flop / med * 1e-9);
            char wl[96];
            snprintf(wl, sizeof wl, "conv3x3 fwd %s B=%d", s->name, N);
            bench_print_result(stdout, wl, "aesim", vname[v], t[v], runs, N, flop / N, 0, NULL);
        }
        free(x); free(y32); free(yvd); free(yam); free(w); free(b); free(scratch); free(a.wa);
        free(pre); free(outp); free(ylib); free(walib); free(slib);
        for (int tt = 0; tt < T && tt < 64; tt++) { free(th[tt].P); free(th[tt].buf); }
    }
    if (T <= 64) wgrad_bench(N, T, runs, 32, 32);
    return 0;
#endif
}
