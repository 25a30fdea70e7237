/*
 * train_setup.c - data loading, architecture choice, model and optimizer
 * construction, and resume for aesim-train (see include/train/train_setup.h).
 * Rank 0 reads the checkpoint and broadcasts it; every rank reads the data
 * sources itself.  MPI through par.h only.
 */
#include "train/train_setup.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "base/check.h"
#include "base/fileio.h"
#include "base/timer.h"
#include "data/dataset_opts.h"
#include "nn/conv_direct_bf16.h"
#include "train/train_views.h"
#include "train/train_schedule.h"

/* Names of the test images in a MNIST-style folder, tried in order. */
static const char *const IDX_TEST_NAMES[] = { "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte" };

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int train_setup_data(const ParCtx *ctx, const TrainConfig *cfg, Dataset *train, Dataset *val, Err *err)
{
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    char val_src[ARG_PATH_MAX + 64] = "";
    snprintf(val_src, sizeof val_src, "%s", cfg->val);
    if (!val_src[0] && is_dir(cfg->data)) {
        for (size_t i = 0; i < sizeof IDX_TEST_NAMES / sizeof *IDX_TEST_NAMES && !val_src[0]; i++) {
            char p[ARG_PATH_MAX + 64];
            snprintf(p, sizeof p, "%s/%s", cfg->data, IDX_TEST_NAMES[i]);
            struct stat st;
            if (stat(p, &st) == 0) snprintf(val_src, sizeof val_src, "%s", p);
        }
    }
    Dataset all;
    memset(&all, 0, sizeof all);
    err_clear(err);
    DatasetOptions opts;
    dataset_options_default(&opts);
    opts.allow_gaps = cfg->allow_gaps; /* --allow-gaps; --data-opts allow_gaps=1 says the same */
    opts.defer_verify = 1;             /* CRC checks shared by the ranks below (verify.h) */
    opts.random_access = 1;            /* shuffled batches: no readahead, dataset_prefetch instead */
    if (dataset_options_parse(&opts, cfg->data_opts, err)) {
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "%s", err->msg);
        err_set(err, AE_EARG, "--data-opts: %.900s", msg);
    } else if (val_src[0]) {
        if (!dataset_open_opts(train, cfg->data, &opts, err) && !dataset_open_opts(val, val_src, &opts, err) &&
            (train->C != val->C || train->H != val->H || train->W != val->W))
            err_set(err, AE_ESHAPE, "validation images %s are %dx%dx%d but training images %s are %dx%dx%d (HxWxC)",
                    val->source, val->H, val->W, val->C, train->source, train->H, train->W, train->C);
    } else if (!dataset_open_opts(&all, cfg->data, &opts, err)) {
        dataset_split(train, val, &all, cfg->val_fraction, cfg->seed, err);
        dataset_free(&all);
    }
    if (par_agree(ctx, err)) return err->code;
    VerifyStats vs = { 0 };
    const double tv = timer_now();
    if (dataset_verify(ctx, train, &vs, err) || (val_src[0] && dataset_verify(ctx, val, &vs, err))) return err->code;
    if (vs.members)
        par_log0(ctx, "data: CRC-32 of %lld stored member(s) checked in %.2f s, each rank reading 1/%d of it (%.1f MB "
                 "here)\n", (long long)vs.members, timer_now() - tv, ctx->size, vs.bytes_read / 1e6);
    if (vs.cached)
        par_log0(ctx, "data: %lld stored member(s) verified by an earlier job, unchanged since (same path, size, "
                 "mtime in ns and inode): not read again (%s=off checks every time)\n", (long long)vs.cached, VERIFY_CACHE_ENV);
    if (train->warning[0]) par_err0(ctx, "aesim-train: warning: --data %s\n", train->warning);
    if (val->warning[0] && strcmp(val->warning, train->warning) != 0)
        par_err0(ctx, "aesim-train: warning: --val %s\n", val->warning);
    /* Every rank must see the same data: counts and shapes (the content is
     * the user's promise; a different count would deadlock the loop). */
    char desc[PAR_DESC_BYTES];
    snprintf(desc, sizeof desc, "train %lld images %dx%dx%d%s from %.180s; val %lld images from %.180s",
             (long long)train->n, train->H, train->W, train->C, train->labels ? " labelled" : "", train->source,
             (long long)val->n, val->source);
    return par_check_same(ctx, desc, "the training and validation data", err);
}

/* Rank 0 reads the newest intact checkpoint for --resume (a file or a
 * folder; damaged ones are reported on stderr and skipped, ckpt.h); every
 * rank gets its meta fields. */
static int read_checkpoint(const ParCtx *ctx, const char *path, Checkpoint *ck, Err *err)
{
    memset(ck, 0, sizeof *ck);
    if (ctx->rank == 0 && ckpt_read_latest(ck, path, stderr, err) == AE_OK) {
        /* state.epoch is the epoch in progress (0-based), state.batch its
         * batches done: at an epoch boundary (batch 0) that is "N epochs
         * done", not "in epoch N + 1" (which read as one epoch too many). */
        if (ck->state.batch == 0)
            par_log0(ctx, "resuming from %s (step %lld: %lld epoch(s) done)\n", ck->path,
                     (long long)ck->state.step, (long long)ck->state.epoch);
        else
            par_log0(ctx, "resuming from %s (step %lld: %lld epoch(s) done, then %lld batch(es) of epoch %lld)\n",
                     ck->path, (long long)ck->state.step, (long long)ck->state.epoch, (long long)ck->state.batch,
                     (long long)ck->state.epoch + 1);
    }
    if (par_agree(ctx, err)) return err->code;
    /* Broadcast the scalar part; the arrays stay on rank 0. */
    Checkpoint meta = *ck;
    meta.arrays = NULL;
    meta.n_arrays = 0;
    par_bcast(ctx, &meta, sizeof meta, 0);
    if (ctx->rank != 0) *ck = meta;
    return AE_OK;
}

/* Without --data, the --data recorded in ck (version >= 5) into cfg->data.
 * A recorded single path that no longer exists is an error naming it (a
 * list or a KIND:PATH source is left to dataset_open, which names the
 * missing part).  Rank 0 looks at the disk; the caller agrees. */
static int adopt_data(const ParCtx *ctx, TrainConfig *cfg, const Checkpoint *ck, Err *err)
{
    const char *rec = ck->state.data_arg;
    if ((cfg->given & TRAIN_GIVEN_DATA) || !rec[0]) return AE_OK;
    struct stat st;
    if (ctx->rank == 0 && !strpbrk(rec, ",:") && stat(rec, &st) != 0)
        return err_set(err, AE_EIO, "%.300s was trained on --data %.600s, which no longer exists (%s) (hint: give "
                       "--data with the same images, e.g. their new place)", ck->path, rec, strerror(errno));
    snprintf(cfg->data, sizeof cfg->data, "%s", rec);
    cfg->data_from_ckpt = 1;
    if (ctx->rank == 0) printf("resume: trains on --data %s, recorded in %s (no --data given)\n", rec, ck->path);
    return AE_OK;
}

/* --resume of an older step with --overwrite, rank 0: deletes the step
 * files steps[0..newer) (all after `from`) and checkpoint.npz when it is one
 * of them (a hard link), saying so. */
static void discard_newer(const char *out, const int64_t *steps, int newer, int64_t from)
{
    char latest[FILEIO_PATH_MAX], path[FILEIO_PATH_MAX];
    struct stat lst, st;
    const int have_latest = snprintf(latest, sizeof latest, "%s/%s", out, CKPT_LATEST_NAME) < (int)sizeof latest &&
                            stat(latest, &lst) == 0;
    int latest_gone = 0;
    for (int i = 0; i < newer; i++) {
        if (!ckpt_step_path(path, sizeof path, out, steps[i])) continue;
        if (have_latest && stat(path, &st) == 0 && st.st_dev == lst.st_dev && st.st_ino == lst.st_ino)
            latest_gone = 1;
        unlink(path);
    }
    if (latest_gone) unlink(latest);
    printf("resume: --overwrite: deleted the %d checkpoint(s) after step %lld (steps %lld..%lld) of %s\n", newer,
           (long long)from, (long long)steps[newer - 1], (long long)steps[0], out);
}

void train_setup_drop_notes(TrainConfig *cfg)
{
    free(cfg->resume_notes);
    cfg->resume_notes = NULL;
}

int train_setup_resume(const ParCtx *ctx, TrainConfig *cfg, Checkpoint *ck, Err *err)
{
    memset(ck, 0, sizeof *ck);
    if (!cfg->resume[0]) return AE_OK;
    if (read_checkpoint(ctx, cfg->resume, ck, err)) return err->code;
    if (ctx->rank == 0) {
        /* Resuming an older checkpoint in its own folder branches the run,
         * discarding the continuation after it: only with --overwrite, and
         * then at once (its step files and their metrics.csv rows go
         * together, so a run stopped before its first save leaves one
         * history); else --out NEWDIR branches elsewhere. */
        int64_t *steps = NULL;
        int n = ckpt_list_steps(cfg->out, &steps), newer = 0, intact = 0;
        while (newer < n && steps[newer] > ck->state.step) newer++;
        /* Damaged newer files (a fallback past them) are no history: the
         * first save removes them as before. */
        for (int i = 0; i < newer && !intact && !cfg->overwrite; i++) intact = ckpt_step_intact(cfg->out, steps[i]);
        if (!cfg->overwrite && !intact) newer = 0;
        if (newer && !cfg->overwrite)
            err_set(err, AE_EARG, "%s holds %d checkpoint(s) newer than the one resumed (steps %lld..%lld after step "
                    "%lld): resuming here would discard them (hint: add --out NEWDIR to branch there and keep them, "
                    "or --overwrite to discard them)", cfg->out, newer, (long long)steps[newer - 1],
                    (long long)steps[0], (long long)ck->state.step);
        else if (newer)
            discard_newer(cfg->out, steps, newer, ck->state.step);
        free(steps);
    }
    if (!err->code && !adopt_data(ctx, cfg, ck, err)) {
        size_t len = 0;
        FILE *notes = ctx->rank == 0 ? open_memstream(&cfg->resume_notes, &len) : NULL;
        train_schedule_adopt(cfg, ck, ctx->rank == 0 ? (notes ? notes : stdout) : NULL, err);
        if (notes) fclose(notes);
    }
    fflush(stdout);
    if (par_agree(ctx, err)) {
        ckpt_free(ck);
        train_setup_drop_notes(cfg);
    }
    return err->code;
}

/* The first number in file `path`, or 0 when it cannot be read or holds
 * none ("max": no limit). */
static double read_limit(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    unsigned long long v;
    double limit = fscanf(f, "%llu", &v) == 1 ? (double)v : 0;
    fclose(f);
    return limit;
}

/* The memory limit of this process's cgroup in bytes, or 0 when there is
 * none or it cannot be read.  cgroup v2: /proc/self/cgroup's "0::PATH",
 * then /sys/fs/cgroup/PATH/memory.max; v1: "N:memory:PATH", then
 * /sys/fs/cgroup/memory/PATH/memory.limit_in_bytes (v1 says "no limit" with
 * a huge number, which the caller's min with the node's memory drops). */
static double cgroup_memory_max(void)
{
    char line[1024], path[1200];
    double limit = 0;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    while (!limit && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        const char *v1 = strstr(line, ":memory:");
        if (strncmp(line, "0::", 3) == 0)
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", line + 3);
        else if (v1)
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", v1 + 8);
        else
            continue;
        limit = read_limit(path);
    }
    fclose(f);
    return limit;
}

/* Collective: the arithmetic of --precision `request` (ModelPrecision):
 * auto is bf16 only when every rank's CPU runs the VDPBF16PS kernels faster
 * than float32 (conv_bf16_auto_runs_bf16, model_precision_resolve), so all
 * ranks train alike.  Where the CPUs have AVX512_BF16 but auto still runs
 * fp32, rank 0 says why. */
static ModelPrecision train_precision(const ParCtx *ctx, int request)
{
    if ((ModelPrecision)request != MODEL_PRECISION_AUTO) return (ModelPrecision)request;
    const int slowest = -par_allreduce_max_int(ctx, -(int)(1000.0 * conv_bf16_dot_speedup() + 0.5));
    const int lacking = par_allreduce_max_int(ctx, !conv_bf16_auto_runs_bf16());
    char note[256];
    if (model_precision_auto_note(note, sizeof note, !lacking, slowest / 1000.0, ctx->size))
        par_log0(ctx, "precision: %s\n", note);
    return model_precision_resolve(MODEL_PRECISION_AUTO, !lacking);
}

static int setup_model(const ParCtx *ctx, const TrainConfig *cfg, Checkpoint *ck, const Dataset *train, int nthreads,
                       Model *m, Optimizer *opt, CkptState *start, Err *err);

int train_setup_model(const ParCtx *ctx, TrainConfig *cfg, Checkpoint *ck, const Dataset *train, int nthreads,
                      Model *m, Optimizer *opt, CkptState *start, Err *err)
{
    const int rc = setup_model(ctx, cfg, ck, train, nthreads, m, opt, start, err);
    if (rc == AE_OK && cfg->resume_notes) { /* the resume is accepted: what it keeps and changes */
        fputs(cfg->resume_notes, stdout);
        fflush(stdout);
    }
    train_setup_drop_notes(cfg);
    return rc;
}

static int setup_model(const ParCtx *ctx, const TrainConfig *cfg, Checkpoint *ck, const Dataset *train, int nthreads,
                       Model *m, Optimizer *opt, CkptState *start, Err *err)
{
    const int C = train->C, H = train->H, W = train->W;
    const int64_t n_train = train->n;
    memset(start, 0, sizeof *start);
    start->seed = cfg->seed;
    start->batch_size = cfg->batch_size;
    train_schedule_identity(start, train, cfg);
    const char *arch = cfg->arch[0] ? cfg->arch : model_default_preset(C, H, W);
    if (cfg->resume[0]) {
        const char *hint, *what = train_schedule_data_name(cfg, &hint);
        if (ck->C != C || ck->H != H || ck->W != W)
            err_set(err, AE_ESHAPE, "%s was trained on %dx%dx%d images but %s has %dx%dx%d (HxWxC)%s", ck->path,
                    ck->H, ck->W, ck->C, what, H, W, C, hint);
        else
            train_schedule_start(start, ck, cfg, train, ctx->rank == 0 ? stderr : NULL, err);
        if (par_agree(ctx, err)) {
            ckpt_free(ck);
            return err->code;
        }
        arch = ck->arch;
    }
    ModelSpec spec;
    if (!arch)
        err_set(err, AE_ESHAPE, "no preset fits %dx%dx%d images (HxWxC): give --arch (see --help)", H, W, C);
    else if (!model_parse(&spec, arch, C, H, W, err) && cfg->resume[0] && cfg->arch[0]) {
        ModelSpec asked;
        if (!model_parse(&asked, cfg->arch, C, H, W, err) && strcmp(asked.text, spec.text) != 0)
            err_set(err, AE_EARG, "--arch '%s' differs from the architecture of %s ('%s'); drop --arch to resume",
                    asked.text, ck->path, spec.text);
    } else if (err->code && cfg->resume[0] && arch == ck->arch) {
        /* The spec came from the checkpoint, not from --arch: say so. */
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "%s", err->msg);
        err_set(err, AE_EFORMAT, "%.300s: its architecture does not fit: %.600s", ck->path,
                strncmp(msg, "--arch ", 7) == 0 ? msg + 7 : msg);
    }
    if (par_agree(ctx, err)) {
        ckpt_free(ck);
        return err->code;
    }
    /* A batch never holds more images than the data set (nor the
     * validation pass more than a batch), so size buffers by the smaller. */
    int64_t batch = cfg->batch_size < n_train ? cfg->batch_size : n_train;
    int per_rank = (int)((batch + ctx->size - 1) / ctx->size);
    per_rank = train_views_per_rank(cfg, per_rank); /* two views per image with --contrastive */
    /* Refuse what cannot fit instead of meeting the OOM killer (or a failed
     * allocation) mid-build: the node's memory, or its cgroup's limit (a
     * SLURM job's, a container's), shared by the node's ranks; and this
     * process's address-space limit (ulimit -v). */
    double need = model_memory_bytes(&spec, per_rank, nthreads);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    const char *where = "the node has";
    const double cg = cgroup_memory_max();
    if (cg > 0 && (have <= 0 || cg < have)) {
        have = cg;
        where = "this job's cgroup allows (memory.max)";
    }
    struct rlimit rl;
    if (have > 0 && need * ctx->local_size > have)
        err_set(err, AE_ENOMEM, "the model (--arch) '%s' with %d images per rank needs %.1f GiB per rank (%d rank(s) on this "
                "node) but %s %.1f GiB (hint: a smaller --batch-size, fewer channels or more nodes)",
                spec.text, per_rank, need / (1 << 30), ctx->local_size, where, have / (1 << 30));
    else if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        /* The limit counts what is mapped already (MPI, the BLAS's buffers,
         * the data read into memory): the model gets the rest, less a slack
         * for what comes after the build (thread stacks, the validation
         * batch, checkpoint buffers; measured: 1.41 GiB of need + mapped
         * still failed under a 1.43 GiB limit, 1.46 GiB trained). */
        const int64_t kib = fileio_vm_size_kib();
        const double mapped = kib > 0 ? (double)kib * 1024.0 : 0, limit = (double)rl.rlim_cur;
        const double slack = need * 0.02 + (64 << 20);
        if (need + slack + mapped > limit)
            err_set(err, AE_ENOMEM, "the model (--arch) '%s' with %d images per rank needs %.0f MiB, and %.0f MiB more "
                    "for what runs after the build (thread stacks, validation, checkpoints), but this process may map "
                    "%.0f MiB (ulimit -v), %.0f MiB of it in use already (MPI, BLAS, the data): at least %.0f MiB short "
                    "(MPI and the BLAS map more when the limit allows it) (hint: a smaller --batch-size, or raise the "
                    "limit)", spec.text, per_rank, ceil(need / (1 << 20)), ceil(slack / (1 << 20)),
                    floor(limit / (1 << 20)), ceil(mapped / (1 << 20)), ceil((need + slack + mapped - limit) / (1 << 20)));
    }
    if (par_agree(ctx, err)) {
        ckpt_free(ck);
        return err->code;
    }
    model_build(m, &spec, per_rank, nthreads);
    model_set_precision(m, train_precision(ctx, cfg->precision));
    OptKind kind = cfg->resume[0] ? ck->opt_kind : cfg->opt;
    optimizer_init(opt, kind, &cfg->adam, cfg->momentum, m->n_params);
    if (cfg->resume[0]) {
        if (ctx->rank == 0) ckpt_restore(ck, m, opt, err);
        if (par_agree(ctx, err)) {
            ckpt_free(ck);
            return err->code;
        }
        opt->t = start->step;
        par_bcast(ctx, opt->m, opt->n * sizeof(float), 0);
        if (opt->v) par_bcast(ctx, opt->v, opt->n * sizeof(float), 0);
    } else if (ctx->rank == 0) {
        model_init_glorot(m, cfg->seed);
    }
    par_bcast(ctx, m->params, m->n_params * sizeof(float), 0);
    return AE_OK;
}
