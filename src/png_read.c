/*
 * png_read.c - one PNG file into planar 8-bit grey or RGB pixels with
 * libpng's transforms (see include/png_read.h).  libpng reports errors by
 * longjmp to the setjmp in png_read_chw; everything allocated after the
 * setjmp is held in volatile pointers so the error path can free it.
 * No MPI, no shared state.
 */
#include "png_read.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Bytes of the PNG signature checked before libpng starts. */
#define PNG_SIG_BYTES 8
/* RGB -> grey weights: ITU-R BT.709 luma (0.2126, 0.7152, 0.0722) scaled
 * by 2^15, the values libpng's png_set_rgb_to_gray uses by default (they
 * sum to 32768, so R = G = B = v gives exactly v). */
#define LUMA_R 6968u
#define LUMA_G 23434u
#define LUMA_B 2366u
#define LUMA_SHIFT 15
#define LUMA_HALF (1u << (LUMA_SHIFT - 1))

typedef struct ReadCtx {
    char msg[256]; /* libpng's error text */
} ReadCtx;

static void on_png_error(png_structp png, png_const_charp msg)
{
    ReadCtx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Warnings (e.g. unknown ancillary chunks) do not stop the read. */
static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

int png_read_chw(uint8_t *out, const char *path, int C, int H, int W, Err *err)
{
    if ((C != 1 && C != 3) || H < 1 || W < 1)
        return err_set(err, AE_EARG, "png_read_chw: need C = 1 or 3 and H, W >= 1 (got %d, %d, %d)", C, H, W);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    png_byte sig[PNG_SIG_BYTES];
    if (fread(sig, 1, sizeof sig, f) != sizeof sig || png_sig_cmp(sig, 0, sizeof sig) != 0) {
        fclose(f);
        return err_set(err, AE_EFORMAT, "%s: not a PNG file (bad signature; hint: give an 8- or 16-bit PNG image)",
                       path);
    }
    ReadCtx ctx = { "" };
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, on_png_error, on_png_warning);
    CHECK(png != NULL);
    png_infop info = png_create_info_struct(png);
    CHECK(info != NULL);
    png_byte *volatile pix = NULL;       /* [H][W*C] interleaved */
    png_bytep *volatile rows = NULL;     /* [H] row pointers into pix */
    int rc = AE_OK;
    if (setjmp(png_jmpbuf(png))) {
        rc = err_set(err, AE_EFORMAT, "%s: libpng cannot read it: %s (hint: the file is damaged or not a PNG)", path,
                     ctx.msg);
        goto done;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, PNG_SIG_BYTES);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w != (png_uint_32)W || h != (png_uint_32)H) {
        rc = err_set(err, AE_ESHAPE,
                     "%s is %lux%lu pixels (WxH) but the model takes %dx%d; aesim does not resize (hint: resize the "
                     "image to %dx%d first)",
                     path, (unsigned long)w, (unsigned long)h, W, H, W, H);
        goto done;
    }
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (depth == 16) png_set_scale_16(png);
    png_set_strip_alpha(png);
    const int grey = !(type & PNG_COLOR_MASK_COLOR);
    if (C == 3 && grey) png_set_gray_to_rgb(png);
    /* RGB -> grey is done below, not with png_set_rgb_to_gray, which works
     * on linear light when the file has a gAMA chunk. */
    const int S = grey ? 1 : 3; /* samples per pixel delivered by libpng */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != (C == 3 ? 3 : S) || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)W * (size_t)(C == 3 ? 3 : S)) {
        rc = err_set(err, AE_EFORMAT, "%s: unexpected layout after conversion (%d channels, %d bits)", path,
                     png_get_channels(png, info), png_get_bit_depth(png, info));
        goto done;
    }
    const int CS = C == 3 ? 3 : S; /* interleaved samples per pixel in pix */
    pix = xmalloc((size_t)H * (size_t)W * (size_t)CS);
    rows = xmalloc((size_t)H * sizeof *rows);
    for (int y = 0; y < H; y++) rows[y] = pix + (size_t)y * (size_t)W * (size_t)CS;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    if (C == CS) { /* interleaved rows -> planes */
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    out[((size_t)c * (size_t)H + (size_t)y) * (size_t)W + (size_t)x] =
                        pix[((size_t)y * (size_t)W + (size_t)x) * (size_t)C + (size_t)c];
    } else { /* RGB -> grey: BT.709 luma, libpng's coefficients in 1/32768, rounded */
        for (size_t i = 0; i < (size_t)H * (size_t)W; i++) {
            uint32_t r = pix[3 * i], g = pix[3 * i + 1], b = pix[3 * i + 2];
            out[i] = (uint8_t)((LUMA_R * r + LUMA_G * g + LUMA_B * b + LUMA_HALF) >> LUMA_SHIFT);
        }
    }
done:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(pix);
    fclose(f);
    return rc;
}
