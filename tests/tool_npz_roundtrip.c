/*
 * tool_npz_roundtrip.c - test helper for tests/test_npy.py (not a test itself).
 *
 *   tool_npz_roundtrip dump IN OUTDIR
 *       Reads IN (npz_read if the name ends in ".npz", else npy_read) and
 *       writes OUTDIR/index.txt, one line per array "I NAME DESCR NDIM D0 D1 ..."
 *       (NAME "-" for a single .npy), and the raw C-order data of array I to
 *       OUTDIR/I.bin.
 *   tool_npz_roundtrip select IN OUTDIR NAME...
 *       Same as dump, with npz_read_only(IN, NAME...).
 *   tool_npz_roundtrip copy IN OUT
 *       Reads IN as above and writes it back with npz_write / npy_write
 *       (by the name of OUT).
 * On error prints "tool_npz_roundtrip: <code name>: <message>" to stderr and
 * exits with the AE_* code (non-zero); usage errors exit with USAGE_EXIT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/npy.h"

/* Exit status for a bad command line (above every AE_* code). */
#define USAGE_EXIT 64
#define PATH_BYTES 4096

static int fail(const Err *err)
{
    fprintf(stderr, "tool_npz_roundtrip: %s: %s\n", err_name(err->code), err->msg);
    return err->code ? err->code : 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Reads IN into a freshly allocated list (one array for a .npy). */
static int read_any(const char *in, const char *const *names, int n_names, NpyArray **arrays, int *n, Err *err)
{
    if (ends_with(in, ".npz")) {
        if (names) return npz_read_only(in, names, n_names, arrays, n, err);
        return npz_read(in, arrays, n, err);
    }
    NpyArray *a = xcalloc(1, sizeof *a);
    if (npy_read(in, a, err)) {
        free(a);
        return err->code;
    }
    *arrays = a;
    *n = 1;
    return AE_OK;
}

static int dump(const char *outdir, const NpyArray *arrays, int n)
{
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/index.txt", outdir);
    FILE *idx = fopen(path, "w");
    if (!idx) {
        perror(path);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        const NpyArray *a = &arrays[i];
        fprintf(idx, "%d %s %s %d", i, a->name[0] ? a->name : "-", npy_dtype_descr(a->dtype), a->ndim);
        for (int d = 0; d < a->ndim; d++) fprintf(idx, " %lld", (long long)a->shape[d]);
        fprintf(idx, "\n");
        snprintf(path, sizeof path, "%s/%d.bin", outdir, i);
        FILE *f = fopen(path, "wb");
        size_t bytes = (size_t)npy_numel(a) * npy_dtype_size(a->dtype);
        if (!f || fwrite(a->data, 1, bytes, f) != bytes || fclose(f) != 0) {
            perror(path);
            fclose(idx);
            return 1;
        }
    }
    return fclose(idx) != 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s dump IN OUTDIR | select IN OUTDIR NAME... | copy IN OUT\n", argv[0]);
        return USAGE_EXIT;
    }
    const char *mode = argv[1], *in = argv[2], *out = argv[3];
    Err err;
    err_clear(&err);
    NpyArray *arrays = NULL;
    int n = 0, rc = 0;
    const char *const *names = NULL;
    int n_names = 0;
    if (strcmp(mode, "select") == 0) {
        names = (const char *const *)(argv + 4);
        n_names = argc - 4;
    } else if (strcmp(mode, "dump") != 0 && strcmp(mode, "copy") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return USAGE_EXIT;
    }
    if (read_any(in, names, n_names, &arrays, &n, &err)) return fail(&err);
    if (strcmp(mode, "copy") == 0) {
        if (ends_with(out, ".npz") ? npz_write(out, arrays, n, &err) : npy_write(out, &arrays[0], &err))
            rc = fail(&err);
    } else {
        rc = dump(out, arrays, n);
    }
    npz_free(arrays, n);
    return rc;
}
