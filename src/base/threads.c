/*
 * threads.c - thread plan for one rank (see include/base/threads.h).  Plain
 * numbers in, no MPI: the mains get the affinity figures from par_cpus.
 */
#include "base/threads.h"

#include <cblas.h>
#include <stdlib.h>
#if AESIM_OMP
#include <omp.h>
#endif

/* Declared by OpenBLAS (cblas.h of Debian's libopenblas-dev); the prototype
 * is repeated here in case a cblas.h from another BLAS is picked up. */
void openblas_set_num_threads(int num_threads);

/* A positive integer from s, or 0 (NULL, empty, junk, <= 0).  A list
 * ("4,2": OpenMP's threads per nesting level) gives its first value, the
 * outermost level, which is the one aesim's parallel loops use. */
static int positive_int(const char *s)
{
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end == '\0' || *end == ',') && v > 0 && v < 1 << 20 ? (int)v : 0;
}

ThreadPlan threads_plan(int requested, const char *omp_env, int cpus, int sharing, int local_ranks)
{
    ThreadPlan p = { 0 };
    p.cpus = cpus > 0 ? cpus : 1;
    p.sharing = sharing > 0 ? sharing : 1;
    p.local_ranks = local_ranks > 0 ? local_ranks : 1;
    const int fair = p.cpus / p.sharing > 0 ? p.cpus / p.sharing : 1;
    const int env = positive_int(omp_env);
    /* Precedence: --threads, then OMP_NUM_THREADS (capped at the fair share),
     * then the fair share. */
    if (requested > 0) {
        p.source = "--threads";
        p.omp_threads = requested;
    } else if (env > 0) {
        p.source = "OMP_NUM_THREADS";
        p.omp_threads = env > fair ? fair : env;
        p.capped_from = env > fair ? env : 0;
    } else {
        p.source = "default";
        p.omp_threads = fair;
    }
#if !AESIM_OMP
    p.omp_threads = 1;
    p.capped_from = 0;
#endif
    p.blas_threads = 1;
    p.oversubscribed = (long)p.sharing * p.omp_threads * p.blas_threads > p.cpus;
    return p;
}

ThreadPlan threads_setup(int requested, int cpus, int sharing, int local_ranks)
{
    ThreadPlan p = threads_plan(requested, getenv("OMP_NUM_THREADS"), cpus, sharing, local_ranks);
#if AESIM_OMP
    omp_set_num_threads(p.omp_threads);
#endif
    openblas_set_num_threads(p.blas_threads);
    return p;
}

void threads_print(const ThreadPlan *p, FILE *out)
{
    fprintf(out, "threads: %d rank(s)/node x %d OpenMP (%s) x %d BLAS | this rank may run on %d CPU(s) (affinity), "
            "shared by %d rank(s)\n", p->local_ranks, p->omp_threads, p->source, p->blas_threads, p->cpus, p->sharing);
    if (p->capped_from)
        fprintf(out, "warning: OMP_NUM_THREADS=%d capped to %d: %d rank(s) share the %d CPU(s) this rank may run on "
                "(--threads N forces a count)\n", p->capped_from, p->omp_threads, p->sharing, p->cpus);
    if (p->oversubscribed && p->sharing > p->cpus)
        fprintf(out, "warning: oversubscribed: %d rank(s) x %d thread(s) on the %d CPU(s) this rank may run on; "
                "expect a large slowdown (more ranks than the CPUs they share: fewer ranks per node, or more "
                "nodes)\n", p->sharing, p->omp_threads * p->blas_threads, p->cpus);
    else if (p->oversubscribed)
        fprintf(out, "warning: oversubscribed: %d rank(s) x %d thread(s) on the %d CPU(s) this rank may run on; "
                "expect a large slowdown (a smaller --threads; or more CPUs per rank: Open MPI binds each rank to one "
                "core when it starts 2 or fewer: mpirun --bind-to none, or --map-by slot:PE=T --bind-to core for T "
                "threads per rank; see README)\n",
                p->sharing, p->omp_threads * p->blas_threads, p->cpus);
    fflush(out);
}
