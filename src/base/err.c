/*
 * err.c - formatting of recoverable error messages (see include/base/err.h).
 * No I/O, no MPI, thread-safe (writes only to the caller's Err).
 */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void err_clear(Err *err)
{
    if (!err) return;
    err->code = AE_OK;
    err->msg[0] = '\0';
}

void err_fit(char *dst, size_t cap, const char *src, size_t len)
{
    if (cap == 0) return;
    if (len < cap) {
        memmove(dst, src, len);
        dst[len] = '\0';
        return;
    }
    static const char cut[] = " [...] ";
    const size_t keep = cap - 1 - (sizeof cut - 1), head = keep / 3, tail = keep - head;
    memmove(dst, src, head);
    memcpy(dst + head, cut, sizeof cut - 1);
    memmove(dst + head + sizeof cut - 1, src + len - tail, tail);
    dst[cap - 1] = '\0';
}

int err_set(Err *err, int code, const char *fmt, ...)
{
    if (!err) return code;
    /* Formatted apart first (an argument may be err->msg itself), then cut
     * in the middle when too long: a long path must not push the reason and
     * the hint, which come last, out of the message. */
    char small[ERR_MSG_BYTES];
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    const int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        err->msg[0] = '\0';
    } else if ((size_t)n < sizeof small) {
        memcpy(err->msg, small, (size_t)n + 1);
    } else {
        char *full = malloc((size_t)n + 1);
        if (full && vsnprintf(full, (size_t)n + 1, fmt, again) == n) err_fit(err->msg, sizeof err->msg, full, (size_t)n);
        else memcpy(err->msg, small, sizeof small); /* out of memory: the head */
        free(full);
    }
    va_end(again);
    err->code = code;
    return code;
}

const char *err_name(int code)
{
    switch (code) {
    case AE_OK: return "ok";
    case AE_EIO: return "I/O error";
    case AE_EFORMAT: return "format error";
    case AE_ESHAPE: return "shape error";
    case AE_EARG: return "bad argument";
    case AE_ENUMERIC: return "numerical error";
    case AE_ENOMEM: return "out of memory";
    case AE_ESTOPPED: return "stopped";
    default: return "unknown error";
    }
}
