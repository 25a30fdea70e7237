/*
 * threads.h - the explicit choice of ranks x OpenMP threads x BLAS threads.
 *
 * Oversubscribing cores is the classic way to make an MPI+OpenMP+BLAS job
 * crawl (two ranks each spinning two OpenMP threads on two cores were seen
 * 17x slower).  The plan divides the CPUs a rank may actually run on (its
 * affinity mask, as the launcher bound it: Open MPI binds each rank to one
 * core by default when it starts 2 or fewer ranks, to a socket otherwise)
 * among the ranks of the node that may run on them too (par_cpus, par.h):
 *   OpenMP threads per rank = max(1, cpus / sharing),
 * and BLAS single-threaded, because the kernels parallelise over images with
 * OpenMP and call BLAS inside (conv2d.h).  --threads overrides the default
 * (honoured, with a warning when it oversubscribes); OMP_NUM_THREADS too, but
 * capped at the fair share (it is often inherited from a job script written
 * for another layout), with a warning.  The plan is printed once.
 * Not thread-safe: call once from the main thread at start-up.  No MPI here:
 * the caller passes the numbers (par_cpus).
 */
#ifndef AESIM_THREADS_H
#define AESIM_THREADS_H

#include <stdio.h>

typedef struct ThreadPlan {
    int cpus;           /* CPUs this rank may run on (its affinity mask) */
    int sharing;        /* ranks of this node that may run on them, this one included */
    int local_ranks;    /* ranks on this node */
    int omp_threads;    /* OpenMP threads per rank for the kernels */
    int blas_threads;   /* OpenBLAS threads per call (1: kernels own the parallelism) */
    int oversubscribed; /* 1 if sharing x omp x blas > cpus */
    int capped_from;    /* the OMP_NUM_THREADS value that was capped to omp_threads, 0 = none */
    const char *source; /* "--threads", "OMP_NUM_THREADS" or "default" (static string) */
} ThreadPlan;

/* The plan for `requested` threads (<= 0: none asked), OMP_NUM_THREADS text
 * `omp_env` (NULL or not a positive integer: unset), `cpus` CPUs in the
 * affinity mask shared by `sharing` ranks of the `local_ranks` on the node
 * (all >= 1; smaller values count as 1).  Pure: no side effects.
 * In an OMP=0 build omp_threads is 1. */
ThreadPlan threads_plan(int requested, const char *omp_env, int cpus, int sharing, int local_ranks);

/* threads_plan with this process's OMP_NUM_THREADS, then applies it
 * (omp_set_num_threads, openblas_set_num_threads). */
ThreadPlan threads_setup(int requested, int cpus, int sharing, int local_ranks);

/* Prints the plan (the caller calls it on rank 0 only) to out (stdout, or stderr for programs
 * that keep stdout for results), e.g. "threads: 2 rank(s)/node x 1 OpenMP
 * (default) x 1 BLAS | this rank may run on 2 CPU(s), shared by 2 rank(s)",
 * then a warning line when oversubscribed or capped. */
void threads_print(const ThreadPlan *plan, FILE *out);

#endif
