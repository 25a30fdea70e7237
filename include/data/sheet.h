/*
 * sheet.h - contact sheets of search results: one row per query, the query
 * image, a gap, then its neighbours, each tile captioned under it with two
 * short lines of text (the query: "QUERY" and its label; a neighbour: its
 * distance and its label), drawn with a built-in 5x7 pixel font (upper case,
 * digits and . - / = : # + _ ? ( ); lower case is drawn as upper case, any
 * other character as '?').  Black text on a white background; mid-grey
 * (PNG_GRID_PAD_GREY) frames around tiles.
 *
 * Layout (pixels; T = tile side = scale * W by scale * H):
 *   SHEET_PAD between and around tiles, SHEET_CAPTION_H of caption under
 *   each tile, SHEET_QUERY_GAP extra between the query column and the first
 *   neighbour, with a vertical grey rule in its middle.  A caption line shows
 *   at most (scale * W) / SHEET_GLYPH_ADVANCE characters: longer text is cut
 *   (the last character shown becomes '+').
 * No MPI, no threads; written by one rank through png_io.h (atomic file).
 */
#ifndef AESIM_SHEET_H
#define AESIM_SHEET_H

#include "base/err.h"

/* Glyph cell: 5x7 pixels plus 1 pixel of spacing to the next. */
#define SHEET_GLYPH_W 5
#define SHEET_GLYPH_H 7
#define SHEET_GLYPH_ADVANCE 6
/* Pixels between tiles, of caption under a tile (two lines of text with a
 * pixel of space around them), and between the query and its neighbours. */
#define SHEET_PAD 2
#define SHEET_CAPTION_H (2 * (SHEET_GLYPH_H + 2) + 2)
#define SHEET_QUERY_GAP 14
/* Characters of one caption line, NUL included. */
#define SHEET_CAPTION_BYTES 32

/* One tile's caption: two lines. */
typedef struct SheetCaption {
    char line[2][SHEET_CAPTION_BYTES];
} SheetCaption;

/* Writes the sheet at path (PNG, grey if C == 1, RGB if C == 3).
 *   tiles:    [rows][cols][C][H][W] float in [0, 1] (clamped); column 0 is
 *             the query, columns 1.. its neighbours
 *   captions: [rows][cols]
 *   present:  [rows][cols], 0 = an empty tile (fewer neighbours): left white
 * Errors: AE_EARG for C not 1 or 3 or sizes < 1, AE_EIO as png_write_chw. */
int sheet_write(const char *path, const float *tiles, const SheetCaption *captions, const unsigned char *present,
                int rows, int cols, int C, int H, int W, int scale, Err *err);

/* Pixel rows of a glyph for character ch: 7 bytes, bit 4 = leftmost column
 * (for tests and for other drawings).  Digits, A-Z, a-z and . - / = : # + _
 * ( ) ? and space have their own glyph; any other character gets '?'. */
const unsigned char *sheet_glyph(char ch);

/* The ten class names of Fashion-MNIST, in label order 0..9 (Zalando's
 * README: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
 * Sneaker, Bag, Ankle boot). */
extern const char *const SHEET_FASHION_MNIST_CLASSES[10];

#endif
