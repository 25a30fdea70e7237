/*
 * train_main.c - aesim-train: data-parallel training of the convolutional
 * autoencoder.  Main only: init -> options -> config -> data -> model ->
 * train loop -> report -> finalize (the CoMD main's prolog/loop/epilog).
 * Exit status: 0 success, 1 runtime error (message on stderr), 2 bad usage.
 */
#include <stdio.h>
#include <stdlib.h>

#include "build_info.h"
#include "fileio.h"
#include "par.h"
#include "threads.h"
#include "train.h"
#include "train_args.h"
#include "train_setup.h"
#include "train_views.h"

static int finish(ParCtx *ctx, const Err *err, int code)
{
    if (err && err->code) par_err0(ctx, "aesim-train: error: %s\n", err->msg);
    par_finalize(ctx);
    return code;
}

int main(int argc, char **argv)
{
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
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
    ThreadPlan plan = threads_setup(&ctx, cfg.threads);
    threads_print(&ctx, &plan, stdout);

    Dataset train, val;
    if (train_setup_data(&ctx, &cfg, &train, &val, &err)) return finish(&ctx, &err, 1);
    par_log0(&ctx, "data: train %s\n      val   %s\n", train.source, val.source);

    Model model;
    Optimizer opt;
    CkptState start;
    if (train_setup_model(&ctx, &cfg, train.C, train.H, train.W, train.n, plan.omp_threads, &model, &opt, &start, &err))
        return finish(&ctx, &err, 1);
    int bc, bh, bw;
    model_bottleneck_shape(&model, &bc, &bh, &bw);
    par_log0(&ctx, "model: %s | input %dx%dx%d | bottleneck %dx%dx%d = %d values | %zu parameters | "
             "%.2f MFLOP/image forward\n", model.spec.text, train.H, train.W, train.C, bh, bw, bc, bc * bh * bw,
             model.n_params, model_forward_flops(&model) / 1e6);
    par_log0(&ctx, "optimizer: %s lr %g%s | global batch %d (%d per rank at most) | %d epoch(s) | seed %llu%s%s\n",
             optimizer_name(opt.kind), (double)opt.adam.lr, opt.kind == OPT_SGD ? " momentum" : "",
             cfg.batch_size, model.max_batch / train_views_per_rank(&cfg, 1), cfg.epochs, (unsigned long long)start.seed,
             cfg.resume[0] ? " | resuming from " : "", cfg.resume);
    if (ctx.rank == 0) fileio_mkdirs(cfg.out, &err);
    if (par_agree(&ctx, &err)) return finish(&ctx, &err, 1);

    TrainResult res;
    int rc = train_run(&ctx, &cfg, &model, &opt, &train, &val, &start, &res, &err);
    /* Per-rank diagnostic: equal on every rank iff the weights are identical. */
    fprintf(stderr, "[rank %d] parameter checksum crc32 %08lx after step %lld\n", ctx.rank,
            train_param_checksum(&model), (long long)res.state.step);
    fflush(stderr);
    if (rc == AE_OK && res.stopped)
        par_log0(&ctx, "stopped by a signal at step %lld after %lld steps of this run; resume with --resume %s\n",
                 (long long)res.state.step, (long long)res.steps_run, cfg.out);
    else if (rc == AE_OK && res.steps_run > 0)
        par_log0(&ctx, "done: %lld steps in %.1f s (now at step %lld), %.0f images/s | val loss %.5f | val PSNR "
                 "%.2f dB\noutputs: %s/checkpoint.npz  %s/metrics.csv  %s/recon_epoch*.png\n",
                 (long long)res.steps_run, res.seconds, (long long)res.state.step, res.images_per_s, res.val_loss,
                 res.val_psnr_db, cfg.out, cfg.out, cfg.out);
    optimizer_free(&opt);
    model_free(&model);
    dataset_free(&train);
    dataset_free(&val);
    return finish(&ctx, &err, rc ? 1 : 0);
}
