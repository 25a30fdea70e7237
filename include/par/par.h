/*
 * par.h - the only interface to MPI.
 *
 * Everything outside src/par/par_mpi.c calls these wrappers with an explicit
 * ParCtx; there is no global rank.  `make MPI=0` links src/par/par_serial.c
 * instead, where every collective is the identity on one rank, so unit tests
 * run without mpirun (the CoMD DO_MPI scheme).
 *
 * Collectives must be called by every rank of the context in the same order.
 * Counts are size_t: calls larger than INT_MAX elements are split into chunks.
 */
#ifndef AESIM_PAR_H
#define AESIM_PAR_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct ParCtx {
    int rank;        /* this process's rank in the job, 0..size-1 */
    int size;        /* number of ranks P */
    int local_rank;  /* rank among the ranks on this node */
    int local_size;  /* ranks on this node (to divide the node's cores) */
    void *comm;      /* the MPI communicator (MPI_Comm*), NULL in MPI=0 */
} ParCtx;

/* Initialises MPI (thread level FUNNELED: only the main thread calls MPI) and
 * fills ctx.  Ends the process with a message if MPI cannot start. */
void par_init(ParCtx *ctx, int *argc, char ***argv);

/* Finalises MPI; ctx must not be used afterwards. */
void par_finalize(ParCtx *ctx);

/* Ends every rank of the job with exit status `code` (MPI_Abort on
 * MPI_COMM_WORLD, exit() in MPI=0).  Safe to call before par_init. */
_Noreturn void par_abort(int code);

/* Rank in MPI_COMM_WORLD, or 0 before init / in MPI=0: for message prefixes
 * in check_fail(), which has no ctx. */
int par_world_rank(void);

/* 1 if this process was started by mpirun/srun (even with one rank). */
int par_launched_by_mpirun(void);

/* 1 if the build has MPI (MPI=1), 0 for the serial stubs. */
int par_has_mpi(void);

/* In-place sum over all ranks of buf[n] (float32 / float64 / int64).  Every
 * rank gets the same bits (one MPI_Allreduce per chunk). */
void par_allreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n);
void par_allreduce_sum_f64(const ParCtx *ctx, double *buf, size_t n);
void par_allreduce_sum_i64(const ParCtx *ctx, int64_t *buf, size_t n);

/* A non-blocking collective in flight (par_iallreduce_sum_f32).  Zero-
 * initialise it ({0}); it is "pending" from the start call until par_test_all
 * or par_wait_all sees it complete, and inactive again afterwards.  `impl` is
 * owned by par_mpi.c (an array of `n_impl` MPI_Request, one per chunk of at
 * most INT_MAX/2 elements); NULL when inactive and always NULL in MPI=0. */
typedef struct ParRequest {
    void *impl;
    int n_impl;
} ParRequest;

/* 1 while the request is in flight (started and not yet seen complete). */
int par_request_pending(const ParRequest *req);

/* Starts an in-place non-blocking sum over all ranks of buf[n] float32
 * (MPI_Iallreduce, MPI_IN_PLACE, MPI_SUM, MPI_FLOAT; chunked like
 * par_allreduce_sum_f32) and makes *req pending; *req must be inactive.
 * buf must be neither read nor written until the request completes.  Every
 * rank gets the same bits (Open MPI 4.1's libnbc reduces in-place calls up a
 * binomial tree to rank 0 and broadcasts the result).  Collective: every
 * rank starts its non-blocking collectives in the same order (MPI matches
 * them by order of issue).
 * Without an asynchronous progress thread (Open MPI's default), the transfer
 * advances only inside MPI calls: call par_test_all now and then.  MPI=0:
 * completes at once (req stays inactive).  An MPI failure ends the job
 * (check.h).  Follows MPI-3.1 section 5.12 (nonblocking collectives). */
void par_iallreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n, ParRequest *req);

/* Drives progress of reqs[0..n) (MPI_Testall per pending request, never
 * blocks) and marks the completed ones inactive.  Inactive entries are
 * skipped.  Returns how many of the n requests are now inactive (n when all
 * are done). */
int par_test_all(ParRequest *reqs, int n);

/* Blocks until every pending request of reqs[0..n) completes (MPI_Waitall);
 * all are inactive afterwards.  Call it before leaving any code path that
 * started requests: a pending request's buffer is still being written. */
void par_wait_all(ParRequest *reqs, int n);

/* Starts a non-blocking broadcast (MPI_Ibcast of MPI_BYTE) of `bytes` bytes
 * of buf from rank `root` and makes *req pending; *req must be inactive and
 * bytes <= INT_MAX.  Complete it with par_test_all / par_wait_all; buf must
 * not be touched until then.  Used by ranks that wait for rank 0's next
 * command without spinning in a blocking MPI call (aesim-search serve polls
 * it with short sleeps).  Collective, matched by order of issue.  MPI=0:
 * completes at once. */
void par_ibcast(const ParCtx *ctx, void *buf, size_t bytes, int root, ParRequest *req);

/* The CPUs this process may run on and the ranks of this node that may run
 * on them: what the thread plan (threads.h) divides. */
typedef struct ParCpus {
    int cpus;     /* CPUs in this process's affinity mask (sched_getaffinity; the
                     online CPUs where it cannot be read), >= 1 */
    int sharing;  /* ranks of this node whose affinity mask intersects this one's,
                     this rank included, >= 1 (an unbound launch: every local rank;
                     --bind-to core: 1) */
} ParCpus;

/* Collective over every rank (an allgather of the affinity masks among the
 * ranks of each node).  MPI=0: sharing = 1. */
ParCpus par_cpus(const ParCtx *ctx);

/* Maximum of v over all ranks. */
int par_allreduce_max_int(const ParCtx *ctx, int v);

/* Broadcasts `bytes` bytes of buf from rank `root` to every rank. */
void par_bcast(const ParCtx *ctx, void *buf, size_t bytes, int root);

/* Exclusive prefix sum of v over ranks (0 on rank 0): a rank's offset. */
int64_t par_exscan_sum_i64(const ParCtx *ctx, int64_t v);

/* Gathers `bytes` bytes from every rank into recv[size*bytes] on rank root
 * (recv may be NULL on other ranks). */
void par_gather(const ParCtx *ctx, const void *send, void *recv, size_t bytes, int root);

/* Gathers float32 blocks of different sizes onto every rank
 * (MPI_Allgatherv): rank r contributes send[counts[r]], and every rank
 * receives recv[sum of counts] = rank 0's block, then rank 1's, ... in rank
 * order.  counts[P] must be the same on every rank; a count may be 0.  The
 * total must fit in an int (asserted).  The trainer uses it to give every
 * rank the codes of the whole global batch (the negatives of NT-Xent). */
void par_allgatherv_f32(const ParCtx *ctx, const float *send, float *recv, const int *counts);

void par_barrier(const ParCtx *ctx);

/* Collective error agreement (CoMD sanityChecks).  Every rank passes its own
 * err (AE_OK if it is fine).  Returns AE_OK on every rank if all are fine;
 * otherwise returns the failing code on every rank and copies the message of
 * the lowest failing rank into every rank's err, prefixed "[rank r] " when
 * P > 1 (once: a message that already starts with "[rank " is not prefixed
 * again, so agreeing an agreed error again changes nothing).  The caller then
 * prints it once (par_log0) and all ranks leave. */
int par_agree(const ParCtx *ctx, Err *err);

/* Longest description compared by par_check_same that is quoted in full. */
#define PAR_DESC_BYTES 512

/* Collective check that every rank passes the same description string
 * (compared by CRC-32 against rank 0's): e.g. the command line, or the count
 * and shape of the data each rank loaded with its file names.  Returns AE_OK
 * on every rank, or AE_EARG on every rank with "ranks disagree on <what>:
 * rank r has '...' but rank 0 has '...'" in err.  A rank given other
 * arguments or other data would otherwise crash or deadlock in a later
 * collective. */
int par_check_same(const ParCtx *ctx, const char *desc, const char *what, Err *err);

/* par_check_same over the command line argv[0..argc) (NUL-separated). */
int par_check_same_args(const ParCtx *ctx, int argc, char **argv, Err *err);

/* min / mean / max of a per-rank value, and the rank holding the max.  The
 * results are valid on every rank. */
typedef struct ParStats { double min, avg, max; int max_rank; } ParStats;
ParStats par_stats(const ParCtx *ctx, double v);

/* printf to stdout on rank 0 only (flushes).  Never a macro, so no
 * dangling-else hazard. */
void par_log0(const ParCtx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* printf to stderr on rank 0 only (flushes). */
void par_err0(const ParCtx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
