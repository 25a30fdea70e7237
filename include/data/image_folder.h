/*
 * image_folder.h - folders of PNG/JPEG images (sub-folder name = label) and
 * list files as image sources: the readers behind the folder: and list:
 * kinds of data/image_source.h (which alone dispatches to them).
 * Decoding runs in parallel with OpenMP over the images of a window.
 * No MPI, no global state.
 */
#ifndef AESIM_IMAGE_FOLDER_H
#define AESIM_IMAGE_FOLDER_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "data/image_source.h"

/* Open s->path (s->opts set) as a folder of images / a list file: fills
 * s->files, s->n, s->labels and the shape (from the first image unless the
 * options fix it).  Errors: AE_EIO (unreadable, no images), AE_EFORMAT. */
int image_folder_open(ImageSource *s, Err *err);
int image_list_open(ImageSource *s, Err *err);
/* Parses a list file's text buf[len] (see datasets/README.md: one path per
 * line, optional whitespace + integer label; '#' comments and blank lines
 * skipped) relative to folder `base`.  Fills s->files / s->n / s->labels.
 * `what` names the file in messages.  Errors: AE_EFORMAT (bad label, NUL
 * byte, over-long line, no paths), AE_EIO. */
int image_list_parse(ImageSource *s, const char *buf, size_t len, const char *base, const char *what, Err *err);
/* Decodes images first..first+count-1 into pix (NCHW uint8 of s->C x s->H
 * x s->W each); ok[i] = 0 marks an image that could not be decoded (the
 * caller decides whether that is an error).  Errors: AE_EIO, AE_EFORMAT. */
int image_folder_read(ImageSource *s, int64_t first, int64_t count, uint8_t *pix, uint8_t *ok, Err *err);

#endif
