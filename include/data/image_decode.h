/*
 * image_decode.h - decoding one PNG or JPEG file held in memory into 8-bit
 * interleaved samples, strictly: any error or warning of the decoder is an
 * error naming the file.
 *
 * PNG (libpng 1.6, libpng-manual.txt "III. Reading"): every colour type and
 * bit depth of the PNG spec (ISO/IEC 15948), normalised with libpng's own
 * transforms: palette -> RGB (png_set_palette_to_rgb); grey 1/2/4 bit -> 8
 * bit (png_set_expand_gray_1_2_4_to_8, which scales 0..2^d-1 to 0..255);
 * tRNS -> an alpha channel (png_set_tRNS_to_alpha); 16 bit -> 8 bit with
 * rounding (png_set_scale_16: v8 = round(v16 * 255 / 65535)); Adam7
 * interlacing (png_set_interlace_handling).  Gamma and colour-profile
 * chunks are ignored (samples are taken as stored).  CRC errors in critical
 * chunks, truncation anywhere up to IEND, and bad IHDR values are errors.
 * JPEG (libjpeg-turbo through the libjpeg 6b API): grey and YCbCr/RGB
 * files decode to grey / RGB with libjpeg's defaults (islow IDCT, fancy
 * upsampling); CMYK and YCCK files decode to CMYK and are converted to RGB
 * as R = C*K/255 etc. on the Adobe-inverted samples libjpeg returns (what
 * Photoshop writes).  libjpeg's warnings (e.g. "Premature end of JPEG
 * file", corrupt data) are errors here: such a file would decode to grey
 * garbage.
 *
 * Threading: each call uses its own decoder state; calls may run in
 * parallel on different images.  No MPI, no global state.
 */
#ifndef AESIM_IMAGE_DECODE_H
#define AESIM_IMAGE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Largest image file read into memory, bytes (a 64 Mpixel PNG compresses to
 * far less; anything bigger is a mistake or an attack). */
#define IMAGE_MAX_FILE_BYTES (1LL << 30)

typedef struct DecodedImage {
    int w, h;          /* >= 1 */
    int channels;      /* 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA */
    uint8_t *px;       /* [h][w][channels], owned (image_free) */
} DecodedImage;

/* The kind of an image file from its first bytes: 'P' PNG signature, 'J'
 * JPEG SOI marker (FF D8 FF), 0 otherwise.  buf[len], any len. */
int image_sniff(const uint8_t *buf, size_t len);

/* Decodes a PNG or JPEG held in buf[len] (kind sniffed from the first
 * bytes).  `what` names the file in messages.  Images of more than
 * max_pixels pixels are refused before their pixels are allocated.
 * Errors: AE_EFORMAT (not PNG/JPEG; "bad PNG/JPEG: " and the decoder's
 * message: bad signature, CRC error, bad IHDR, truncated, corrupt data; or
 * "PNG/JPEG too large: " over max_pixels or a side over 65,535), AE_ENOMEM.
 * On error *im holds nothing. */
int image_decode(DecodedImage *im, const uint8_t *buf, size_t len, const char *what, int64_t max_pixels, Err *err);

/* Reads path (at most IMAGE_MAX_FILE_BYTES) and decodes it as above.
 * Errors: AE_EIO (cannot open/read: errno text), those of image_decode. */
int image_decode_file(DecodedImage *im, const char *path, int64_t max_pixels, Err *err);

/* Frees im->px and zeroes *im.  im may be NULL. */
void image_free(DecodedImage *im);

#endif
