/*
 * metrics.c - the training metrics CSV and PSNR (see include/train/metrics.h).
 *
 * The file is (re)created atomically with its header and the rows kept from
 * a previous run, then reopened in append mode; each appended row is
 * fflush'ed and fsync'ed.  What it does not do: parse the float columns of
 * old rows (they are copied byte for byte), quote fields (all are numbers).
 * Threading/MPI: none; the caller picks the writing rank.
 */
#include "train/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bytes for one formatted field: "%.9g" of a double needs at most 16
 * ("-1.23456789e-308"); 32 leaves margin. */
#define METRICS_FIELD_BYTES 32

/* Bytes for one formatted row: the fields, their commas, '\n', NUL. */
#define METRICS_ROW_BYTES (METRICS_CSV_COLUMNS * METRICS_FIELD_BYTES + 8)

/* Room atomic_open needs after the path for its ".tmp.<pid>" suffix. */
#define METRICS_TMP_SUFFIX_BYTES 32

/* Copies the rows of the existing file `in` with step <= resume_step to out;
 * rows of a METRICS_CSV_HEADER_V1 file get empty fields for the columns it
 * lacks.  Returns AE_OK or an error naming path. */
static int copy_kept_rows(FILE *out, FILE *in, const char *path, int64_t resume_step, Err *err)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lineno = 0;
    int rc = AE_OK, pad = 0;
    while ((len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        /* A line without '\n' is the row being written when a run crashed. */
        if (len == 0 || line[len - 1] != '\n') break;
        if (lineno == 1) {
            line[len - 1] = '\0';
            if (strcmp(line, METRICS_CSV_HEADER_V1) == 0) {
                pad = METRICS_CSV_COLUMNS - METRICS_CSV_COLUMNS_V1;
                continue;
            }
            if (strcmp(line, METRICS_CSV_HEADER) != 0) {
                rc = err_set(err, AE_EFORMAT,
                             "%s: header is \"%.200s\", expected \"%s\" (not an aesim metrics file? "
                             "move it away or start without resuming)",
                             path, line, METRICS_CSV_HEADER);
                break;
            }
            continue;
        }
        char *end = NULL;
        errno = 0;
        long long step = strtoll(line, &end, 10);
        if (end == line || *end != ',' || errno == ERANGE) {
            rc = err_set(err, AE_EFORMAT,
                         "%s:%lld: step field is not an integer (file edited by hand? fix or remove "
                         "that line)",
                         path, (long long)lineno);
            break;
        }
        if ((int64_t)step > resume_step) continue;
        line[len - 1] = '\0';
        int bad = fputs(line, out) == EOF;
        for (int k = 0; k < pad && !bad; k++) bad = fputc(',', out) == EOF;
        if (bad || fputc('\n', out) == EOF) {
            rc = err_set(err, AE_EIO, "cannot write %s: %s", path, strerror(errno));
            break;
        }
    }
    if (rc == AE_OK && ferror(in))
        rc = err_set(err, AE_EIO, "cannot read %s: %s", path, strerror(errno));
    free(line);
    return rc;
}

int metrics_open(MetricsLog *m, const char *path, int resume, int64_t resume_step, Err *err)
{
    m->f = NULL;
    m->path[0] = '\0';
    if (strlen(path) + METRICS_TMP_SUFFIX_BYTES >= sizeof m->path)
        return err_set(err, AE_EARG, "%s: path too long (at most %d bytes)", path,
                       FILEIO_PATH_MAX - METRICS_TMP_SUFFIX_BYTES - 1);
    snprintf(m->path, sizeof m->path, "%s", path);

    AtomicFile af;
    if (atomic_open(&af, path, err)) return err->code;
    if (fputs(METRICS_CSV_HEADER "\n", af.f) == EOF) {
        int e = errno;
        atomic_abort(&af);
        return err_set(err, AE_EIO, "cannot write %s: %s", path, strerror(e));
    }
    if (resume) {
        FILE *in = fopen(path, "rb");
        if (!in && errno != ENOENT) {
            int e = errno;
            atomic_abort(&af);
            return err_set(err, AE_EIO, "cannot read %s to resume: %s (check its permissions)", path,
                           strerror(e));
        }
        if (in) {
            int rc = copy_kept_rows(af.f, in, path, resume_step, err);
            fclose(in);
            if (rc) {
                atomic_abort(&af);
                return rc;
            }
        }
    }
    if (atomic_commit(&af, err)) return err->code;
    m->f = fopen(path, "ab");
    if (!m->f)
        return err_set(err, AE_EIO, "cannot open %s for appending: %s", path, strerror(errno));
    return AE_OK;
}

/* Formats v into buf: empty for NaN, "inf"/"-inf", else "%.9g". */
static void format_field(char *buf, size_t len, double v)
{
    if (isnan(v))
        buf[0] = '\0';
    else if (isinf(v))
        snprintf(buf, len, "%s", v > 0 ? "inf" : "-inf");
    else
        snprintf(buf, len, "%.9g", v);
}

int metrics_append(MetricsLog *m, int64_t step, double epoch, double train_loss, double val_loss,
                   double val_psnr_db, double images_per_s, double seconds, double allreduce_ms,
                   double comm_ms, double overlap, Err *err)
{
    if (!m->f) return err_set(err, AE_EARG, "metrics log %s is not open", m->path);
    const double vals[METRICS_CSV_COLUMNS - 1] = {epoch,   train_loss,   val_loss,     val_psnr_db, images_per_s,
                                                  seconds, allreduce_ms, comm_ms, overlap};
    char row[METRICS_ROW_BYTES];
    size_t n = (size_t)snprintf(row, sizeof row, "%lld", (long long)step);
    for (int i = 0; i < METRICS_CSV_COLUMNS - 1; i++) {
        char field[METRICS_FIELD_BYTES];
        format_field(field, sizeof field, vals[i]);
        n += (size_t)snprintf(row + n, sizeof row - n, ",%s", field);
    }
    snprintf(row + n, sizeof row - n, "\n");
    if (fputs(row, m->f) == EOF || fflush(m->f) != 0 || fsync(fileno(m->f)) != 0)
        return err_set(err, AE_EIO, "cannot append to %s: %s (disk full?)", m->path, strerror(errno));
    return AE_OK;
}

void metrics_close(MetricsLog *m)
{
    if (m->f) fclose(m->f);
    m->f = NULL;
}

double metrics_psnr_db(double mse)
{
    if (isnan(mse) || mse < 0.0) return NAN;
    if (mse == 0.0) return INFINITY;
    return 10.0 * log10(1.0 / mse);
}
