/*
 * image_folder.c - folders of PNG/JPEG images and list files as image
 * sources (see include/data/image_source.h; the conventions are documented in
 * datasets/README.md).
 *
 * Folder: searched recursively (hidden entries skipped, symlinks followed
 * up to FOLDER_MAX_DEPTH levels), files ending in .png, .jpg or .jpeg (any
 * case) are images, other files are ignored; images are ordered by their
 * path relative to the folder (byte order), and labelled by their
 * first-level sub-folder: the sorted sub-folder names are classes 0..K-1
 * (images directly in the folder get -1; no sub-folders: no labels).
 * List file: one image path per line (relative paths are relative to the
 * list file's folder), optionally followed by whitespace and an integer
 * label; blank lines and lines starting with '#' are skipped.
 * Unless size= is given, the first image (in this order) sets the size.
 *
 * Reading decodes the requested images in parallel (OpenMP, one image per
 * iteration, each writing its own output slot; decoding uses no BLAS).
 * No MPI.
 */
#include "data/image_folder.h"
#include "base/fileio.h"

#include "base/check.h"
#include "data/image_convert.h"
#include "data/image_decode.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* Deepest sub-folder searched (stops symlink loops). */
#define FOLDER_MAX_DEPTH 64
/* Largest list file read, bytes. */
#define LIST_MAX_BYTES (1LL << 30)
/* Longest line of a list file, bytes. */
#define LIST_MAX_LINE 4096

typedef struct FileVec {
    ImageFile *v;
    int64_t n, cap;
} FileVec;

static void vec_push(FileVec *fv, char *path, char *name, int name_owned, int32_t label, int64_t line)
{
    if (fv->n == fv->cap) {
        int64_t ncap = fv->cap ? 2 * fv->cap : 64;
        ImageFile *g = xmalloc((size_t)ncap * sizeof *g);
        if (fv->n) memcpy(g, fv->v, (size_t)fv->n * sizeof *g);
        free(fv->v);
        fv->v = g;
        fv->cap = ncap;
    }
    fv->v[fv->n++] = (ImageFile){path, name, name_owned, label, line};
}

static void vec_free(FileVec *fv)
{
    for (int64_t i = 0; i < fv->n; i++) {
        if (fv->v[i].name_owned) free(fv->v[i].name);
        free(fv->v[i].path);
    }
    free(fv->v);
}

static int is_image_name(const char *name)
{
    static const char *const exts[] = {".png", ".jpg", ".jpeg"};
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++) {
        size_t e = strlen(exts[i]);
        if (len > e && strcasecmp(name + len - e, exts[i]) == 0) return 1;
    }
    return 0;
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = xmalloc(la + lb + 2);
    memcpy(p, a, la);
    p[la] = '/';
    memcpy(p + la + 1, b, lb + 1);
    return p;
}

/* Collects the images under dir (relative path rel_len bytes of the root). */
/* A folder on the path from the root to the one being read: a symlink back
 * to any of them is a loop (e.g. `self -> .` or `a/up -> ..`), which is not
 * followed; other symlinks to folders are. */
typedef struct Ancestor {
    dev_t dev;
    ino_t ino;
    const struct Ancestor *up;
} Ancestor;

static int is_ancestor(const Ancestor *a, const struct stat *st)
{
    for (; a; a = a->up)
        if (a->dev == st->st_dev && a->ino == st->st_ino) return 1;
    return 0;
}

static int walk(FileVec *fv, const char *dir, size_t root_len, int depth, const char *root, const Ancestor *up,
                Err *err)
{
    struct stat self;
    if (stat(dir, &self) != 0)
        return err_set(err, AE_EIO, "cannot read folder %s: %s (hint: check its permissions)", dir, strerror(errno));
    Ancestor here = { self.st_dev, self.st_ino, up };
    if (depth > FOLDER_MAX_DEPTH)
        return err_set(err, AE_EIO, "%s: folders nested deeper than %d levels (a symlink loop?) (hint: remove the loop)",
                       dir, FOLDER_MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d)
        return err_set(err, AE_EIO, "cannot read folder %s: %s (hint: check its permissions)", dir, strerror(errno));
    int rc = AE_OK;
    struct dirent *de;
    while (rc == AE_OK && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *p = join(dir, de->d_name);
        struct stat st;
        if (stat(p, &st) != 0) {
            /* A dangling symlink or a file removed meanwhile: an image file
             * that cannot be read is an error (skip_bad counts it later). */
            if (is_image_name(de->d_name)) {
                vec_push(fv, p, p + root_len + 1, 0, -1, 0);
                continue;
            }
            free(p);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (!is_ancestor(&here, &st)) rc = walk(fv, p, root_len, depth + 1, root, &here, err);
            free(p);
        } else if (is_image_name(de->d_name)) {
            vec_push(fv, p, p + root_len + 1, 0, -1, 0);
        } else {
            free(p);
        }
    }
    closedir(d);
    return rc;
}

static int cmp_files(const void *a, const void *b)
{
    return strcmp(((const ImageFile *)a)->name, ((const ImageFile *)b)->name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* For a list file: prefixes e's message with the list, the line and the
 * path as written there, since the message names the resolved path only. */
static void name_list_line(const ImageSource *s, const ImageFile *f, Err *e)
{
    if (s->kind != SOURCE_LIST || f->line <= 0) return;
    char msg[ERR_MSG_BYTES];
    snprintf(msg, sizeof msg, "%s", e->msg);
    if (s->guess) /* a text file that may not be a list at all: say so */
        snprintf(e->msg, sizeof e->msg, "%.300s was guessed to be a list file of image paths because %s; its line %"
                 PRId64 " ('%.100s'): %.300s (hint: if it is something else, name its kind before the path, e.g. "
                 "npz:PATH, npy:PATH, idx:PATH, folder:PATH)", s->path, s->guess, f->line, f->name, msg);
    else
        snprintf(e->msg, sizeof e->msg, "%.300s line %" PRId64 " ('%.200s'): %.480s", s->path, f->line, f->name, msg);
}

/* Size from the first image that decodes (every image when skip_bad=0
 * must decode anyway, so the first failure is reported). */
static int first_size(ImageSource *s, Err *err)
{
    s->C = s->opts.C ? s->opts.C : 3;
    if (s->opts.H) {
        s->H = s->opts.H;
        s->W = s->opts.W;
        return AE_OK;
    }
    for (int64_t i = 0; i < s->n; i++) {
        DecodedImage im;
        if (image_decode_file(&im, s->files[i].path, s->opts.max_pixels, err) == AE_OK) {
            s->H = im.h;
            s->W = im.w;
            image_free(&im);
            return AE_OK;
        }
        name_list_line(s, &s->files[i], err);
        if (!s->opts.skip_bad) return err->code;
    }
    return err_set(err, AE_EFORMAT, "%s: none of its %" PRId64 " images decodes (hint: check the files)", s->path, s->n);
}

int image_folder_open(ImageSource *s, Err *err)
{
    FileVec fv = {0};
    size_t root_len = strlen(s->path);
    while (root_len > 1 && s->path[root_len - 1] == '/') s->path[--root_len] = '\0';
    int rc = walk(&fv, s->path, root_len, 0, s->path, NULL, err);
    if (rc == AE_OK && fv.n == 0)
        rc = err_set(err, AE_EIO, "folder %s holds no .png, .jpg or .jpeg files (searched recursively) (hint: give the "
                     "folder of images, an npz, an IDX file or a list file)", s->path);
    if (rc) {
        vec_free(&fv);
        return rc;
    }
    qsort(fv.v, (size_t)fv.n, sizeof *fv.v, cmp_files);
    /* Classes: first-level sub-folder names, sorted. */
    char **cls = xmalloc((size_t)fv.n * sizeof *cls);
    int64_t nc = 0;
    for (int64_t i = 0; i < fv.n; i++) {
        const char *slash = strchr(fv.v[i].name, '/');
        if (!slash) continue;
        size_t len = (size_t)(slash - fv.v[i].name);
        if (nc && strlen(cls[nc - 1]) == len && !strncmp(cls[nc - 1], fv.v[i].name, len)) continue;
        cls[nc] = xmalloc(len + 1);
        memcpy(cls[nc], fv.v[i].name, len);
        cls[nc][len] = '\0';
        nc++;
    }
    /* Sorted by path, so equal first components are adjacent, but "a" files
     * may sit between "a b/..." and "a/..." : sort and deduplicate. */
    qsort(cls, (size_t)nc, sizeof *cls, cmp_str);
    int64_t u = 0;
    for (int64_t i = 0; i < nc; i++) {
        if (u && !strcmp(cls[u - 1], cls[i])) {
            free(cls[i]);
            continue;
        }
        cls[u++] = cls[i];
    }
    if (u > INT32_MAX) u = INT32_MAX;
    s->files = fv.v;
    s->n = fv.n;
    s->classes = cls;
    s->n_classes = (int)u;
    if (u > 0) {
        s->labels = xmalloc((size_t)s->n * sizeof *s->labels);
        for (int64_t i = 0; i < s->n; i++) {
            const char *slash = strchr(s->files[i].name, '/');
            s->labels[i] = -1;
            if (!slash) continue;
            size_t len = (size_t)(slash - s->files[i].name);
            int64_t lo = 0, hi = u - 1;
            while (lo <= hi) { /* binary search of the class name */
                int64_t mid = (lo + hi) / 2;
                int c = strncmp(cls[mid], s->files[i].name, len);
                if (c == 0 && cls[mid][len] != '\0') c = 1;
                if (c == 0) {
                    s->labels[i] = (int32_t)mid;
                    break;
                }
                if (c < 0) lo = mid + 1;
                else hi = mid - 1;
            }
        }
    }
    return first_size(s, err);
}

/* Parses a decimal int32; 0 on success. */
static int parse_label(const char *s, size_t len, int32_t *out)
{
    if (len == 0 || len > 11) return -1;
    char buf[16];
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end || v < INT32_MIN || v > INT32_MAX) return -1;
    for (size_t i = 0; i < len; i++)
        if (!((buf[i] >= '0' && buf[i] <= '9') || (i == 0 && buf[i] == '-'))) return -1;
    *out = (int32_t)v;
    return 0;
}

int image_list_parse(ImageSource *s, const char *buf, size_t len, const char *base, const char *what, Err *err)
{
    FileVec fv = {0};
    int any_label = 0, rc = AE_OK;
    int32_t *labels = NULL;
    int64_t lab_cap = 0;
    size_t pos = 0;
    int64_t line_no = 0;
    if (memchr(buf, '\0', len))
        return err_set(err, AE_EFORMAT, "%s: holds a NUL byte: not a text list of image paths (hint: one path per "
                       "line, optional label)", what);
    while (pos < len && rc == AE_OK) {
        const char *ln = buf + pos;
        const char *nl = memchr(ln, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - ln) : len - pos;
        pos += l + (nl ? 1 : 0);
        line_no++;
        while (l > 0 && (ln[l - 1] == '\r' || ln[l - 1] == ' ' || ln[l - 1] == '\t')) l--;
        size_t st = 0;
        while (st < l && (ln[st] == ' ' || ln[st] == '\t')) st++;
        if (st == l || ln[st] == '#') continue;
        if (l - st >= LIST_MAX_LINE) {
            rc = err_set(err, AE_EFORMAT, "%s:%" PRId64 ": line longer than %d bytes (hint: one path per line)", what,
                         line_no, LIST_MAX_LINE);
            break;
        }
        /* Optional label: the last whitespace-separated token, if numeric. */
        size_t end = l, tok = l;
        while (tok > st && ln[tok - 1] != ' ' && ln[tok - 1] != '\t') tok--;
        int32_t lab = -1;
        int has = 0;
        if (tok > st) {
            int numeric = 1;
            for (size_t i = tok; i < end && numeric; i++)
                numeric = (ln[i] >= '0' && ln[i] <= '9') || (i == tok && ln[i] == '-' && end > tok + 1);
            if (numeric) {
                if (parse_label(ln + tok, end - tok, &lab)) {
                    rc = err_set(err, AE_EFORMAT, "%s:%" PRId64 ": label '%.*s' is not an int32 (hint: labels are "
                                 "integers)", what, line_no, (int)(end - tok), ln + tok);
                    break;
                }
                has = 1;
                end = tok;
                while (end > st && (ln[end - 1] == ' ' || ln[end - 1] == '\t')) end--;
            }
        }
        size_t plen = end - st;
        char *rel = xmalloc(plen + 1);
        memcpy(rel, ln + st, plen);
        rel[plen] = '\0';
        char *full = rel[0] == '/' ? NULL : join(base, rel);
        if (!full) {
            full = xmalloc(plen + 1);
            memcpy(full, rel, plen + 1);
        }
        vec_push(&fv, full, rel, 1, lab, line_no);
        if (fv.n > lab_cap) {
            int64_t ncap = lab_cap ? 2 * lab_cap : 64;
            int32_t *g = xmalloc((size_t)ncap * sizeof *g);
            if (fv.n - 1) memcpy(g, labels, (size_t)(fv.n - 1) * sizeof *g);
            free(labels);
            labels = g;
            lab_cap = ncap;
        }
        labels[fv.n - 1] = lab;
        any_label |= has;
    }
    if (rc == AE_OK && fv.n == 0)
        rc = err_set(err, AE_EFORMAT, "%s lists no image paths (hint: one image path per line, optional label)", what);
    if (rc) {
        vec_free(&fv);
        free(labels);
        return rc;
    }
    s->files = fv.v;
    s->n = fv.n;
    if (any_label) s->labels = labels;
    else free(labels);
    return AE_OK;
}

int image_list_open(ImageSource *s, Err *err)
{
    if (fileio_check_input(s->path, err)) return err->code;
    FILE *f = fopen(s->path, "rb");
    if (!f) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", s->path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > LIST_MAX_BYTES) {
        fclose(f);
        return err_set(err, AE_EIO, "%s is not a regular file of at most %lld bytes", s->path, (long long)LIST_MAX_BYTES);
    }
    size_t len = (size_t)st.st_size;
    char *buf = xmalloc(len + 1);
    size_t got = len ? fread(buf, 1, len, f) : 0;
    fclose(f);
    if (got != len) {
        free(buf);
        return err_set(err, AE_EIO, "cannot read %s (hint: check the disk)", s->path);
    }
    char base[DATASET_PATH_BYTES];
    snprintf(base, sizeof base, "%s", s->path);
    char *slash = strrchr(base, '/');
    if (slash == base) base[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(base, sizeof base, ".");
    int rc = image_list_parse(s, buf, len, base, s->path, err);
    free(buf);
    return rc ? rc : first_size(s, err);
}

int image_folder_read(ImageSource *s, int64_t first, int64_t count, uint8_t *pix, uint8_t *ok, Err *err)
{
    int64_t img = (int64_t)s->C * s->H * s->W;
    Err **errs = xcalloc((size_t)(count ? count : 1), sizeof *errs);
    uint8_t *resized = xcalloc((size_t)(count ? count : 1), 1); /* [count]: 1 if the image had another size */
    /* One image per iteration, each writing its own slot of pix / errs. */
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (count > 1)
#endif
    for (int64_t k = 0; k < count; k++) {
        Err e;
        err_clear(&e);
        DecodedImage im;
        const ImageFile *f = &s->files[first + k];
        if (image_decode_file(&im, f->path, s->opts.max_pixels, &e) == AE_OK) {
            image_convert(pix + k * img, s->C, s->H, s->W, &im, s->opts.bg, s->opts.fit);
            resized[k] = im.h != s->H || im.w != s->W;
            image_free(&im);
        } else {
            name_list_line(s, f, &e);
            errs[k] = xmalloc(sizeof e);
            *errs[k] = e;
        }
    }
    int rc = AE_OK;
    for (int64_t k = 0; k < count; k++) {
        s->n_resized += resized[k];
        if (ok) ok[k] = errs[k] == NULL;
        if (!errs[k]) continue;
        if (!s->opts.skip_bad) {
            if (rc == AE_OK) {
                *err = *errs[k];
                rc = err->code;
            }
        } else {
            memset(pix + k * img, 0, (size_t)img);
            if (s->n_skipped == 0) snprintf(s->skip_note, sizeof s->skip_note, "%s", errs[k]->msg);
            s->n_skipped++;
        }
        free(errs[k]);
    }
    free(errs);
    free(resized);
    return rc;
}
