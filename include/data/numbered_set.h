/*
 * numbered_set.h - gaps in a numbered set of files: train_data_batch_1..10.npz
 * with _7 missing, data_batch_1..5.bin without _3.  A wildcard or a folder of
 * batch files that silently lacks one of them trains on a tenth less data
 * without a word; image_source.c refuses such a set (or, with allow_gaps=1,
 * takes it with a warning), for training, packing and indexing alike.
 *
 * What a numbered set is: the names matched by one wildcard or one folder
 * set whose names differ only in their last run of decimal digits (same text
 * before and after it) form one set, the digits its number.  Runs of more
 * than NUMBERED_SET_MAX_DIGITS digits (dates, hashes, ids) are not sequence
 * numbers and are never checked.  A set of at least two files has a gap
 * when a number between its smallest and largest is missing, or when its
 * smallest number is above 1 (sets start at 0 or 1).  A single file has
 * nothing to compare with and is never a gap.
 *
 * Pure string handling: no I/O, no global state, thread-safe.
 */
#ifndef AESIM_NUMBERED_SET_H
#define AESIM_NUMBERED_SET_H

#include <stddef.h>

/* Longest digit run taken as a sequence number (up to 9999 files). */
#define NUMBERED_SET_MAX_DIGITS 4

/* Checks names[n] (any order, duplicates ignored) for gaps.  Returns the
 * number of missing files over all sets (0: no gap) and, when there is one,
 * writes into msg[cap] a one-line description of the first set with a gap:
 * its pattern, the numbers present and the missing names, e.g.
 * "train_data_batch_N.npz has N = 1..10 but train_data_batch_7.npz is
 * missing".  msg may be NULL. */
long numbered_set_gaps(const char *const *names, int n, char *msg, size_t cap);

#endif
