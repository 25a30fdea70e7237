/*
 * check.h - the one wrapper for calls that must not fail.
 *
 * Allocation and other system calls whose failure leaves nothing sensible to
 * do go through these macros.  On failure they print the call, file:line and
 * the errno text, prefixed with "[rank r]", then end the whole MPI job through
 * the abort function the parallel layer registers (check_set_abort: par_init
 * registers par_abort, since a plain exit() would strand the other ranks;
 * base/ itself knows nothing of MPI).  Errors caused by
 * user input are not handled here: they are returned as Err (err.h).
 * Modelled on llm.c's llmc/utils.h mallocCheck/fopenCheck.
 */
#ifndef AESIM_CHECK_H
#define AESIM_CHECK_H

#include <stddef.h>

/* Ends the job on a fatal error: fn(code) must not return (par_abort).  Called
 * once by par_init with this process's rank in the job, before anything can
 * fail; until then check_fail ends only this process (exit) and prints rank 0.
 * The one piece of process-wide state in base/, set once at start-up: the
 * layer rule (base/ below par/) forbids calling par_abort directly. */
typedef void (*CheckAbortFn)(int code);
void check_set_abort(CheckAbortFn fn, int rank);

/* Prints "[rank r] aesim: fatal: <message> (<file>:<line>)" to stderr and ends
 * the job with exit status 1 on every rank.  Never returns. */
_Noreturn void check_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* malloc/calloc that never return NULL (size 0 returns a valid pointer).
 * The memory is 64-byte aligned (cache line / AVX-512); free it with free(). */
void *check_malloc(size_t bytes, const char *file, int line);
void *check_calloc(size_t count, size_t size, const char *file, int line);

#define xmalloc(bytes) check_malloc((bytes), __FILE__, __LINE__)
#define xcalloc(count, size) check_calloc((count), (size), __FILE__, __LINE__)

/* check_calloc for large, long-lived buffers (activations, gradients,
 * scratch): zeroed like calloc; blocks of at least 2 MiB are 2 MiB aligned
 * and advised MADV_HUGEPAGE before they are first touched, so that the
 * kernel backs them with transparent huge pages when its THP mode is
 * "madvise" (Debian's default) or "always" (madvise(2), Documentation/
 * admin-guide/mm/transhuge.rst in the Linux sources).  Fewer TLB misses
 * on buffers of hundreds of MiB: +3.5% training images/s for imagenet64
 * batch 128 on the bench machine (issue 6), the same effect glibc's
 * glibc.malloc.hugetlb=1 tunable gives PyTorch.  The advice is best effort:
 * where it fails (no THP, not Linux) the memory is ordinary.  Free with
 * free().  Ends the job like xcalloc when memory runs out. */
void *check_calloc_huge(size_t count, size_t size, const char *file, int line);
#define xcalloc_huge(count, size) check_calloc_huge((count), (size), __FILE__, __LINE__)

/* Ends the job if cond is false, naming the expression: for invariants that
 * must also hold in release builds (e.g. size overflow checks). */
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) check_fail(__FILE__, __LINE__, "check failed: %s", #cond); \
    } while (0)

#endif
