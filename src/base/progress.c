/*
 * progress.c - the rank-0 progress line (see include/base/progress.h).
 *
 * Pure formatting plus rate limiting on an injected clock; the only I/O is
 * fputs/fflush on the caller's stream.  No MPI, no clock reads, no state
 * outside the Progress struct.
 */
#include "base/progress.h"

#include <math.h>
#include <string.h>

/* Seconds per minute and per hour, for duration formatting. */
#define SECONDS_PER_MINUTE 60
#define SECONDS_PER_HOUR 3600

/* Percent scale of the progress figure. */
#define PERCENT 100

/* Bytes for a formatted duration ("277777h46m40s" + NUL fits in 16). */
#define DURATION_BYTES 16

void progress_init(Progress *p, FILE *out, int is_tty, int64_t total_steps, int64_t steps_per_epoch,
                   int epochs, double interval_s, double now_s)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->is_tty = is_tty;
    p->total_steps = total_steps > 0 ? total_steps : 1;
    p->steps_per_epoch = steps_per_epoch > 0 ? steps_per_epoch : 1;
    p->epochs = epochs;
    p->interval_s = interval_s;
    p->t0 = now_s;
    p->start_step = 0;
    p->last_print_s = now_s;
}

void progress_set_start_step(Progress *p, int64_t step, double now_s)
{
    p->start_step = step;
    p->t0 = now_s;
    p->last_print_s = now_s;
}

void progress_format_duration(char *buf, size_t len, double seconds)
{
    if (!isfinite(seconds) || seconds > PROGRESS_MAX_DURATION_S) {
        snprintf(buf, len, "?");
        return;
    }
    if (seconds < 0.0) seconds = 0.0;
    const long long t = (long long)floor(seconds + 0.5);
    const long long h = t / SECONDS_PER_HOUR;
    const long long m = (t % SECONDS_PER_HOUR) / SECONDS_PER_MINUTE;
    const long long s = t % SECONDS_PER_MINUTE;
    if (h > 0)
        snprintf(buf, len, "%lldh%02lldm%02llds", h, m, s);
    else if (m > 0)
        snprintf(buf, len, "%lldm%02llds", m, s);
    else
        snprintf(buf, len, "%llds", s);
}

/* Writes "[=====>    ] " for done/total (0 <= done <= total) into buf.
 * Integer arithmetic, so exact fractions such as 29/100 are not floored
 * to the cell below by rounding. */
static void format_bar(char *buf, size_t len, int64_t done, int64_t total)
{
    char bar[PROGRESS_BAR_WIDTH + 1];
    const int filled = (int)(done * PROGRESS_BAR_WIDTH / total);
    for (int i = 0; i < PROGRESS_BAR_WIDTH; i++)
        bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[PROGRESS_BAR_WIDTH] = '\0';
    snprintf(buf, len, "[%s] ", bar);
}

void progress_update(Progress *p, int64_t step, int epoch, double loss, double images_per_s,
                     double now_s)
{
    const int epoch_end = step % p->steps_per_epoch == 0 || step >= p->total_steps;
    const double min_gap = p->is_tty ? PROGRESS_TTY_REDRAW_S : p->interval_s;
    if (p->printed && !epoch_end && now_s - p->last_print_s < min_gap) return;

    char eta[DURATION_BYTES] = "?";
    const int64_t done = step - p->start_step;
    if (done > 0) {
        const double per_step = (now_s - p->t0) / (double)done;
        progress_format_duration(eta, sizeof eta, per_step * (double)(p->total_steps - step));
    }
    const int64_t done_all = step < 0 ? 0 : (step > p->total_steps ? p->total_steps : step);
    const int pct = (int)(done_all * PERCENT / p->total_steps);

    char line[PROGRESS_LINE_BYTES];
    char bar[PROGRESS_BAR_WIDTH + 4] = "";
    if (p->is_tty) format_bar(bar, sizeof bar, done_all, p->total_steps);
    if (p->is_tty)
        snprintf(line, sizeof line, "epoch %d/%d %s%d%% step %lld/%lld loss %.4g %.0f img/s ETA %s",
                 epoch, p->epochs, bar, pct, (long long)step, (long long)p->total_steps, loss,
                 images_per_s, eta);
    else
        snprintf(line, sizeof line, "epoch %d/%d step %lld/%lld (%d%%) loss %.4g %.0f img/s ETA %s",
                 epoch, p->epochs, (long long)step, (long long)p->total_steps, pct, loss,
                 images_per_s, eta);

    if (p->is_tty) {
        const int len = (int)strlen(line);
        /* Blank out the rest of a longer previous line. */
        fprintf(p->out, "\r%s%*s", line, p->last_len > len ? p->last_len - len : 0, "");
        p->last_len = len;
        p->line_open = 1;
        if (epoch_end) {
            fputc('\n', p->out);
            p->line_open = 0;
            p->last_len = 0;
        }
    } else {
        fprintf(p->out, "%s\n", line);
    }
    fflush(p->out);
    p->printed = 1;
    p->last_print_s = now_s;
}

void progress_finish(Progress *p)
{
    if (p->is_tty && p->line_open) fputc('\n', p->out);
    p->line_open = 0;
    p->last_len = 0;
    fflush(p->out);
}
