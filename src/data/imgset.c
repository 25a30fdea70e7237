/*
 * imgset.c - several image files as one indexed source, each image keeping
 * its file, row, label and name (see include/data/imgset.h).  Every item is
 * loaded with dataset_open; nothing is copied into one block.
 * Single-threaded loading; no MPI.
 */
#include "data/imgset.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"

int imgset_open(ImageSet *s, const char *spec, Err *err)
{
    return imgset_open_opts(s, spec, NULL, err);
}

int imgset_open_opts(ImageSet *s, const char *spec, const DatasetOptions *defaults, Err *err)
{
    memset(s, 0, sizeof *s);
    if (!spec || !*spec)
        return err_set(err, AE_EARG, "no image source given (hint: an .npz, an IDX file or a folder; several "
                                     "separated by commas)");
    size_t len = strlen(spec);
    int n = 1;
    for (size_t i = 0; i < len; i++) n += spec[i] == ',';
    char *buf = xmalloc(len + 1);
    memcpy(buf, spec, len + 1);
    s->items = xcalloc((size_t)n, sizeof *s->items);
    s->paths = xcalloc((size_t)n, sizeof *s->paths);
    s->first = xcalloc((size_t)n + 1, sizeof *s->first);
    int rc = AE_OK;
    char *item = buf;
    for (int p = 0; p < n && rc == AE_OK; p++) {
        char *comma = strchr(item, ',');
        if (comma) *comma = '\0';
        if (!*item) {
            rc = err_set(err, AE_EARG, "empty item in the source list '%.900s' (hint: separate paths with single "
                                       "commas, no spaces)", spec);
            break;
        }
        rc = dataset_open_opts(&s->items[p], item, defaults, err);
        if (rc) break;
        s->n_items = p + 1;
        s->n_resized += s->items[p].n_resized;
        s->n_skipped += s->items[p].n_skipped;
        if (s->items[p].warning[0]) {
            size_t k = strlen(s->warning);
            snprintf(s->warning + k, sizeof s->warning - k, "%s%s", k ? "; " : "", s->items[p].warning);
        }
        char real[PATH_MAX];
        if (!realpath(item, real)) snprintf(real, sizeof real, "%s", item);
        snprintf(s->paths[p], IMGSET_PATH_BYTES, "%s", real);
        const Dataset *a = &s->items[0], *b = &s->items[p];
        if (b->C != a->C || b->H != a->H || b->W != a->W)
            rc = err_set(err, AE_ESHAPE,
                         "%.400s has images of %dx%dx%d (CxHxW) but %.400s has %dx%dx%d (hint: the items of one "
                         "source must have the same channels and size)",
                         s->paths[0], a->C, a->H, a->W, s->paths[p], b->C, b->H, b->W);
        s->first[p + 1] = s->first[p] + b->n;
        item = comma ? comma + 1 : item + strlen(item);
    }
    free(buf);
    if (rc) {
        imgset_free(s);
        return rc;
    }
    s->n = s->first[n];
    s->C = s->items[0].C;
    s->H = s->items[0].H;
    s->W = s->items[0].W;
    return AE_OK;
}

void imgset_free(ImageSet *s)
{
    if (!s) return;
    for (int p = 0; p < s->n_items; p++) dataset_free(&s->items[p]);
    free(s->items);
    free(s->paths);
    free(s->first);
    memset(s, 0, sizeof *s);
}

int imgset_locate(const ImageSet *s, int64_t i, int64_t *row)
{
    assert(i >= 0 && i < s->n);
    int lo = 0, hi = s->n_items - 1;
    while (lo < hi) { /* last item with first <= i */
        int mid = (lo + hi + 1) / 2;
        if (s->first[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    *row = i - s->first[lo];
    return lo;
}

void imgset_get_f32(float *out, const ImageSet *s, int64_t i)
{
    int64_t row;
    int p = imgset_locate(s, i, &row);
    dataset_get_f32(out, &s->items[p], row);
}

int imgset_read_error(const ImageSet *s, Err *err)
{
    for (int p = 0; p < s->n_items; p++)
        if (dataset_read_error(&s->items[p], err)) return err->code;
    return AE_OK;
}

int32_t imgset_label(const ImageSet *s, int64_t i)
{
    int64_t row;
    int p = imgset_locate(s, i, &row);
    return dataset_label(&s->items[p], row);
}

void imgset_name(char *out, size_t cap, const ImageSet *s, int64_t i)
{
    assert(cap >= 1);
    int64_t row;
    int p = imgset_locate(s, i, &row);
    /* The file the image came from (after wildcard and folder-set
     * expansion), and its row there; the item's path for a hand-made item. */
    int64_t file_row = row;
    const char *path = dataset_origin(&s->items[p], row, &file_row);
    if (!path) path = s->paths[p];
    /* Last non-empty path component (a folder may end with '/'). */
    size_t end = strlen(path);
    while (end > 1 && path[end - 1] == '/') end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/') start--;
    char own[IMGSET_NAME_BYTES];
    if (dataset_name(own, sizeof own, &s->items[p], row) && own[0])
        snprintf(out, cap, "%.*s/%s", (int)(end - start), path + start, own);
    else
        snprintf(out, cap, "%.*s#%lld", (int)(end - start), path + start, (long long)file_row);
    for (char *c = out; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}
