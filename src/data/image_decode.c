/*
 * image_decode.c - strict PNG (libpng) and JPEG (libjpeg-turbo) decoding
 * from memory into 8-bit interleaved samples (see include/data/image_decode.h).
 *
 * Both libraries report errors through callbacks that longjmp back here;
 * everything that must survive the jump lives in a heap-allocated context
 * (not in locals modified after setjmp).  Does not resize, composite alpha
 * or change channels (image_resize.c does).  Threading: per-call state
 * only; no MPI.
 */
#include "data/image_decode.h"
#include "base/fileio.h"

#include "base/check.h"

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <png.h>

/* PNG signature length (ISO/IEC 15948, 5.2). */
#define PNG_SIG_BYTES 8
/* JPEG files start with SOI (FF D8) and then a marker (FF). */
#define JPEG_SIG_BYTES 3
/* Largest PNG side accepted by libpng here (its own default is 1e6); the
 * pixel-count limit is checked separately. */
#define PNG_MAX_SIDE 65535
/* The hint for an image refused for its size (a guard against decompression
 * bombs: a few KiB of PNG can declare gigapixels). */
#define TOO_LARGE_HINT "the limit guards against decompression bombs: downscale the image (a data source takes " \
                       "?max_pixels=N to raise it)"
/* Alignment of pixel buffers (as xmalloc). */
#define PIXEL_ALIGN 64
/* Room for a decoder's message. */
#define DECODE_MSG_BYTES 256
/* 8-bit sample maximum, for CMYK conversion. */
#define SAMPLE_MAX 255

static void *alloc_or_null(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, PIXEL_ALIGN, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

int image_sniff(const uint8_t *buf, size_t len)
{
    static const uint8_t png_sig[PNG_SIG_BYTES] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= PNG_SIG_BYTES && memcmp(buf, png_sig, PNG_SIG_BYTES) == 0) return 'P';
    if (len >= JPEG_SIG_BYTES && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return 'J';
    return 0;
}

void image_free(DecodedImage *im)
{
    if (!im) return;
    free(im->px);
    memset(im, 0, sizeof *im);
}

/* ---- PNG -------------------------------------------------------------- */

typedef struct PngCtx {
    const uint8_t *buf;
    size_t len, pos;
    char msg[DECODE_MSG_BYTES];
    int too_large; /* refused for its size (max_pixels, libpng's side limit), not damaged */
    uint8_t *px;
    png_bytep *rows;
} PngCtx;

static void png_err_fn(png_structp png, png_const_charp msg)
{
    PngCtx *c = png_get_error_ptr(png);
    if (!c->too_large) snprintf(c->msg, sizeof c->msg, "%s", msg); /* else keep the warning that says why */
    png_longjmp(png, 1);
}

static void png_warn_fn(png_structp png, png_const_charp msg)
{
    /* Warnings concern ancillary information (gamma, text, profiles) that is
     * not used; CRC errors are made fatal with png_set_crc_action.  One is
     * kept: a side over png_set_user_limits is warned about ("Image width
     * exceeds user limit in IHDR") before the error "Invalid IHDR data". */
    if (strstr(msg, "exceeds user limit")) {
        PngCtx *c = png_get_error_ptr(png);
        snprintf(c->msg, sizeof c->msg, "%s (%d)", msg, PNG_MAX_SIDE);
        c->too_large = 1;
    }
}

static void png_read_fn(png_structp png, png_bytep out, size_t n)
{
    PngCtx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "truncated file (data ends before the image does)");
    memcpy(out, c->buf + c->pos, n);
    c->pos += n;
}

static int decode_png(DecodedImage *im, const uint8_t *buf, size_t len, const char *what, int64_t max_pixels, Err *err)
{
    PngCtx *c = xcalloc(1, sizeof *c);
    c->buf = buf;
    c->len = len;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        free(c);
        return err_set(err, AE_ENOMEM, "%s: cannot create a PNG decoder", what);
    }
    int rc = AE_OK;
    if (setjmp(png_jmpbuf(png))) {
        if (c->too_large)
            rc = err_set(err, AE_EFORMAT, "%s: PNG too large: %s (hint: " TOO_LARGE_HINT ")", what, c->msg);
        else
            rc = err_set(err, AE_EFORMAT, "%s: bad PNG: %s (hint: the file is damaged or truncated; re-create it, or "
                         "skip bad files with skip_bad=1)", what, c->msg);
        goto done;
    }
    png_set_read_fn(png, c, png_read_fn);
    png_set_user_limits(png, PNG_MAX_SIDE, PNG_MAX_SIDE);
    /* Ancillary-chunk CRC errors are errors too (libpng's default only warns). */
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w < 1 || h < 1) png_error(png, "image smaller than 1x1");
    if ((int64_t)w * (int64_t)h > max_pixels) {
        snprintf(c->msg, sizeof c->msg, "%" PRIu32 "x%" PRIu32 " pixels is more than max_pixels=%" PRId64, w, h,
                 max_pixels);
        c->too_large = 1;
        png_longjmp(png, 1);
    }
    int ct = png_get_color_type(png, info);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (png_get_bit_depth(png, info) == 16) png_set_scale_16(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (ch < 1 || ch > 4 || rowbytes != (size_t)w * (size_t)ch) png_error(png, "unexpected row layout after transforms");
    c->px = alloc_or_null((size_t)h * rowbytes);
    c->rows = alloc_or_null((size_t)h * sizeof *c->rows);
    if (!c->px || !c->rows) png_error(png, "out of memory for the pixels");
    for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->px + (size_t)y * rowbytes;
    png_read_image(png, c->rows);
    png_read_end(png, NULL);
    im->w = (int)w;
    im->h = (int)h;
    im->channels = ch;
    im->px = c->px;
    c->px = NULL;
done:
    png_destroy_read_struct(&png, &info, NULL);
    free(c->px);
    free(c->rows);
    free(c);
    return rc;
}

/* ---- JPEG ------------------------------------------------------------- */

typedef struct JpegCtx {
    struct jpeg_error_mgr pub; /* first: libjpeg casts cinfo->err to this */
    jmp_buf jb;
    char msg[DECODE_MSG_BYTES];
    int too_large; /* refused for its size (max_pixels), not damaged */
    uint8_t *px;
} JpegCtx;

static void jpeg_error_exit_fn(j_common_ptr cinfo)
{
    JpegCtx *c = (JpegCtx *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    snprintf(c->msg, sizeof c->msg, "%s", text);
    longjmp(c->jb, 1);
}

static void jpeg_emit_fn(j_common_ptr cinfo, int level)
{
    /* level -1 is a warning (corrupt data, premature end): fatal here, as the
     * decoder would fill the rest with grey.  Trace messages are ignored. */
    if (level < 0) jpeg_error_exit_fn(cinfo);
}

static int decode_jpeg(DecodedImage *im, const uint8_t *buf, size_t len, const char *what, int64_t max_pixels,
                       Err *err)
{
    JpegCtx *c = xcalloc(1, sizeof *c);
    struct jpeg_decompress_struct *ci = xcalloc(1, sizeof *ci);
    ci->err = jpeg_std_error(&c->pub);
    c->pub.error_exit = jpeg_error_exit_fn;
    c->pub.emit_message = jpeg_emit_fn;
    int rc = AE_OK;
    if (setjmp(c->jb)) {
        if (c->too_large)
            rc = err_set(err, AE_EFORMAT, "%s: JPEG too large: %s (hint: " TOO_LARGE_HINT ")", what, c->msg);
        else
            rc = err_set(err, AE_EFORMAT, "%s: bad JPEG: %s (hint: the file is damaged or truncated; re-create it, "
                         "or skip bad files with skip_bad=1)", what, c->msg);
        goto done;
    }
    jpeg_create_decompress(ci);
    jpeg_mem_src(ci, buf, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    if (ci->num_components == 1) ci->out_color_space = JCS_GRAYSCALE;
    else if (cmyk) ci->out_color_space = JCS_CMYK;
    else ci->out_color_space = JCS_RGB;
    jpeg_calc_output_dimensions(ci);
    if (ci->output_width < 1 || ci->output_height < 1) {
        snprintf(c->msg, sizeof c->msg, "image smaller than 1x1");
        longjmp(c->jb, 1);
    }
    if ((int64_t)ci->output_width * (int64_t)ci->output_height > max_pixels) {
        snprintf(c->msg, sizeof c->msg, "%ux%u pixels is more than max_pixels=%" PRId64, (unsigned)ci->output_width,
                 (unsigned)ci->output_height, max_pixels);
        c->too_large = 1;
        longjmp(c->jb, 1);
    }
    jpeg_start_decompress(ci);
    int comp = ci->output_components;
    size_t w = ci->output_width, h = ci->output_height;
    c->px = alloc_or_null(h * w * (size_t)comp);
    if (!c->px) {
        snprintf(c->msg, sizeof c->msg, "out of memory for %zux%zu pixels", w, h);
        longjmp(c->jb, 1);
    }
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = c->px + (size_t)ci->output_scanline * w * (size_t)comp;
        jpeg_read_scanlines(ci, &row, 1);
    }
    jpeg_finish_decompress(ci);
    int out_ch = comp;
    if (comp == 4) {
        /* CMYK -> RGB in place.  With an Adobe marker libjpeg returns the
         * inverted samples Photoshop writes (255 = no ink): R = C*K/255;
         * otherwise plain ink values: R = (255-C)*(255-K)/255. */
        int inv = ci->saw_Adobe_marker;
        for (size_t i = 0; i < w * h; i++) {
            const uint8_t *s = c->px + 4 * i;
            int k = inv ? s[3] : SAMPLE_MAX - s[3];
            uint8_t rgb[3];
            for (int j = 0; j < 3; j++) {
                int v = inv ? s[j] : SAMPLE_MAX - s[j];
                rgb[j] = (uint8_t)((v * k + SAMPLE_MAX / 2) / SAMPLE_MAX);
            }
            memcpy(c->px + 3 * i, rgb, 3);
        }
        out_ch = 3;
    }
    im->w = (int)w;
    im->h = (int)h;
    im->channels = out_ch;
    im->px = c->px;
    c->px = NULL;
done:
    jpeg_destroy_decompress(ci);
    free(c->px);
    free(ci);
    free(c);
    return rc;
}

int image_decode(DecodedImage *im, const uint8_t *buf, size_t len, const char *what, int64_t max_pixels, Err *err)
{
    memset(im, 0, sizeof *im);
    int kind = image_sniff(buf, len);
    if (kind == 'P') return decode_png(im, buf, len, what, max_pixels, err);
    if (kind == 'J') return decode_jpeg(im, buf, len, what, max_pixels, err);
    return err_set(err, AE_EFORMAT, "%s: not a PNG or JPEG file (%zu bytes; first bytes %02x %02x %02x %02x) (hint: "
                   "convert it, remove it, or skip bad files with skip_bad=1)", what, len, len > 0 ? buf[0] : 0,
                   len > 1 ? buf[1] : 0, len > 2 ? buf[2] : 0, len > 3 ? buf[3] : 0);
}

int image_decode_file(DecodedImage *im, const char *path, int64_t max_pixels, Err *err)
{
    memset(im, 0, sizeof *im);
    if (fileio_check_input(path, err)) return err->code;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check permissions, or skip bad files with "
                           "skip_bad=1)", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return err_set(err, AE_EIO, "%s is not a regular file", path);
    }
    if (st.st_size > IMAGE_MAX_FILE_BYTES) {
        fclose(f);
        return err_set(err, AE_EFORMAT, "%s: %lld bytes is more than the %lld-byte limit for one image (hint: is this "
                       "really an image?)", path, (long long)st.st_size, (long long)IMAGE_MAX_FILE_BYTES);
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = alloc_or_null(len);
    if (!buf) {
        fclose(f);
        return err_set(err, AE_ENOMEM, "%s: cannot allocate %zu bytes", path, len);
    }
    size_t got = len ? fread(buf, 1, len, f) : 0;
    int rerr = ferror(f);
    fclose(f);
    int rc;
    if (got != len || rerr)
        rc = err_set(err, AE_EIO, "cannot read %s: %s (hint: check the disk, or skip bad files with skip_bad=1)", path,
                     rerr ? strerror(errno) : "file shrank while reading");
    else
        rc = image_decode(im, buf, len, path, max_pixels, err);
    free(buf);
    return rc;
}
