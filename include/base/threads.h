/*
 * threads.h - the explicit choice of ranks x OpenMP threads x BLAS threads.
 *
 * Oversubscribing cores is the classic way to make an MPI+OpenMP+BLAS job
 * crawl (two ranks each spinning two OpenMP threads on two cores were seen
 * 17x slower).  Default: OpenMP threads per rank = max(1, cores on this node
 * / ranks on this node), and BLAS single-threaded, because the kernels
 * parallelise over images with OpenMP and call BLAS inside (conv2d.h).
 * --threads, else OMP_NUM_THREADS, overrides the default; the choice and
 * where it came from are printed once.
 * Not thread-safe: call once from the main thread at start-up.
 */
#ifndef AESIM_THREADS_H
#define AESIM_THREADS_H

#include <stdio.h>

typedef struct ThreadPlan {
    int cores;          /* cores this process may run on (sched_getaffinity) */
    int node_ranks;     /* ranks on this node (ParCtx.local_size) */
    int omp_threads;    /* OpenMP threads per rank for the kernels */
    int blas_threads;   /* OpenBLAS threads per call (1: kernels own the parallelism) */
    int oversubscribed; /* 1 if local ranks x omp x blas > cores */
    const char *source; /* "--threads", "OMP_NUM_THREADS" or "default" (static string) */
} ThreadPlan;

/* Decides and applies the plan (omp_set_num_threads, openblas_set_num_threads).
 * node_ranks: the ranks on this node (ParCtx.local_size: base/ knows no MPI, the caller
 * passes the number).  requested <= 0 means OMP_NUM_THREADS if set, else the default
 * above.  Collective-free. */
ThreadPlan threads_setup(int node_ranks, int requested);

/* Prints the plan (the caller prints it once, on rank 0) to out (stdout, or stderr for programs
 * that keep stdout for results), e.g. "threads: 2 ranks/node x 1 OpenMP x 1
 * BLAS = 2 of 2 cores", with a warning when oversubscribed. */
void threads_print(const ThreadPlan *plan, FILE *out);

#endif
