/*
 * pack.c - parallel packing of dataset sources into a sample store (see
 * include/data/pack.h for the scheme).
 *
 * Memory per rank: one window of decoded images (window * C*H*W bytes)
 * plus the raw-read window of image_source.h, labels (4 bytes/image) and
 * the kept-flags (8 bytes/image, summed across ranks with one allreduce).
 * Rank 0's finishing pass streams the records through a window too.
 * MPI through par.h only.
 */
#include "data/pack.h"
#include "base/fileio.h"

#include "base/check.h"
#include "data/image_source.h"
#include "data/sample_store.h"
#include "base/timer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Records moved per read in rank 0's compaction / CRC pass: bytes. */
#define FINISH_WINDOW_BYTES (32LL << 20)
/* Room for the temporary path (final path + ".tmp." + pid). */
#define TMP_PATH_BYTES 4200

/* The range of source s's records that `rank` decodes. */
static void my_range(const ImageSource *s, const ParCtx *ctx, int64_t *lo, int64_t *hi)
{
    if (s->sequential) {
        *lo = 0;
        *hi = ctx->rank == 0 ? s->n : 0;
        return;
    }
    *lo = s->n * ctx->rank / ctx->size;
    *hi = s->n * (ctx->rank + 1) / ctx->size;
}

/* Decodes this rank's records of every source into the temporary store;
 * ok[global] = 1 for each image delivered. */
static int decode_all(ImageSource **srcs, int ns, const ParCtx *ctx, const char *tmp, int64_t window, int64_t *ok,
                      Err *err)
{
    int64_t img = (int64_t)srcs[0]->C * srcs[0]->H * srcs[0]->W, base = 0;
    uint8_t *pix = xmalloc((size_t)(window * img));
    uint8_t *okw = xmalloc((size_t)window);
    int rc = AE_OK;
    for (int i = 0; i < ns && rc == AE_OK; i++) {
        int64_t lo, hi;
        my_range(srcs[i], ctx, &lo, &hi);
        for (int64_t at = lo; at < hi && rc == AE_OK; at += window) {
            int64_t m = hi - at < window ? hi - at : window;
            uint32_t crc;
            rc = image_source_read(srcs[i], at, m, pix, okw, err);
            if (rc == AE_OK) rc = store_write_records(tmp, base + at, m, img, pix, &crc, err);
            for (int64_t k = 0; rc == AE_OK && k < m; k++) ok[base + at + k] = okw[k];
        }
        base += srcs[i]->n;
    }
    free(pix);
    free(okw);
    return rc;
}

/* Rank 0: moves kept records together (in order) and computes the CRC-32
 * of each block of store_crc_block(img) kept records (block_crc[ceil(n / R)]
 * at most) and of all of them (joined from the blocks' with crc32_combine). */
static int compact(const char *tmp, int64_t n, int64_t img, const int64_t *ok, int64_t *kept, uint32_t *crc,
                   uint32_t *block_crc, Err *err)
{
    int fd = open(tmp, O_RDWR | O_CLOEXEC);
    if (fd < 0) return err_set(err, AE_EIO, "cannot open %s: %s", tmp, strerror(errno));
    int64_t per = FINISH_WINDOW_BYTES / img;
    if (per < 1) per = 1;
    uint8_t *buf = xmalloc((size_t)(per * img));
    const uint32_t crc0 = (uint32_t)crc32(0L, Z_NULL, 0);
    const int64_t R = store_crc_block(img);
    uint32_t c = crc0, cb = crc0; /* all records; the current block */
    int64_t out = 0;
    int rc = AE_OK;
    for (int64_t at = 0; at < n && rc == AE_OK; at += per) {
        int64_t m = n - at < per ? n - at : per;
        if (fileio_pread_full(fd, buf, (uint64_t)(m * img), store_record_offset(at, img))) {
            rc = err_set(err, AE_EIO, "cannot read back %s: %s", tmp, strerror(errno ? errno : EIO));
            break;
        }
        int64_t w = 0;
        for (int64_t k = 0; k < m; k++) {
            if (!ok[at + k]) continue;
            if (w != k) memmove(buf + w * img, buf + k * img, (size_t)img);
            w++;
        }
        /* Block by block (a block is at most a few pages: a uInt length).
         * Record out + k of the store is buf's record k. */
        for (int64_t k = 0; k < w;) {
            int64_t rec = out + k, in_block = R - rec % R, take = w - k < in_block ? w - k : in_block;
            cb = (uint32_t)crc32(cb, buf + k * img, (uInt)(take * img));
            k += take;
            if ((rec + take) % R == 0) {
                block_crc[rec / R] = cb;
                c = store_crc_combine(c, cb, (uint64_t)(R * img));
                cb = crc0;
            }
        }
        if (w > 0 && (out != at || w != m) && fileio_pwrite_full(fd, buf, (uint64_t)(w * img), store_record_offset(out, img)))
            rc = err_set(err, AE_EIO, "cannot write %s: %s (hint: disk full?)", tmp, strerror(errno ? errno : EIO));
        out += w;
    }
    if (out % R) { /* the last, shorter block */
        block_crc[out / R] = cb;
        c = store_crc_combine(c, cb, (uint64_t)((out % R) * img));
    }
    free(buf);
    if (close(fd) != 0 && rc == AE_OK) rc = err_set(err, AE_EIO, "cannot close %s: %s", tmp, strerror(errno));
    *kept = out;
    *crc = c;
    return rc;
}

/* Rank 0: labels, names and classes of the kept records, then the store. */
static int finish(ImageSource **srcs, int ns, const PackConfig *cfg, const char *tmp, const int64_t *ok, int64_t n,
                  PackStats *st, Err *err)
{
    int64_t img = (int64_t)srcs[0]->C * srcs[0]->H * srcs[0]->W, kept = 0;
    uint32_t crc = 0;
    const int64_t R = store_crc_block(img);
    uint32_t *block_crc = xmalloc((size_t)((n + R - 1) / R + 1) * sizeof *block_crc); /* + 1: n may be 0 */
    if (compact(tmp, n, img, ok, &kept, &crc, block_crc, err)) {
        free(block_crc);
        return err->code;
    }
    if (kept == 0) {
        free(block_crc);
        return err_set(err, AE_EFORMAT, "no image of '%.900s' could be decoded: all %" PRId64 " were skipped (hint: "
                       "check the files)", cfg->spec, n);
    }
    int all_labels = 1, any_names = 0;
    for (int i = 0; i < ns; i++) {
        all_labels &= srcs[i]->labels != NULL;
        any_names |= srcs[i]->files != NULL || srcs[i]->names != NULL;
    }
    int32_t *labels = all_labels ? xmalloc((size_t)kept * sizeof *labels) : NULL;
    char **names = any_names ? xcalloc((size_t)kept, sizeof *names) : NULL;
    int64_t g = 0, out = 0;
    char name[DATASET_PATH_BYTES];
    for (int i = 0; i < ns; i++) {
        for (int64_t r = 0; r < srcs[i]->n; r++, g++) {
            if (!ok[g]) continue;
            if (labels) labels[out] = srcs[i]->labels[r];
            if (names) {
                if (!image_source_name(srcs[i], r, name, sizeof name))
                    snprintf(name, sizeof name, "%.4000s#%" PRId64, srcs[i]->path, r);
                size_t l = strlen(name);
                names[out] = xmalloc(l + 1);
                memcpy(names[out], name, l + 1);
            }
            out++;
        }
    }
    const ImageSource *cls = NULL;
    for (int i = 0; i < ns && !cls; i++)
        if (srcs[i]->n_classes) cls = srcs[i];
    StoreMeta m = {kept, srcs[0]->C, srcs[0]->H, srcs[0]->W, crc, block_crc, labels, (const char *const *)names,
                   cfg->spec, n - kept, cls ? (const char *const *)cls->classes : NULL, cls ? cls->n_classes : 0};
    int rc = store_finish(tmp, cfg->out, &m, cfg->overwrite, err);
    free(block_crc);
    for (int64_t i = 0; names && i < kept; i++) free(names[i]);
    free(names);
    free(labels);
    st->n_out = kept;
    return rc;
}

int pack_run(const ParCtx *ctx, const PackConfig *cfg, PackStats *st, Err *err)
{
    memset(st, 0, sizeof *st);
    err_clear(err);
    ImageSource **srcs = NULL;
    int ns = 0;
    image_source_open_spec(&srcs, &ns, cfg->spec, &cfg->opts, err);
    for (int i = 1; err->code == AE_OK && i < ns; i++)
        if (srcs[i]->C != srcs[0]->C || srcs[i]->H != srcs[0]->H || srcs[i]->W != srcs[0]->W)
            err_set(err, AE_ESHAPE, "%s has images of %dx%dx%d (CxHxW) but %s has %dx%dx%d (hint: set --size and "
                    "--channels so that all sources agree)", srcs[0]->path, srcs[0]->C, srcs[0]->H, srcs[0]->W,
                    srcs[i]->path, srcs[i]->C, srcs[i]->H, srcs[i]->W);
    if (par_agree(ctx, err)) {
        image_source_close_all(srcs, ns);
        return err->code;
    }
    int64_t n = 0;
    for (int i = 0; i < ns; i++) n += srcs[i]->n;
    st->n_in = n;
    st->C = srcs[0]->C;
    st->H = srcs[0]->H;
    st->W = srcs[0]->W;
    for (int i = 0; i < ns; i++) /* every rank opened the same sources: the same notes */
        if (srcs[i]->gap_note[0]) {
            size_t k = strlen(st->warning);
            snprintf(st->warning + k, sizeof st->warning - k, "%s%s", k ? "; " : "", srcs[i]->gap_note);
        }
    /* The temporary file is named by rank 0's pid and shared by all. */
    char tmp[TMP_PATH_BYTES];
    long long pid = (long long)getpid();
    par_bcast(ctx, &pid, sizeof pid, 0);
    snprintf(tmp, sizeof tmp, "%s.tmp.%lld", cfg->out, pid);
    if (ctx->rank == 0) store_create(tmp, n, st->C, st->H, st->W, err);
    int created = par_agree(ctx, err) == AE_OK;
    int64_t *ok = xcalloc((size_t)n, sizeof *ok);
    double t0 = timer_now();
    if (created) {
        decode_all(srcs, ns, ctx, tmp, cfg->window, ok, err);
        par_agree(ctx, err);
    }
    if (err->code == AE_OK) {
        par_allreduce_sum_i64(ctx, ok, (size_t)n);
        int64_t skipped = 0;
        for (int i = 0; i < ns; i++) skipped += srcs[i]->n_skipped;
        par_allreduce_sum_i64(ctx, &skipped, 1);
        st->skipped = skipped;
        /* The first skip note: the lowest rank that has one. */
        char note[sizeof st->skip_note] = "";
        for (int i = 0; i < ns && !note[0]; i++)
            if (srcs[i]->n_skipped) snprintf(note, sizeof note, "%s", srcs[i]->skip_note);
        char *all = ctx->rank == 0 ? xmalloc((size_t)ctx->size * sizeof note) : NULL;
        par_gather(ctx, note, all, sizeof note, 0);
        for (int r = 0; all && r < ctx->size && !st->skip_note[0]; r++)
            snprintf(st->skip_note, sizeof st->skip_note, "%s", all + (size_t)r * sizeof note);
        free(all);
        st->decode_s = timer_now() - t0;
        double t1 = timer_now();
        if (ctx->rank == 0) finish(srcs, ns, cfg, tmp, ok, n, st, err);
        par_agree(ctx, err);
        st->finish_s = timer_now() - t1;
        par_bcast(ctx, &st->n_out, sizeof st->n_out, 0);
    }
    if (err->code && created && ctx->rank == 0) unlink(tmp);
    free(ok);
    image_source_close_all(srcs, ns);
    return err->code;
}
