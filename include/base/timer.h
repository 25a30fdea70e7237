/*
 * timer.h - monotonic wall-clock time and per-phase time accounting.
 *
 * What it does: timer_now() reads CLOCK_MONOTONIC (never jumps with NTP or
 * date changes) in seconds; a PhaseTimer accumulates the wall time a training
 * step spends in each phase (data, forward, backward, allreduce, optimizer,
 * io) with "lap" calls at phase boundaries:
 *   PhaseTimer pt; phase_timer_reset(&pt);
 *   ... load batch ...   phase_timer_lap(&pt, PHASE_DATA);
 *   ... forward ...      phase_timer_lap(&pt, PHASE_FORWARD);
 * Each lap charges the time since the previous lap (or reset/mark) to the
 * named phase.
 * What it does not do: combine timers across ranks (min/avg/max over ranks is
 * done by the caller with par_* collectives on `total`), CPU time, printing.
 * Threading/MPI: timer_now is thread-safe; a PhaseTimer belongs to one
 * thread (the rank's main thread).  No MPI.
 */
#ifndef AESIM_TIMER_H
#define AESIM_TIMER_H

/* Phases of a training step, indices into PhaseTimer.total. */
enum {
    PHASE_DATA = 0,   /* batch loading/augmentation */
    PHASE_FORWARD,    /* model forward + loss */
    PHASE_BACKWARD,   /* model backward */
    PHASE_ALLREDUCE,  /* gradient and loss all-reduce */
    PHASE_OPTIMIZER,  /* Adam update */
    PHASE_IO,         /* checkpoints, metrics, images */
    PHASE_COUNT       /* number of phases in use */
};

/* Slots in PhaseTimer.total: PHASE_COUNT rounded up, room for two more. */
#define PHASE_TIMER_SLOTS 8

typedef struct PhaseTimer {
    double total[PHASE_TIMER_SLOTS]; /* accumulated seconds per phase */
    double start;                    /* time of the last reset/mark/lap, s */
} PhaseTimer;

/* Seconds since an arbitrary fixed point, from CLOCK_MONOTONIC (nanosecond
 * resolution on Linux).  Only differences are meaningful. */
double timer_now(void);

/* Zeroes all totals and starts timing now. */
void phase_timer_reset(PhaseTimer *t);

/* Restarts timing now without charging the time since the last lap to any
 * phase (e.g. to skip validation time inside the step loop). */
void phase_timer_mark(PhaseTimer *t);

/* Charges the time since the last reset/mark/lap to `phase`
 * (0 <= phase < PHASE_TIMER_SLOTS, asserted) and restarts timing.  Returns
 * that time in seconds. */
double phase_timer_lap(PhaseTimer *t, int phase);

/* As phase_timer_lap with the time passed in (injected clock, for tests). */
double phase_timer_lap_at(PhaseTimer *t, int phase, double now_s);

/* Sum of all phase totals, seconds. */
double phase_timer_sum(const PhaseTimer *t);

/* Lower-case name of a phase ("data", "forward", ..., "io"); slots beyond
 * PHASE_COUNT and bad indices give "other".  Static string. */
const char *phase_timer_name(int phase);

#endif
