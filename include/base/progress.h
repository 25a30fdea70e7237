/*
 * progress.h - the training progress display (rank 0 only).
 *
 * What it does: on a terminal, one live line redrawn in place with '\r':
 *   epoch 2/5 [=======>             ] 41% step 1234/3000 loss 0.01234 2345 img/s ETA 1m23s
 * and, when the output is a log file or a pipe, plain lines
 *   epoch 2/5 step 1234/3000 (41%) loss 0.01234 2345 img/s ETA 1m23s
 * at most one every interval_s seconds, plus the first update and the last
 * step of each epoch (so every epoch's final loss is in the log).  On a
 * terminal the line of each finished epoch is kept (ended with '\n') and
 * redraws are limited to one per PROGRESS_TTY_REDRAW_S.
 * The bar and percentage show overall progress, step / total_steps, the same
 * quantity the ETA counts down.
 * What it does not do: MPI (the caller calls it on rank 0 only, with the
 * global loss), read clocks (the time is passed in, e.g. timer_now(), so
 * tests can inject it), detect the terminal (the caller passes
 * isatty(fileno(out))).
 * Threading: one Progress per output, used by one thread.
 */
#ifndef AESIM_PROGRESS_H
#define AESIM_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Least time between two terminal redraws, in seconds: 10 per second is
 * smooth to read and costs nothing next to a training step. */
#define PROGRESS_TTY_REDRAW_S 0.1

/* Width of the terminal progress bar, in characters between the brackets. */
#define PROGRESS_BAR_WIDTH 20

/* Longest duration formatted, in seconds (~31 years): an ETA beyond this
 * means the measured rate is meaningless, and it keeps the integer
 * conversion in range. */
#define PROGRESS_MAX_DURATION_S 1e9

/* Longest line written, in bytes including the NUL. */
#define PROGRESS_LINE_BYTES 256

typedef struct Progress {
    FILE *out;              /* where lines go; not owned (not closed) */
    int is_tty;             /* 1: live '\r' line; 0: rate-limited plain lines */
    int64_t total_steps;    /* steps of the whole run (all epochs) */
    int64_t steps_per_epoch;
    int epochs;             /* epochs of the whole run */
    double interval_s;      /* least seconds between plain lines */
    double t0;              /* time at init (or progress_set_start_step) */
    int64_t start_step;     /* step count at t0: 0, or the resumed step */
    double last_print_s;    /* time of the last line/redraw */
    int printed;            /* 1 once anything was printed */
    int line_open;          /* tty: a line is on screen without its '\n' */
    int last_len;           /* tty: length of the line on screen */
} Progress;

/* Sets up p.  total_steps: steps of the run (>= 1); steps_per_epoch (>= 1);
 * epochs (>= 1); interval_s: least seconds between plain (non-tty) lines;
 * now_s: the current time in seconds on the clock later passed to
 * progress_update.  Prints nothing. */
void progress_init(Progress *p, FILE *out, int is_tty, int64_t total_steps, int64_t steps_per_epoch,
                   int epochs, double interval_s, double now_s);

/* For a resumed run: the ETA counts only steps done after `step`, timed from
 * now_s (call right after progress_init, before the first update). */
void progress_set_start_step(Progress *p, int64_t step, double now_s);

/* Reports progress after `step` optimizer steps (1..total_steps, global count
 * over all epochs) in epoch `epoch`, counted from 1 (1..epochs, displayed as
 * given: "epoch 2/5" is the second epoch), with the
 * current loss and throughput (images/s).  The ETA is
 *   (now_s - t0) / (step - start_step) * (total_steps - step),
 * the mean time per step since init times the steps left ("?" before the
 * first step).  Prints or not according to the rate limits above; the line
 * at step % steps_per_epoch == 0 or step >= total_steps is always printed.
 * For a resumed run pass the global step and call progress_set_start_step,
 * so that epoch ends (global step multiples of steps_per_epoch) are found. */
void progress_update(Progress *p, int64_t step, int epoch, double loss, double images_per_s,
                     double now_s);

/* Ends a terminal line left open with '\n' (nothing for plain output) and
 * flushes out.  Call before printing anything else on the same stream. */
void progress_finish(Progress *p);

/* Formats a duration, rounded to whole seconds, as "1h02m03s", "4m05s" or
 * "6s" (hours are not wrapped into days: "27h00m00s").  Negative values
 * print as "0s"; NaN, inf and values over PROGRESS_MAX_DURATION_S as "?".
 * buf: len bytes (16 always suffice). */
void progress_format_duration(char *buf, size_t len, double seconds);

#endif
