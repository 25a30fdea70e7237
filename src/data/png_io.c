/*
 * png_io.c - 8-bit grey/RGB PNG writing and image grids (see include/data/png_io.h).
 *
 * libpng reports errors by calling an error function that must not return;
 * ours records the message and longjmps back to png_encode(), which is the
 * only function that calls setjmp (libpng manual, "Setjmp/longjmp issues").
 * The output goes to an AtomicFile, so on any error the temporary file is
 * removed and nothing appears at the final name.
 * What it does not do: reading, 16-bit, palette, alpha, interlacing.
 * Threading/MPI: none; no shared state (the error context lives on the
 * caller's stack).
 */
#include "data/png_io.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/fileio.h"

/* Room for one libpng error message (they are short, e.g. "Write Error"). */
#define PNG_ERR_TEXT_BYTES 256

/* Largest 8-bit sample value, the scale from [0, 1] floats to bytes. */
#define PNG_U8_MAX 255.0

/* Error and I/O context of one encode: the stream and the first failure. */
typedef struct PngErrCtx {
    FILE *f;                        /* output stream (the AtomicFile's) */
    int write_errno;                /* errno of a failed fwrite, 0 if none */
    char text[PNG_ERR_TEXT_BYTES];  /* the message for Err */
} PngErrCtx;

static void on_png_error(png_structp png, png_const_charp msg)
{
    PngErrCtx *ctx = png_get_error_ptr(png);
    /* A failed write is better explained by its errno ("File too large",
     * "No space left on device") than by libpng's text. */
    if (ctx->write_errno)
        snprintf(ctx->text, sizeof ctx->text, "%s", strerror(ctx->write_errno));
    else
        snprintf(ctx->text, sizeof ctx->text, "libpng: %s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

/* libpng write callback: fwrite that records errno before failing. */
static void on_png_write(png_structp png, png_bytep data, size_t len)
{
    PngErrCtx *ctx = png_get_io_ptr(png);
    errno = 0;
    if (fwrite(data, 1, len, ctx->f) != len) {
        ctx->write_errno = errno ? errno : EIO;
        png_error(png, "write failed");
    }
}

/* libpng flush callback: stdio buffering is flushed by atomic_commit. */
static void on_png_flush(png_structp png)
{
    (void)png;
}

/* libpng warnings on the write path only concern ancillary settings we never
 * make (gamma, text chunks); the image data are unaffected, so they are
 * dropped rather than printed from library code. */
static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* Encodes pix [C][H][W] to ectx->f.  row: scratch of W*C bytes.  Returns 0,
 * or -1 with ectx->text set.  Locals are not modified between setjmp and a
 * possible longjmp except the loop counter, which is dead after it. */
static int png_encode(const uint8_t *pix, int C, int H, int W, uint8_t *row,
                      PngErrCtx *ectx)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, ectx, on_png_error,
                                              on_png_warning);
    if (!png) {
        snprintf(ectx->text, sizeof ectx->text, "libpng could not allocate its write state");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(ectx->text, sizeof ectx->text, "libpng could not allocate its info state");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, ectx, on_png_write, on_png_flush);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8,
                 C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    const size_t plane = (size_t)H * (size_t)W;
    for (int y = 0; y < H; y++) {
        /* planar CHW -> interleaved HWC for one row */
        for (int c = 0; c < C; c++) {
            const uint8_t *src = pix + (size_t)c * plane + (size_t)y * (size_t)W;
            for (int x = 0; x < W; x++) row[(size_t)x * (size_t)C + (size_t)c] = src[x];
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int png_write_chw(const char *path, const uint8_t *pix, int C, int H, int W, Err *err)
{
    if (C != 1 && C != 3)
        return err_set(err, AE_EARG, "%s: cannot write a PNG with %d channels (need 1 = grey or 3 = RGB)",
                       path, C);
    if (H < 1 || W < 1 || H > PNG_MAX_SIDE || W > PNG_MAX_SIDE)
        return err_set(err, AE_EARG, "%s: cannot write a %dx%d PNG (sides must be 1..%d pixels)", path,
                       W, H, PNG_MAX_SIDE);
    AtomicFile af;
    if (atomic_open(&af, path, err)) return err->code;
    uint8_t *row = xmalloc((size_t)W * (size_t)C);
    PngErrCtx ectx = {.f = af.f, .write_errno = 0, .text = {0}};
    int bad = png_encode(pix, C, H, W, row, &ectx);
    free(row);
    if (bad) {
        atomic_abort(&af);
        return err_set(err, AE_EIO, "cannot write PNG %s: %s (disk full or folder not writable?)", path,
                       ectx.text);
    }
    return atomic_commit(&af, err);
}

int png_encode_chw_mem(uint8_t **out, size_t *len, const uint8_t *pix, int C, int H, int W, Err *err)
{
    *out = NULL;
    *len = 0;
    if ((C != 1 && C != 3) || H < 1 || W < 1 || H > PNG_MAX_SIDE || W > PNG_MAX_SIDE)
        return err_set(err, AE_EARG, "cannot encode a %dx%d PNG with %d channels (need 1 or 3 channels, sides "
                                     "1..%d)", W, H, C, PNG_MAX_SIDE);
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    CHECK(f != NULL);
    uint8_t *row = xmalloc((size_t)W * (size_t)C);
    PngErrCtx ectx = {.f = f, .write_errno = 0, .text = {0}};
    int bad = png_encode(pix, C, H, W, row, &ectx);
    free(row);
    CHECK(fclose(f) == 0);
    if (bad) {
        free(buf);
        return err_set(err, AE_EIO, "cannot encode PNG in memory: %s", ectx.text);
    }
    *out = (uint8_t *)buf;
    *len = n;
    return AE_OK;
}

uint8_t png_float_to_u8(float x)
{
    if (!(x > 0.0f)) return 0; /* also NaN */
    if (x >= 1.0f) return (uint8_t)PNG_U8_MAX;
    return (uint8_t)floor((double)x * PNG_U8_MAX + 0.5);
}

int png_write_grid(const char *path, const float *images, int n_images, int rows, int cols, int C,
                   int H, int W, int scale, int pad, Err *err)
{
    if (C != 1 && C != 3)
        return err_set(err, AE_EARG, "%s: cannot write a grid with %d channels (need 1 = grey or 3 = RGB)",
                       path, C);
    if (rows < 1 || cols < 1 || H < 1 || W < 1 || scale < 1 || pad < 0)
        return err_set(err, AE_EARG,
                       "%s: bad grid layout rows %d cols %d image %dx%d scale %d pad %d "
                       "(sizes and scale must be >= 1, pad >= 0)",
                       path, rows, cols, W, H, scale, pad);
    if (n_images < 0 || (int64_t)n_images > (int64_t)rows * cols)
        return err_set(err, AE_EARG, "%s: %d images do not fit a %d x %d grid (use more rows or columns)",
                       path, n_images, rows, cols);
    const int64_t tile_h = (int64_t)H * scale, tile_w = (int64_t)W * scale;
    const int64_t gh = pad + rows * (tile_h + pad), gw = pad + cols * (tile_w + pad);
    if (gh > PNG_MAX_SIDE || gw > PNG_MAX_SIDE || (int64_t)C * gh * gw > PNG_GRID_MAX_BYTES)
        return err_set(err, AE_EARG,
                       "%s: grid would be %lldx%lld pixels, over the limit (reduce scale, pad or tiles)",
                       path, (long long)gw, (long long)gh);

    const size_t plane = (size_t)gh * (size_t)gw;
    uint8_t *grid = xmalloc((size_t)C * plane);
    memset(grid, PNG_GRID_PAD_GREY, (size_t)C * plane);
    const size_t img_plane = (size_t)H * (size_t)W;
    for (int i = 0; i < n_images; i++) {
        const int64_t y0 = pad + (int64_t)(i / cols) * (tile_h + pad);
        const int64_t x0 = pad + (int64_t)(i % cols) * (tile_w + pad);
        for (int c = 0; c < C; c++) {
            const float *src = images + ((size_t)i * (size_t)C + (size_t)c) * img_plane;
            uint8_t *dst = grid + (size_t)c * plane;
            for (int y = 0; y < H; y++) {
                for (int x = 0; x < W; x++) {
                    const uint8_t v = png_float_to_u8(src[(size_t)y * (size_t)W + (size_t)x]);
                    for (int sy = 0; sy < scale; sy++) {
                        uint8_t *out = dst + (size_t)(y0 + (int64_t)y * scale + sy) * (size_t)gw +
                                       (size_t)(x0 + (int64_t)x * scale);
                        memset(out, v, (size_t)scale);
                    }
                }
            }
        }
    }
    int rc = png_write_chw(path, grid, C, (int)gh, (int)gw, err);
    free(grid);
    return rc;
}
