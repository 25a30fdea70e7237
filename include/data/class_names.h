/*
 * class_names.h - the names of a data set's classes, by label, for captions
 * and results (issue 13, item 18).
 *
 * Where names come from:
 *   - a class-names file (aesim-search query --class-names FILE), in one of
 *     two forms, recognised from its first non-empty line:
 *       * the ILSVRC devkit's map_clsloc.txt: "WNID LABEL NAME" per line,
 *         e.g. "n02119789 1 kit_fox" (WNID = 'n' and 8 digits, LABEL a
 *         positive integer, NAME one word): name of label LABEL is NAME.  The
 *         downsampled-ImageNet npz files keep these 1-based labels
 *         (Chrabaszcz et al. 2017), so their names are found directly;
 *       * one name per line: line 1 names label 0, line 2 label 1, ...
 *         (the order of torchvision's and Keras's class lists; CIFAR's
 *         batches.meta label_names).  Surrounding blanks are dropped.
 *   - an image folder's class sub-folders (image_folder.c: sorted names are
 *     labels 0..K-1) and an aesim-pack store's meta.json "classes": given
 *     to class_names_set_list by the caller.
 * No MPI; no global state.
 */
#ifndef AESIM_CLASS_NAMES_H
#define AESIM_CLASS_NAMES_H

#include <stdint.h>

#include "base/err.h"

/* Longest class-names file accepted, and longest name kept (bytes). */
#define CLASS_NAMES_MAX_FILE_BYTES (16 << 20)
#define CLASS_NAMES_MAX_LABEL 10000000

typedef struct ClassNames {
    int32_t n;     /* names[0..n-1]; labels >= n have no name */
    char **names;  /* [n], owned; an entry is NULL for a label the file did not name */
} ClassNames;

/* Reads a class-names file (either form above) into *cn (emptied first).
 * Errors, the message naming the file and, where it applies, the line:
 *   AE_EIO     the file cannot be opened or read;
 *   AE_EFORMAT empty file, larger than CLASS_NAMES_MAX_FILE_BYTES, a NUL
 *              byte, a devkit line not of the form "WNID LABEL NAME" once the
 *              first line was, a label < 1 or > CLASS_NAMES_MAX_LABEL, the
 *              same label twice.
 * On error *cn is left empty (nothing to free). */
int class_names_read(ClassNames *cn, const char *path, Err *err);

/* Copies names[0..n-1] (labels 0..n-1) into *cn (emptied first). */
void class_names_set_list(ClassNames *cn, const char *const *names, int n);

/* The name of `label`, or NULL when unknown (label < 0, >= n, unnamed, or an
 * empty line of a plain list). */
const char *class_names_get(const ClassNames *cn, int32_t label);

/* Frees the names; *cn becomes empty.  cn may be NULL. */
void class_names_free(ClassNames *cn);

#endif
