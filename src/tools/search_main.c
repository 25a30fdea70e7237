/*
 * search_main.c - aesim-search: encode images into a sharded vector
 * database and search it (index / query / eval; see include/search/search.h).
 * Main only: init -> options -> thread plan -> run the subcommand ->
 * finalize.  Informational lines go to stderr, so stdout carries only the
 * results (query) or the table (eval).
 * Exit status: 0 success, 1 runtime error (message on stderr), 2 bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "build_info.h"
#include "base/fileio.h"
#include "par/par.h"
#include "search/search.h"
#include "search/search_args.h"
#include "search/search_core.h"
#include "search/search_ivf.h"
#include "base/threads.h"
#include "tools/version.h"
#include "search/serve.h"

static int finish(ParCtx *ctx, const Err *err, int code)
{
    if (err && err->code) par_err0(ctx, "aesim-search: error: %s\n", err->msg);
    par_finalize(ctx);
    return code;
}

int main(int argc, char **argv)
{
    if (version_requested(argc, argv)) return version_print(stdout, "aesim-search");
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    Err err;
    err_clear(&err);
    SearchConfig cfg;
    if (par_check_same_args(&ctx, argc, argv, &err) || search_args_parse(&cfg, argc, argv, &err))
        return finish(&ctx, &err, 2);
    if (cfg.help) {
        if (ctx.rank == 0) search_args_usage(stdout);
        return finish(&ctx, NULL, 0);
    }
    /* Nothing of another run is replaced unasked (--overwrite). */
    if (search_check_outputs(&ctx, &cfg, &err)) return finish(&ctx, &err, 1);
    par_err0(&ctx, "aesim-search %s | %d rank(s) | %s\n", argv[1], ctx.size, AESIM_BUILD_INFO);
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(cfg.threads, cpus.cpus, cpus.sharing, ctx.local_size);
    if (ctx.rank == 0) threads_print(&plan, stderr); /* stdout carries only results */
    /* One writer per database at a time (search_core.h): index --append
     * and train-ivf for their run; a new index once it has created the
     * folder (search.c); serve for each POST /images (serve.c). */
    const char *writer = cfg.cmd == SEARCH_TRAIN_IVF           ? "aesim-search train-ivf"
                         : cfg.cmd == SEARCH_INDEX && cfg.append ? "aesim-search index --append"
                                                                 : NULL; /* a new index locks what it creates */
    int lock = -1;
    if (writer && search_lock_db(&ctx, cfg.db, writer, &lock, &err)) return finish(&ctx, &err, 1);
    int rc;
    switch (cfg.cmd) {
    case SEARCH_INDEX: rc = search_index(&ctx, &cfg, plan.omp_threads, &err); break;
    case SEARCH_QUERY: rc = search_query(&ctx, &cfg, plan.omp_threads, &err); break;
    case SEARCH_SERVE: rc = search_serve(&ctx, &cfg, plan.omp_threads, &err); break;
    case SEARCH_TRAIN_IVF: rc = search_train_ivf(&ctx, &cfg, plan.omp_threads, &err); break;
    default: rc = search_eval(&ctx, &cfg, plan.omp_threads, &err); break;
    }
    /* Results on stdout that could not be written (a full disk, a closed
     * pipe) are an error, not a silent loss. */
    if (rc == AE_OK && ctx.rank == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        err_set(&err, AE_EIO, "cannot write the results to standard output: %s (hint: use --out FILE)",
                strerror(errno));
    rc = par_agree(&ctx, &err);
    fileio_unlock_dir(&lock);
    return finish(&ctx, &err, rc ? 1 : 0);
}
