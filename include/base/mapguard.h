/*
 * mapguard.h - a clear end, not a crash, when a memory-mapped input file
 * shrinks under a running program.
 *
 * aesim maps uint8 image data (data/source_array.c) and the vector database's
 * shards (search/vecdb.c) read-only with mmap(2).  When another process
 * truncates or rewrites such a file in place (cp over it, truncate,
 * re-running a converter into the same path) while it is mapped, reading a
 * page past the file's new end raises SIGBUS (POSIX mmap(2): "references
 * within the address range starting at pa and continuing for len bytes to
 * whole pages following the end of an object shall result in delivery of a
 * SIGBUS signal").  The default action kills the process with "Bus error"
 * and no word of which file.
 *
 * What it does: every mapping is registered with its path; the first
 * registration installs a SIGBUS handler (SA_SIGINFO).  For a fault address
 * inside a registered mapping the handler writes one line to stderr,
 *   aesim: fatal: FILE changed while in use (it shrank or was rewritten in
 *   place while memory-mapped: bus error reading it) (hint: ...)
 * and ends the process with _exit(1); under mpirun that ends the job
 * (Open MPI aborts a job whose rank exits without MPI_Finalize).  Outputs
 * are safe: every file aesim writes is a temporary file renamed when
 * complete (fileio.h), so a checkpoint or shard on disk is never half
 * written.  Any other SIGBUS goes to the disposition that was installed
 * before (Open MPI's backtrace handler, or the default action).
 *
 * Handler safety (signal-safety(7)): the handler only reads the table and
 * calls write(2) and _exit(2), or siglongjmp(3) back into mapguard_try of
 * the faulting thread (a synchronous fault: the interrupted code is fn's own
 * read).  Each slot's path and length are written before its address, which
 * is the slot's "in use" mark.
 * Global state: a fixed table of MAPGUARD_SLOTS mappings and the previous
 * SIGBUS disposition (a signal handler can reach no other state; see
 * signals.h).  Register and unregister are serialised by a mutex and may be
 * called from any thread.
 */
#ifndef AESIM_MAPGUARD_H
#define AESIM_MAPGUARD_H

#include <stddef.h>

/* Mappings watched at once; a mapping beyond them is simply not watched
 * (SIGBUS then takes the previous disposition).  A training run maps one
 * file per data source; a database up to three per shard (vectors, ids,
 * labels), and serve adds a shard per batch of POST /images: 65,536 slots
 * (24 bytes each) cover 21,845 shards on one rank. */
#define MAPGUARD_SLOTS 65536

/* Bytes of a registered path kept for the message (longer ones are cut). */
#define MAPGUARD_PATH_BYTES 512

/* Watches [addr, addr + len) as a mapping of file `path` (copied).  Installs
 * the SIGBUS handler on first use.  Never fails; a full table is ignored. */
void mapguard_register(const void *addr, size_t len, const char *path);

/* Stops watching the mapping that starts at addr (call before munmap); no-op
 * if it is not watched. */
void mapguard_unregister(const void *addr);

/* Runs fn(arg) in the calling thread so that a bus error reading a watched
 * mapping ends fn, not the process: for a service that must answer one
 * request with an error and go on (serve's GET /images/ID reads the
 * database's source images, user files that may be rewritten under it).
 * Returns 0 when fn returned; -1 after such a fault, with the mapping's path
 * in path[cap] (cut to fit; path may be NULL when cap is 0).  fn is
 * abandoned where it faulted (siglongjmp out of the handler, which restores
 * the signal mask): while it reads mapped memory it must not hold a lock,
 * allocate, or leave a shared structure half updated.  Faults in other
 * threads, and outside watched mappings, are handled as before.  Calls may
 * nest; the innermost catches. */
int mapguard_try(void (*fn)(void *), void *arg, char *path, size_t cap);

#endif
