/*
 * bench_allreduce.c - time of par_allreduce_sum_f32 (one in-place
 * MPI_Allreduce) for message sizes from 1 KiB to 64 MiB, median of repeats,
 * for the scaling model in the README (launch/bench.sh runs it on 2 ranks).
 * Output: one line per size: bytes, median microseconds, GB/s of algorithm
 * bandwidth (bytes / time).
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "base/check.h"
#include "par/par.h"
#include "base/timer.h"

/* Repeats per size (the median is reported). */
#define REPEATS 21

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    const size_t max_floats = (size_t)16 << 20; /* 64 MiB */
    float *buf = xcalloc(max_floats, sizeof(float));
    par_log0(&ctx, "# allreduce on %d ranks: bytes median_us algbw_GBps\n", ctx.size);
    for (size_t n = 256; n <= max_floats; n *= 4) {
        double t[REPEATS];
        for (int r = 0; r < REPEATS; r++) {
            par_barrier(&ctx);
            double t0 = timer_now();
            par_allreduce_sum_f32(&ctx, buf, n);
            t[r] = timer_now() - t0;
        }
        bench_sort(t, REPEATS);
        ParStats s = par_stats(&ctx, t[REPEATS / 2]);
        par_log0(&ctx, "%zu %.1f %.2f\n", n * sizeof(float), 1e6 * s.max, n * sizeof(float) / s.max / 1e9);
    }
    free(buf);
    par_finalize(&ctx);
    return 0;
}
