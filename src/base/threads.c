/*
 * threads.c - thread plan for one rank (see include/base/threads.h).
 */
#define _GNU_SOURCE
#include "base/threads.h"

#include <cblas.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>
#if AESIM_OMP
#include <omp.h>
#endif

/* Declared by OpenBLAS (cblas.h of Debian's libopenblas-dev); the prototype
 * is repeated here in case a cblas.h from another BLAS is picked up. */
void openblas_set_num_threads(int num_threads);

static int count_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

ThreadPlan threads_setup(int node_ranks, int requested)
{
    ThreadPlan p;
    if (node_ranks < 1) node_ranks = 1;
    p.node_ranks = node_ranks;
    /* Under mpirun each rank is often bound to one core; count the node's
     * cores then, not the binding. */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int aff = count_cores();
    p.cores = node_ranks > 1 && online > aff ? (int)online : aff;
    int per_rank = p.cores / node_ranks;
    /* Precedence: --threads, then OMP_NUM_THREADS (an explicit choice made
     * in the environment, e.g. by SLURM scripts), then cores / local ranks. */
    const char *env = getenv("OMP_NUM_THREADS");
    int env_threads = env ? atoi(env) : 0;
    p.source = requested > 0 ? "--threads" : env_threads > 0 ? "OMP_NUM_THREADS" : "default";
    p.omp_threads = requested > 0 ? requested : env_threads > 0 ? env_threads : (per_rank > 0 ? per_rank : 1);
#if !AESIM_OMP
    p.omp_threads = 1;
#endif
    p.blas_threads = 1;
#if AESIM_OMP
    omp_set_num_threads(p.omp_threads);
#endif
    openblas_set_num_threads(p.blas_threads);
    p.oversubscribed = node_ranks * p.omp_threads * p.blas_threads > p.cores;
    return p;
}

void threads_print(const ThreadPlan *p, FILE *out)
{
    fprintf(out, "threads: %d rank(s)/node x %d OpenMP (%s) x %d BLAS = %d of %d cores%s\n", p->node_ranks,
             p->omp_threads, p->source, p->blas_threads, p->node_ranks * p->omp_threads * p->blas_threads, p->cores,
             p->oversubscribed ? "  (WARNING: oversubscribed; expect a large slowdown)" : "");
    fflush(out);
}
