/*
 * team.h - the calling thread's index and its OpenMP team's size, with the
 * serial answers (0 and 1) when aesim is built without OpenMP (OMP=0), so
 * kernels that split work by thread need no #ifdef of their own.
 */
#ifndef AESIM_TEAM_H
#define AESIM_TEAM_H

#ifdef _OPENMP
#include <omp.h>
#endif

/* Index of the calling thread in its team, 0..team_size()-1 (0 outside a
 * parallel region or without OpenMP). */
static inline int team_thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads in the calling thread's team (1 outside a parallel region or
 * without OpenMP); may be fewer than num_threads asked for. */
static inline int team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

#endif
