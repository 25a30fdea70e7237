/*
 * par_mpi.c - MPI implementation of par.h; the only file that includes mpi.h.
 * Replaced by par_serial.c in `make MPI=0`.
 * Threading: MPI_THREAD_FUNNELED, all calls from the main thread.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_* (par_cpus) */
#include "par/par.h"

#include <limits.h>
#include <sched.h>
#include <unistd.h>
#include <mpi.h>
#include <zlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"

/* Start of the "[rank r] " prefix par_agree puts before a message. */
#define PAR_RANK_PREFIX "[rank "
/* Largest element count per MPI call: MPI counts are int. */
#define PAR_CHUNK ((size_t)INT_MAX / 2)

static MPI_Comm comm_of(const ParCtx *ctx) { return *(MPI_Comm *)ctx->comm; }

static void mpi_check(int rc, const char *what)
{
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    check_fail(__FILE__, __LINE__, "%s failed: %s", what, msg);
}

void par_init(ParCtx *ctx, int *argc, char ***argv)
{
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "aesim: fatal: MPI_Init_thread failed\n");
        exit(1);
    }
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    check_set_abort(par_abort, world_rank);  /* fatal errors end every rank */
    MPI_Comm *comm = xmalloc(sizeof *comm);
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, comm), "MPI_Comm_dup");
    /* Errors come back as codes, so mpi_check can name the call. */
    MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
    ctx->comm = comm;
    MPI_Comm_rank(*comm, &ctx->rank);
    MPI_Comm_size(*comm, &ctx->size);
    MPI_Comm node;
    mpi_check(MPI_Comm_split_type(*comm, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node, &ctx->local_rank);
    MPI_Comm_size(node, &ctx->local_size);
    MPI_Comm_free(&node);
}

void par_finalize(ParCtx *ctx)
{
    MPI_Comm_free((MPI_Comm *)ctx->comm);
    free(ctx->comm);
    ctx->comm = NULL;
    MPI_Finalize();
}

void par_abort(int code)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

int par_world_rank(void)
{
    int init = 0, fin = 0, r = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int par_has_mpi(void) { return 1; }

int par_launched_by_mpirun(void)
{
    /* Open MPI's launcher sets these (mpirun, and srun with PMIx). */
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
}

static void allreduce_chunked(const ParCtx *ctx, void *buf, size_t n, size_t esize, MPI_Datatype t,
                              MPI_Op op)
{
    char *p = buf;
    for (size_t off = 0; off < n; off += PAR_CHUNK) {
        size_t c = n - off < PAR_CHUNK ? n - off : PAR_CHUNK;
        mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + off * esize, (int)c, t, op, comm_of(ctx)),
                  "MPI_Allreduce");
    }
}

void par_allreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n)
{
    allreduce_chunked(ctx, buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM);
}

void par_allreduce_sum_f64(const ParCtx *ctx, double *buf, size_t n)
{
    allreduce_chunked(ctx, buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM);
}

void par_allreduce_sum_i64(const ParCtx *ctx, int64_t *buf, size_t n)
{
    allreduce_chunked(ctx, buf, n, sizeof *buf, MPI_INT64_T, MPI_SUM);
}

int par_request_pending(const ParRequest *req) { return req->impl != NULL; }

void par_iallreduce_sum_f32(const ParCtx *ctx, float *buf, size_t n, ParRequest *req)
{
    CHECK(req->impl == NULL);
    size_t chunks = n ? (n + PAR_CHUNK - 1) / PAR_CHUNK : 1;
    CHECK(chunks <= (size_t)INT_MAX);
    MPI_Request *r = xmalloc(chunks * sizeof *r);
    for (size_t k = 0; k < chunks; k++) {
        size_t off = k * PAR_CHUNK, c = n - off < PAR_CHUNK ? n - off : PAR_CHUNK;
        mpi_check(MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)c, MPI_FLOAT, MPI_SUM, comm_of(ctx), &r[k]),
                  "MPI_Iallreduce");
    }
    req->impl = r;
    req->n_impl = (int)chunks;
}

void par_ibcast(const ParCtx *ctx, void *buf, size_t bytes, int root, ParRequest *req)
{
    CHECK(req->impl == NULL);
    CHECK(bytes <= (size_t)INT_MAX);
    MPI_Request *r = xmalloc(sizeof *r);
    mpi_check(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, comm_of(ctx), r), "MPI_Ibcast");
    req->impl = r;
    req->n_impl = 1;
}

/* Marks a completed request inactive (MPI has already freed its handles). */
static void request_release(ParRequest *req)
{
    free(req->impl);
    req->impl = NULL;
    req->n_impl = 0;
}

int par_test_all(ParRequest *reqs, int n)
{
    int done = 0;
    for (int i = 0; i < n; i++) {
        if (reqs[i].impl) {
            int flag = 0;
            mpi_check(MPI_Testall(reqs[i].n_impl, reqs[i].impl, &flag, MPI_STATUSES_IGNORE), "MPI_Testall");
            if (flag) request_release(&reqs[i]);
        }
        done += reqs[i].impl == NULL;
    }
    return done;
}

void par_wait_all(ParRequest *reqs, int n)
{
    for (int i = 0; i < n; i++) {
        if (!reqs[i].impl) continue;
        mpi_check(MPI_Waitall(reqs[i].n_impl, reqs[i].impl, MPI_STATUSES_IGNORE), "MPI_Waitall");
        request_release(&reqs[i]);
    }
}

ParCpus par_cpus(const ParCtx *ctx)
{
    ParCpus r = { 1, 1 };
    cpu_set_t mine;
    CPU_ZERO(&mine);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0 || CPU_COUNT(&mine) == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        CPU_ZERO(&mine);
        for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET((int)i, &mine);
    }
    r.cpus = CPU_COUNT(&mine) > 0 ? CPU_COUNT(&mine) : 1;
    MPI_Comm node;
    mpi_check(MPI_Comm_split_type(comm_of(ctx), MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    int n = 0;
    MPI_Comm_size(node, &n);
    cpu_set_t *all = xmalloc((size_t)n * sizeof *all);
    mpi_check(MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, node),
              "MPI_Allgather");
    MPI_Comm_free(&node);
    r.sharing = 0;
    for (int i = 0; i < n; i++) {
        cpu_set_t both;
        CPU_AND(&both, &mine, &all[i]);
        r.sharing += CPU_COUNT(&both) > 0;
    }
    if (r.sharing < 1) r.sharing = 1;
    free(all);
    return r;
}

int par_allreduce_max_int(const ParCtx *ctx, int v)
{
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, comm_of(ctx)), "MPI_Allreduce");
    return v;
}

void par_bcast(const ParCtx *ctx, void *buf, size_t bytes, int root)
{
    char *p = buf;
    for (size_t off = 0; off < bytes; off += PAR_CHUNK) {
        size_t c = bytes - off < PAR_CHUNK ? bytes - off : PAR_CHUNK;
        mpi_check(MPI_Bcast(p + off, (int)c, MPI_BYTE, root, comm_of(ctx)), "MPI_Bcast");
    }
}

int64_t par_exscan_sum_i64(const ParCtx *ctx, int64_t v)
{
    int64_t out = 0;
    mpi_check(MPI_Exscan(&v, &out, 1, MPI_INT64_T, MPI_SUM, comm_of(ctx)), "MPI_Exscan");
    return ctx->rank == 0 ? 0 : out;
}

void par_gather(const ParCtx *ctx, const void *send, void *recv, size_t bytes, int root)
{
    CHECK(bytes <= (size_t)INT_MAX);
    mpi_check(MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, root, comm_of(ctx)),
              "MPI_Gather");
}

void par_allgatherv_f32(const ParCtx *ctx, const float *send, float *recv, const int *counts)
{
    int *displs = xmalloc((size_t)ctx->size * sizeof *displs);
    int64_t total = 0;
    for (int r = 0; r < ctx->size; r++) {
        displs[r] = (int)total;
        total += counts[r];
        CHECK(total <= INT_MAX);
    }
    mpi_check(MPI_Allgatherv(send, counts[ctx->rank], MPI_FLOAT, recv, counts, displs, MPI_FLOAT, comm_of(ctx)),
              "MPI_Allgatherv");
    free(displs);
}

void par_barrier(const ParCtx *ctx) { mpi_check(MPI_Barrier(comm_of(ctx)), "MPI_Barrier"); }

int par_agree(const ParCtx *ctx, Err *err)
{
    int code = par_allreduce_max_int(ctx, err->code);
    if (code == AE_OK) return AE_OK;
    /* The lowest failing rank sends its message to everyone. */
    int mine = err->code != AE_OK ? ctx->rank : ctx->size, first = 0;
    mpi_check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm_of(ctx)), "MPI_Allreduce");
    Err sent;
    if (ctx->rank == first) {
        sent.code = err->code;
        /* An error already agreed (passed up through a second par_agree)
         * carries its prefix: add it once. */
        if (ctx->size > 1 && strncmp(err->msg, PAR_RANK_PREFIX, strlen(PAR_RANK_PREFIX)) != 0) {
            char line[sizeof sent.msg + 32]; /* cut in the middle, not at the end (err_fit) */
            const int n = snprintf(line, sizeof line, PAR_RANK_PREFIX "%d] %s", first, err->msg);
            err_fit(sent.msg, sizeof sent.msg, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
        } else {
            memcpy(sent.msg, err->msg, sizeof sent.msg);
        }
    }
    par_bcast(ctx, &sent, sizeof sent, first);
    *err = sent;
    return sent.code;
}

int par_check_same(const ParCtx *ctx, const char *desc, const char *what, Err *err)
{
    uLong crc = crc32(0L, (const Bytef *)desc, (uInt)strlen(desc));
    uint32_t root_crc = (uint32_t)crc;
    par_bcast(ctx, &root_crc, sizeof root_crc, 0);
    /* The lowest rank whose description differs from rank 0's, or P. */
    int first = -par_allreduce_max_int(ctx, -((uint32_t)crc != root_crc ? ctx->rank : ctx->size));
    if (first >= ctx->size) return AE_OK;
    char mine[PAR_DESC_BYTES], root[PAR_DESC_BYTES];
    snprintf(mine, sizeof mine, "%s", desc);
    memcpy(root, mine, sizeof root);
    par_bcast(ctx, root, sizeof root, 0);
    par_bcast(ctx, mine, sizeof mine, first);
    return err_set(err, AE_EARG, "ranks disagree on %s: rank %d has '%.400s' but rank 0 has '%.400s' (every rank "
                   "must get the same arguments and see the same files)", what, first, mine, root);
}

int par_check_same_args(const ParCtx *ctx, int argc, char **argv, Err *err)
{
    /* argv[0] may differ between nodes (paths); compare the arguments. */
    size_t len = 1;
    for (int i = 1; i < argc; i++) len += strlen(argv[i]) + 1;
    char *buf = xmalloc(len), *p = buf;
    *p = '\0';
    for (int i = 1; i < argc; i++) p += sprintf(p, "%s%s", i > 1 ? " " : "", argv[i]);
    int rc = par_check_same(ctx, buf, "the command-line arguments", err);
    free(buf);
    return rc;
}

ParStats par_stats(const ParCtx *ctx, double v)
{
    ParStats s;
    struct { double v; int r; } in = { v, ctx->rank }, out;
    mpi_check(MPI_Allreduce(&v, &s.min, 1, MPI_DOUBLE, MPI_MIN, comm_of(ctx)), "MPI_Allreduce");
    mpi_check(MPI_Allreduce(&v, &s.avg, 1, MPI_DOUBLE, MPI_SUM, comm_of(ctx)), "MPI_Allreduce");
    mpi_check(MPI_Allreduce(&in, &out, 1, MPI_DOUBLE_INT, MPI_MAXLOC, comm_of(ctx)), "MPI_Allreduce");
    s.avg /= ctx->size;
    s.max = out.v;
    s.max_rank = out.r;
    return s;
}

void par_log0(const ParCtx *ctx, const char *fmt, ...)
{
    if (ctx->rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void par_err0(const ParCtx *ctx, const char *fmt, ...)
{
    if (ctx->rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}
