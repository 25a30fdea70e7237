/*
 * cifar.h - CIFAR-10 and CIFAR-100 binary batches as an image source (the
 * cifar10: and cifar100: kinds of data/image_source.h, which alone
 * dispatches to it).  Source: A. Krizhevsky, "Learning Multiple Layers of
 * Features from Tiny Images", 2009, "Binary version".  No MPI, no global state.
 */
#ifndef AESIM_CIFAR_H
#define AESIM_CIFAR_H

#include "base/err.h"
#include "data/image_source.h"

/* Sets up s (s->path and s->fd open) as a RAW_FILE source of 3x32x32
 * records, each after label_bytes label bytes (1: CIFAR-10, 2: CIFAR-100,
 * whose fine label is the second byte).  Errors: AE_EFORMAT (size not a
 * whole number of records, label out of range, with a hint naming the
 * other kind), AE_EIO. */
int cifar_open(ImageSource *s, int label_bytes, Err *err);

#endif
