/*
 * conv_direct.c - direct KxK convolution kernels on AVX-512 (design, math and
 * threading: conv_direct.h).
 *
 * Register tiles (zmm = 16 floats, 32 registers):
 *   forward / input gradient: R_MAX = 3 pixel vectors x CO_MAX = 8 output
 *     channels of accumulators (24), fed per (tap, input channel) by 3
 *     masked loads and 8 weight broadcasts: 24 FMAs per 11 loads.  Measured
 *     on one core (128 x 16->16 at 64x64): 3x8 122 GFLOP/s, 2x8 120, 4x6
 *     111, 6x4 100, 4x4 95 (fewer lane masks to keep in k registers wins);
 *     loads are masked only for the vectors with a lane outside the
 *     image, chosen per tap among 8 loop variants (+10% over all-masked,
 *     +7% over all-or-nothing per tap: 146 GFLOP/s); row-aligned
 *     2x8 tiles with masks only on a row's edge vectors were slower (130
 *     vs 138 at 64x64, equal at 32x32: fewer accumulators), so not used;
 *   weight gradient: WG_CO = 4 output channels x WG_CI = 6 input channels
 *     of accumulators (24) for one tap, fed per pixel vector by 4 loads of g
 *     and 6 masked loads of x; groups of WG_GROUP = 64 vectors (8 and 16
 *     were slower, 32..256 about equal).
 * Tail tiles (fewer vectors or channels) are the same code instantiated
 * with smaller constants.
 *
 * Does not: strides, dilation, groups, even K (conv2d.h); it does not
 * check shapes beyond asserts (conv2d.c does).
 */
#include "nn/conv_direct.h"

#include "nn/conv_direct_bf16.h"
#include "nn/maxpool.h"
#include "base/team.h"
#include "nn/upsample.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_DIRECT 1
#include <immintrin.h>
#else
#define HAVE_DIRECT 0
#endif

/* Floats per zmm vector = pixels per lane mask. */
#define LANES 16
/* Forward tile: pixel vectors x output channels (24 accumulators). */
#ifndef R_MAX
#define R_MAX 8
#endif
/* Pixel vectors per forward tile by output channels in the block: 3 x 8
 * (measured best for 8-channel blocks), 6 x 3..4, 8 x 1..2. */
#define TILE_R_WIDE 3
#define TILE_R_MID 6
#define TILE_R_NARROW 8
#ifndef CO_MAX
#define CO_MAX 8
#endif
/* Weight-gradient tile: output x input channels (24 accumulators). */
#define WG_CO 4
#define WG_CI 6
/* Pixel vectors per weight-gradient group: the accumulators are flushed to
 * the thread's partial after this many vectors (about one 64x64 plane), which
 * also bounds how many terms one lane sums in float. */
#ifndef WG_GROUP
#define WG_GROUP 64
#endif
/* Cache line in floats: scratch slices start on their own line. */
#define LINE_FLOATS 16

static size_t round_line(size_t n)
{
    return (n + LINE_FLOATS - 1) / LINE_FLOATS * LINE_FLOATS;
}

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

/* Scratch layout (floats), in this order:
 *   wf   forward weights   [ceil(OC/CO_MAX)][K*K][C][CO_MAX]
 *   wb   input-grad weights [ceil(C/CO_MAX)][K*K][OC][CO_MAX] (flipped, transposed)
 *   mask uint16 [vectors per plane][K*K]
 *   per thread: dw partial [K*K][OC][C][LANES] floats, then db partial [OC] doubles
 *     (backward), then at `image` a chunk of images (bwd_chunk_images) of
 *     the fused paths: [OC][H][W] each with max-pooling (conv output not
 *     kept, or the gradient before the pool), [2][C][H][W] with upsampling
 *     (the upsampled input and its gradient) */
/* Bytes of g and x that one chunk of the backward passes covers: chunks
 * stay in L2 between the weight-gradient and the input-gradient pass (one
 * 16-channel 64x64 image in and out is 512 KiB). */
#ifndef BWD_CHUNK_BYTES
#define BWD_CHUNK_BYTES (512 * 1024)
#endif

/* Images per chunk of the passes fused with pooling or upsampling: about
 * BWD_CHUNK_BYTES of x and g, at least one (small images: several, so that
 * the weight-gradient groups stay long). */
static int bwd_chunk_images(const Conv2d *l, int H, int W)
{
    const size_t image_bytes = ((size_t)l->C + l->OC) * H * W * sizeof(float);
    const size_t k = BWD_CHUNK_BYTES / image_bytes;
    return k < 1 ? 1 : (int)k;
}

typedef struct Layout {
    size_t wf, wb, mask, thread0, per_thread, dw_part, image;
    /* bf16 kernels (l->bf16; 0 sizes otherwise): packed weights of both
     * passes and the 32-pixel lane masks (shared), and per thread after the
     * image area the chunk's channel pairs, then its plain bfloat16 x and g */
    size_t wf2, wb2, mask32, pairs, plain_x, plain_g;
} Layout;

/* Floats holding `bytes`, rounded up to a cache line. */
static size_t line_floats(size_t bytes)
{
    return round_line((bytes + sizeof(float) - 1) / sizeof(float));
}

/* Extra floats past a bf16 operand buffer: its vector loads may run up to
 * one 64-byte vector past the last element (masked), kept inside scratch. */
#define BF16_TAIL_FLOATS 32

static Layout layout(const Conv2d *l, int H, int W)
{
    const size_t kk = (size_t)l->K * l->K, hw = (size_t)H * W;
    const size_t nv = (hw + LANES - 1) / LANES;
    const size_t chunk = (size_t)bwd_chunk_images(l, H, W);
    Layout z;
    z.wf = 0;
    z.wb = z.wf + round_line((size_t)ceil_div(l->OC, CO_MAX) * kk * l->C * CO_MAX);
    z.mask = z.wb + round_line((size_t)ceil_div(l->C, CO_MAX) * kk * l->OC * CO_MAX);
    z.wf2 = z.mask + line_floats(nv * kk * sizeof(uint16_t));
    /* sized whenever the CPU could run them, so that the scratch a model
     * allocates before choosing its precision serves both */
    const int bf = l->bf16 != 0 || conv_bf16_available(CONV_BF16_NATIVE);
    z.wb2 = z.wf2 + (bf ? line_floats(conv_bf16_weight_words(l->C, l->OC, (int)kk) * sizeof(uint32_t)) : 0);
    z.mask32 = z.wb2 + (bf ? line_floats(conv_bf16_weight_words(l->OC, l->C, (int)kk) * sizeof(uint32_t)) : 0);
    z.thread0 = z.mask32 + (bf ? line_floats(conv_bf16_mask_words(l->K, H, W) * sizeof(uint32_t)) : 0);
    z.dw_part = kk * l->OC * l->C * LANES;
    z.image = round_line(z.dw_part + 2 * (size_t)l->OC); /* + OC doubles */
    /* a chunk of images: OC planes (pooled variants) or 2 x C (upsampled) */
    const size_t planes = (size_t)(l->OC > 2 * l->C ? l->OC : 2 * l->C);
    z.pairs = z.image + round_line(chunk * planes * hw);
    const size_t pair_planes = (size_t)ceil_div(l->C > l->OC ? l->C : l->OC, 2);
    z.plain_x = z.pairs + (bf ? line_floats(chunk * pair_planes * hw * sizeof(uint32_t)) + BF16_TAIL_FLOATS : 0);
    z.plain_g = z.plain_x + (bf ? line_floats(chunk * l->C * hw * sizeof(uint16_t)) + BF16_TAIL_FLOATS : 0);
    z.per_thread = z.plain_g + (bf ? line_floats(chunk * l->OC * hw * sizeof(uint16_t)) + BF16_TAIL_FLOATS : 0);
    return z;
}

size_t conv_direct_scratch_floats(const Conv2d *l, int H, int W, int nthreads)
{
    Layout z = layout(l, H, W);
    return z.thread0 + (size_t)nthreads * z.per_thread;
}

#if HAVE_DIRECT

#define TARGET __attribute__((target("avx512f")))
#define INLINE_TARGET static inline __attribute__((always_inline, target("avx512f")))

int conv_direct_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

/* Lane masks: bit l of mask[v*KK + t] is set when pixel p = 16 v + l exists
 * (p < H*W) and its tap-t neighbour (h + ky - K/2, w + kx - K/2) is inside the
 * image.  The centre tap's mask is therefore "pixel exists". */
static void build_masks(uint16_t *mask, int K, int H, int W)
{
    const int kk = K * K, pad = K / 2, hw = H * W, nv = ceil_div(hw, LANES);
    memset(mask, 0, sizeof(uint16_t) * (size_t)nv * kk);
    /* walk the pixels with a running (h, w): no division per lane */
    int h = 0, w = 0;
    for (int p = 0; p < hw; p++) {
        uint16_t *mv = mask + (size_t)(p / LANES) * kk;
        const uint16_t bit = (uint16_t)(1u << (p % LANES));
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

/* Packs w[OC][C][KK] into wf[OC/CO_MAX][KK][C][CO_MAX] for the forward
 * pass; tail blocks are zero-padded. */
static void pack_forward(float *wf, const float *w, int C, int OC, int kk)
{
    memset(wf, 0, sizeof(float) * (size_t)ceil_div(OC, CO_MAX) * kk * C * CO_MAX);
    for (int oc = 0; oc < OC; oc++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < kk; t++)
                wf[(((size_t)(oc / CO_MAX) * kk + t) * C + c) * CO_MAX + oc % CO_MAX] = w[((size_t)oc * C + c) * kk + t];
}

/* Packs w into wb[C/CO_MAX][KK][OC][CO_MAX] = w[oc][c][KK-1-t], the flipped,
 * transposed kernel of the input gradient; tail blocks are zero-padded. */
static void pack_input_grad(float *wb, const float *w, int C, int OC, int kk)
{
    memset(wb, 0, sizeof(float) * (size_t)ceil_div(C, CO_MAX) * kk * OC * CO_MAX);
    for (int oc = 0; oc < OC; oc++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < kk; t++)
                wb[(((size_t)(c / CO_MAX) * kk + (kk - 1 - t)) * OC + oc) * CO_MAX + c % CO_MAX] =
                    w[((size_t)oc * C + c) * kk + t];
}

/* Tiles of at most this many vectors pick masked or plain loads per vector
 * (8 loop variants); taller tiles mask all their vectors or none. */
#ifndef FWD_PER_VECTOR_MASK_R
#define FWD_PER_VECTOR_MASK_R 3
#endif

/* The (input channel) loop of tile_forward for one tap: vector r loads with
 * its lane mask m[r] when bit r of MB is set, plainly otherwise. */
#define FWD_CI_LOOP(MB)                                                                               \
    for (int c = 0; c < CI; c++, p += hw, wtt += CO_MAX) {                                            \
        __m512 xv[R_MAX];                                                                             \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) xv[r] =                                   \
            (((MB) >> r) & 1u) ? _mm512_maskz_loadu_ps(m[r], p + r * LANES) : _mm512_loadu_ps(p + r * LANES); \
        _Pragma("GCC unroll 8") for (int o = 0; o < CO; o++) {                                        \
            const __m512 wv = _mm512_set1_ps(wtt[o]);                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) acc[r][o] = _mm512_fmadd_ps(xv[r], wv, acc[r][o]); \
        }                                                                                             \
    }

/* One forward tile: R consecutive pixel vectors of one image (vector r at
 * in + 16 r for input plane 0, lane masks mrow + r*KK) x CO output channels.
 * in: CI input planes at stride hw; wt: [KK][CI][CO_MAX] packed weights of
 * this channel block; bias: CO values or NULL; out: CO planes at stride hw,
 * same pixel offset as in.  mode CONV_OUT_MASK_BY_X: out = acc where xm (CO
 * planes, same offsets as out) > 0, else 0. */
INLINE_TARGET void tile_forward(const int R, const int CO, float *out, const float *in, const uint16_t *mrow,
                                const float *wt, const float *bias, const float *xm, const int *off, int CI,
                                int kk, size_t hw, int mode)
{
    __m512 acc[R_MAX][CO_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int o = 0; o < CO; o++) acc[r][o] = bias ? _mm512_set1_ps(bias[o]) : _mm512_setzero_ps();
    for (int t = 0; t < kk; t++) {
        __mmask16 m[R_MAX];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) m[r] = (__mmask16)mrow[r * kk + t];
        /* bit r set: vector r has a lane outside the image and needs its mask */
        unsigned need = 0;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) need |= (m[r] != 0xFFFF) ? 1u << r : 0u;
        const float *p = in + off[t];
        const float *wtt = wt + (size_t)t * CI * CO_MAX;
        if (R <= FWD_PER_VECTOR_MASK_R) {
            /* masked loads only for the vectors that need them (masked loads
             * cost ~15% of the FMA throughput here, measured) */
            switch (need) {
            case 0: FWD_CI_LOOP(0u); break;
            case 1: FWD_CI_LOOP(1u); break;
            case 2: FWD_CI_LOOP(2u); break;
            case 3: FWD_CI_LOOP(3u); break;
            case 4: FWD_CI_LOOP(4u); break;
            case 5: FWD_CI_LOOP(5u); break;
            case 6: FWD_CI_LOOP(6u); break;
            default: FWD_CI_LOOP(7u); break;
            }
        } else if (need == 0) {
            FWD_CI_LOOP(0u);
        } else {
            FWD_CI_LOOP(0xFFu);
        }
    }
    const int centre = kk / 2;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        const __mmask16 valid = (__mmask16)mrow[r * kk + centre];
#pragma GCC unroll 8
        for (int o = 0; o < CO; o++) {
            __m512 v = acc[r][o];
            if (mode == CONV_OUT_RELU) {
                /* torch.relu: keep v when v > 0 or NaN (not <=), else +0 */
                v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NLE_UQ), v);
            } else if (mode == CONV_OUT_MASK_BY_X) {
                const __m512 xv = _mm512_maskz_loadu_ps(valid, xm + (size_t)o * hw + r * LANES);
                v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xv, _mm512_setzero_ps(), _CMP_GT_OQ), v);
            }
            _mm512_mask_storeu_ps(out + (size_t)o * hw + r * LANES, valid, v);
        }
    }
}

/* Case list of the (R, CO) tile instantiations: one switch, constants only
 * (shapes beyond R_MAX x CO_MAX are never reached and compile to nothing). */
#define TILE_CASE(r, co)                                                                       \
    case (r) * 16 + (co):                                                                      \
        if ((r) <= R_MAX && (co) <= CO_MAX)                                                    \
            tile_forward(r, co, out, in, mrow, wt, bias, xm, off, CI, kk, hw, mode);            \
        break;
#define TILE_CASES_CO(r)                                                                       \
    TILE_CASE(r, 1) TILE_CASE(r, 2) TILE_CASE(r, 3) TILE_CASE(r, 4) TILE_CASE(r, 5) TILE_CASE(r, 6) \
    TILE_CASE(r, 7) TILE_CASE(r, 8)

TARGET static void tile_forward_any(int R, int CO, float *out, const float *in, const uint16_t *mrow,
                                    const float *wt, const float *bias, const float *xm, const int *off, int CI,
                                    int kk, size_t hw, int mode)
{
    switch (R * 16 + CO) {
        TILE_CASES_CO(1) TILE_CASES_CO(2) TILE_CASES_CO(3) TILE_CASES_CO(4)
        TILE_CASES_CO(5) TILE_CASES_CO(6) TILE_CASES_CO(7) TILE_CASES_CO(8)
    default: assert(0 && "tile shape");
    }
}

/* Tap offsets in floats: off[t] = (ky - K/2) * W + (kx - K/2). */
static void tap_offsets(int *off, int K, int W)
{
    const int pad = K / 2;
    for (int t = 0; t < K * K; t++) off[t] = (t / K - pad) * W + (t % K - pad);
}

/* The conv-like pass shared by forward and input gradient: out[N][CO_TOT][hw]
 * from in[N][CI][hw] with packed weights wp ([ceil(CO_TOT/CO_MAX)][KK][CI][CO_MAX]).
 * Pixel vectors [v0, v1) of the flat batch list (vector j = image j / nv,
 * plane vector j % nv) are this thread's. */
TARGET static void direct_pass(float *out, const float *in, const float *wp, const float *bias, const float *xm,
                               int CI, int CO_TOT, int K, int H, int W, const uint16_t *mask, int64_t v0,
                               int64_t v1, int mode)
{
    const int kk = K * K, hw_i = H * W, nv = ceil_div(hw_i, LANES);
    const size_t hw = (size_t)hw_i;
    int off[CONV_DIRECT_MAX_TAPS];
    tap_offsets(off, K, W);
    /* pixel vectors per tile: about 24 accumulators, fewer for few channels */
    const int co_first = CO_TOT < CO_MAX ? CO_TOT : CO_MAX;
    const int rows = co_first >= 5 ? TILE_R_WIDE : co_first >= 3 ? TILE_R_MID : TILE_R_NARROW;
    for (int64_t j = v0; j < v1;) {
        const int64_t n = j / nv;
        const int v = (int)(j % nv);
        int R = nv - v < rows ? nv - v : rows; /* tiles stay inside one image */
        if (v1 - j < R) R = (int)(v1 - j);
        const float *inb = in + (size_t)n * CI * hw + (size_t)v * LANES;
        float *outb = out + (size_t)n * CO_TOT * hw + (size_t)v * LANES;
        const float *xmb = xm ? xm + (size_t)n * CO_TOT * hw + (size_t)v * LANES : NULL;
        const uint16_t *mrow = mask + (size_t)v * kk;
        for (int o0 = 0; o0 < CO_TOT; o0 += CO_MAX) {
            const int CO = CO_TOT - o0 < CO_MAX ? CO_TOT - o0 : CO_MAX;
            tile_forward_any(R, CO, outb + (size_t)o0 * hw, inb, mrow,
                             wp + (size_t)(o0 / CO_MAX) * kk * CI * CO_MAX, bias ? bias + o0 : NULL,
                             xmb ? xmb + (size_t)o0 * hw : NULL, off, CI, kk, hw, mode);
        }
        j += R;
    }
}

/* Items [*i0, *i1) of thread tid of nt over a list of `total` (pixel
 * vectors, rows or images): contiguous, sizes differ by at most 1. */
static void thread_range(int64_t total, int tid, int nt, int64_t *i0, int64_t *i1)
{
    *i0 = total * tid / nt;
    *i1 = total * (tid + 1) / nt;
}

/* The per-call set-up of the forward passes in scratch: packed weights and
 * lane masks; returns the output mode (ReLU fused or not). */
static int prepare_forward(const Conv2d *l, int H, int W, float *scratch, const Layout *z, const float **wf,
                           const uint16_t **mask)
{
    float *w = scratch + z->wf;
    uint16_t *m = (uint16_t *)(void *)(scratch + z->mask);
    pack_forward(w, l->w, l->C, l->OC, l->K * l->K);
    build_masks(m, l->K, H, W);
    *wf = w;
    *mask = m;
    return (l->fuse & CONV_FUSE_RELU) ? CONV_OUT_RELU : CONV_OUT_PLAIN;
}

/* The conv passes fused with the 2x2 max-pool after the conv or the 2x
 * upsampling before it (conv_direct.h), and the plain conv when it runs
 * the bf16 kernels (FUSED_NONE: whole images in chunks, as the fused
 * passes): arguments of both directions. */
typedef enum { FUSED_NONE, FUSED_MAXPOOL, FUSED_UPSAMPLE } FusedKind;
typedef struct Fused {
    FusedKind kind;
    const Conv2d *l;
    int N, H, W, nthreads; /* H, W: the conv's plane */
    float *scratch;
    const float *x; /* the conv input [N][C][H][W], or the upsample input a [N][C][H/2][W/2] */
    float *y;       /* forward: conv output [N][OC][H][W] (not written: max-pool with keep_y 0) */
    int keep_y;
    float *yp;      /* forward, max-pool: pooled output [N][OC][H/2][W/2] */
    const float *g; /* backward: dL/d(conv output), or dL/d(pooled output) with the max-pool */
    const float *y_kept; /* backward, max-pool: the conv output y */
    float *dx;      /* backward: dL/dx (dL/da with upsampling), or NULL */
    int relu;       /* backward, upsampling: mask dL/da by a > 0 */
} Fused;

static void fused_forward(const Fused *f);
static void fused_backward(const Fused *f);

void conv_direct_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch,
                         int nthreads)
{
    assert(l->K * l->K <= CONV_DIRECT_MAX_TAPS);
    if (l->bf16) { /* whole images per thread, packed a chunk at a time */
        const Fused f = {.kind = FUSED_NONE, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                         .scratch = scratch, .x = x, .y = y, .keep_y = 1};
        fused_forward(&f);
        return;
    }
    const Layout z = layout(l, H, W);
    const int nv = ceil_div(H * W, LANES);
    const int64_t total = (int64_t)N * nv;
    const float *wf;
    const uint16_t *mask;
    const int mode = prepare_forward(l, H, W, scratch, &z, &wf, &mask);
    int team = nthreads;
    if ((int64_t)team > total) team = (int)total;
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        int64_t v0, v1;
        thread_range(total, team_thread_id(), team_size(), &v0, &v1);
        direct_pass(y, x, wf, l->b, NULL, l->C, l->OC, l->K, H, W, mask, v0, v1, mode);
    }
}


/* Forward of the fused pair (or of the plain bf16 conv): threads take whole
 * images, in chunks of bwd_chunk_images; the chunk's upsampled input or
 * conv output, and with l->bf16 its packed input, live in the thread's
 * scratch, in L2. */
static void fused_forward(const Fused *f)
{
    const Conv2d *l = f->l;
    const int H = f->H, W = f->W, N = f->N;
    assert(l->K * l->K <= CONV_DIRECT_MAX_TAPS && (f->kind == FUSED_NONE || (H % 2 == 0 && W % 2 == 0)));
    const Layout z = layout(l, H, W);
    const int nv = ceil_div(H * W, LANES), up = f->kind == FUSED_UPSAMPLE, pool = f->kind == FUSED_MAXPOOL;
    const size_t x_image = (size_t)l->C * H * W / (up ? 4 : 1), y_image = (size_t)l->OC * H * W;
    const float *wf;
    const uint16_t *mask;
    const int mode = prepare_forward(l, H, W, f->scratch, &z, &wf, &mask);
    /* bf16: every operand goes through the packing (it rounds), even where
     * one input channel leaves half of each pair empty */
    const int bf = l->bf16 != 0;
    const ConvBf16Kernels *bk = bf ? conv_bf16_kernels(l->bf16) : NULL;
    uint32_t *wf2 = (uint32_t *)(void *)(f->scratch + z.wf2);
    if (bf) conv_bf16_pack_weights(wf2, l->w, l->C, l->OC, l->K * l->K, 0);
    const int team = f->nthreads < N ? f->nthreads : N, chunk = bwd_chunk_images(l, H, W);
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id(), nt = team_size();
        int64_t n0, n1; /* this thread's images */
        thread_range(N, tid, nt, &n0, &n1);
        float *own = f->scratch + z.thread0 + (size_t)tid * z.per_thread + z.image;
        uint32_t *pairs = (uint32_t *)(void *)(f->scratch + z.thread0 + (size_t)tid * z.per_thread + z.pairs);
        for (int64_t n = n0; n < n1; n += chunk) {
            const int k = (int)(n1 - n < chunk ? n1 - n : chunk); /* images in this chunk */
            const float *xn = f->x + (size_t)n * x_image;
            if (up) { /* the chunk's upsampled input, in L2 */
                upsample2x_forward_serial(own, xn, k, l->C, H / 2, W / 2);
                xn = own;
            }
            float *yn = !pool || f->keep_y ? f->y + (size_t)n * y_image : own;
            if (bf) {
                bk->pack_pairs(pairs, xn, k, l->C, (size_t)H * W);
                bk->pass(yn, pairs, wf2, l->b, NULL, l->C, l->OC, l->K, H, W, mask, 0, (int64_t)k * nv, mode);
            } else {
                direct_pass(yn, xn, wf, l->b, NULL, l->C, l->OC, l->K, H, W, mask, 0, (int64_t)k * nv, mode);
            }
            if (pool) maxpool2x2_forward_serial(f->yp + (size_t)n * y_image / 4, yn, k, l->OC, H, W);
        }
    }
}

void conv_direct_forward_maxpool(float *y, int keep_y, float *yp, const float *x, const Conv2d *l, int N, int H,
                                 int W, float *scratch, int nthreads)
{
    const Fused f = {.kind = FUSED_MAXPOOL, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                     .scratch = scratch, .x = x, .y = y, .keep_y = keep_y, .yp = yp};
    fused_forward(&f);
}

void conv_direct_forward_upsample(float *y, const float *a, const Conv2d *l, int N, int H, int W, float *scratch,
                                  int nthreads)
{
    const Fused f = {.kind = FUSED_UPSAMPLE, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                     .scratch = scratch, .x = a, .y = y, .keep_y = 1};
    fused_forward(&f);
}

/* A run of consecutive pixel vectors [v0, v1) of image n. */
typedef struct Segment {
    int64_t n;
    int v0, v1;
} Segment;

/* Adds a weight-gradient tile's accumulators acc[COB][CIB] (tap t, output
 * channels o0.., input channels c0..) into the thread's partial
 * part[KK][OC][C][LANES]. */
#define WG_FLUSH()                                                                             \
    do {                                                                                       \
        _Pragma("GCC unroll 8") for (int o_ = 0; o_ < COB; o_++)                               \
            _Pragma("GCC unroll 8") for (int c_ = 0; c_ < CIB; c_++) {                         \
                float *pp_ = part + (((size_t)t * OC + o0 + o_) * C + c0 + c_) * LANES;        \
                _mm512_store_ps(pp_, _mm512_add_ps(_mm512_load_ps(pp_), acc[o_][c_]));          \
            }                                                                                  \
    } while (0)

/* Weight-gradient tile for tap t: acc[COB][CIB] over the pixel vectors of
 * segs[0..nseg), added into part[(t*OC + o)*C + c][LANES]. */
INLINE_TARGET void tile_wgrad(const int COB, const int CIB, float *part, const float *g, const float *x,
                              const uint16_t *mask, int t, int off, int o0, int c0, int OC, int C, int kk,
                              size_t hw, const Segment *segs, int nseg)
{
    __m512 acc[WG_CO][WG_CI];
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 8
        for (int c = 0; c < CIB; c++) acc[o][c] = _mm512_setzero_ps();
    const int centre = kk / 2;
    for (int s = 0; s < nseg; s++) {
        const float *gp = g + ((size_t)segs[s].n * OC + o0) * hw + (size_t)segs[s].v0 * LANES;
        const float *xp = x + ((size_t)segs[s].n * C + c0) * hw + (size_t)segs[s].v0 * LANES + off;
        const uint16_t *mp = mask + (size_t)segs[s].v0 * kk;
        for (int v = segs[s].v0; v < segs[s].v1; v++, gp += LANES, xp += LANES, mp += kk) {
            const __mmask16 m = (__mmask16)mp[t], valid = (__mmask16)mp[centre];
            __m512 gv[WG_CO];
            /* plain loads where every lane is inside the image (masked loads
             * cost ~20% here, measured); g needs its mask only in the last,
             * partial vector of a plane */
            if (valid == 0xFFFF) {
#pragma GCC unroll 8
                for (int o = 0; o < COB; o++) gv[o] = _mm512_loadu_ps(gp + (size_t)o * hw);
            } else {
#pragma GCC unroll 8
                for (int o = 0; o < COB; o++) gv[o] = _mm512_maskz_loadu_ps(valid, gp + (size_t)o * hw);
            }
            if (m == 0xFFFF) {
#pragma GCC unroll 8
                for (int c = 0; c < CIB; c++) {
                    const __m512 xv = _mm512_loadu_ps(xp + (size_t)c * hw);
#pragma GCC unroll 8
                    for (int o = 0; o < COB; o++) acc[o][c] = _mm512_fmadd_ps(gv[o], xv, acc[o][c]);
                }
            } else {
#pragma GCC unroll 8
                for (int c = 0; c < CIB; c++) {
                    const __m512 xv = _mm512_maskz_loadu_ps(m, xp + (size_t)c * hw);
#pragma GCC unroll 8
                    for (int o = 0; o < COB; o++) acc[o][c] = _mm512_fmadd_ps(gv[o], xv, acc[o][c]);
                }
            }
        }
    }
    WG_FLUSH();
}

#define WG_CASE(co, ci)                                                                        \
    case (co) * 8 + (ci):                                                                      \
        tile_wgrad(co, ci, part, g, x, mask, t, off, o0, c0, OC, C, kk, hw, segs, nseg);        \
        break;
#define WG_CASES_CI(co) WG_CASE(co, 1) WG_CASE(co, 2) WG_CASE(co, 3) WG_CASE(co, 4) WG_CASE(co, 5) WG_CASE(co, 6)

TARGET static void tile_wgrad_any(int COB, int CIB, float *part, const float *g, const float *x,
                                  const uint16_t *mask, int t, int off, int o0, int c0, int OC, int C, int kk,
                                  size_t hw, const Segment *segs, int nseg)
{
    switch (COB * 8 + CIB) {
        WG_CASES_CI(1) WG_CASES_CI(2) WG_CASES_CI(3) WG_CASES_CI(4)
    default: assert(0 && "tile shape");
    }
}

/* The body of the row-structured weight-gradient tile below: acc[o][c] +=
 * g[o] x[c] for one pixel vector, x loaded with LOAD_X (plain or masked). */
#define WG_PLAIN(p) _mm512_loadu_ps(p)
#define WG_MASKED(p) _mm512_maskz_loadu_ps(edge, p)
#define WG_ACCUMULATE(gp_, xp_, LOAD_X)                                                               \
    do {                                                                                              \
        __m512 gv_[WG_CO];                                                                            \
        _Pragma("GCC unroll 8") for (int o_ = 0; o_ < COB; o_++) gv_[o_] = _mm512_loadu_ps((gp_) + (size_t)o_ * hw); \
        _Pragma("GCC unroll 8") for (int c_ = 0; c_ < CIB; c_++) {                                    \
            const __m512 xv_ = LOAD_X((xp_) + (size_t)c_ * hw);                                       \
            _Pragma("GCC unroll 8") for (int o_ = 0; o_ < COB; o_++)                                  \
                acc[o_][c_] = _mm512_fmadd_ps(gv_[o_], xv_, acc[o_][c_]);                             \
        }                                                                                             \
    } while (0)

/* Weight-gradient tile for planes whose width is a multiple of 16, so that
 * rows are whole vectors: segments are whole rows (v0, v1 multiples of
 * W/16), rows whose tap-t neighbour row leaves the image are skipped, and
 * only a row's first vector (dx < 0) or last vector (dx > 0) needs a lane
 * mask; every other load is plain and branch-free (one core, 16->16 at
 * 64x64: masked loads everywhere 95 GFLOP/s, a mask test per vector 112,
 * this 125, measured).  The loops walk a segment's contiguous rows with
 * one pointer pair, the tap's cases decided once per segment: against the
 * same tile with per-row pointers and branches, 1 core, Zen 5, B = 128,
 * interleaved, weight gradient alone: 32->32 @16x16 98 -> 142 GFLOP/s,
 * 16->16 @32x32 106 -> 129, 16->16 @64x64 114 -> 127, same sums. */
INLINE_TARGET void tile_wgrad_rows(const int COB, const int CIB, float *part, const float *g, const float *x,
                                   int t, int K, int o0, int c0, int OC, int C, int H, int W, size_t hw,
                                   const Segment *segs, int nseg)
{
    __m512 acc[WG_CO][WG_CI];
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 8
        for (int c = 0; c < CIB; c++) acc[o][c] = _mm512_setzero_ps();
    const int pad = K / 2, dy = t / K - pad, dx = t % K - pad, vpr = W / LANES;
    /* lanes of the first / last vector of a row whose neighbour is inside */
    const __mmask16 first = (__mmask16)(0xFFFFu << (dx < 0 ? -dx : 0));
    const __mmask16 last = (__mmask16)(0xFFFFu >> (dx > 0 ? dx : 0)) & (__mmask16)0xFFFFu;
    for (int s = 0; s < nseg; s++) {
        int h0 = segs[s].v0 / vpr, h1 = segs[s].v1 / vpr;
        if (h0 < -dy) h0 = -dy;
        if (h1 > H - dy) h1 = H - dy;
        if (h1 <= h0) continue;
        /* rows are contiguous (stride W = vpr vectors): one pointer pair
         * walks the segment, with the tap's branches outside the loops */
        const float *gp = g + ((size_t)segs[s].n * OC + o0) * hw + (size_t)h0 * W;
        const float *xp = x + ((size_t)segs[s].n * C + c0) * hw + (size_t)(h0 + dy) * W + dx;
        if (dx == 0) { /* every lane inside: one run of plain vectors */
            const int nvec = (h1 - h0) * vpr;
            for (int j = 0; j < nvec; j++, gp += LANES, xp += LANES) WG_ACCUMULATE(gp, xp, WG_PLAIN);
        } else if (vpr == 1) { /* one vector per row, one lane mask */
            const __mmask16 edge = first & last;
            for (int h = h0; h < h1; h++, gp += LANES, xp += LANES) WG_ACCUMULATE(gp, xp, WG_MASKED);
        } else if (dx < 0) { /* a row's first vector masked */
            const __mmask16 edge = first;
            for (int h = h0; h < h1; h++) {
                WG_ACCUMULATE(gp, xp, WG_MASKED);
                gp += LANES;
                xp += LANES;
                for (int v = 1; v < vpr; v++, gp += LANES, xp += LANES) WG_ACCUMULATE(gp, xp, WG_PLAIN);
            }
        } else { /* a row's last vector masked */
            const __mmask16 edge = last;
            for (int h = h0; h < h1; h++) {
                for (int v = 0; v < vpr - 1; v++, gp += LANES, xp += LANES) WG_ACCUMULATE(gp, xp, WG_PLAIN);
                WG_ACCUMULATE(gp, xp, WG_MASKED);
                gp += LANES;
                xp += LANES;
            }
        }
    }
    WG_FLUSH();
}

#define WGR_CASE(co, ci)                                                                       \
    case (co) * 8 + (ci):                                                                      \
        tile_wgrad_rows(co, ci, part, g, x, t, K, o0, c0, OC, C, H, W, hw, segs, nseg);         \
        break;
#define WGR_CASES_CI(co) WGR_CASE(co, 1) WGR_CASE(co, 2) WGR_CASE(co, 3) WGR_CASE(co, 4) WGR_CASE(co, 5) WGR_CASE(co, 6)

TARGET static void tile_wgrad_rows_any(int COB, int CIB, float *part, const float *g, const float *x, int t, int K,
                                       int o0, int c0, int OC, int C, int H, int W, size_t hw, const Segment *segs,
                                       int nseg)
{
    switch (COB * 8 + CIB) {
        WGR_CASES_CI(1) WGR_CASES_CI(2) WGR_CASES_CI(3) WGR_CASES_CI(4)
    default: assert(0 && "tile shape");
    }
}

/* Weight-gradient tile for layers with few input channels (C < WG_CI, e.g.
 * the first layer's 1 or 3): the CIB columns are (channel, tap) pairs
 * pc[k], pt[k] (pair offsets poff[k]) instead of channels of one tap, so the
 * tile still holds COB x WG_CI accumulators. */
INLINE_TARGET void tile_wgrad_pairs(const int COB, const int CIB, float *part, const float *g, const float *x,
                                    const uint16_t *mask, const int *pc, const int *pt, const int *poff, int o0,
                                    int OC, int C, int kk, size_t hw, const Segment *segs, int nseg)
{
    __m512 acc[WG_CO][WG_CI];
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 8
        for (int c = 0; c < CIB; c++) acc[o][c] = _mm512_setzero_ps();
    const int centre = kk / 2;
    for (int s = 0; s < nseg; s++) {
        const float *gp = g + ((size_t)segs[s].n * OC + o0) * hw + (size_t)segs[s].v0 * LANES;
        const float *xp = x + (size_t)segs[s].n * C * hw + (size_t)segs[s].v0 * LANES;
        const uint16_t *mp = mask + (size_t)segs[s].v0 * kk;
        for (int v = segs[s].v0; v < segs[s].v1; v++, gp += LANES, xp += LANES, mp += kk) {
            const __mmask16 valid = (__mmask16)mp[centre];
            __m512 gv[WG_CO];
#pragma GCC unroll 8
            for (int o = 0; o < COB; o++) gv[o] = _mm512_maskz_loadu_ps(valid, gp + (size_t)o * hw);
#pragma GCC unroll 8
            for (int c = 0; c < CIB; c++) {
                const __m512 xv = _mm512_maskz_loadu_ps((__mmask16)mp[pt[c]], xp + (size_t)pc[c] * hw + poff[c]);
#pragma GCC unroll 8
                for (int o = 0; o < COB; o++) acc[o][c] = _mm512_fmadd_ps(gv[o], xv, acc[o][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 8
        for (int c = 0; c < CIB; c++) {
            float *pp = part + (((size_t)pt[c] * OC + o0 + o) * C + pc[c]) * LANES;
            _mm512_store_ps(pp, _mm512_add_ps(_mm512_load_ps(pp), acc[o][c]));
        }
}

#define WGP_CASE(co, ci)                                                                       \
    case (co) * 8 + (ci):                                                                      \
        tile_wgrad_pairs(co, ci, part, g, x, mask, pc, pt, poff, o0, OC, C, kk, hw, segs, nseg); \
        break;
#define WGP_CASES_CI(co)                                                                       \
    WGP_CASE(co, 1) WGP_CASE(co, 2) WGP_CASE(co, 3) WGP_CASE(co, 4) WGP_CASE(co, 5) WGP_CASE(co, 6)

TARGET static void tile_wgrad_pairs_any(int COB, int CIB, float *part, const float *g, const float *x,
                                        const uint16_t *mask, const int *pc, const int *pt, const int *poff,
                                        int o0, int OC, int C, int kk, size_t hw, const Segment *segs, int nseg)
{
    switch (COB * 8 + CIB) {
        WGP_CASES_CI(1) WGP_CASES_CI(2) WGP_CASES_CI(3) WGP_CASES_CI(4)
    default: assert(0 && "tile shape");
    }
}

/* Weight-gradient group size in vectors for width W and kernel size K:
 * WG_GROUP, or whole rows when rows are whole vectors. */
static int64_t wgrad_group_vectors(int W, int K)
{
    const int rows = W % LANES == 0 && K / 2 < LANES, vpr = rows ? W / LANES : 1;
    return WG_GROUP < vpr ? vpr : WG_GROUP / vpr * vpr;
}

/* Vectors per chunk of conv_direct_backward: whole groups, about
 * BWD_CHUNK_BYTES of g and x together. */
static int64_t wgrad_chunk_vectors(int C, int OC, int W, int K)
{
    const int64_t group = wgrad_group_vectors(W, K);
    const int64_t per_vector = (int64_t)(C + OC) * LANES * (int64_t)sizeof(float);
    int64_t groups = BWD_CHUNK_BYTES / (per_vector * group);
    return (groups < 1 ? 1 : groups) * group;
}

/* This thread's weight and bias gradient over pixel vectors [v0, v1) of the
 * batch list, in groups of at most WG_GROUP vectors:
 * part[KK][OC][C][LANES] += lane partial sums, dbp[OC] += plane sums. */
TARGET static void wgrad_pass(float *part, double *dbp, const float *g, const float *x, int C, int OC, int K,
                              int H, int W, const uint16_t *mask, int64_t v0, int64_t v1)
{
    const int kk = K * K, hw_i = H * W, nv = ceil_div(hw_i, LANES);
    const size_t hw = (size_t)hw_i;
    int off[CONV_DIRECT_MAX_TAPS];
    tap_offsets(off, K, W);
    Segment segs[WG_GROUP];
    /* rows of whole vectors: row-structured tiles (v0, v1 and groups are
     * then whole rows: conv_direct_backward aligns the thread ranges) */
    const int rows = W % LANES == 0 && K / 2 < LANES;
    const int64_t group = wgrad_group_vectors(W, K);
    for (int64_t j0 = v0; j0 < v1;) {
        /* the next group: segments of whole or partial images, `group` vectors at most */
        int nseg = 0;
        int64_t j = j0;
        const int64_t jend = v1 - j0 < group ? v1 : j0 + group;
        while (j < jend) {
            const int64_t n = j / nv;
            const int v = (int)(j % nv);
            const int64_t stop = (n + 1) * nv < jend ? (n + 1) * nv : jend;
            segs[nseg].n = n;
            segs[nseg].v0 = v;
            segs[nseg].v1 = v + (int)(stop - j);
            nseg++;
            j = stop;
        }
        /* taps innermost: the 9 passes of one channel tile re-read the same
         * g and x planes (shifted), from L1 */
        for (int o0 = 0; o0 < OC; o0 += WG_CO) {
            const int cob = OC - o0 < WG_CO ? OC - o0 : WG_CO;
            if (C < WG_CI) {
                /* few channels: tiles over (channel, tap) pairs */
                const int npairs = C * kk;
                for (int k0 = 0; k0 < npairs; k0 += WG_CI) {
                    int pc[WG_CI], pt[WG_CI], poff[WG_CI];
                    const int cib = npairs - k0 < WG_CI ? npairs - k0 : WG_CI;
                    for (int k = 0; k < cib; k++) {
                        pc[k] = (k0 + k) / kk;
                        pt[k] = (k0 + k) % kk;
                        poff[k] = off[pt[k]];
                    }
                    tile_wgrad_pairs_any(cob, cib, part, g, x, mask, pc, pt, poff, o0, OC, C, kk, hw, segs, nseg);
                }
                continue;
            }
            for (int c0 = 0; c0 < C; c0 += WG_CI)
                for (int t = 0; t < kk; t++) {
                    const int cib = C - c0 < WG_CI ? C - c0 : WG_CI;
                    if (rows)
                        tile_wgrad_rows_any(cob, cib, part, g, x, t, K, o0, c0, OC, C, H, W, hw, segs, nseg);
                    else
                        tile_wgrad_any(cob, cib, part, g, x, mask, t, off[t], o0, c0, OC, C, kk, hw, segs, nseg);
                }
        }
        /* bias gradient: float lane sums of the group, then double */
        for (int o = 0; o < OC; o++) {
            __m512 s = _mm512_setzero_ps();
            for (int k = 0; k < nseg; k++) {
                const float *gp = g + ((size_t)segs[k].n * OC + o) * hw;
                for (int v = segs[k].v0; v < segs[k].v1; v++)
                    s = _mm512_add_ps(s, _mm512_maskz_loadu_ps((__mmask16)mask[(size_t)v * kk + kk / 2],
                                                               gp + (size_t)v * LANES));
            }
            dbp[o] += _mm512_reduce_add_ps(s);
        }
        j0 = jend;
    }
}

/* The per-call set-up of both backward passes in scratch: flipped weights
 * for dx (when with_dx) and the lane masks; returns the dx output mode. */
static int prepare_backward(const Conv2d *l, int H, int W, float *scratch, const Layout *z, int with_dx,
                            const float **wb, const uint16_t **mask)
{
    float *w = scratch + z->wb;
    uint16_t *m = (uint16_t *)(void *)(scratch + z->mask);
    if (with_dx) pack_input_grad(w, l->w, l->C, l->OC, l->K * l->K);
    build_masks(m, l->K, H, W);
    *wb = w;
    *mask = m;
    return (l->fuse & CONV_FUSE_DX_RELU) ? CONV_OUT_MASK_BY_X : CONV_OUT_PLAIN;
}

/* Zeroes a thread's weight-gradient partial part[dw_part] and the db
 * partial (OC doubles) after it; returns the latter. */
static double *zero_partials(float *part, const Layout *z, int OC)
{
    double *dbp = (double *)(void *)(part + z->dw_part);
    memset(part, 0, sizeof(float) * z->dw_part);
    for (int o = 0; o < OC; o++) dbp[o] = 0.0;
    return dbp;
}

/* Adds the threads' weight/bias-gradient partials into l->dw, l->db in a
 * fixed order (threads 0..nt-1, lanes 0..15), output channels split between
 * the threads: thread tid of nt does its share.  Called by every thread of
 * the team after a barrier. */
static void reduce_partials(const Conv2d *l, const float *scratch, const Layout *z, int tid, int nt)
{
    const int C = l->C, OC = l->OC, kk = l->K * l->K;
    const int o_lo = OC * tid / nt, o_hi = OC * (tid + 1) / nt;
    for (int t = 0; t < nt; t++) {
        const float *pt = scratch + z->thread0 + (size_t)t * z->per_thread;
        const double *dbt = (const double *)(const void *)(pt + z->dw_part);
        for (int o = o_lo; o < o_hi; o++) {
            for (int c = 0; c < C; c++)
                for (int tap = 0; tap < kk; tap++) {
                    const float *lanes = pt + (((size_t)tap * OC + o) * C + c) * LANES;
                    float sum = 0.0f;
                    for (int i = 0; i < LANES; i++) sum += lanes[i];
                    l->dw[((size_t)o * C + c) * kk + tap] += sum;
                }
            l->db[o] += (float)dbt[o];
        }
    }
}

void conv_direct_backward(float *dx, const float *g, const float *x, const Conv2d *l, int N, int H, int W,
                          float *scratch, int nthreads)
{
    assert(l->K * l->K <= CONV_DIRECT_MAX_TAPS);
    if (l->bf16) { /* whole images per thread, packed a chunk at a time */
        const Fused f = {.kind = FUSED_NONE, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                         .scratch = scratch, .x = x, .g = g, .dx = dx};
        fused_backward(&f);
        return;
    }
    const Layout z = layout(l, H, W);
    const int C = l->C, OC = l->OC, nv = ceil_div(H * W, LANES);
    const int64_t total = (int64_t)N * nv;
    const float *wb;
    const uint16_t *mask;
    const int mode = prepare_backward(l, H, W, scratch, &z, dx != NULL, &wb, &mask);
    int team = nthreads;
    if ((int64_t)team > total) team = (int)total;
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id(), nt = team_size();
        float *part = scratch + z.thread0 + (size_t)tid * z.per_thread;
        double *dbp = zero_partials(part, &z, OC);
        int64_t v0, v1;
        if (W % LANES == 0) {
            /* whole rows per thread (wgrad_pass's row-structured tiles) */
            const int64_t vpr = W / LANES;
            thread_range(total / vpr, tid, nt, &v0, &v1);
            v0 *= vpr;
            v1 *= vpr;
        } else {
            thread_range(total, tid, nt, &v0, &v1);
        }
        /* weight gradient, then input gradient, chunk by chunk: the second
         * pass finds the chunk's g and x still in L2.  Chunks are whole
         * weight-gradient groups (wgrad_pass groups from v0 on), so the
         * sums are the same as in one pass over [v0, v1). */
        const int64_t chunk = wgrad_chunk_vectors(C, OC, W, l->K);
        for (int64_t c0 = v0; c0 < v1; c0 += chunk) {
            const int64_t c1 = v1 - c0 < chunk ? v1 : c0 + chunk;
            wgrad_pass(part, dbp, g, x, C, OC, l->K, H, W, mask, c0, c1);
            if (dx)
                direct_pass(dx, g, wb, NULL, mode == CONV_OUT_MASK_BY_X ? x : NULL, OC, C, l->K, H, W, mask, c0, c1,
                            mode);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        reduce_partials(l, scratch, &z, tid, nt);
    }
}

/* dbp[o] += sum of g[img][o][p] over the k images' pixels, g the rounded
 * bfloat16 planes [k][OC][H*W] (the gradient the products use; float lane
 * sums per image plane, then double): the bias gradient of the bf16 path. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void bias_grad_bf16(double *dbp, const uint16_t *g, int OC, int H, int W, const uint16_t *mask, int kk,
                                  int k)
{
    const size_t hw = (size_t)H * W;
    const int nv = ceil_div(H * W, LANES);
    for (int img = 0; img < k; img++)
        for (int o = 0; o < OC; o++) {
            const uint16_t *gp = g + ((size_t)img * OC + o) * hw;
            __m512 s = _mm512_setzero_ps();
            for (int v = 0; v < nv; v++) {
                const __mmask16 valid = (__mmask16)mask[(size_t)v * kk + kk / 2];
                const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, gp + (size_t)v * LANES));
                s = _mm512_add_ps(s, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
            }
            dbp[o] += _mm512_reduce_add_ps(s);
        }
}

/* Backward of the fused pair (or of the plain bf16 conv): whole images per
 * thread in chunks; per chunk the gradient before the max-pool, or the
 * upsampled input and its gradient, and with l->bf16 the packed operands,
 * live in the thread's scratch, in L2. */
static void fused_backward(const Fused *f)
{
    const Conv2d *l = f->l;
    const int H = f->H, W = f->W, N = f->N, C = l->C, OC = l->OC, K = l->K, kk = K * K;
    const int up = f->kind == FUSED_UPSAMPLE, pool = f->kind == FUSED_MAXPOOL;
    assert(kk <= CONV_DIRECT_MAX_TAPS && (f->kind == FUSED_NONE || (H % 2 == 0 && W % 2 == 0)));
    assert(!up || !(l->fuse & CONV_FUSE_DX_RELU));
    const Layout z = layout(l, H, W);
    const int nv = ceil_div(H * W, LANES);
    const size_t hw = (size_t)H * W, x_image = (size_t)C * hw / (up ? 4 : 1), y_image = (size_t)OC * hw;
    const float *wb;
    const uint16_t *mask;
    const int mode = prepare_backward(l, H, W, f->scratch, &z, f->dx != NULL, &wb, &mask);
    /* bf16: the weight gradient pairs pixels, the input gradient output
     * channels; every operand goes through the packing (it rounds) */
    const int bf_wg = l->bf16 != 0, bf_dx = l->bf16 && f->dx;
    const ConvBf16Kernels *bk = l->bf16 ? conv_bf16_kernels(l->bf16) : NULL;
    uint32_t *wb2 = (uint32_t *)(void *)(f->scratch + z.wb2), *mask32 = (uint32_t *)(void *)(f->scratch + z.mask32);
    if (bf_dx) conv_bf16_pack_weights(wb2, l->w, C, OC, kk, 1);
    if (bf_wg) conv_bf16_build_masks(mask32, K, H, W);
    const int team = f->nthreads < N ? f->nthreads : N, chunk = bwd_chunk_images(l, H, W);
    (void)team;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = team_thread_id(), nt = team_size();
        float *part = f->scratch + z.thread0 + (size_t)tid * z.per_thread;
        double *dbp = zero_partials(part, &z, OC);
        float *own = part + z.image, *own2 = own + (size_t)chunk * C * hw;
        /* bf16: the channel pairs of g reuse the image area (its upsampled x or
         * pre-pool g is dead once packed; with upsampling only where they fit
         * before its second half, the upsampled dx), which keeps the chunk's
         * working set in L2 */
        uint32_t *pairs = (uint32_t *)(void *)(up && ceil_div(OC, 2) > C ? part + z.pairs : own);
        uint16_t *x16 = (uint16_t *)(void *)(part + z.plain_x), *g16 = (uint16_t *)(void *)(part + z.plain_g);
        int64_t n0, n1; /* this thread's images */
        thread_range(N, tid, nt, &n0, &n1);
        for (int64_t n = n0; n < n1; n += chunk) {
            const int k = (int)(n1 - n < chunk ? n1 - n : chunk); /* images in this chunk */
            const int64_t kv = (int64_t)k * nv;
            const float *xn = f->x + (size_t)n * x_image;
            const float *xc = xn, *gc = f->g + (size_t)n * y_image; /* the conv's input and output gradient */
            if (up) { /* x = the chunk's upsampled a, in L2 */
                upsample2x_forward_serial(own, xn, k, C, H / 2, W / 2);
                xc = own;
            } else if (pool) { /* g = the chunk's gradient before the pool */
                maxpool2x2_backward_relu_serial(own, f->g + (size_t)n * y_image / 4, f->y_kept + (size_t)n * y_image,
                                                k, OC, H, W);
                gc = own;
            }
            if (bf_wg) {
                bk->pack_plain(x16, xc, (size_t)k * C * hw);
                bk->pack_plain(g16, gc, (size_t)k * OC * hw);
                bk->wgrad(part, g16, x16, C, OC, K, H, W, mask32, k);
                bias_grad_bf16(dbp, g16, OC, H, W, mask, kk, k);
            } else {
                wgrad_pass(part, dbp, gc, xc, C, OC, K, H, W, mask, 0, kv);
            }
            if (!f->dx) continue;
            /* dL/dx of the conv input: of the upsampled tensor into own2 (then
             * summed over 2x2 blocks), else straight into dx */
            float *dxc = up ? own2 : f->dx + (size_t)n * x_image;
            const int m = up ? CONV_OUT_PLAIN : mode;
            const float *xm = m == CONV_OUT_MASK_BY_X ? xn : NULL;
            if (bf_dx) {
                conv_bf16_pairs_from_plain(pairs, g16, k, OC, hw); /* g16: packed for the weight gradient */
                bk->pass(dxc, pairs, wb2, NULL, xm, OC, C, K, H, W, mask, 0, kv, m);
            } else {
                direct_pass(dxc, gc, wb, NULL, xm, OC, C, K, H, W, mask, 0, kv, m);
            }
            if (up)
                upsample2x_backward_serial(f->dx + (size_t)n * x_image, own2, f->relu ? xn : NULL, k, C, H / 2, W / 2);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        reduce_partials(l, f->scratch, &z, tid, nt);
    }
}

void conv_direct_backward_maxpool(float *dx, const float *gp, const float *y, const float *x, const Conv2d *l,
                                  int N, int H, int W, float *scratch, int nthreads)
{
    const Fused f = {.kind = FUSED_MAXPOOL, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                     .scratch = scratch, .x = x, .g = gp, .y_kept = y, .dx = dx};
    fused_backward(&f);
}

void conv_direct_backward_upsample(float *da, const float *g, const float *a, int relu, const Conv2d *l, int N,
                                   int H, int W, float *scratch, int nthreads)
{
    const Fused f = {.kind = FUSED_UPSAMPLE, .l = l, .N = N, .H = H, .W = W, .nthreads = nthreads,
                     .scratch = scratch, .x = a, .g = g, .dx = da, .relu = relu};
    fused_backward(&f);
}

#else /* !HAVE_DIRECT: never selected (conv_direct_supported() is 0) */

int conv_direct_supported(void)
{
    return 0;
}

void conv_direct_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch,
                         int nthreads)
{
    (void)y; (void)x; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_forward without AVX-512 support");
}

void conv_direct_backward(float *dx, const float *g, const float *x, const Conv2d *l, int N, int H, int W,
                          float *scratch, int nthreads)
{
    (void)dx; (void)g; (void)x; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_backward without AVX-512 support");
}

void conv_direct_backward_maxpool(float *dx, const float *gp, const float *y, const float *x, const Conv2d *l,
                                  int N, int H, int W, float *scratch, int nthreads)
{
    (void)dx; (void)gp; (void)y; (void)x; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_backward_maxpool without AVX-512 support");
}

void conv_direct_forward_upsample(float *y, const float *a, const Conv2d *l, int N, int H, int W, float *scratch,
                                  int nthreads)
{
    (void)y; (void)a; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_forward_upsample without AVX-512 support");
}

void conv_direct_backward_upsample(float *da, const float *g, const float *a, int relu, const Conv2d *l, int N,
                                   int H, int W, float *scratch, int nthreads)
{
    (void)da; (void)g; (void)a; (void)relu; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_backward_upsample without AVX-512 support");
}

void conv_direct_forward_maxpool(float *y, int keep_y, float *yp, const float *x, const Conv2d *l, int N, int H,
                                 int W, float *scratch, int nthreads)
{
    (void)y; (void)keep_y; (void)yp; (void)x; (void)l; (void)N; (void)H; (void)W; (void)scratch; (void)nthreads;
    assert(0 && "conv_direct_forward_maxpool without AVX-512 support");
}

#endif
