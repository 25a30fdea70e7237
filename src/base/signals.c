/*
 * signals.c - stop-request handlers for aesim-train (see include/base/signals.h).
 *
 * The handler writes one sig_atomic_t and, for a second SIGINT, restores the
 * default action and re-raises; the watchdog's SIGALRM handler calls _exit
 * (sigaction, raise and _exit are async-signal-safe, POSIX.1-2017 2.4.3).
 * No I/O, no MPI, no allocation.
 */
#include "base/signals.h"

#include <assert.h>
#include <string.h>
#include <unistd.h>

/* The first handled signal received, 0 if none.  The only global mutable
 * state of aesim: a handler gets no user pointer (see signals.h). */
static volatile sig_atomic_t g_stop_signal = 0;

static const int HANDLED[SIGNALS_COUNT] = { SIGTERM, SIGINT, SIGUSR1 };

static void on_signal(int sig)
{
    if (g_stop_signal == 0) {
        g_stop_signal = sig;
        return;
    }
    if (sig == SIGINT) {
        /* Second Ctrl-C: the user wants out now. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(SIGINT, &dfl, NULL);
        raise(SIGINT);
    }
}

void signals_install(SignalGuard *g)
{
    g_stop_signal = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* Restart interrupted read/write/fsync instead of failing with EINTR. */
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < SIGNALS_COUNT; i++) {
        int rc = sigaction(HANDLED[i], &sa, &g->old[i]);
        assert(rc == 0);
        (void)rc;
    }
    g->installed = 1;
}

void signals_restore(SignalGuard *g)
{
    if (!g->installed) return;
    for (int i = 0; i < SIGNALS_COUNT; i++) sigaction(HANDLED[i], &g->old[i], NULL);
    g->installed = 0;
}

int signals_pending(void) { return (int)g_stop_signal; }

static void on_alarm(int sig)
{
    (void)sig;
    _exit(0);
}

void signals_exit_watchdog(unsigned seconds)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    int rc = sigaction(SIGALRM, &sa, NULL);
    assert(rc == 0);
    (void)rc;
    alarm(seconds);
}

const char *signals_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal";
    }
}
