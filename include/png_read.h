/*
 * png_read.h - reading one PNG file into planar 8-bit pixels for the
 * encoder (aesim-search --image).
 *
 * What it does: decodes any valid PNG with libpng and normalises it with
 * libpng's own transforms to 8 bits per sample, grey (C = 1) or RGB (C = 3),
 * the channel count the caller asks for:
 *   palette        -> RGB            png_set_palette_to_rgb
 *   grey 1/2/4 bit -> 8 bit          png_set_expand_gray_1_2_4_to_8
 *   tRNS / alpha   -> dropped        png_set_tRNS_to_alpha + png_set_strip_alpha
 *                                    (the colour samples are kept as stored,
 *                                    not composited on a background)
 *   16 bit         -> 8 bit          png_set_scale_16 (rounds, v*255/65535)
 *   grey -> RGB    when C = 3 is wanted: png_set_gray_to_rgb (copies)
 *   RGB -> grey    when C = 1 is wanted: ITU-R BT.709 luma on the stored
 *                  samples, (6968 R + 23434 G + 2366 B + 16384) >> 15 (the
 *                  default weights of libpng's png_set_rgb_to_gray, applied
 *                  here because libpng converts in linear light when the
 *                  file has a gAMA chunk)
 *   interlaced     handled by png_set_interlace_handling
 * Gamma chunks are ignored (no gamma correction).
 * What it does not do: resize.  An image whose size differs from the
 * expected HxW is refused with a message giving both sizes.
 * Follows the libpng 1.6 manual (libpng-manual.txt, "III. Reading").
 * Threading/MPI: none; calls on different files may run concurrently.
 */
#ifndef AESIM_PNG_READ_H
#define AESIM_PNG_READ_H

#include <stdint.h>

#include "err.h"

/* Reads path into out[C][H][W] (planar, row-major within a plane, owned by
 * the caller, C*H*W bytes) as C = 1 grey or C = 3 RGB samples, after the
 * conversions listed above.  The image must be exactly H x W pixels.
 * Errors: AE_EARG if C is not 1 or 3 or H/W < 1; AE_EIO if the file cannot be
 * opened (errno text); AE_EFORMAT if it is not a PNG or libpng rejects it
 * (libpng's message: bad CRC, bad IHDR, truncated data, ...);
 * AE_ESHAPE if its size is not H x W (the message gives both and says that
 * aesim does not resize).  On error out may hold partial data. */
int png_read_chw(uint8_t *out, const char *path, int C, int H, int W, Err *err);

#endif
