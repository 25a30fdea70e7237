/*
 * cifar.c - CIFAR-10 and CIFAR-100 binary batches as an image source (see
 * include/data/cifar.h).
 *
 * Format (A. Krizhevsky, "Learning Multiple Layers of Features from Tiny
 * Images", 2009; www.cs.toronto.edu/~kriz/cifar.html, "Binary version"):
 * records of <label byte(s)><3072 pixel bytes>, the pixels the 1024 red
 * values of a 32x32 image row by row, then green, then blue (already CHW).
 * CIFAR-10 has one label byte (0..9); CIFAR-100 two, <coarse 0..19><fine
 * 0..99>; the fine label is used unless coarse=1.  There is no header: the
 * file size must be a whole number of records, and every label must be in
 * range (which also catches a CIFAR-100 file read as CIFAR-10 in most
 * cases).  Labels are read at open with chunked pread; pixels are not
 * mapped (the label bytes interleave the records): image_source_read
 * preads them.
 * No MPI; single-threaded open.
 */
#include "data/cifar.h"
#include "data/source_array.h"
#include "base/fileio.h"

#include "base/check.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Image geometry of every CIFAR record. */
#define CIFAR_C 3
#define CIFAR_SIDE 32
#define CIFAR_PIXELS (CIFAR_C * CIFAR_SIDE * CIFAR_SIDE)
/* Label ranges: CIFAR-10 classes, CIFAR-100 coarse and fine classes. */
#define CIFAR10_CLASSES 10
#define CIFAR100_COARSE 20
#define CIFAR100_FINE 100
/* Records read per pread while collecting labels. */
#define LABEL_CHUNK_RECORDS 1024

int cifar_open(ImageSource *s, int label_bytes, Err *err)
{
    const char *kind = label_bytes == 1 ? "CIFAR-10" : "CIFAR-100";
    if (fileio_check_input(s->path, err)) return err->code;
    s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", s->path, strerror(errno));
    struct stat st;
    if (fstat(s->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s is not a readable regular file", s->path);
    int64_t rec = label_bytes + CIFAR_PIXELS;
    if (st.st_size == 0 || st.st_size % rec != 0)
        return err_set(err, AE_EFORMAT, "%s: %lld bytes is not a whole number of %" PRId64 "-byte %s records (hint: the "
                       "file is truncated, or it is a %s batch: name the kind %s)", s->path, (long long)st.st_size, rec,
                       kind, label_bytes == 1 ? "CIFAR-100" : "CIFAR-10", label_bytes == 1 ? "cifar100:" : "cifar10:");
    s->n = st.st_size / rec;
    s->labels = xmalloc((size_t)s->n * sizeof *s->labels);
    uint8_t *buf = xmalloc((size_t)(LABEL_CHUNK_RECORDS * rec));
    int which = label_bytes == 2 && !s->opts.coarse ? 1 : 0;
    int limit = label_bytes == 1 ? CIFAR10_CLASSES : s->opts.coarse ? CIFAR100_COARSE : CIFAR100_FINE;
    int rc = AE_OK;
    for (int64_t at = 0; at < s->n && rc == AE_OK; at += LABEL_CHUNK_RECORDS) {
        int64_t m = s->n - at < LABEL_CHUNK_RECORDS ? s->n - at : LABEL_CHUNK_RECORDS;
        ssize_t want = (ssize_t)(m * rec), got = pread(s->fd, buf, (size_t)want, (off_t)(at * rec));
        if (got != want) {
            rc = err_set(err, AE_EIO, "cannot read %s: %s", s->path, got < 0 ? strerror(errno) : "file shrank");
            break;
        }
        for (int64_t k = 0; k < m; k++) {
            int lab = buf[k * rec + which];
            if (lab >= limit) {
                rc = err_set(err, AE_EFORMAT, "%s: record %" PRId64 " has label %d, outside 0..%d of %s (hint: is this "
                             "a %s batch? name the kind cifar10: or cifar100:)", s->path, at + k, lab, limit - 1, kind,
                             kind);
                break;
            }
            s->labels[at + k] = lab;
        }
    }
    free(buf);
    if (rc) return rc;
    s->access = RAW_FILE;
    s->offset = 0;
    s->stride = (uint64_t)rec;
    s->skip = (uint64_t)label_bytes;
    s->dtype = NPY_U8;
    s->C0 = CIFAR_C;
    s->H0 = s->W0 = CIFAR_SIDE;
    return source_array_finish_shape(s, s->path, err);
}
