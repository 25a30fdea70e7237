/*
 * check.c - fatal-error reporting and checked allocation (see check.h).
 * Ends the job through the abort function par_init registers (par_abort),
 * so that no rank is left waiting.
 */
#include "base/check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Alignment of every checked allocation, in bytes: one cache line, which is
 * also the width of an AVX-512 vector. */
#define CHECK_ALIGN 64
/* Size and alignment of a transparent huge page on x86-64 (and the smallest
 * block check_calloc_huge advises), in bytes. */
#define HUGE_PAGE ((size_t)2 << 20)

static CheckAbortFn abort_fn;  /* set once by par_init (check_set_abort) */
static int abort_rank;

void check_set_abort(CheckAbortFn fn, int rank)
{
    abort_fn = fn;
    abort_rank = rank;
}

void check_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] aesim: fatal: %s (%s:%d)\n", abort_rank, msg, file, line);
    fflush(stderr);
    if (abort_fn) abort_fn(1);
    exit(1);
}

void *check_malloc(size_t bytes, const char *file, int line)
{
    void *p = NULL;
    size_t n = bytes ? bytes : 1;
    n = (n + CHECK_ALIGN - 1) / CHECK_ALIGN * CHECK_ALIGN;
    if (n < bytes) check_fail(file, line, "malloc of %zu bytes overflows", bytes);
    int rc = posix_memalign(&p, CHECK_ALIGN, n);
    if (rc != 0 || !p)
        check_fail(file, line, "malloc of %zu bytes failed: %s", bytes, strerror(rc ? rc : ENOMEM));
    return p;
}

void *check_calloc(size_t count, size_t size, const char *file, int line)
{
    if (size && count > (size_t)-1 / size)
        check_fail(file, line, "calloc of %zu x %zu bytes overflows", count, size);
    void *p = check_malloc(count * size, file, line);
    memset(p, 0, count * size);
    return p;
}

void *check_calloc_huge(size_t count, size_t size, const char *file, int line)
{
    if (size && count > (size_t)-1 / size)
        check_fail(file, line, "calloc of %zu x %zu bytes overflows", count, size);
    const size_t bytes = count * size;
    if (bytes < HUGE_PAGE) return check_calloc(count, size, file, line);
    const size_t n = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (n < bytes) check_fail(file, line, "malloc of %zu bytes overflows", bytes);
    void *p = NULL;
    int rc = posix_memalign(&p, HUGE_PAGE, n);
    if (rc != 0 || !p)
        check_fail(file, line, "malloc of %zu bytes failed: %s", bytes, strerror(rc ? rc : ENOMEM));
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* advice only: failure leaves 4 KiB pages */
#endif
    memset(p, 0, bytes); /* first touch, after the advice */
    return p;
}
