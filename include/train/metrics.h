/*
 * metrics.h - the training metrics CSV and the PSNR formula.
 *
 * What it does: writes one CSV row per logged step to a file that users read
 * with spreadsheets, pandas or launch/plot_loss.sh.  The columns are exactly
 *   step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds,
 *   allreduce_ms,comm_ms,overlap
 * (METRICS_CSV_HEADER; the last three were added by issue 6, after the
 * older ones so that readers picking columns by name or position still
 * work), comma-separated, no quoting (all fields are numbers),
 * '\n' line ends (RFC 4180 without CR).  A value that was not measured at
 * that row (e.g. val_* between evaluations) is an empty field.
 * Each row is flushed and fsynced, so a crash loses at most the row being
 * written; a torn last line (no '\n') is dropped when the file is reopened.
 * What it does not do: decide which rank writes (the caller uses rank 0),
 * compute the metrics themselves (only PSNR from an MSE), or plot.
 * Threading/MPI: no MPI; one MetricsLog per file, used by one thread.
 */
#ifndef AESIM_METRICS_H
#define AESIM_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "base/fileio.h"

/* The header line, without the '\n'. */
#define METRICS_CSV_HEADER \
    "step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds,allreduce_ms,comm_ms,overlap"

/* Number of columns in METRICS_CSV_HEADER. */
#define METRICS_CSV_COLUMNS 10

/* The header of files written before issue 6 (its first 7 columns), and its
 * column count: such a file is accepted when resuming, and its kept rows get
 * empty fields for the new columns. */
#define METRICS_CSV_HEADER_V1 "step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds"
#define METRICS_CSV_COLUMNS_V1 7

typedef struct MetricsLog {
    FILE *f;                     /* open for appending; NULL when closed */
    char path[FILEIO_PATH_MAX];  /* the CSV file */
} MetricsLog;

/* Opens the metrics CSV at path for appending rows.
 *   resume == 0: starts a new file (an existing file is replaced) holding
 *                only the header.
 *   resume != 0: if the file exists, its header must be METRICS_CSV_HEADER
 *                or METRICS_CSV_HEADER_V1 (then it is rewritten with the
 *                new header, and ",,," ends each kept row);
 *                its rows with step <= resume_step are kept, rows with
 *                step > resume_step (logged after the checkpoint we resume
 *                from) and a torn last line are dropped, so the resumed run
 *                does not duplicate steps.  If it does not exist, it is
 *                started as for resume == 0.
 * The header/kept rows are written atomically (temp, fsync, rename; fileio.h)
 * before the file is opened in append mode.
 * Errors (m->f is NULL afterwards): AE_EIO naming the file (folder missing or
 * not writable, read error); AE_EFORMAT naming the file and line if resuming
 * from a file whose header differs or whose step field is not an integer;
 * AE_EARG if path is too long. */
int metrics_open(MetricsLog *m, const char *path, int resume, int64_t resume_step, Err *err);

/* Appends one row and fflush+fsyncs it.  Any double argument that is NaN is
 * written as an empty field; +-inf as "inf"/"-inf" (e.g. the PSNR of a
 * perfect reconstruction).  Finite values are written with "%.9g" (exact
 * round trip of every float32, 9 significant digits of a double).
 *   step: optimizer steps completed; epoch: epochs completed (fractional);
 *   train_loss, val_loss: mean loss (MSE per pixel); val_psnr_db: dB;
 *   images_per_s: global training throughput; seconds: wall time since the
 *   start of the run;
 *   allreduce_ms: exposed communication per step, ms (from the end of the
 *   backward pass until gradients and loss are summed over ranks);
 *   comm_ms: all communication per step, ms (allreduce_ms plus the time
 *   spent in MPI calls during the backward pass, grad_sync.h);
 *   overlap: share (0..1) of the gradient, in floats, whose allreduce had
 *   completed when the backward pass ended (0 with --bucket-kib 0).
 * Errors: AE_EIO naming the file (disk full, I/O error), AE_EARG if m is not
 * open. */
int metrics_append(MetricsLog *m, int64_t step, double epoch, double train_loss, double val_loss,
                   double val_psnr_db, double images_per_s, double seconds, double allreduce_ms,
                   double comm_ms, double overlap, Err *err);

/* Closes the file (the rows are already on disk).  Safe to call twice or on
 * a log whose open failed. */
void metrics_close(MetricsLog *m);

/* Peak signal-to-noise ratio in dB for images with values in [0, 1] (peak 1):
 * 10*log10(1/mse).  Returns +inf if mse == 0 and NaN if mse is negative or
 * NaN.  Follows the standard definition PSNR = 10 log10(MAX^2 / MSE)
 * (e.g. scikit-image peak_signal_noise_ratio with data_range = 1). */
double metrics_psnr_db(double mse);

#endif
