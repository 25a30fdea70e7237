/*
 * mapguard.c - the SIGBUS handler for memory-mapped input files that shrink
 * under a running program (see include/base/mapguard.h).
 */
#include "base/mapguard.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/check.h"

typedef struct Slot {
    volatile uintptr_t addr; /* 0: free; written last on register, first on unregister */
    size_t len;
    char *path;              /* owned copy (malloc'd outside the handler) */
} Slot;

/* The one piece of state a SIGBUS handler can reach (mapguard.h). */
static struct {
    pthread_mutex_t mu;
    int installed;
    char prefix[32];   /* "[rank R] " under mpirun, else "" */
    int reported;      /* one line per process, whichever thread faults */
    struct sigaction old;
    Slot slot[MAPGUARD_SLOTS];
} G = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* mapguard_try's landing point in this thread while it runs fn, and the
 * slot of the mapping that faulted (static TLS of the executable: plain
 * loads, safe in the handler). */
static __thread sigjmp_buf *T_jump;
static __thread volatile int T_slot;

/* Appends s to buf[*n] (cap bytes in all, always NUL-terminated).
 * Async-signal-safe. */
static void append(char *buf, size_t cap, size_t *n, const char *s)
{
    while (*s && *n + 1 < cap) buf[(*n)++] = *s++;
    buf[*n] = '\0';
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    const uintptr_t a = (uintptr_t)si->si_addr;
    for (int i = 0; i < MAPGUARD_SLOTS; i++) {
        const uintptr_t b = G.slot[i].addr;
        if (b && a >= b && a - b < G.slot[i].len) {
            if (T_jump) { /* inside mapguard_try: fn ends, the process goes on */
                T_slot = i;
                siglongjmp(*T_jump, 1);
            }
            /* One write(2) of the whole line, so that ranks sharing a
             * terminal do not interleave; the first faulting thread says it. */
            if (__atomic_exchange_n(&G.reported, 1, __ATOMIC_ACQ_REL) == 0) {
                char line[MAPGUARD_PATH_BYTES + 512];
                size_t n = 0;
                append(line, sizeof line, &n, G.prefix);
                append(line, sizeof line, &n, "aesim: fatal: ");
                append(line, sizeof line, &n, G.slot[i].path);
                append(line, sizeof line, &n,
                       " changed while in use: it shrank or was rewritten in place while memory-mapped (bus error "
                       "reading it) (hint: write new data to a new file and point the next run at that; the files "
                       "aesim wrote are complete: checkpoints and shards are renamed into place only when written)\n");
                ssize_t k = write(STDERR_FILENO, line, n);
                (void)k;
            }
            _exit(1);
        }
    }
    /* Not one of ours: the disposition installed before. */
    if (G.old.sa_flags & SA_SIGINFO) {
        if (G.old.sa_sigaction) {
            G.old.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (G.old.sa_handler != SIG_DFL && G.old.sa_handler != SIG_IGN) {
        G.old.sa_handler(sig);
        return;
    }
    /* Default action: returning re-runs the faulting access, which now
     * takes it (a hardware SIGBUS cannot be ignored). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

void mapguard_register(const void *addr, size_t len, const char *path)
{
    if (!addr || !len) return;
    CHECK(pthread_mutex_lock(&G.mu) == 0);
    /* Installed on first use, and again if something replaced it since (a
     * library's own crash handler, a test harness): the replacement becomes
     * the disposition that other SIGBUS go to. */
    struct sigaction cur;
    CHECK(sigaction(SIGBUS, NULL, &cur) == 0);
    if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_sigbus) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        CHECK(sigaction(SIGBUS, &sa, &G.old) == 0);
    }
    if (!G.installed) {
        G.installed = 1;
        const char *vars[] = { "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK" };
        for (size_t v = 0; v < sizeof vars / sizeof *vars && !G.prefix[0]; v++) {
            const char *r = getenv(vars[v]);
            if (r && *r && strlen(r) < 12) snprintf(G.prefix, sizeof G.prefix, "[rank %s] ", r);
        }
    }
    for (int i = 0; i < MAPGUARD_SLOTS; i++)
        if (!G.slot[i].addr) {
            G.slot[i].path = strdup(path ? path : "a memory-mapped file");
            CHECK(G.slot[i].path != NULL);
            G.slot[i].len = len;
            __atomic_store_n(&G.slot[i].addr, (uintptr_t)addr, __ATOMIC_RELEASE);
            break;
        }
    CHECK(pthread_mutex_unlock(&G.mu) == 0);
}

void mapguard_unregister(const void *addr)
{
    if (!addr) return;
    CHECK(pthread_mutex_lock(&G.mu) == 0);
    for (int i = 0; i < MAPGUARD_SLOTS; i++)
        if (G.slot[i].addr == (uintptr_t)addr) {
            __atomic_store_n(&G.slot[i].addr, (uintptr_t)0, __ATOMIC_RELEASE);
            free(G.slot[i].path);
            G.slot[i].path = NULL;
            break;
        }
    CHECK(pthread_mutex_unlock(&G.mu) == 0);
}

int mapguard_try(void (*fn)(void *), void *arg, char *path, size_t cap)
{
    sigjmp_buf here, *const outer = T_jump;
    /* savemask 1: the handler runs with SIGBUS blocked, and the jump back
     * must unblock it for the next fault. */
    if (sigsetjmp(here, 1) == 0) {
        T_jump = &here;
        fn(arg);
        T_jump = outer;
        return 0;
    }
    T_jump = outer;
    if (cap) {
        CHECK(pthread_mutex_lock(&G.mu) == 0);
        const char *p = G.slot[T_slot].path;
        snprintf(path, cap, "%s", p ? p : "a memory-mapped file");
        CHECK(pthread_mutex_unlock(&G.mu) == 0);
    }
    return -1;
}
