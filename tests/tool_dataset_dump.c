/*
 * tool_dataset_dump.c - test helper for tests/test_dataset.py (not a test).
 *
 *   tool_dataset_dump SPEC OUT
 *       dataset_open(SPEC) and writes
 *         OUT.meta  line 1 "n C H W has_labels F", line 2 the source string
 *         OUT.u8    pixels, [n][C][H][W] uint8
 *         OUT.i32   labels, [n] int32 little-endian (only if has_labels)
 *         OUT.idx   the F image indices k*n/F (k < F, F = min(n, 32)), int64
 *         OUT.f32   dataset_get_batch_f32 of those indices, [F][C][H][W] float32
 *         OUT.names dataset_name of every image, one per line (only if known)
 *       line 1 of OUT.meta also ends with n_skipped and 1 if pixels != NULL.
 *       SPEC may carry dataset options (dataset_opts.h).
 *   tool_dataset_dump --split FRAC SEED SPEC OUT
 *       dataset_open, then dataset_split(FRAC, SEED); writes OUT.train.* and
 *       OUT.val.* as above.
 * On error prints "tool_dataset_dump: <code name>: <message>" to stderr and
 * exits with the AE_* code; usage errors exit with USAGE_EXIT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/dataset.h"

#define USAGE_EXIT 64
#define PATH_BYTES 4096
/* Images converted to float for the f32 check. */
#define F32_IMAGES 32
/* Longest image name written. */
#define NAME_BYTES 4096

static int fail(const Err *err)
{
    fprintf(stderr, "tool_dataset_dump: %s: %s\n", err_name(err->code), err->msg);
    return err->code ? err->code : 1;
}

static int write_file(const char *prefix, const char *ext, const void *data, size_t bytes)
{
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    FILE *f = fopen(path, "wb");
    if (!f || (bytes && fwrite(data, 1, bytes, f) != bytes) || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

static int dump(const Dataset *ds, const char *prefix)
{
    int64_t img = dataset_image_bytes(ds);
    int64_t f = ds->n < F32_IMAGES ? ds->n : F32_IMAGES;
    char meta[DATASET_SOURCE_BYTES + 128];
    snprintf(meta, sizeof meta, "%lld %d %d %d %d %lld %lld %d\n%s\n", (long long)ds->n, ds->C, ds->H, ds->W,
             ds->labels != NULL, (long long)f, (long long)ds->n_skipped, ds->pixels != NULL, ds->source);
    int64_t *idx = xmalloc((size_t)f * sizeof *idx);
    float *x = xmalloc((size_t)(f * img) * sizeof *x);
    for (int64_t k = 0; k < f; k++) idx[k] = k * ds->n / f;
    dataset_get_batch_f32(x, ds, idx, f);
    uint8_t *pix = xmalloc((size_t)(ds->n * img));
    for (int64_t i = 0; i < ds->n; i++) dataset_get_u8(pix + i * img, ds, i);
    char name[NAME_BYTES];
    int has_names = ds->n > 0 && dataset_name(name, sizeof name, ds, 0);
    size_t cap = 1, len = 0;
    char *names = xmalloc(cap);
    for (int64_t i = 0; has_names && i < ds->n; i++) {
        dataset_name(name, sizeof name, ds, i);
        size_t l = strlen(name);
        if (len + l + 2 > cap) {
            size_t ncap = 2 * (len + l + 2);
            char *g = xmalloc(ncap);
            memcpy(g, names, len);
            free(names);
            names = g;
            cap = ncap;
        }
        memcpy(names + len, name, l);
        names[len + l] = '\n';
        len += l + 1;
    }
    int rc = write_file(prefix, "meta", meta, strlen(meta)) ||
             write_file(prefix, "u8", pix, (size_t)(ds->n * img)) ||
             (has_names && write_file(prefix, "names", names, len)) ||
             (ds->labels && write_file(prefix, "i32", ds->labels, (size_t)ds->n * sizeof *ds->labels)) ||
             write_file(prefix, "idx", idx, (size_t)f * sizeof *idx) ||
             write_file(prefix, "f32", x, (size_t)(f * img) * sizeof *x);
    free(idx);
    free(x);
    free(pix);
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    Err err;
    err_clear(&err);
    Dataset ds;
    if (argc == 3) {
        if (dataset_open(&ds, argv[1], &err)) return fail(&err);
        int rc = dump(&ds, argv[2]);
        dataset_free(&ds);
        return rc;
    }
    if (argc == 6 && strcmp(argv[1], "--split") == 0) {
        double frac = strtod(argv[2], NULL);
        unsigned long long seed = strtoull(argv[3], NULL, 10);
        if (dataset_open(&ds, argv[4], &err)) return fail(&err);
        Dataset train, val;
        int rc = dataset_split(&train, &val, &ds, frac, seed, &err);
        dataset_free(&ds);
        if (rc) return fail(&err);
        char prefix[PATH_BYTES];
        snprintf(prefix, sizeof prefix, "%s.train", argv[5]);
        rc = dump(&train, prefix);
        snprintf(prefix, sizeof prefix, "%s.val", argv[5]);
        rc = rc || dump(&val, prefix);
        dataset_free(&train);
        dataset_free(&val);
        return rc;
    }
    fprintf(stderr, "usage: %s [--split FRAC SEED] SPEC OUT\n", argv[0]);
    return USAGE_EXIT;
}
