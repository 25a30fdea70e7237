/*
 * test_grad_sync.c - the gradient bucket partition (grad_sync.h) and the
 * backward hook it relies on (model.h model_forward_backward_hooked).
 *   - grad_buckets_partition against buckets worked out by hand from DDP's
 *     rule (a bucket closes once it holds >= cap; slices are never split;
 *     reducer.cpp compute_bucket_assignment_by_size): cap smaller than every
 *     layer, cap hit exactly, cap one above a sum, cap 0 (one bucket), one
 *     huge bucket, zero-size slices, no slices; and on random inputs the
 *     invariants: buckets tile [0, total) from the top down in completion
 *     order, start and end on slice boundaries, and all but the last hold
 *     >= cap while dropping their last slice would leave < cap.
 *     (tests/test_grad_buckets_torch.py compares with PyTorch's own
 *     implementation.)
 *   - grad_sync_init on the mnist preset: the buckets for 0, 1, 16 and 64
 *     KiB, worked out by hand from the layer sizes of the preset.
 *   - the hook: model_forward_backward_hooked gives the same gradients bit
 *     for bit as model_forward_backward; it is called once per layer, with
 *     done_offset = the offset of each conv's weight (model_tensor) and
 *     unchanged after other layers; and every gradient the hook was told is
 *     final really is (a snapshot taken at the call equals the end result).
 * No MPI calls (grad_sync_init does none).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/check.h"
#include "par/grad_sync.h"
#include "model/model.h"
#include "testutil.h"

#define MAX_SLICES 16
/* Random partition cases, and the largest random slice (floats). */
#define RANDOM_CASES 2000
#define RANDOM_SLICE_MAX 5000

typedef struct Want {
    size_t offset, count;
} Want;

static void expect_buckets(const size_t *sizes, int n, size_t cap, const Want *want, int n_want)
{
    GradBucket out[MAX_SLICES];
    int nb = grad_buckets_partition(out, sizes, n, cap);
    assert_int_equal(nb, n_want);
    for (int b = 0; b < nb; b++) {
        assert_int_equal(out[b].offset, want[b].offset);
        assert_int_equal(out[b].count, want[b].count);
    }
}

static void test_partition_edge_cases(void **state)
{
    (void)state;
    /* Slices in completion order: 10 (top of memory, [50,60)), 20 ([30,50)), 30 ([0,30)). */
    const size_t s3[] = { 10, 20, 30 };
    /* cap 0: no limit, one bucket. */
    expect_buckets(s3, 3, 0, (const Want[]){ { 0, 60 } }, 1);
    /* cap smaller than every layer: one bucket per layer, top down. */
    expect_buckets(s3, 3, 1, (const Want[]){ { 50, 10 }, { 30, 20 }, { 0, 30 } }, 3);
    expect_buckets(s3, 3, 10, (const Want[]){ { 50, 10 }, { 30, 20 }, { 0, 30 } }, 3);
    /* cap between: 10 < 11, 10+20 = 30 >= 11 closes; 30 alone. */
    expect_buckets(s3, 3, 11, (const Want[]){ { 30, 30 }, { 0, 30 } }, 2);
    /* cap hit exactly by 10+20 closes the bucket (>=, not >). */
    expect_buckets(s3, 3, 30, (const Want[]){ { 30, 30 }, { 0, 30 } }, 2);
    /* cap one above 10+20: everything in one bucket (the last one may be
     * larger or smaller than the cap). */
    expect_buckets(s3, 3, 31, (const Want[]){ { 0, 60 } }, 1);
    /* One huge bucket. */
    expect_buckets(s3, 3, (size_t)1 << 40, (const Want[]){ { 0, 60 } }, 1);
    /* A layer larger than the cap between small ones is never split. */
    const size_t big[] = { 3, 1000, 3, 3 };
    expect_buckets(big, 4, 5, (const Want[]){ { 6, 1003 }, { 0, 6 } }, 2);
    /* Zero-size slices join the open bucket; no empty bucket. */
    const size_t zeros[] = { 0, 10, 0, 0, 20, 0 };
    expect_buckets(zeros, 6, 10, (const Want[]){ { 20, 10 }, { 0, 20 } }, 2);
    expect_buckets(zeros, 6, 0, (const Want[]){ { 0, 30 } }, 1);
    const size_t all_zero[] = { 0, 0 };
    expect_buckets(all_zero, 2, 4, NULL, 0);
    expect_buckets(all_zero, 2, 0, NULL, 0);
    /* No slices at all. */
    expect_buckets(NULL, 0, 0, NULL, 0);
    /* One slice. */
    const size_t one[] = { 7 };
    expect_buckets(one, 1, 3, (const Want[]){ { 0, 7 } }, 1);
    expect_buckets(one, 1, 100, (const Want[]){ { 0, 7 } }, 1);
}

static void test_partition_random_invariants(void **state)
{
    (void)state;
    uint64_t rng = 20240611;
    for (int c = 0; c < RANDOM_CASES; c++) {
        int n = 1 + (int)(test_rng_next(&rng) % MAX_SLICES);
        size_t sizes[MAX_SLICES], total = 0;
        /* Slice boundaries: bound[k] = where slice k ends (top down). */
        size_t bound[MAX_SLICES + 1];
        for (int k = 0; k < n; k++) {
            sizes[k] = test_rng_next(&rng) % 4 == 0 ? 0 : 1 + test_rng_next(&rng) % RANDOM_SLICE_MAX;
            total += sizes[k];
        }
        bound[0] = total;
        for (int k = 0; k < n; k++) bound[k + 1] = bound[k] - sizes[k];
        size_t cap = test_rng_next(&rng) % 5 == 0 ? 0 : test_rng_next(&rng) % (2 * RANDOM_SLICE_MAX);
        GradBucket out[MAX_SLICES];
        int nb = grad_buckets_partition(out, sizes, n, cap);
        assert_true(nb >= 0 && nb <= n);
        if (total == 0) {
            assert_int_equal(nb, 0);
            continue;
        }
        if (cap == 0) assert_int_equal(nb, 1);
        size_t top = total;
        for (int b = 0; b < nb; b++) {
            assert_true(out[b].count > 0);
            assert_int_equal(out[b].offset + out[b].count, top);
            /* It ends on a slice boundary; `last` = the non-empty slice it
             * ends with (the lowest in memory). */
            size_t last = 0;
            for (int k = 0; k < n; k++)
                if (bound[k + 1] == out[b].offset && sizes[k] > 0) last = sizes[k];
            assert_true(last > 0 && last <= out[b].count);
            if (b < nb - 1) assert_true(out[b].count >= cap);
            /* It closed as soon as it reached cap (the last bucket: or it
             * is what remained, below cap). */
            if (cap > 0) assert_true(out[b].count - last < cap || (b == nb - 1 && out[b].count < cap));
            top = out[b].offset;
        }
        assert_int_equal(top, 0);
    }
}

/* mnist preset: layer sizes (OC*C*K*K + OC) in completion order, by hand:
 * conv5 16->1: 145, conv4 16->16: 2320, conv3 8->16: 1168, conv2 8->8: 584,
 * conv1 16->8: 1160, conv0 1->16: 160; total 5537.  The buckets below are
 * worked out by hand from these sizes with DDP's rule. */
/* grad_sync_init over a model's gradient block, as train.c calls it. */
static void sync_init_model(GradSync *s, const ParCtx *ctx, Model *m, int kib)
{
    size_t slices[MODEL_MAX_LAYERS];
    const int n = model_grad_slices(m, slices);
    grad_sync_init(s, ctx, m->grads, m->n_params, slices, n, kib);
}

static void test_grad_sync_init_mnist(void **state)
{
    (void)state;
    ModelSpec spec;
    Err err;
    assert_int_equal(model_parse(&spec, "mnist", 1, 28, 28, &err), AE_OK);
    Model m;
    model_build(&m, &spec, 1, 1);
    assert_int_equal(m.n_params, 5537);
    ParCtx ctx = { 0, 1, 0, 1, NULL };
    GradSync s;
    sync_init_model(&s, &ctx, &m, 0);
    assert_true(s.blocking);
    assert_int_equal(s.n_buckets, 1);
    assert_int_equal(s.buckets[0].offset, 0);
    assert_int_equal(s.buckets[0].count, 5537);
    /* 1 KiB = 256 floats: 145+2320, 1168, 584, 1160, 160. */
    sync_init_model(&s, &ctx, &m, 1);
    assert_false(s.blocking);
    const Want w1[] = { { 5537 - 2465, 2465 }, { 5537 - 2465 - 1168, 1168 }, { 160 + 1160, 584 }, { 160, 1160 },
                        { 0, 160 } };
    assert_int_equal(s.n_buckets, 5);
    for (int b = 0; b < 5; b++) {
        assert_int_equal(s.buckets[b].offset, w1[b].offset);
        assert_int_equal(s.buckets[b].count, w1[b].count);
    }
    /* 16 KiB = 4096 floats: 145+2320+1168+584 = 4217 closes; 1160+160. */
    sync_init_model(&s, &ctx, &m, 16);
    assert_int_equal(s.n_buckets, 2);
    assert_int_equal(s.buckets[0].offset, 1320);
    assert_int_equal(s.buckets[0].count, 4217);
    assert_int_equal(s.buckets[1].offset, 0);
    assert_int_equal(s.buckets[1].count, 1320);
    /* 64 KiB: the whole model (22 KB) is one bucket. */
    sync_init_model(&s, &ctx, &m, 64);
    assert_int_equal(s.n_buckets, 1);
    assert_int_equal(s.buckets[0].count, 5537);
    model_free(&m);
}

/* Records every hook call. */
typedef struct Recorder {
    const Model *m;
    int calls;
    size_t done[MODEL_MAX_LAYERS];
    float *snap[MODEL_MAX_LAYERS];   /* grads[done..n_params) at the call */
} Recorder;

static void record(void *user, size_t done_offset)
{
    Recorder *r = user;
    assert_true(r->calls < MODEL_MAX_LAYERS);
    size_t n = r->m->n_params - done_offset;
    r->done[r->calls] = done_offset;
    r->snap[r->calls] = xmalloc((n ? n : 1) * sizeof(float));
    memcpy(r->snap[r->calls], r->m->grads + done_offset, n * sizeof(float));
    r->calls++;
}

static void test_hook_contract(void **state)
{
    (void)state;
    /* Starts with a pooling layer, so the hook also runs after done == 0. */
    const char *archs[] = { "c6 p c5 | c4 u c2", "p c6 | c3 u c2k5" };
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        ModelSpec spec;
        Err err;
        assert_int_equal(model_parse(&spec, archs[a], 2, 8, 8, &err), AE_OK);
        const int N = 3;
        Model m;
        model_build(&m, &spec, N, 1);
        model_init_glorot(&m, 11);
        uint64_t rng = 5 + a;
        float *x = xmalloc((size_t)N * 2 * 8 * 8 * sizeof(float));
        test_fill_uniform(x, (size_t)N * 2 * 8 * 8, &rng, 0, 1);
        const double inv = 1.0 / (N * 2.0 * 8 * 8);

        model_zero_grad(&m);
        double sse_ref = model_forward_backward(&m, x, N, inv);
        float *ref = xmalloc(m.n_params * sizeof(float));
        memcpy(ref, m.grads, m.n_params * sizeof(float));

        Recorder r;
        memset(&r, 0, sizeof r);
        r.m = &m;
        ModelGradHook hook = { record, &r };
        model_zero_grad(&m);
        double sse = model_forward_backward_hooked(&m, x, N, inv, &hook);
        assert_true(sse == sse_ref);
        assert_memory_equal(m.grads, ref, m.n_params * sizeof(float));

        /* Expected done offsets: walk the layers back; a conv's weight
         * offset comes from model_tensor (conv j = tensor 2j). */
        assert_int_equal(r.calls, spec.n_layers);
        size_t want = m.n_params;
        int conv = m.n_conv - 1;
        for (int i = spec.n_layers - 1, c = 0; i >= 0; i--, c++) {
            if (spec.kind[i] == LAYER_CONV) want = model_tensor(&m, 2 * conv--).offset;
            assert_int_equal(r.done[c], want);
            size_t n = m.n_params - r.done[c];
            assert_memory_equal(r.snap[c], m.grads + r.done[c], n * sizeof(float));
            free(r.snap[c]);
        }
        assert_int_equal(want, 0);
        free(ref);
        free(x);
        model_free(&m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_edge_cases),
        cmocka_unit_test(test_partition_random_invariants),
        cmocka_unit_test(test_grad_sync_init_mnist),
        cmocka_unit_test(test_hook_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
