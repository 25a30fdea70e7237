/*
 * err.c - formatting of recoverable error messages (see include/base/err.h).
 * No I/O, no MPI, thread-safe (writes only to the caller's Err).
 */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>

void err_clear(Err *err)
{
    if (!err) return;
    err->code = AE_OK;
    err->msg[0] = '\0';
}

int err_set(Err *err, int code, const char *fmt, ...)
{
    if (!err) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
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
