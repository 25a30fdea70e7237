/*
 * tool_dataset_read_bench.c - benchmark helper for datasets/bench_pack.sh
 * (not a test): how fast batches come out of a dataset.
 *
 *   tool_dataset_read_bench SPEC BATCH NBATCHES SEED
 *       dataset_open(SPEC), then NBATCHES random batches of BATCH images
 *       gathered with dataset_get_batch_f32 (what the trainer does); prints
 *       "open S s, read N images in T s: R images/s, B MB/s".
 */
#include <stdio.h>
#include <stdlib.h>

#include "base/check.h"
#include "data/dataset.h"
#include "base/rng.h"
#include "base/timer.h"

#define USAGE_EXIT 64

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s SPEC BATCH NBATCHES SEED\n", argv[0]);
        return USAGE_EXIT;
    }
    int64_t batch = atoll(argv[2]), nb = atoll(argv[3]);
    Rng r;
    rng_seed(&r, strtoull(argv[4], NULL, 10), RNG_STREAM_SPLIT);
    Err err;
    Dataset ds;
    double t0 = timer_now();
    if (dataset_open(&ds, argv[1], &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return err.code;
    }
    double t1 = timer_now();
    int64_t img = dataset_image_bytes(&ds);
    float *x = xmalloc((size_t)(batch * img) * sizeof *x);
    int64_t *idx = xmalloc((size_t)batch * sizeof *idx);
    for (int64_t b = 0; b < nb; b++) {
        for (int64_t k = 0; k < batch; k++) idx[k] = (int64_t)rng_below(&r, (uint64_t)ds.n);
        dataset_get_batch_f32(x, &ds, idx, batch);
    }
    double t2 = timer_now();
    printf("%s: open %.3f s, read %lld images in %.3f s: %.0f images/s, %.1f MB/s\n", ds.source, t1 - t0,
           (long long)(batch * nb), t2 - t1, (double)(batch * nb) / (t2 - t1),
           (double)(batch * nb * img) / (t2 - t1) / 1e6);
    free(x);
    free(idx);
    dataset_free(&ds);
    return 0;
}
