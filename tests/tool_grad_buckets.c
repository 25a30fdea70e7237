/*
 * tool_grad_buckets.c - test helper for tests/test_grad_buckets_torch.py
 * (not a test itself).
 *
 *   tool_grad_buckets CAP_FLOATS SIZE...
 *       Prints the buckets of grad_buckets_partition(SIZE..., CAP_FLOATS)
 *       (grad_sync.h), one "offset count" line each, in completion order.
 *   tool_grad_buckets --arch SPEC C H W KIB
 *       Prints the per-conv gradient slice sizes of the model, in
 *       completion order (last conv first), on one line, then the buckets
 *       grad_sync_init makes for KIB KiB, one "offset count" line each.
 * Exits USAGE_EXIT on a bad command line, 1 on a bad spec.  No MPI calls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "par/grad_sync.h"

/* Exit status for a bad command line (above every AE_* code). */
#define USAGE_EXIT 64

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') return 0;
    *out = (size_t)v;
    return 1;
}

static int arch_buckets(char **argv)
{
    int c = atoi(argv[3]), h = atoi(argv[4]), w = atoi(argv[5]), kib = atoi(argv[6]);
    ModelSpec spec;
    Err err;
    err_clear(&err);
    if (model_parse(&spec, argv[2], c, h, w, &err)) {
        fprintf(stderr, "tool_grad_buckets: %s\n", err.msg);
        return 1;
    }
    Model m;
    model_build(&m, &spec, 1, 1);
    for (int i = m.n_conv - 1; i >= 0; i--) {
        ParamTensor wt = model_tensor(&m, 2 * i), b = model_tensor(&m, 2 * i + 1);
        printf("%zu%s", wt.numel + b.numel, i ? " " : "\n");
    }
    ParCtx ctx = { 0, 1, 0, 1, NULL };
    GradSync s;
    size_t slices[MODEL_MAX_LAYERS];
    const int n_slices = model_grad_slices(&m, slices);
    grad_sync_init(&s, &ctx, m.grads, m.n_params, slices, n_slices, kib);
    for (int k = 0; k < s.n_buckets; k++) printf("%zu %zu\n", s.buckets[k].offset, s.buckets[k].count);
    model_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 7 && strcmp(argv[1], "--arch") == 0) return arch_buckets(argv);
    size_t cap, sizes[MODEL_MAX_LAYERS];
    int n = argc - 2;
    if (argc < 2 || n > MODEL_MAX_LAYERS || !parse_size(argv[1], &cap)) {
        fprintf(stderr, "usage: tool_grad_buckets CAP_FLOATS SIZE... (at most %d sizes)\n"
                        "       tool_grad_buckets --arch SPEC C H W KIB\n", MODEL_MAX_LAYERS);
        return USAGE_EXIT;
    }
    for (int k = 0; k < n; k++)
        if (!parse_size(argv[k + 2], &sizes[k])) {
            fprintf(stderr, "tool_grad_buckets: '%s' is not a size\n", argv[k + 2]);
            return USAGE_EXIT;
        }
    GradBucket out[MODEL_MAX_LAYERS];
    int nb = grad_buckets_partition(out, sizes, n, cap);
    for (int b = 0; b < nb; b++) printf("%zu %zu\n", out[b].offset, out[b].count);
    return 0;
}
