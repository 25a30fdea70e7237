/*
 * test_progress.c - the progress display (src/base/progress.c) and the timers
 * (src/base/timer.c), with an injected clock and a tmpfile() as the terminal/log.
 *
 * Checks: duration formatting against hand-worked cases; plain (non-tty)
 * lines are rate-limited to one per interval plus the first update and every
 * epoch end, and name step, loss, img/s and ETA; the ETA equals
 * steps_left * seconds_per_step for a constant step rate (the ETA text is
 * parsed back here, independently of the formatter); resumed runs count only
 * new steps; the tty line is redrawn with '\r', blanks a longer previous
 * line, and is ended by epoch ends / progress_finish; phase timers add up
 * injected laps exactly and timer_now measures a real sleep.
 * Single-threaded, no MPI, runs in ~0.05 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/progress.h"
#include "base/timer.h"

/* Everything written to f so far, NUL-terminated (caller frees). */
static char *slurp(FILE *f)
{
    fflush(f);
    long n = ftell(f);
    assert_true(n >= 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    rewind(f);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    return buf;
}

/* Parses "1h02m03s" / "4m05s" / "6s" into seconds; -1 if malformed. */
static double parse_duration(const char *s)
{
    long h = 0, m = 0, sec = 0;
    int used = 0;
    if (sscanf(s, "%ldh%ldm%lds%n", &h, &m, &sec, &used) == 3 && used > 0) return h * 3600.0 + m * 60.0 + sec;
    h = 0;
    if (sscanf(s, "%ldm%lds%n", &m, &sec, &used) == 2 && used > 0) return m * 60.0 + sec;
    if (sscanf(s, "%lds%n", &sec, &used) == 1 && used > 0) return (double)sec;
    return -1.0;
}

/* One parsed plain progress line. */
typedef struct Line {
    int epoch, epochs, pct;
    long long step, total;
    double loss, ips;
    char eta[32];
} Line;

static int parse_line(const char *s, Line *l)
{
    return sscanf(s, "epoch %d/%d step %lld/%lld (%d%%) loss %lf %lf img/s ETA %31s", &l->epoch, &l->epochs,
                  &l->step, &l->total, &l->pct, &l->loss, &l->ips, l->eta) == 8;
}

static void test_format_duration(void **state)
{
    (void)state;
    struct {
        double s;
        const char *want;
    } cases[] = {
        {0.0, "0s"},         {6.0, "6s"},         {59.4, "59s"},      {59.6, "1m00s"},
        {245.0, "4m05s"},    {600.0, "10m00s"},   {3599.5, "1h00m00s"}, {3723.0, "1h02m03s"},
        {97200.0, "27h00m00s"}, {-5.0, "0s"},     {NAN, "?"},         {INFINITY, "?"},
        {1e12, "?"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[16];
        progress_format_duration(buf, sizeof buf, cases[i].s);
        if (strcmp(buf, cases[i].want) != 0) fprintf(stderr, "  %g s -> \"%s\", want \"%s\"\n", cases[i].s, buf, cases[i].want);
        assert_string_equal(buf, cases[i].want);
    }
}

/* Plain output: rate limit, content, and the ETA of a constant step rate. */
static void test_plain_lines(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    const int64_t total = 1000, spe = 100;
    const int epochs = 10;
    const double interval = 10.0, dt = 0.25, t0 = 1000.0;
    Progress p;
    progress_init(&p, f, 0, total, spe, epochs, interval, t0);
    const int64_t last = 250;
    for (int64_t s = 1; s <= last; s++)
        progress_update(&p, s, (int)((s - 1) / spe) + 1, 1.0 / (double)s, 3000.0 + (double)s, t0 + dt * (double)s);
    progress_finish(&p);
    char *text = slurp(f);

    int n = 0;
    long long prev_step = -1;
    int saw_first = 0, saw_e1 = 0, saw_e2 = 0;
    for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        Line l;
        assert_null(strchr(ln, '\r'));
        if (!parse_line(ln, &l)) fail_msg("unparsable line \"%s\"", ln);
        n++;
        assert_int_equal(l.total, total);
        assert_int_equal(l.epochs, epochs);
        assert_int_equal(l.epoch, (int)((l.step - 1) / spe) + 1);
        assert_int_equal(l.pct, (int)(100 * l.step / total));
        assert_true(fabs(l.loss - 1.0 / (double)l.step) <= 5e-4 / (double)l.step); /* 4 significant digits */
        assert_true(fabs(l.ips - (3000.0 + (double)l.step)) <= 0.5);
        /* Constant rate dt: ETA = steps left * dt, rounded to whole seconds. */
        const double eta = parse_duration(l.eta);
        const double want = (double)(total - l.step) * dt;
        if (fabs(eta - want) > 0.5) fail_msg("step %lld: ETA %s = %g s, want %g s", l.step, l.eta, eta, want);
        const int epoch_end = l.step % spe == 0;
        if (l.step == 1) saw_first = 1;
        if (l.step == 100) saw_e1 = 1;
        if (l.step == 200) saw_e2 = 1;
        /* At most one line per interval, except epoch ends and the first. */
        if (prev_step > 0 && !epoch_end && (double)(l.step - prev_step) * dt < interval - 1e-9)
            fail_msg("step %lld printed %g s after step %lld (interval %g s)", l.step,
                     (double)(l.step - prev_step) * dt, prev_step, interval);
        /* ... and not fewer: the gap never exceeds interval + one step. */
        if (prev_step > 0) assert_true((double)(l.step - prev_step) * dt <= interval + dt + 1e-9);
        prev_step = l.step;
    }
    assert_true(saw_first && saw_e1 && saw_e2);
    /* 250 steps * 0.25 s = 62.5 s: a handful of lines, not 250. */
    assert_in_range(n, 6, 12);
    free(text);
    fclose(f);
}

/* A resumed run: only steps after the start step count for the ETA. */
static void test_resume_eta(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    Progress p;
    progress_init(&p, f, 0, 3000, 600, 5, 100.0, 0.0);
    progress_set_start_step(&p, 1200, 50.0);
    progress_update(&p, 1200, 3, 0.5, 100.0, 50.0); /* no step done yet: ETA unknown */
    progress_update(&p, 1234, 3, 0.01234, 2345.0, 50.0 + 34 * 2.0);
    progress_update(&p, 1800, 3, 0.01, 2345.0, 50.0 + 600 * 2.0); /* epoch end */
    char *text = slurp(f);
    char *save = NULL;
    char *l1 = strtok_r(text, "\n", &save), *l2 = strtok_r(NULL, "\n", &save), *l3 = strtok_r(NULL, "\n", &save);
    assert_non_null(l1);
    assert_non_null(l2);
    assert_null(l3);
    Line a, b;
    assert_true(parse_line(l1, &a) && parse_line(l2, &b));
    assert_string_equal(a.eta, "?");
    /* Step 1234 comes 68 s after the first line, within the 100 s interval:
     * skipped; the epoch end 1800 always prints.  Mean 2 s per step since
     * the resume point, 1200 steps left. */
    assert_int_equal(b.step, 1800);
    assert_true(fabs(parse_duration(b.eta) - 1200 * 2.0) <= 0.5);
    assert_int_equal(b.epoch, 3);
    assert_int_equal(b.pct, 60);
    free(text);
    fclose(f);
}

/* Terminal mode: '\r' redraws, bar, blanking, newline at epoch end/finish. */
static void test_tty(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    Progress p;
    progress_init(&p, f, 1, 40, 20, 2, 30.0, 0.0);
    progress_update(&p, 1, 1, 0.123456, 12345.0, 1.0);  /* first: drawn */
    progress_update(&p, 2, 1, 0.5, 1.0, 1.0 + 0.5 * PROGRESS_TTY_REDRAW_S); /* too soon: skipped */
    progress_update(&p, 3, 1, 0.5, 1.0, 1.0 + 2.0 * PROGRESS_TTY_REDRAW_S); /* shorter line: blanked */
    progress_update(&p, 20, 1, 0.25, 100.0, 1.5);          /* epoch end: drawn + '\n' */
    progress_update(&p, 30, 2, 0.25, 100.0, 3.0);          /* open line */
    char *mid = slurp(f);
    assert_int_equal(mid[strlen(mid) - 1] != '\n', 1); /* line left open */
    free(mid);
    fseek(f, 0, SEEK_END);
    progress_finish(&p);
    char *text = slurp(f);
    const size_t len = strlen(text);
    assert_true(len > 0 && text[len - 1] == '\n');

    /* Segments between '\r's: 1, 3, 20 (+'\n'), 30 (+'\n' from finish). */
    char *seg[8];
    int n = 0;
    for (char *save = NULL, *s = strtok_r(text, "\r", &save); s && n < 8; s = strtok_r(NULL, "\r", &save)) seg[n++] = s;
    assert_int_equal(n, 4);
    assert_non_null(strstr(seg[0], "step 1/40"));
    assert_non_null(strstr(seg[0], "loss 0.1235"));
    assert_non_null(strstr(seg[0], "12345 img/s"));
    assert_non_null(strstr(seg[0], "ETA "));
    assert_non_null(strstr(seg[0], "epoch 1/2 ["));
    assert_non_null(strstr(seg[1], "step 3/40"));
    assert_true(strlen(seg[1]) >= strlen(seg[0])); /* old characters overwritten by blanks */
    assert_non_null(strstr(seg[2], "step 20/40"));
    assert_non_null(strstr(seg[2], " 50% "));
    assert_non_null(strstr(seg[2], "[==========>         ]"));
    assert_true(seg[2][strlen(seg[2]) - 1] == '\n');
    assert_non_null(strstr(seg[3], "epoch 2/2"));
    assert_true(seg[3][strlen(seg[3]) - 1] == '\n');
    free(text);
    fclose(f);
}

static void test_phase_timer(void **state)
{
    (void)state;
    PhaseTimer t;
    phase_timer_reset(&t);
    for (int i = 0; i < PHASE_TIMER_SLOTS; i++) assert_true(t.total[i] == 0.0);
    t.start = 10.0;
    assert_true(phase_timer_lap_at(&t, PHASE_DATA, 10.5) == 0.5);
    assert_true(phase_timer_lap_at(&t, PHASE_FORWARD, 12.0) == 1.5);
    assert_true(phase_timer_lap_at(&t, PHASE_DATA, 12.25) == 0.25);
    assert_true(t.total[PHASE_DATA] == 0.75);
    assert_true(t.total[PHASE_FORWARD] == 1.5);
    assert_true(phase_timer_sum(&t) == 2.25);
    assert_string_equal(phase_timer_name(PHASE_ALLREDUCE), "allreduce");
    assert_string_equal(phase_timer_name(PHASE_IO), "io");
    assert_string_equal(phase_timer_name(-1), "other");

    /* Real clock: monotonic, and a 20 ms sleep measures at least 20 ms
     * (nanosleep never returns early without a signal). */
    phase_timer_reset(&t);
    const double a = timer_now();
    struct timespec ts = {0, 20 * 1000 * 1000};
    assert_int_equal(nanosleep(&ts, NULL), 0);
    const double dt = phase_timer_lap(&t, PHASE_IO);
    const double b = timer_now();
    assert_true(b >= a);
    assert_true(dt >= 0.020 && dt < 2.0);
    assert_true(b - a >= 0.020);
    assert_true(t.total[PHASE_IO] == dt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_duration), cmocka_unit_test(test_plain_lines),
        cmocka_unit_test(test_resume_eta),      cmocka_unit_test(test_tty),
        cmocka_unit_test(test_phase_timer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
