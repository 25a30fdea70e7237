/*
 * err.h - recoverable errors as an int status plus a message.
 *
 * Library functions that can fail because of user input (a missing or
 * malformed file, a bad flag, a shape that does not fit) return an int status
 * (AE_OK == 0 on success) and fill an Err with a one-line message that names
 * the file or option and ends with a hint.  The caller prints the message once
 * (on MPI: after par_agree(), so every rank leaves together).
 * Programming errors use assert(); failed system calls that leave nothing to
 * recover (out of memory) go through check.h and end the whole job.
 * There is no global "last error": the Err is passed explicitly.
 */
#ifndef AESIM_ERR_H
#define AESIM_ERR_H

#include <stddef.h>

/* Status codes, 0 = success. */
enum {
    AE_OK = 0,
    AE_EIO = 1,      /* a file could not be opened, read, written or renamed */
    AE_EFORMAT = 2,  /* a file's contents do not follow its format */
    AE_ESHAPE = 3,   /* shapes do not fit (image size vs. architecture, dims) */
    AE_EARG = 4,     /* a bad command-line option or value */
    AE_ENUMERIC = 5, /* NaN/Inf or divergence detected */
    AE_ENOMEM = 6,   /* an allocation that depends on user input failed */
    AE_ESTOPPED = 7  /* a signal (SIGTERM, SIGINT, SIGUSR1) stopped the work before it was done */
};

/* Size of Err.msg in bytes: room for two file paths and a hint. */
#define ERR_MSG_BYTES 1024

typedef struct Err {
    int code;                 /* AE_* status, AE_OK when no error */
    char msg[ERR_MSG_BYTES];  /* one line, no trailing newline */
} Err;

/* Clears err (code AE_OK, empty message).  err may be NULL. */
void err_clear(Err *err);

/* Sets err->code = code and formats the message printf-style.  Returns code,
 * so a caller can write `return err_set(err, AE_EIO, "...")`.  err may be NULL
 * (the message is dropped).  A message longer than ERR_MSG_BYTES - 1 keeps
 * its first third and its end (the reason and hint) around " [...] "
 * (err_fit).  The arguments may point into err->msg.  Never fails. */
int err_set(Err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies src[0..len) into dst[cap] as a NUL-terminated string; when it does
 * not fit, keeps its first third and its end around " [...] ".  src and dst
 * may overlap.  cap 0: nothing written. */
void err_fit(char *dst, size_t cap, const char *src, size_t len);

/* Short name of a status code ("I/O error", "format error", ...).  The
 * returned string is static. */
const char *err_name(int code);

#endif
