/*
 * fuzz_npy.c - libFuzzer target for the .npy header parser (npy_header_read
 * in src/data/npy.c) over an in-memory byte source.
 */
#include <string.h>

#include "data/npy.h"

typedef struct Cursor {
    const uint8_t *p;
    size_t left;
} Cursor;

static int cursor_read(void *ctx, void *buf, uint64_t n, Err *err)
{
    Cursor *c = ctx;
    if (n > c->left) return err_set(err, AE_EFORMAT, "truncated");
    memcpy(buf, c->p, (size_t)n);
    c->p += n;
    c->left -= (size_t)n;
    return AE_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Cursor c = {data, size};
    NpyHeader hd;
    Err err;
    npy_header_read(&hd, cursor_read, &c, size, "fuzz.npy", &err);
    return 0;
}
