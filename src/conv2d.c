/*
 * conv2d.c - KxK stride-1 'same' convolution via im2col + OpenBLAS GEMM
 * (layout and GEMM shapes: conv2d.h).
 *
 * Threading: one OpenMP team of T = min(nthreads, N) threads; each thread
 * takes a contiguous block of images and runs single-threaded GEMMs on its
 * own scratch slice (owner-writes: a thread writes only its images' y/dx and
 * its own slice).  The weight gradient is summed per thread into a private
 * partial and the partials are added into l->dw/l->db afterwards in thread
 * order, so no atomics and a fixed summation order for a given T.
 * Does not allocate; does not call MPI.
 *
 * Performance (not yet measured; what to measure before changing anything):
 * time per phase (im2col, each GEMM, col2im, bias/db sums) per layer shape;
 * achieved GFLOP/s of the skinny GEMMs (M = OC of 8..32 against N = H*W of
 * 64..4096) against the single-core OpenBLAS peak; the cost of the K*K-times
 * larger col matrix in memory traffic; and whether T threads x 1-thread GEMM
 * beats 1 thread x T-thread GEMM when a rank holds few images per batch.
 */
#include "conv2d.h"

#include "gemm.h"
#include "im2col.h"

#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Every per-thread scratch slice starts on a 64-byte cache line (16 floats)
 * so two threads never write the same line (false sharing). */
#define SCRATCH_ALIGN_FLOATS 16

static size_t round_up_line(size_t n)
{
    return (n + SCRATCH_ALIGN_FLOATS - 1) / SCRATCH_ALIGN_FLOATS * SCRATCH_ALIGN_FLOATS;
}

/* Floats of one im2col matrix [C*K*K][H*W], rounded up to a cache line. */
static size_t col_floats(const Conv2d *l, int H, int W)
{
    return round_up_line((size_t)l->C * l->K * l->K * H * W);
}

/* Floats of one thread: its col matrix, then its dW [OC][C*K*K] and db [OC] partials. */
static size_t thread_floats(const Conv2d *l, int H, int W)
{
    return col_floats(l, H, W) + round_up_line((size_t)l->OC * l->C * l->K * l->K + (size_t)l->OC);
}

size_t conv2d_scratch_floats(const Conv2d *l, int H, int W, int nthreads)
{
    assert(nthreads >= 1);
    return (size_t)nthreads * thread_floats(l, H, W);
}

/* Shapes must be positive, K odd, and the GEMM sizes must fit BLAS's int. */
static void assert_shapes(const Conv2d *l, int N, int H, int W, int nthreads)
{
    assert(l->C >= 1 && l->OC >= 1 && l->K >= 1 && l->K % 2 == 1);
    assert(N >= 1 && H >= 1 && W >= 1 && nthreads >= 1);
    assert((size_t)H * W <= INT_MAX && (size_t)l->C * l->K * l->K <= INT_MAX);
    (void)l; (void)N; (void)H; (void)W; (void)nthreads;
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int thread_count(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Images [*n0, *n1) of thread tid in a team of nt: contiguous, sizes differ by at most 1. */
static void image_range(int N, int tid, int nt, int *n0, int *n1)
{
    *n0 = (int)((int64_t)N * tid / nt);
    *n1 = (int)((int64_t)N * (tid + 1) / nt);
}

void conv2d_forward(float *y, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    const int C = l->C, OC = l->OC, K = l->K;
    const int hw = H * W, ckk = C * K * K;
    const size_t x_image = (size_t)C * hw, y_image = (size_t)OC * hw;
    const size_t per_thread = thread_floats(l, H, W);
    const int team = nthreads < N ? nthreads : N;
    (void)team;

#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = thread_id();
        float *col = scratch + (size_t)tid * per_thread;
        int n0, n1;
        image_range(N, tid, thread_count(), &n0, &n1);
        for (int n = n0; n < n1; n++) {
            float *yn = y + (size_t)n * y_image;
            im2col(col, x + (size_t)n * x_image, C, H, W, K);
            /* Bias first, then y += W x col (beta 1), as PyTorch's slow_conv2d does. */
            for (int oc = 0; oc < OC; oc++) {
                float *plane = yn + (size_t)oc * hw;
                for (int p = 0; p < hw; p++) plane[p] = l->b[oc];
            }
            gemm_nn(yn, l->w, col, OC, hw, ckk, 1.0f);
        }
    }
}

void conv2d_backward(float *dx, const float *dy, const float *x, const Conv2d *l, int N, int H, int W, float *scratch, int nthreads)
{
    assert_shapes(l, N, H, W, nthreads);
    const int C = l->C, OC = l->OC, K = l->K;
    const int hw = H * W, ckk = C * K * K;
    const size_t x_image = (size_t)C * hw, y_image = (size_t)OC * hw;
    const size_t per_thread = thread_floats(l, H, W), col_size = col_floats(l, H, W);
    const size_t w_size = (size_t)OC * ckk;
    const int team = nthreads < N ? nthreads : N;
    int used = 1;  /* threads the runtime actually gave the team (may be < team) */
    (void)team;

#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
        const int tid = thread_id(), nt = thread_count();
        if (tid == 0) used = nt;  /* read after the region's closing barrier */
        float *col = scratch + (size_t)tid * per_thread;
        float *dw_part = col + col_size;  /* [OC][C*K*K] */
        float *db_part = dw_part + w_size; /* [OC] */
        memset(dw_part, 0, sizeof(float) * (w_size + (size_t)OC));
        int n0, n1;
        image_range(N, tid, nt, &n0, &n1);
        for (int n = n0; n < n1; n++) {
            const float *dyn = dy + (size_t)n * y_image;
            im2col(col, x + (size_t)n * x_image, C, H, W, K);
            gemm_nt(dw_part, dyn, col, OC, ckk, hw, 1.0f);
            for (int oc = 0; oc < OC; oc++) {
                /* A plane sum can have thousands of terms: accumulate in double. */
                const float *plane = dyn + (size_t)oc * hw;
                double s = 0.0;
                for (int p = 0; p < hw; p++) s += plane[p];
                db_part[oc] += (float)s;
            }
            if (dx) {
                float *dxn = dx + (size_t)n * x_image;
                gemm_tn(col, l->w, dyn, ckk, hw, OC, 0.0f);  /* col now holds dcol */
                memset(dxn, 0, sizeof(float) * x_image);
                col2im(dxn, col, C, H, W, K);
            }
        }
    }

    /* Fixed-order reduction of the thread partials into the layer's gradient. */
    for (int t = 0; t < used; t++) {
        const float *dw_part = scratch + (size_t)t * per_thread + col_size;
        const float *db_part = dw_part + w_size;
        for (size_t i = 0; i < w_size; i++) l->dw[i] += dw_part[i];
        for (int oc = 0; oc < OC; oc++) l->db[oc] += db_part[oc];
    }
}
