/*
 * tool_png_write.c - test helper for tests/test_png_io.py (not a test itself).
 *
 * Generates seeded pseudo-random images (splitmix64 from testutil.h), dumps
 * them raw so Python can build the expected pixels independently, and writes
 * them with png_write_chw / png_write_grid:
 *   tool_png_write chw  OUT.png C H W SEED RAW_OUT
 *       RAW_OUT: the uint8 pixels [C][H][W]
 *   tool_png_write grid OUT.png N ROWS COLS C H W SCALE PAD SEED RAW_OUT
 *       RAW_OUT: the float32 images [N][C][H][W] (native byte order); values
 *       in [-0.25, 1.25) plus NaN/inf/0/1 at fixed places, to test clamping
 * RAW_OUT "-" skips the dump.  On error prints the Err message to stderr and
 * exits 1.  Single-threaded, no MPI.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/png_io.h"
#include "testutil.h"

static void dump(const char *path, const void *data, size_t bytes)
{
    if (strcmp(path, "-") == 0) return;
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "tool_png_write: cannot write %s\n", path);
        exit(2);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: tool_png_write chw OUT.png C H W SEED RAW_OUT\n"
                    "       tool_png_write grid OUT.png N ROWS COLS C H W SCALE PAD SEED RAW_OUT\n");
    return 2;
}

int main(int argc, char **argv)
{
    Err err;
    err_clear(&err);
    if (argc == 8 && strcmp(argv[1], "chw") == 0) {
        const int C = atoi(argv[3]), H = atoi(argv[4]), W = atoi(argv[5]);
        uint64_t seed = strtoull(argv[6], NULL, 10);
        const size_t n = (size_t)(C > 0 ? C : 1) * (size_t)(H > 0 ? H : 1) * (size_t)(W > 0 ? W : 1);
        uint8_t *pix = xmalloc(n);
        for (size_t i = 0; i < n; i++) pix[i] = (uint8_t)(test_rng_next(&seed) >> 56);
        dump(argv[7], pix, n);
        int rc = png_write_chw(argv[2], pix, C, H, W, &err);
        free(pix);
        if (rc) {
            fprintf(stderr, "tool_png_write: %s: %s\n", err_name(rc), err.msg);
            return 1;
        }
        return 0;
    }
    if (argc == 13 && strcmp(argv[1], "grid") == 0) {
        const int N = atoi(argv[3]), rows = atoi(argv[4]), cols = atoi(argv[5]);
        const int C = atoi(argv[6]), H = atoi(argv[7]), W = atoi(argv[8]);
        const int scale = atoi(argv[9]), pad = atoi(argv[10]);
        uint64_t seed = strtoull(argv[11], NULL, 10);
        const size_t n = (size_t)(N > 0 ? N : 1) * (size_t)(C > 0 ? C : 1) * (size_t)(H > 0 ? H : 1) *
                         (size_t)(W > 0 ? W : 1);
        float *img = xmalloc(n * sizeof *img);
        test_fill_uniform(img, n, &seed, -0.25f, 1.25f);
        /* Edge values at fixed places: exact ends, non-finite, a rounding tie. */
        const float special[] = {0.0f, 1.0f, NAN, INFINITY, -INFINITY, -0.0f, 0.5f / 255.0f, 127.5f / 255.0f};
        const size_t n_special = sizeof special / sizeof special[0];
        for (size_t k = 0; k < n_special && k * 7 < n; k++) img[k * 7] = special[k];
        dump(argv[12], img, n * sizeof *img);
        int rc = png_write_grid(argv[2], img, N, rows, cols, C, H, W, scale, pad, &err);
        free(img);
        if (rc) {
            fprintf(stderr, "tool_png_write: %s: %s\n", err_name(rc), err.msg);
            return 1;
        }
        return 0;
    }
    return usage();
}
