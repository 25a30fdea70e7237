/*
 * fileio.h - crash-safe output files: write to a temporary file in the same
 * folder, fsync it, rename it over the final name, fsync the folder.  A crash
 * or a full disk at any point leaves either the old file or the new one,
 * never a half-written one.
 *
 * Usage:
 *   AtomicFile af;
 *   if (atomic_open(&af, "out/metrics.csv", err)) return err->code;
 *   fwrite(..., af.f);             // or write to af.tmp_path with another library
 *   return atomic_commit(&af, err); // or atomic_abort(&af) on failure
 *
 * Single-threaded per AtomicFile; no MPI.  POSIX (fsync, rename).
 */
#ifndef AESIM_FILEIO_H
#define AESIM_FILEIO_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"

/* Longest path handled, in bytes including the NUL. */
#define FILEIO_PATH_MAX 4096

typedef struct AtomicFile {
    FILE *f;                         /* open for writing ("wb") on tmp_path */
    char path[FILEIO_PATH_MAX];      /* final name */
    char tmp_path[FILEIO_PATH_MAX];  /* "<path>.tmp.<pid>" in the same folder */
} AtomicFile;

/* Creates tmp_path and opens it.  Errors: AE_EIO (folder missing or not
 * writable; the message names the file and errno text; `path` exists but is
 * not a regular file, e.g. a device: renaming over it would replace the
 * device), AE_EARG (path too long). */
int atomic_open(AtomicFile *af, const char *path, Err *err);

/* Flushes, fsyncs and closes af->f (if still open), renames tmp_path to path
 * and fsyncs the folder.  On any failure (e.g. ENOSPC) the temporary file is
 * removed, the previous `path` is left untouched and AE_EIO is returned with
 * the errno text. */
int atomic_commit(AtomicFile *af, Err *err);

/* Like atomic_commit, for a temporary file that another library wrote and
 * closed itself (af->f == NULL; e.g. libzip writing to tmp_path). */
int atomic_commit_closed(AtomicFile *af, Err *err);

/* Closes and removes the temporary file; `path` is untouched. */
void atomic_abort(AtomicFile *af);

/* If the file name `name` (no folder) is one of atomic_open's temporary
 * files, "<final>.tmp.<pid>", or libzip's own temporary file made from it
 * when it writes to tmp_path, "<final>.tmp.<pid>.<6 letters or digits>"
 * (mkstemp's suffix): returns the writer's pid (> 0) and writes <final>
 * into final[cap] (cut to fit); else returns 0.  Pure. */
long fileio_temp_name_parse(const char *name, char *final, size_t cap);

/* Removes, in folder dir, the temporary files (fileio_temp_name_parse) of
 * the files `own` accepts (own(final) != 0: the caller's own outputs, never
 * a user's file that looks like a temp) whose writer is dead: no process
 * with that pid runs on this host (kill(pid, 0) fails with ESRCH).  Call
 * while holding the folder's lock, so no live writer of these names owns
 * one.  Returns how many were removed; *bytes (if not NULL) = their size.
 * A folder that cannot be read removes nothing (0). */
int fileio_remove_dead_temps(const char *dir, int (*own)(const char *final), int64_t *bytes);

/* Call before opening an input file: refuses (AE_EIO, naming the file)
 * anything that exists and is not a regular file once symlinks are followed:
 * a FIFO or a device would block open() or read() forever, a folder is
 * a mistake.  A missing file gives AE_EIO with the errno text.  stat() only:
 * never blocks. */
int fileio_check_input(const char *path, Err *err);

/* Call before a command's work when `path` (given by `option`, e.g.
 * "--out") is a file it will write with atomic_open: nothing of another run
 * is replaced unasked (issue 13).  Errors, naming the file: AE_EIO when it
 * exists and is not a regular file (always: a folder or device is never
 * replaced), or exists and overwrite is 0 (the hint names `option` and
 * --overwrite).  A missing path, or one stat() cannot reach, is AE_OK
 * (atomic_open reports the reason).  stat() only. */
int fileio_check_output(const char *path, const char *option, int overwrite, Err *err);

/* Renames `from` to `to` unless `to` exists, atomically: link(2), which
 * fails with EEXIST on an existing name, then unlink(from).  On a file
 * system without hard links (EPERM, ENOTSUP, EOPNOTSUPP, EMLINK) it falls
 * back to a check then rename(2), which leaves a short window.  Returns 0,
 * or -1 with errno (EEXIST: `to` exists; `from` is then untouched). */
int fileio_rename_noreplace(const char *from, const char *to);

/* One writer per folder: an exclusive, non-blocking flock(2) on dir/name
 * (created if missing), which the kernel drops when the descriptor is
 * closed or the process ends, however it ends.  On success *fd holds the
 * lock and the file is rewritten to "HOLDER, pid PID on HOST" (`holder`
 * names the program, e.g. "aesim-search serve").  Errors: AE_EARG when
 * another process holds it: the message is "DIR is in use by WHO" (WHO from
 * the file), for the caller to extend with a hint; AE_EIO (file cannot be
 * created, errno text).  *fd is -1 on error, and also on success on a file
 * system without flock (Lustre mounted noflock: ENOSYS; ENOLCK; ENOTSUP):
 * the job then runs unlocked rather than not at all. */
int fileio_lock_dir(const char *dir, const char *name, const char *holder, int *fd, Err *err);

/* 1 (err as fileio_lock_dir's AE_EARG) if another process holds dir/name's
 * lock now, else 0; creates nothing, takes nothing. */
int fileio_dir_busy(const char *dir, const char *name, Err *err);

/* Drops a fileio_lock_dir lock (closes *fd, sets it to -1); no-op if < 0. */
void fileio_unlock_dir(int *fd);

/* pread / pwrite of exactly n bytes at offset off, retrying on EINTR and
 * partial transfers.  Return 0, or -1 with errno set (errno 0 for a read
 * that hit the end of the file, or for an offset beyond INT64_MAX). */
int fileio_pread_full(int fd, void *buf, uint64_t n, uint64_t off);
int fileio_pwrite_full(int fd, const void *buf, uint64_t n, uint64_t off);

/* mkdir -p with mode 0777 & ~umask.  AE_EIO names the component that failed. */
int fileio_mkdirs(const char *dir, Err *err);

/* Reads the whole of a small text file: returns a malloc'ed, NUL-terminated
 * copy (its length in *len when len is not NULL), or NULL with err set:
 * AE_EIO (cannot open or read, errno text), AE_EFORMAT (more than max
 * bytes).  The caller frees it. */
char *fileio_read_text(const char *path, size_t max, size_t *len, Err *err);

/* Bytes this process has caused to be read from storage so far (the
 * read_bytes line of /proc/self/io: page-cache hits are not counted), or -1
 * where that file is unavailable. */
int64_t fileio_disk_read_bytes(void);

/* Resident memory of this process in KiB from /proc/self/status: *anon =
 * RssAnon (heap, stacks: what the process allocated), *file = RssFile
 * (mapped file pages in memory).  Returns 0, or -1 (both -1) where that file
 * is unavailable. */
int fileio_rss_kib(int64_t *anon, int64_t *file);

/* Address space this process has mapped, in KiB: the VmSize line of
 * /proc/self/status (what ulimit -v, RLIMIT_AS, counts), or -1 where that
 * file is unavailable. */
int64_t fileio_vm_size_kib(void);

#endif
