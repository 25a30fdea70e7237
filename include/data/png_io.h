/*
 * png_io.h - writing 8-bit PNG images and image grids with libpng.
 *
 * What it does: converts planar CHW pixels (the layout of our NCHW tensors)
 * into libpng's interleaved rows and writes grey (C == 1) or RGB (C == 3)
 * PNG files, 8 bits per sample, no alpha, no gamma/time chunks (so the same
 * pixels always give the same bytes).  png_write_grid lays many float images
 * out as a contact sheet: validation originals over reconstructions, search
 * queries next to their neighbours.
 * What it does not do: read PNGs (the dataset loader does that), 16-bit or
 * palette images, alpha, colour management.
 * Files are written atomically through fileio.h (temporary file in the same
 * folder, fsync, rename): a failure leaves no partial file and no temporary.
 * Threading/MPI: no MPI; each call is independent and uses only its own
 * memory, so calls on different files may run concurrently.  The caller
 * chooses the rank that writes (normally rank 0).
 * Follows the libpng 1.6 manual (libpng-manual.txt, "IV. Writing") and the
 * PNG specification (ISO/IEC 15948, colour types 0 and 2).
 */
#ifndef AESIM_PNG_IO_H
#define AESIM_PNG_IO_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Grey level (0..255) of the border between grid tiles and of empty tiles:
 * mid grey, distinguishable from both black and white image backgrounds. */
#define PNG_GRID_PAD_GREY 128

/* Largest image side written, in pixels: libpng's default user limit
 * (PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX is 1000000). */
#define PNG_MAX_SIDE 1000000

/* Largest grid buffer built by png_write_grid, in bytes (C*height*width):
 * 1 GiB, far above any contact sheet we make; a larger request is a bad
 * argument (e.g. a huge scale), not something to try to allocate. */
#define PNG_GRID_MAX_BYTES ((int64_t)1 << 30)

/* Writes pix as an 8-bit PNG at path: grey if C == 1, RGB if C == 3.
 *   pix: [C][H][W] uint8, planar (channel-major), row-major within a plane;
 *        read only, owned by the caller.
 * Errors: AE_EARG if C is not 1 or 3, or H/W are not in 1..PNG_MAX_SIDE;
 *         AE_EIO naming the file with libpng's error text or the errno text
 *         (folder missing or not writable, disk full, file too large).
 * On error nothing is left at path (a previous file there is untouched) and
 * the temporary file is removed. */
int png_write_chw(const char *path, const uint8_t *pix, int C, int H, int W, Err *err);

/* Converts one float sample to uint8: clamps to [0, 1], then rounds half up,
 * i.e. floor(x*255 + 0.5) computed in double.  NaN maps to 0. */
uint8_t png_float_to_u8(float x);

/* Encodes pix [C][H][W] (as png_write_chw) into a PNG held in memory:
 * *out[*len], free with free().  Errors: AE_EARG (channels or sides out of
 * range), AE_EIO (libpng's message).  On error *out = NULL. */
int png_encode_chw_mem(uint8_t **out, size_t *len, const uint8_t *pix, int C, int H, int W, Err *err);

/* Writes a grid of rows x cols tiles as one PNG (grey if C == 1, RGB if C == 3).
 *   images: [n_images][C][H][W] float, values nominally in [0, 1]; converted
 *           with png_float_to_u8 (out-of-range values are clamped).
 * Tile i = r*cols + c (row-major) holds images[i], upscaled by the integer
 * factor `scale` with nearest-neighbour replication (each pixel becomes a
 * scale x scale block, so 28x28 images stay visible).  Tiles are separated
 * by, and surrounded with, `pad` pixels of PNG_GRID_PAD_GREY; tiles with
 * i >= n_images are filled with the same grey.  Output size:
 *   width  = pad + cols * (W*scale + pad)
 *   height = pad + rows * (H*scale + pad)
 * so tile (r, c) has its top-left pixel at
 *   y = pad + r*(H*scale + pad),  x = pad + c*(W*scale + pad).
 * Errors: AE_EARG if C is not 1 or 3, a size is < 1 (rows, cols, H, W, scale)
 *         or pad < 0, n_images < 0 or n_images > rows*cols, or the output
 *         would exceed PNG_MAX_SIDE per side or PNG_GRID_MAX_BYTES in all;
 *         AE_EIO as png_write_chw. */
int png_write_grid(const char *path, const float *images, int n_images, int rows, int cols,
                   int C, int H, int W, int scale, int pad, Err *err);

#endif
