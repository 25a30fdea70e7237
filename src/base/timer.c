/*
 * timer.c - monotonic clock and per-phase accumulation (see include/base/timer.h).
 *
 * clock_gettime(CLOCK_MONOTONIC) is POSIX and cannot fail with a valid clock
 * id and pointer, so its result is only asserted.  No MPI, no global state.
 */
#include "base/timer.h"

#include <assert.h>
#include <string.h>
#include <time.h>

/* Nanoseconds per second, to convert struct timespec. */
#define NS_PER_S 1e9

double timer_now(void)
{
    struct timespec ts;
    int rc = clock_gettime(CLOCK_MONOTONIC, &ts);
    assert(rc == 0);
    (void)rc;
    return (double)ts.tv_sec + (double)ts.tv_nsec / NS_PER_S;
}

void phase_timer_reset(PhaseTimer *t)
{
    memset(t->total, 0, sizeof t->total);
    t->start = timer_now();
}

void phase_timer_mark(PhaseTimer *t)
{
    t->start = timer_now();
}

double phase_timer_lap_at(PhaseTimer *t, int phase, double now_s)
{
    assert(phase >= 0 && phase < PHASE_TIMER_SLOTS);
    const double dt = now_s - t->start;
    t->total[phase] += dt;
    t->start = now_s;
    return dt;
}

double phase_timer_lap(PhaseTimer *t, int phase)
{
    return phase_timer_lap_at(t, phase, timer_now());
}

double phase_timer_sum(const PhaseTimer *t)
{
    double s = 0.0;
    for (int i = 0; i < PHASE_TIMER_SLOTS; i++) s += t->total[i];
    return s;
}

const char *phase_timer_name(int phase)
{
    switch (phase) {
    case PHASE_DATA: return "data";
    case PHASE_FORWARD: return "forward";
    case PHASE_BACKWARD: return "backward";
    case PHASE_ALLREDUCE: return "allreduce";
    case PHASE_OPTIMIZER: return "optimizer";
    case PHASE_IO: return "io";
    default: return "other";
    }
}
