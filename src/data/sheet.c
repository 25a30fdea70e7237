/*
 * sheet.c - contact sheets with captions (see include/sheet.h).  Draws into
 * one uint8 [C][height][width] canvas and writes it with png_write_chw.
 * Does not: decide what a caption says (the caller does), scale text, or
 * handle non-ASCII.  No MPI, single-threaded.
 */
#include "data/sheet.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/png_io.h"

/* Canvas background and text colour (grey levels). */
#define SHEET_WHITE 255
#define SHEET_BLACK 0

const char *const SHEET_FASHION_MNIST_CLASSES[10] = { "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot" };

/* A classic 5x7 font (the HD44780 character generator's shapes): digits,
 * upper and lower case, a few signs; other characters draw as '?'. */
typedef struct Glyph {
    char ch;
    unsigned char rows[SHEET_GLYPH_H];
} Glyph;

static const Glyph FONT[] = {
    { ' ', { 0, 0, 0, 0, 0, 0, 0 } },
    { '0', { 0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E } }, { '1', { 0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E } },
    { '2', { 0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F } }, { '3', { 0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E } },
    { '4', { 0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02 } }, { '5', { 0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E } },
    { '6', { 0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E } }, { '7', { 0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08 } },
    { '8', { 0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E } }, { '9', { 0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C } },
    { 'A', { 0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11 } }, { 'B', { 0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E } },
    { 'C', { 0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E } }, { 'D', { 0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C } },
    { 'E', { 0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F } }, { 'F', { 0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10 } },
    { 'G', { 0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F } }, { 'H', { 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11 } },
    { 'I', { 0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E } }, { 'J', { 0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C } },
    { 'K', { 0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11 } }, { 'L', { 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F } },
    { 'M', { 0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11 } }, { 'N', { 0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11 } },
    { 'O', { 0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E } }, { 'P', { 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10 } },
    { 'Q', { 0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D } }, { 'R', { 0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11 } },
    { 'S', { 0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E } }, { 'T', { 0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04 } },
    { 'U', { 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E } }, { 'V', { 0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04 } },
    { 'W', { 0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A } }, { 'X', { 0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11 } },
    { 'Y', { 0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04 } }, { 'Z', { 0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F } },
    { '.', { 0, 0, 0, 0, 0, 0x0C, 0x0C } },                { '-', { 0, 0, 0, 0x1F, 0, 0, 0 } },
    { '/', { 0, 0x01, 0x02, 0x04, 0x08, 0x10, 0 } },       { '=', { 0, 0, 0x1F, 0, 0x1F, 0, 0 } },
    { ':', { 0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0 } },          { '#', { 0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A } },
    { '+', { 0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0 } },       { '_', { 0, 0, 0, 0, 0, 0, 0x1F } },
    { '(', { 0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02 } }, { ')', { 0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08 } },
    { '?', { 0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04 } },
    /* Lower case (the HD44780's 5x7 shapes; descenders g, j, p, q, y end on
     * the last row). */
    { 'a', { 0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F } }, { 'b', { 0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E } },
    { 'c', { 0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E } }, { 'd', { 0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F } },
    { 'e', { 0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E } }, { 'f', { 0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08 } },
    { 'g', { 0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E } }, { 'h', { 0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11 } },
    { 'i', { 0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E } }, { 'j', { 0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0C } },
    { 'k', { 0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12 } }, { 'l', { 0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E } },
    { 'm', { 0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11 } }, { 'n', { 0, 0, 0x16, 0x19, 0x11, 0x11, 0x11 } },
    { 'o', { 0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E } }, { 'p', { 0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10 } },
    { 'q', { 0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01 } }, { 'r', { 0, 0, 0x16, 0x19, 0x10, 0x10, 0x10 } },
    { 's', { 0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E } }, { 't', { 0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06 } },
    { 'u', { 0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D } }, { 'v', { 0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04 } },
    { 'w', { 0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A } }, { 'x', { 0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11 } },
    { 'y', { 0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E } }, { 'z', { 0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F } },
};

const unsigned char *sheet_glyph(char ch)
{
    const Glyph *unknown = NULL;
    for (size_t i = 0; i < sizeof FONT / sizeof *FONT; i++) {
        if (FONT[i].ch == ch) return FONT[i].rows;
        if (FONT[i].ch == '?') unknown = &FONT[i];
    }
    return unknown->rows;
}

typedef struct Canvas {
    uint8_t *pix; /* [C][h][w] */
    int C, h, w;
} Canvas;

static void fill(Canvas *cv, int x0, int y0, int w, int h, int grey)
{
    for (int c = 0; c < cv->C; c++)
        for (int y = y0; y < y0 + h && y < cv->h; y++)
            memset(cv->pix + ((size_t)c * cv->h + y) * cv->w + x0, grey, (size_t)w);
}

/* Text at (x, y) (top-left), at most max_chars characters. */
static void text(Canvas *cv, int x, int y, const char *s, int max_chars)
{
    int n = (int)strlen(s);
    for (int i = 0; i < n && i < max_chars; i++) {
        const unsigned char *g = sheet_glyph(i == max_chars - 1 && n > max_chars ? '+' : s[i]);
        for (int r = 0; r < SHEET_GLYPH_H; r++)
            for (int b = 0; b < SHEET_GLYPH_W; b++)
                if (g[r] & (0x10 >> b))
                    for (int c = 0; c < cv->C; c++)
                        cv->pix[((size_t)c * cv->h + y + r) * cv->w + x + i * SHEET_GLYPH_ADVANCE + b] = SHEET_BLACK;
    }
}

int sheet_write(const char *path, const float *tiles, const SheetCaption *captions, const unsigned char *present,
                int rows, int cols, int C, int H, int W, int scale, Err *err)
{
    if ((C != 1 && C != 3) || rows < 1 || cols < 1 || H < 1 || W < 1 || scale < 1)
        return err_set(err, AE_EARG, "%s: contact sheet of %dx%d tiles of %dx%dx%d x%d is not drawable", path, rows,
                       cols, H, W, C, scale);
    const int tw = W * scale, th = H * scale, cell_h = th + SHEET_CAPTION_H;
    const int64_t width = SHEET_PAD + (int64_t)cols * (tw + SHEET_PAD) + (cols > 1 ? SHEET_QUERY_GAP : 0);
    const int64_t height = SHEET_PAD + (int64_t)rows * (cell_h + SHEET_PAD);
    if (width > PNG_MAX_SIDE || height > PNG_MAX_SIDE || (int64_t)C * width * height > PNG_GRID_MAX_BYTES)
        return err_set(err, AE_EARG, "%s: a contact sheet of %lldx%lld pixels is too large (fewer queries or "
                       "neighbours)", path, (long long)width, (long long)height);
    Canvas cv = { xmalloc((size_t)C * (size_t)width * (size_t)height), C, (int)height, (int)width };
    memset(cv.pix, SHEET_WHITE, (size_t)C * (size_t)width * (size_t)height);
    const size_t chw = (size_t)C * H * W;
    const int max_chars = tw / SHEET_GLYPH_ADVANCE;
    for (int r = 0; r < rows; r++) {
        const int y = SHEET_PAD + r * (cell_h + SHEET_PAD);
        for (int k = 0; k < cols; k++) {
            const size_t t = (size_t)r * cols + k;
            if (!present[t]) continue;
            const int x = SHEET_PAD + k * (tw + SHEET_PAD) + (k > 0 ? SHEET_QUERY_GAP : 0);
            /* grey frame, then the image scaled by pixel replication */
            fill(&cv, x - SHEET_PAD, y - SHEET_PAD, tw + 2 * SHEET_PAD, SHEET_PAD, PNG_GRID_PAD_GREY);
            fill(&cv, x - SHEET_PAD, y + th, tw + 2 * SHEET_PAD, SHEET_PAD, PNG_GRID_PAD_GREY);
            fill(&cv, x - SHEET_PAD, y, SHEET_PAD, th, PNG_GRID_PAD_GREY);
            fill(&cv, x + tw, y, SHEET_PAD, th, PNG_GRID_PAD_GREY);
            const float *img = tiles + t * chw;
            for (int c = 0; c < C; c++)
                for (int yy = 0; yy < th; yy++)
                    for (int xx = 0; xx < tw; xx++)
                        cv.pix[((size_t)c * cv.h + y + yy) * cv.w + x + xx] =
                            png_float_to_u8(img[((size_t)c * H + yy / scale) * W + xx / scale]);
            for (int l = 0; l < 2; l++)
                text(&cv, x, y + th + SHEET_PAD + 1 + l * (SHEET_GLYPH_H + 2), captions[t].line[l], max_chars);
        }
        if (cols > 1) /* the rule between the query and its neighbours */
            fill(&cv, SHEET_PAD + tw + SHEET_PAD + SHEET_QUERY_GAP / 2 - 1, y, 2, th, PNG_GRID_PAD_GREY);
    }
    int rc = png_write_chw(path, cv.pix, C, cv.h, cv.w, err);
    free(cv.pix);
    return rc;
}
