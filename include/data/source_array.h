/*
 * source_array.h - the set-up shared by the array readers of image sources
 * (.npy / .npz members, IDX, CIFAR): the target shape and the memory map.
 * No MPI, no global state.
 */
#ifndef AESIM_SOURCE_ARRAY_H
#define AESIM_SOURCE_ARRAY_H

#include "base/err.h"
#include "data/image_source.h"

/* Sets s->C, H, W from the raw shape (C0, H0, W0) and the options, and maps
 * the file when the records can be used in place (uint8 NCHW, no
 * interleaved labels, no resizing; unless map=0).  Needs access, fd,
 * offset, stride, skip, dtype, C0, H0, W0 and nhwc set.  `what` names the
 * source in messages.  Errors: AE_EARG (map=1 but the records cannot be
 * mapped), AE_EIO (fstat or mmap failed). */
int source_array_finish_shape(ImageSource *s, const char *what, Err *err);

#endif
