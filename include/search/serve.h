/*
 * serve.h - aesim-search serve: the search engine as a long-running MPI job.
 *
 * Every rank reads the manifest, loads the encoder and maps the shards it
 * owns (shard s on rank s % P, as query) once, and keeps them mapped.  Rank
 * 0 also runs the HTTP server (http_server.h) whose threads hand requests to
 * rank 0's main thread, the only one that calls MPI, through a ServeQueue.
 *
 * The MPI loop, on rank 0: take every waiting request (up to --max-batch),
 * encode all uploaded images in one encoder call, then for each group of
 * searches with the same k and label filter broadcast one command and the
 * query vectors; every rank searches its shards with search_knn (the same
 * code, merge and tie rules as `aesim-search query`, so an answer equals
 * query's on the same inputs, bit for bit); rank 0 answers each request.
 * The other ranks wait for rank 0's next command with a non-blocking
 * broadcast polled every SERVE_POLL_US microseconds (idle ranks do not spin
 * a core).  Between batches, at most every SERVE_PING_MS ms, rank 0 sends
 * a ping in which every rank reports whether it received SIGTERM/SIGINT, so
 * a signal to any rank, or to mpirun, stops the whole job.
 *
 * Live additions (POST /images): rank 0 writes the images as
 * DIR/added-SSSSS.npz (data uint8 [n][C][H][W], labels int32 [n]; readable by
 * every source reader, numpy and eval; the manifest names it relative to
 * DIR, so a moved or copied folder keeps it), encodes them from that file, writes
 * shard SSSSS and then the manifest (each atomically, fsync + rename: the
 * manifest is the commit point) before any answer; then the owning rank maps
 * the new shard, and the next search finds it.
 *
 * Stopping: on SIGTERM/SIGINT rank 0 stops accepting connections, answers
 * the requests already received (for at most --timeout seconds), then every
 * rank leaves with status 0.  A rank that dies makes mpirun end the job.
 * Errors at start (agreed): those of search_query (database, model,
 * shards), AE_EARG/AE_EIO for --listen.
 */
#ifndef AESIM_SERVE_H
#define AESIM_SERVE_H

#include "base/err.h"
#include "par/par.h"
#include "search/search_args.h"

/* Idle ranks test for rank 0's next command this often (microseconds). */
#define SERVE_POLL_US 200
/* Rank 0 pings the other ranks this often (milliseconds). */
#define SERVE_PING_MS 500
/* Requests waiting for the MPI thread at most, per --max-batch (then 503). */
#define SERVE_QUEUE_BATCHES 16
/* Image sources (the indexed data, each batch of POST /images) rank 0 keeps
 * open for GET /images/ID at most; the least recently read is closed first.
 * Each holds a file descriptor or two. */
#define SERVE_OPEN_SOURCES 32
/* After a signal stop, a rank still alive this many seconds later (its
 * MPI_Finalize blocked by mpirun's own shutdown) exits 0 (signals.h). */
#define SERVE_EXIT_GRACE_S 5

/* Collective.  Serves until a signal; returns AE_OK after a clean stop. */
int search_serve(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

#endif
