/*
 * tool_png_read.c - test helper for tests/test_png_read.py (not a test
 * itself): reads one PNG with png_read_chw and dumps the planar pixels.
 *   tool_png_read IN.png C H W RAW_OUT
 *       RAW_OUT: the uint8 pixels [C][H][W] png_read_chw returned
 * On error prints "code <AE_*> <message>" to stderr and exits 1; bad usage
 * exits 2.  Single-threaded, no MPI.
 */
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "png_read.h"

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: tool_png_read IN.png C H W RAW_OUT\n");
        return 2;
    }
    const int C = atoi(argv[2]), H = atoi(argv[3]), W = atoi(argv[4]);
    if (C < 1 || H < 1 || W < 1) return 2;
    const size_t n = (size_t)C * (size_t)H * (size_t)W;
    uint8_t *pix = xmalloc(n);
    Err err;
    err_clear(&err);
    if (png_read_chw(pix, argv[1], C, H, W, &err)) {
        fprintf(stderr, "code %d %s\n", err.code, err.msg);
        free(pix);
        return 1;
    }
    FILE *f = fopen(argv[5], "wb");
    if (!f || fwrite(pix, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "tool_png_read: cannot write %s\n", argv[5]);
        return 2;
    }
    free(pix);
    return 0;
}
