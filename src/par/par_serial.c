/*
 * par_serial.c - one-rank stand-in for par_mpi.c, linked by `make MPI=0`.
 * Every collective is the identity; par_abort() is exit().
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT (par_cpus) */
#include "par/par.h"

#include "base/check.h"

#include <sched.h>
#include <stdarg.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void par_init(ParCtx *ctx, int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    check_set_abort(par_abort, 0);
    ctx->rank = 0;
    ctx->size = 1;
    ctx->local_rank = 0;
    ctx->local_size = 1;
    ctx->comm = NULL;
}

void par_finalize(ParCtx *ctx) { (void)ctx; }
void par_abort(int code) { exit(code); }
int par_world_rank(void) { return 0; }
int par_has_mpi(void) { return 0; }
int par_launched_by_mpirun(void) { return 0; }
void par_allreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n) { (void)ctx; (void)buf; (void)n; }
void par_allreduce_sum_f64(const ParCtx *ctx, double *buf, size_t n) { (void)ctx; (void)buf; (void)n; }
void par_allreduce_sum_i64(const ParCtx *ctx, int64_t *buf, size_t n) { (void)ctx; (void)buf; (void)n; }
int par_request_pending(const ParRequest *req) { return req->impl != NULL; }
void par_iallreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n, ParRequest *req)
{
    (void)ctx;
    (void)buf;
    (void)n;
    req->impl = NULL;
    req->n_impl = 0;
}
void par_ibcast(const ParCtx *ctx, void *buf, size_t bytes, int root, ParRequest *req)
{
    (void)ctx;
    (void)buf;
    (void)bytes;
    (void)root;
    req->impl = NULL;
    req->n_impl = 0;
}
int par_test_all(ParRequest *reqs, int n)
{
    (void)reqs;
    return n;
}
void par_wait_all(ParRequest *reqs, int n)
{
    (void)reqs;
    (void)n;
}
int par_allreduce_max_int(const ParCtx *ctx, int v) { (void)ctx; return v; }
ParCpus par_cpus(const ParCtx *ctx)
{
    (void)ctx;
    ParCpus r = { 1, 1 };
    cpu_set_t mine;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (sched_getaffinity(0, sizeof mine, &mine) == 0 && CPU_COUNT(&mine) > 0)
        r.cpus = CPU_COUNT(&mine);
    else if (n > 0)
        r.cpus = (int)n;
    return r;
}
void par_bcast(const ParCtx *ctx, void *buf, size_t bytes, int root) { (void)ctx; (void)buf; (void)bytes; (void)root; }
int64_t par_exscan_sum_i64(const ParCtx *ctx, int64_t v) { (void)ctx; (void)v; return 0; }
void par_gather(const ParCtx *ctx, const void *send, void *recv, size_t bytes, int root)
{
    (void)ctx;
    (void)root;
    if (recv && bytes) memmove(recv, send, bytes);
}
void par_allgatherv_f32(const ParCtx *ctx, const float *send, float *recv, const int *counts)
{
    (void)ctx;
    if (counts[0]) memmove(recv, send, (size_t)counts[0] * sizeof *recv);
}
void par_barrier(const ParCtx *ctx) { (void)ctx; }
int par_agree(const ParCtx *ctx, Err *err) { (void)ctx; return err->code; }
int par_check_same_args(const ParCtx *ctx, int argc, char **argv, Err *err)
{
    (void)ctx;
    (void)argc;
    (void)argv;
    (void)err;
    return AE_OK;
}
int par_check_same(const ParCtx *ctx, const char *desc, const char *what, Err *err)
{
    (void)ctx;
    (void)desc;
    (void)what;
    (void)err;
    return AE_OK;
}

ParStats par_stats(const ParCtx *ctx, double v)
{
    (void)ctx;
    ParStats s = { v, v, v, 0 };
    return s;
}

void par_log0(const ParCtx *ctx, const char *fmt, ...)
{
    (void)ctx;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void par_err0(const ParCtx *ctx, const char *fmt, ...)
{
    (void)ctx;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}
