/*
 * train_main.c - aesim-train: data-parallel training of the convolutional
 * autoencoder.  Main only: init -> options -> config -> data -> model ->
 * train loop -> report -> finalize (the CoMD main's prolog/loop/epilog).
 * Exit status: 0 success, 1 runtime error (message on stderr), 2 bad usage.
 */
#include <stdio.h>
#include <stdlib.h>

#include "build_info.h"
#include "base/check.h"
#include "base/fileio.h"
#include "par/par.h"
#include "base/threads.h"
#include "base/timer.h"
#include "train/train.h"
#include "train/train_args.h"
#include "train/train_setup.h"
#include "train/train_views.h"
#include "data/sampler.h"
#include "train/train_outdir.h"
#include "tools/version.h"

static int finish(ParCtx *ctx, const Err *err, int code)
{
    if (err && err->code) par_err0(ctx, "aesim-train: error: %s\n", err->msg);
    par_finalize(ctx);
    return code;
}

/* Storage bytes read and resident memory of every rank so far (issue 18:
 * what the data costs), printed by rank 0: "disk: at open|end: ...". */
static void report_storage(const ParCtx *ctx, const char *when, double t0)
{
    int64_t mine[3];
    mine[0] = fileio_disk_read_bytes();
    fileio_rss_kib(&mine[1], &mine[2]);
    int64_t *all = xcalloc((size_t)ctx->size * 3, sizeof *all);
    par_gather(ctx, mine, all, sizeof mine, 0);
    int64_t sum = 0, mx[3] = { 0, 0, 0 };
    int known = 1;
    for (int r = 0; r < ctx->size; r++)
        for (int j = 0; j < 3; j++) {
            const int64_t v = all[3 * r + j];
            if (v < 0) known = 0;
            if (j == 0) sum += v;
            if (v > mx[j]) mx[j] = v;
        }
    if (known)
        par_log0(ctx, "disk: at %s (%.1f s): %.1f MB read from storage in all, %.1f MB by the busiest of %d rank(s); "
                 "resident memory per rank at most %.0f MB anonymous, %.0f MB of mapped files (/proc/self/io, "
                 "status)\n", when, timer_now() - t0, sum / 1e6, mx[0] / 1e6, ctx->size, mx[1] / 1024.0,
                 mx[2] / 1024.0);
    free(all);
}

int main(int argc, char **argv)
{
    if (version_requested(argc, argv)) return version_print(stdout, "aesim-train");
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    const double t_start = timer_now();
    Err err;
    err_clear(&err);
    TrainConfig cfg;
    if (par_check_same_args(&ctx, argc, argv, &err) || train_args_parse(&cfg, argc, argv, &err))
        return finish(&ctx, &err, 2);
    if (cfg.help) {
        if (ctx.rank == 0) train_args_usage(stdout);
        return finish(&ctx, NULL, 0);
    }
    par_log0(&ctx, "aesim-train | %d rank(s) | %s\n", ctx.size, AESIM_BUILD_INFO);
    const ParCpus cpus = par_cpus(&ctx);
    ThreadPlan plan = threads_setup(cfg.threads, cpus.cpus, cpus.sharing, ctx.local_size);
    if (ctx.rank == 0) threads_print(&plan, stdout);

    Checkpoint ck;
    if (train_outdir_prepare(&ctx, &cfg, &err) || train_setup_resume(&ctx, &cfg, &ck, &err))
        return finish(&ctx, &err, 1);
    Dataset train, val;
    if (train_setup_data(&ctx, &cfg, &train, &val, &err)) {
        ckpt_free(&ck);
        train_setup_drop_notes(&cfg);
        return finish(&ctx, &err, 1);
    }
    par_log0(&ctx, "data: train %s%s\n      val   %s\n", train.source,
             cfg.data_from_ckpt ? " (the --data recorded in the checkpoint)" : "", val.source);
    report_storage(&ctx, "open", t_start);

    Model model;
    Optimizer opt;
    CkptState start;
    int lock_fd = -1; /* rank 0's lock on the output folder (train_outdir.h) */
    if (train_setup_model(&ctx, &cfg, &ck, &train, plan.omp_threads, &model, &opt, &start, &err) ||
        train_outdir_commit(&ctx, &cfg, &lock_fd, &err)) {
        ckpt_free(&ck);
        return finish(&ctx, &err, 1);
    }
    int bc, bh, bw;
    model_bottleneck_shape(&model, &bc, &bh, &bw);
    par_log0(&ctx, "model: %s | input %dx%dx%d | bottleneck %dx%dx%d = %d values | %zu parameters | "
             "%.2f MFLOP/image forward | %s\n", model.spec.text, train.H, train.W, train.C, bh, bw, bc, bc * bh * bw,
             model.n_params, model_forward_flops(&model) / 1e6, model_precision_describe(&model));
    const int64_t steps_per_epoch = sampler_num_batches(train.n, cfg.batch_size);
    char until[128] = "";
    if (cfg.max_steps > 0 && cfg.max_steps < (int64_t)cfg.epochs * steps_per_epoch)
        snprintf(until, sizeof until, ", stopping at step %lld (--max-steps: %.2f epochs)", (long long)cfg.max_steps,
                 (double)cfg.max_steps / (double)steps_per_epoch);
    par_log0(&ctx, "optimizer: %s lr %g%s | global batch %d (%d per rank at most) | %d epoch(s) of %lld steps%s | "
             "seed %llu | output %s%s%s\n", optimizer_name(opt.kind), (double)opt.adam.lr,
             opt.kind == OPT_SGD ? " momentum" : "", cfg.batch_size, model.max_batch / train_views_per_rank(&cfg, 1), cfg.epochs,
             (long long)steps_per_epoch, until, (unsigned long long)start.seed, cfg.out,
             cfg.resume[0] ? " | resuming from " : "", cfg.resume);
    if (cfg.batch_size < ctx.size)
        par_err0(&ctx, "aesim-train: warning: the global batch (%d images) is smaller than the %d ranks: %d rank(s) "
                 "idle at every step (hint: --batch-size %d or more, or fewer ranks)\n", cfg.batch_size, ctx.size,
                 ctx.size - cfg.batch_size, ctx.size);

    TrainResult res;
    int rc = train_run(&ctx, &cfg, &model, &opt, &train, &val, &start, &ck, &res, &err);
    ckpt_free(&ck);
    /* Per-rank diagnostic: equal on every rank iff the weights are identical. */
    fprintf(stderr, "[rank %d] parameter checksum crc32 %08lx after step %lld\n", ctx.rank,
            (unsigned long)ckpt_params_crc32(&model), (long long)res.state.step);
    fflush(stderr);
    if (rc == AE_OK && !res.stopped && res.steps_run > 0)
        par_log0(&ctx, "done: %lld steps (%.2f epochs) in %.1f s (now at step %lld, epoch %.2f), %.0f images/s | "
                 "val loss %.5f | val PSNR %.2f dB\noutputs: %s/checkpoint.npz  %s/metrics.csv  "
                 "%s/recon_epoch*.png\n", (long long)res.steps_run, (double)res.steps_run / (double)steps_per_epoch,
                 res.seconds, (long long)res.state.step,
                 (double)res.state.epoch + (double)res.state.batch / (double)steps_per_epoch, res.images_per_s,
                 res.val_loss, res.val_psnr_db, cfg.out, cfg.out, cfg.out);
    if (rc == AE_OK) report_storage(&ctx, "end", t_start);
    train_outdir_release(&lock_fd);
    optimizer_free(&opt);
    model_free(&model);
    dataset_free(&train);
    dataset_free(&val);
    return finish(&ctx, &err, rc ? 1 : 0);
}
