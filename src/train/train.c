/*
 * train.c - data-parallel training loop (see include/train/train.h).
 *
 * Does: sharded batches, gradient allreduce (bucketed and overlapped with the
 * backward pass, grad_sync.h), optimizer, validation, progress,
 * metrics, reconstruction grids, rotating checkpoints, graceful stop on
 * SIGTERM/SIGINT/SIGUSR1 (signals.h), NaN/Inf detection.  Does not: parse
 * options, load data or build the model (train_main.c).  MPI only through
 * par.h; rank 0 alone writes files and prints (besides one "[rank r]" line
 * per rank when a stop signal arrives).  Threading: the kernels' OpenMP.
 */
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/check.h"
#include "base/fileio.h"
#include "model/model.h"
#include "par/grad_sync.h"
#include "train/metrics.h"
#include "data/png_io.h"
#include "base/progress.h"
#include "data/sampler.h"
#include "base/signals.h"
#include "base/timer.h"
#include "train/train_views.h"

/* Target width in pixels of a reconstruction grid tile (small images are
 * upscaled by an integer factor to about this). */
#define TRAIN_GRID_TILE_PX 96
/* Grey border between grid tiles, pixels. */
#define TRAIN_GRID_PAD 2

/* Test-only fault injection (see train.h): the environment variable naming
 * the 1-based step at which the highest rank poisons its local gradient. */
#define TRAIN_FAULT_NAN_ENV "AESIM_FAULT_NAN_STEP"
/* Seconds a rank stopped by a signal may take from here to its exit (freeing,
 * MPI_Finalize) before signals_exit_watchdog ends it with status 0: finalize
 * of a stopped job takes milliseconds unless mpirun is shutting the job down,
 * in which case it never returns.  Must stay below the SIGTERM-to-SIGKILL gap
 * of mpirun (odls_base_sigkill_timeout, see signals.h) to exit 0. */
#define TRAIN_STOP_EXIT_GRACE_S 2
/* A collapsed network (ReLUs that no longer fire: the output is one image
 * whatever the input) trains on silently and gives codes of little use for
 * search.  The log says so once, when at two epoch ends in a row the ratio
 * of the reconstructions' variance across the validation images to the
 * images' own (train_evaluate) is below TRAIN_COLLAPSE_VAR_RATIO, has not
 * risen, and the validation PSNR moved by less than TRAIN_COLLAPSE_PSNR_DB.
 * One evaluation is not enough: a freshly initialised network's ratio is
 * 1e-4..4e-4 too (the presets, measured on MNIST), and a training one
 * leaves that range within 1-2 epochs (0.01-0.07 after 150 steps of 64
 * images at --lr 1e-4), while a collapsed one keeps falling (1e-4, 7e-5,
 * 4e-5 over the first 3 MNIST epochs at --lr 1e-3, 9.09 dB throughout). */
#define TRAIN_COLLAPSE_VAR_RATIO 1e-3
#define TRAIN_COLLAPSE_PSNR_DB 0.05

/* Per-rank seconds spent in each phase of a step.  PH_ALLREDUCE is the
 * exposed communication: from the end of the backward pass until gradients
 * and loss are summed; communication started during backward (grad_sync.h)
 * counts in PH_COMPUTE and is reported separately. */
enum { PH_DATA, PH_COMPUTE, PH_ALLREDUCE, PH_OPTIMIZER, PH_COUNT };
static const char *PHASE_NAMES[PH_COUNT] = { "data", "forward+backward", "allreduce", "optimizer" };

static size_t image_numel(const Dataset *ds) { return (size_t)ds->C * ds->H * ds->W; }

double train_evaluate(const ParCtx *ctx, Model *m, const Dataset *ds, int64_t limit, double *var_ratio)
{
    int64_t n = limit > 0 && limit < ds->n ? limit : ds->n;
    int64_t lo = n * ctx->rank / ctx->size, hi = n * (ctx->rank + 1) / ctx->size;
    size_t chw = image_numel(ds);
    /* [0] sum of squared errors, [1] images; for var_ratio, per pixel the
     * sums of the inputs, of their squares, of the outputs, of their squares */
    size_t nacc = 2 + (var_ratio ? 4 * chw : 0);
    double *acc = xcalloc(nacc, sizeof *acc);
    double *sx = acc + 2, *sxx = sx + chw, *sy = sxx + chw, *syy = sy + chw;
    acc[1] = (double)(hi - lo);
    if (lo < hi) dataset_prefetch(ds, NULL, lo, hi - lo < m->max_batch ? hi - lo : m->max_batch);
    for (int64_t i = lo; i < hi; i += m->max_batch) {
        int nb = (int)(hi - i < m->max_batch ? hi - i : m->max_batch);
        /* the next chunk's pages are read while this one is computed */
        if (i + nb < hi) dataset_prefetch(ds, NULL, i + nb, hi - i - nb < m->max_batch ? hi - i - nb : m->max_batch);
        for (int j = 0; j < nb; j++) dataset_get_f32(m->input + (size_t)j * chw, ds, i + j);
        const float *y = model_forward(m, m->input, nb);
        for (size_t k = 0; k < (size_t)nb * chw; k++) {
            double d = (double)y[k] - m->input[k];
            acc[0] += d * d;
        }
        if (var_ratio)
            for (int j = 0; j < nb; j++)
                for (size_t k = 0; k < chw; k++) {
                    double x = m->input[(size_t)j * chw + k], yk = y[(size_t)j * chw + k];
                    sx[k] += x;
                    sxx[k] += x * x;
                    sy[k] += yk;
                    syy[k] += yk * yk;
                }
    }
    par_allreduce_sum_f64(ctx, acc, nacc);
    double images = acc[1], mse = images > 0 ? acc[0] / (images * (double)chw) : NAN;
    if (var_ratio) {
        double vx = 0, vy = 0;
        for (size_t k = 0; k < chw && images > 0; k++) {
            double mx = sx[k] / images, my = sy[k] / images;
            double dx = sxx[k] / images - mx * mx, dy = syy[k] / images - my * my;
            vx += dx < 0 ? 0 : dx; /* rounding below 0; a NaN stays NaN */
            vy += dy < 0 ? 0 : dy;
        }
        *var_ratio = images > 0 && vx > 0 ? vy / vx : NAN;
    }
    free(acc);
    return mse;
}

/* Rank 0: originals of the first grid_n validation images over their
 * reconstructions. */
static int write_grid(const TrainConfig *cfg, Model *m, const Dataset *val, int64_t epoch, Err *err)
{
    int n = cfg->grid_n < val->n ? cfg->grid_n : (int)val->n;
    if (n > m->max_batch) n = m->max_batch;
    if (n <= 0) return AE_OK;
    size_t chw = image_numel(val);
    float *tiles = xmalloc(2 * (size_t)n * chw * sizeof(float));
    for (int j = 0; j < n; j++) dataset_get_f32(m->input + (size_t)j * chw, val, j);
    memcpy(tiles, m->input, (size_t)n * chw * sizeof(float));
    memcpy(tiles + (size_t)n * chw, model_forward(m, m->input, n), (size_t)n * chw * sizeof(float));
    char path[ARG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/recon_epoch%03lld.png", cfg->out, (long long)epoch + 1);
    int scale = TRAIN_GRID_TILE_PX / val->W > 1 ? TRAIN_GRID_TILE_PX / val->W : 1;
    int rc = png_write_grid(path, tiles, 2 * n, 2, n, val->C, val->H, val->W, scale, TRAIN_GRID_PAD, err);
    free(tiles);
    return rc;
}

/* Rank 0 writes OUT/ckpt-stepN.npz and makes it OUT/checkpoint.npz (ckpt.h);
 * `last` [FILEIO_PATH_MAX] names the newest checkpoint written so far ("" =
 * none by this run); rot is the run's rotation (rank 0's is used).  On failure the message says what is still intact.
 * Collective: the status is agreed. */
static int save_checkpoint(const ParCtx *ctx, const TrainConfig *cfg, const Model *m, const Optimizer *opt,
                           const CkptState *st, CkptRotation *rot, char *last, Err *err)
{
    if (ctx->rank == 0) {
        char written[FILEIO_PATH_MAX];
        Err e;
        err_clear(&e);
        if (ckpt_save_rotate(cfg->out, m, opt, st, cfg->keep, rot, written, &e) == AE_OK) {
            snprintf(last, FILEIO_PATH_MAX, "%s", written);
        } else {
            size_t len = strlen(e.msg);
            if (last[0])
                snprintf(e.msg + len, sizeof e.msg - len, "; the previous checkpoint %.300s is intact (make "
                         "room, then --resume %.300s)", last, cfg->out);
            else {
                char latest[FILEIO_PATH_MAX + sizeof CKPT_LATEST_NAME + 1];
                struct stat sb;
                snprintf(latest, sizeof latest, "%s/%s", cfg->out, CKPT_LATEST_NAME);
                if (stat(latest, &sb) == 0)
                    snprintf(e.msg + len, sizeof e.msg - len, "; the checkpoints in %.300s from before this run are "
                             "intact", cfg->out);
                else
                    snprintf(e.msg + len, sizeof e.msg - len, "; this run has written no checkpoint yet");
            }
            *err = e;
        }
    }
    return par_agree(ctx, err);
}

/* 1 if every x[i] is finite. */
static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* The step of TRAIN_FAULT_NAN_ENV, or 0 when unset or not a positive integer. */
static int64_t fault_nan_step(void)
{
    const char *s = getenv(TRAIN_FAULT_NAN_ENV);
    if (!s || !*s) return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    return *end == '\0' && v > 0 ? (int64_t)v : 0;
}

/* Text for messages: the newest checkpoint of this run, or the folder. */
static const char *kept_ckpt(const char *last, const char *out) { return last[0] ? last : out; }

/* Per-rank communication totals of a run (grad_sync.h). */
typedef struct CommTotals {
    double in_backward_s;   /* seconds in MPI calls made during backward */
    double early_floats;    /* gradient floats reduced before backward returned */
} CommTotals;

/* The overlap of `steps` steps: the share of the gradient whose allreduce
 * had completed when the backward pass returned (NaN without steps). */
static double overlap_of(double early_floats, int64_t steps, size_t n_params)
{
    return steps > 0 ? early_floats / ((double)steps * (double)n_params) : NAN;
}

/* Sums over a run of steps: the --csv-every window since the last metrics
 * row, or the current epoch.  A metrics row reports the window's means. */
typedef struct Window {
    int64_t steps, images;
    double loss;        /* sum of the steps' mean losses */
    double s;           /* training seconds (step times only) */
    double exposed_s;   /* exposed allreduce seconds */
    double comm_s;      /* exposed + MPI time during backward */
    double early;       /* gradient floats reduced before backward ended */
} Window;

static void window_add(Window *w, double loss, int64_t images, double s, double exposed_s, double comm_s,
                       double early)
{
    w->steps++;
    w->images += images;
    w->loss += loss;
    w->s += s;
    w->exposed_s += exposed_s;
    w->comm_s += comm_s;
    w->early += early;
}

/* Appends the row of window w (not empty) at `step`, `epoch`: its mean
 * train loss, images per training second, and per-step communication;
 * val/psnr NaN between evaluations.  Rank 0 only. */
static int window_row(MetricsLog *log, const Window *w, int64_t step, double epoch, double val_loss,
                      double val_psnr_db, double seconds, const ParCtx *ctx, size_t n_params, Err *err)
{
    /* One rank has no gradient communication: those columns stay empty. */
    const int comm = ctx->size > 1;
    return metrics_append(log, step, epoch, w->loss / w->steps, val_loss, val_psnr_db,
                          w->s > 0 ? w->images / w->s : NAN, seconds, comm ? 1e3 * w->exposed_s / w->steps : NAN,
                          comm ? 1e3 * w->comm_s / w->steps : NAN,
                          comm ? overlap_of(w->early, w->steps, n_params) : NAN, err);
}

/* One line: mean milliseconds per step of each phase, min/avg/max over
 * ranks, then the communication: the overlap (share of the gradient reduced
 * before backward ended, mean and min over ranks), and the time spent in
 * MPI calls during backward, which counts in forward+backward, whereas the
 * allreduce phase is the exposed part (printed at once so that other ranks'
 * output cannot split it). */
static void report_phases(const ParCtx *ctx, const double *t, int64_t steps, const CommTotals *ct,
                          const GradSync *sync, int bucket_kib)
{
    char line[1024];
    if (ctx->size == 1) {
        /* One rank: no spread over ranks and no communication to report. */
        size_t len = (size_t)snprintf(line, sizeof line, "time per step (ms):");
        for (int p = 0; p < PH_COUNT; p++)
            if (p != PH_ALLREDUCE && len < sizeof line)
                len += (size_t)snprintf(line + len, sizeof line - len, "%s %s %.2f", p ? ";" : "", PHASE_NAMES[p],
                                        steps ? 1e3 * t[p] / steps : 0);
        par_log0(ctx, "%s (1 rank: no gradient communication)\n", line);
        return;
    }
    size_t len = (size_t)snprintf(line, sizeof line, "time per step (ms, min/avg/max over ranks):");
    for (int p = 0; p < PH_COUNT; p++) {
        ParStats s = par_stats(ctx, steps ? 1e3 * t[p] / steps : 0);
        if (len < sizeof line)
            len += (size_t)snprintf(line + len, sizeof line - len, "%s %s %.2f/%.2f/%.2f (max on rank %d)",
                                    p ? ";" : "", PHASE_NAMES[p], s.min, s.avg, s.max, s.max_rank);
    }
    ParStats bwd = par_stats(ctx, steps ? 1e3 * ct->in_backward_s / steps : 0);
    double ov = overlap_of(ct->early_floats, steps, sync->n_params);
    ParStats o = par_stats(ctx, isnan(ov) ? 0 : ov);
    if (len < sizeof line)
        len += (size_t)snprintf(line + len, sizeof line - len, "; overlap %.0f%% of the gradient reduced before "
                                "backward ended (min over ranks %.0f%%), MPI calls during backward %.2f/%.2f/%.2f "
                                "(--bucket-kib %d: %d bucket%s)", 100 * o.avg, 100 * o.min, bwd.min, bwd.avg, bwd.max,
                                bucket_kib, sync->n_buckets,
                                sync->blocking ? ", one blocking allreduce" : sync->n_buckets == 1 ? "" : "s");
    par_log0(ctx, "%s\n", line);
}

int train_run(const ParCtx *ctx, const TrainConfig *cfg, Model *m, Optimizer *opt, const Dataset *train,
              const Dataset *val, const CkptState *start, const Checkpoint *ck, TrainResult *res, Err *err)
{
    const int64_t n = train->n, B = cfg->batch_size;
    const int64_t nb = sampler_num_batches(n, B);
    const size_t chw = image_numel(train);
    CkptState st = *start;
    memset(res, 0, sizeof *res);
    res->state = st;
    res->val_loss = res->val_psnr_db = res->last_train_loss = NAN;
    if (st.epoch >= cfg->epochs || (cfg->max_steps > 0 && st.step >= cfg->max_steps)) {
        par_log0(ctx, "nothing to train: the checkpoint is at step %lld, epoch %lld of %d%s; raise --epochs%s to "
                 "train further\n", (long long)st.step, (long long)st.epoch, cfg->epochs,
                 st.epoch >= cfg->epochs ? " (all done)" : "", cfg->max_steps > 0 ? " or --max-steps" : "");
        return AE_OK;
    }
    int64_t *perm = xmalloc((size_t)n * sizeof *perm);
    double phase[PH_COUNT] = { 0 };
    CommTotals comm = { 0, 0 };
    GradSync sync;
    size_t slices[MODEL_MAX_LAYERS];
    const int n_slices = model_grad_slices(m, slices);
    grad_sync_init(&sync, ctx, m->grads, m->n_params, slices, n_slices, cfg->bucket_kib);
    const ModelGradHook hook = { grad_sync_on_grads_done, &sync };
    /* --noise/--augment/--contrastive: views built per step (train_views.h);
     * without them the step is the plain one below, unchanged. */
    const int use_views = train_views_active(cfg);
    TrainViews tv;
    memset(&tv, 0, sizeof tv);
    if (use_views) {
        int64_t o, c;
        sampler_rank_slice(B < n ? B : n, 0, ctx->size, &o, &c); /* rank 0's slice is the largest */
        train_views_init(&tv, ctx, cfg, m, c);
        if (train_views_head_setup(&tv, opt, ck, &st, err)) {
            train_views_free(&tv);
            free(perm);
            return err->code;
        }
    }
    const double views_per_image = use_views ? tv.views : 1;

    MetricsLog log = { 0 };
    Progress prog;
    if (ctx->rank == 0) {
        char path[ARG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/metrics.csv", cfg->out);
        metrics_open(&log, path, st.step > 0, st.step, err);
    }
    if (par_agree(ctx, err)) {
        if (use_views) train_views_free(&tv);
        free(perm);
        return err->code;
    }
    SignalGuard sig;
    signals_install(&sig);
    const int64_t nan_step = fault_nan_step();
    char last_ckpt[FILEIO_PATH_MAX] = "";
    /* the first save removes the newer checkpoints of a branch resumed from
     * an older one; damaged older ones do not count toward --keep */
    CkptRotation rot;
    ckpt_rotation_init(&rot, st.step, ctx->rank == 0 ? stderr : NULL);
    int signalled = 0, warned_collapse = 0;
    double prev_ratio = NAN, prev_psnr = NAN; /* the last epoch end's, for the collapse warning */
    int64_t total = (int64_t)cfg->epochs * nb;
    if (cfg->max_steps > 0 && cfg->max_steps < total) total = cfg->max_steps;
    const double t0 = timer_now();
    if (ctx->rank == 0)
    {
        int bar = cfg->progress == PROGRESS_BAR ||
                  (cfg->progress == PROGRESS_AUTO && isatty(STDOUT_FILENO) && !par_launched_by_mpirun());
        progress_init(&prog, stdout, bar, total, nb, cfg->epochs, cfg->log_every, t0);
        progress_set_start_step(&prog, st.step, t0);
    }

    /* Throughput counts training time only (not validation, grids or
     * checkpoints): train_s is the sum of step times; csv sums the steps
     * since the last step row of metrics.csv, ep those of this epoch (the
     * epoch row). */
    int64_t images_done = 0, steps_done = 0;
    double train_s = 0;
    Window csv = { 0 }, ep = { 0 };
    int stop = 0, rc = AE_OK;
    for (; st.epoch < cfg->epochs && !stop; st.epoch++, st.batch = 0) {
        if (cfg->shuffle_block > 0)
            sampler_block_permutation(perm, n, st.seed, st.epoch, cfg->shuffle_block, cfg->shuffle_window);
        else
            sampler_epoch_permutation(perm, n, st.seed, st.epoch);
        for (; st.batch < nb; st.batch++) {
            double ta = timer_now();
            int64_t first = st.batch * B, len = n - first < B ? n - first : B, off, cnt;
            sampler_rank_slice(len, ctx->rank, ctx->size, &off, &cnt);
            /* Mapped data (dataset_prefetch): this batch's pages all at once
             * at an epoch's start or resume, then the next batch's pages are
             * read while this step computes. */
            if (st.batch == 0 || steps_done == 0) dataset_prefetch(train, perm + first + off, 0, cnt);
            if (st.batch + 1 < nb) {
                int64_t f2 = (st.batch + 1) * B, l2 = n - f2 < B ? n - f2 : B, o2, c2;
                sampler_rank_slice(l2, ctx->rank, ctx->size, &o2, &c2);
                dataset_prefetch(train, perm + f2 + o2, 0, c2);
            }
            dataset_get_batch_f32(use_views ? tv.clean : m->input, train, perm + first + off, cnt);
            /* a damaged store block (dataset_read_error) stops every rank
             * before the optimizer step: agreed through the allreduce below */
            const int data_bad = dataset_read_error(train, err) != AE_OK;
            double tb = timer_now();
            model_zero_grad(m);
            grad_sync_begin(&sync);
            double sse;
            if (use_views)
                sse = train_views_step(&tv, m, tv.clean, st.seed, st.epoch, first, off, cnt, len,
                                       sync.blocking ? NULL : &hook);
            else
                sse = cnt ? model_forward_backward_hooked(m, m->input, (int)cnt, 1.0 / ((double)len * (double)chw),
                                                          sync.blocking ? NULL : &hook)
                          : 0;
            /* The bucket holding grads[0] starts in grad_sync_finish. */
            if (nan_step == st.step + 1 && ctx->rank == ctx->size - 1) m->grads[0] = NAN;
            double tc = timer_now();
            /* Starts the buckets not yet started, waits for all: nothing
             * is pending after this, whatever path the step takes next. */
            grad_sync_finish(&sync);
            /* The loss sum and the stop requests (signals.h) share one small
             * allreduce, so every rank sees a signal sent to any rank at the
             * same step. */
            const int sig_here = signals_pending();
            double red[4] = { sse, sig_here ? 1.0 : 0.0, (double)sig_here, data_bad ? 1.0 : 0.0 };
            par_allreduce_sum_f64(ctx, red, 4);
            if (red[3] > 0) { /* every rank: the lowest failing rank's message */
                rc = par_agree(ctx, err);
                stop = 1;
                break;
            }
            const int stop_asked = red[1] > 0;
            double td = timer_now();
            /* reconstruction MSE over all views, plus the weighted NT-Xent
             * term (the same value on every rank) */
            double loss = red[0] / (views_per_image * (double)len * (double)chw) + cfg->contrastive * tv.contrastive_loss;
            /* The loss and the summed gradient are the same bits on every
             * rank, so every rank takes the same decision here. */
            int finite_grad = all_finite(m->grads, m->n_params);
            if (!isfinite(loss) || !finite_grad) {
                rc = err_set(err, AE_ENUMERIC,
                             "%s is not finite at step %lld (epoch %lld, loss %g): training diverged; nothing was "
                             "saved after step %lld, the last checkpoint %s is kept (try a smaller --lr)",
                             isfinite(loss) ? "the gradient" : "the loss", (long long)st.step + 1,
                             (long long)st.epoch + 1, loss, (long long)st.step, kept_ckpt(last_ckpt, cfg->out));
                stop = 1;
                break;
            }
            optimizer_step(opt, m->params, m->grads);
            if (use_views) train_views_head_step(&tv);
            if (!all_finite(m->params, m->n_params) || (tv.head.n && !all_finite(tv.head.params, tv.head.n))) {
                rc = err_set(err, AE_ENUMERIC,
                             "the weights are not finite after step %lld (epoch %lld): training diverged; nothing "
                             "was saved after step %lld, the last checkpoint %s is kept (try a smaller --lr)",
                             (long long)st.step + 1, (long long)st.epoch + 1, (long long)st.step,
                             kept_ckpt(last_ckpt, cfg->out));
                stop = 1;
                break;
            }
            double te = timer_now();
            phase[PH_DATA] += tb - ta;
            phase[PH_COMPUTE] += tc - tb;
            phase[PH_ALLREDUCE] += td - tc;
            phase[PH_OPTIMIZER] += te - td;
            comm.in_backward_s += sync.comm_in_backward_s;
            comm.early_floats += (double)sync.early_floats;
            window_add(&csv, loss, len, te - ta, td - tc, td - tc + sync.comm_in_backward_s, (double)sync.early_floats);
            window_add(&ep, loss, len, te - ta, td - tc, td - tc + sync.comm_in_backward_s, (double)sync.early_floats);
            train_s += te - ta;
            st.step++;
            steps_done++;
            images_done += len;
            res->last_train_loss = loss;
            if (ctx->rank == 0) {
                double now = timer_now();
                progress_update(&prog, st.step, (int)st.epoch + 1, loss, images_done / train_s, now);
                if (csv.steps >= cfg->csv_every) {
                    rc = window_row(&log, &csv, st.step, st.epoch + (double)(st.batch + 1) / nb, NAN, NAN, now - t0,
                                    ctx, m->n_params, err);
                    csv = (Window){ 0 };
                }
            }
            int last = cfg->max_steps > 0 && st.step >= cfg->max_steps;
            if (stop_asked) {
                /* Pre-emption: log what was trained, checkpoint, leave
                 * without validation (mpirun may SIGKILL soon). */
                /* red[2] sums the signal numbers: one kind of signal iff it divides evenly. */
                const int sig = (int)(red[2] / red[1]);
                par_err0(ctx, "stop requested (%s) on %d of %d rank(s): stopping after step %lld\n",
                         red[2] == sig * red[1] && sig > 0 ? signals_name(sig) : "several signals", (int)red[1],
                         ctx->size, (long long)st.step);
                if (ctx->rank == 0 && csv.steps > 0 && rc == AE_OK) {
                    rc = window_row(&log, &csv, st.step, st.epoch + (double)(st.batch + 1) / nb, NAN, NAN,
                                    timer_now() - t0, ctx, m->n_params, err);
                    csv = (Window){ 0 };
                }
                CkptState next = st;
                if (++next.batch >= nb) {
                    next.epoch++;
                    next.batch = 0;
                }
                rc = save_checkpoint(ctx, cfg, m, opt, &next, &rot, last_ckpt, err);
                signalled = 1;
                stop = 1;
                st.batch++;
                break;
            }
            if (cfg->ckpt_every > 0 && st.step % cfg->ckpt_every == 0 && !last && st.batch + 1 < nb) {
                CkptState next = st;
                next.batch++;
                rc = save_checkpoint(ctx, cfg, m, opt, &next, &rot, last_ckpt, err);
            } else {
                rc = par_agree(ctx, err); /* a failed CSV write on rank 0 stops every rank */
            }
            if (rc || last) {
                stop = 1;
                st.batch++;
                break;
            }
        }
        if (rc || signalled) break;
        /* End of an epoch (or of max-steps): validate, grid, checkpoint. */
        if (ctx->rank == 0) progress_finish(&prog);
        double var_ratio = NAN;
        res->val_loss = train_evaluate(ctx, m, val, cfg->val_limit, &var_ratio);
        rc = dataset_read_error(val, err); /* a damaged store block: agreed below, nothing written */
        res->val_psnr_db = metrics_psnr_db(res->val_loss);
        double now = timer_now();
        /* The log's figures are the epoch row's of metrics.csv: the mean
         * train loss of the epoch's steps and its images per training second
         * (this run's steps of the epoch, after a resume). */
        char part[96] = "";
        if (st.batch < nb)
            snprintf(part, sizeof part, " (partial: stopped by --max-steps after %lld of %lld batches)",
                     (long long)st.batch, (long long)nb);
        par_log0(ctx, "epoch %lld/%d%s: step %lld, train loss %.5f (mean of %lld steps), val loss %.5f, "
                 "val PSNR %.2f dB, %.0f img/s\n", (long long)st.epoch + 1, cfg->epochs, part, (long long)st.step,
                 ep.steps ? ep.loss / ep.steps : NAN, (long long)ep.steps, res->val_loss, res->val_psnr_db,
                 ep.s > 0 ? ep.images / ep.s : 0);
        if (rc == AE_OK && !warned_collapse && var_ratio < TRAIN_COLLAPSE_VAR_RATIO &&
            prev_ratio < TRAIN_COLLAPSE_VAR_RATIO && var_ratio <= prev_ratio &&
            fabs(res->val_psnr_db - prev_psnr) < TRAIN_COLLAPSE_PSNR_DB) {
            warned_collapse = 1;
            par_log0(ctx, "warning: the network has collapsed: its reconstructions hardly depend on the input "
                     "(their variance across the validation images is %.3g%% of the images' own, not rising, and "
                     "the validation PSNR is stuck at %.2f dB), which happens when its ReLUs no longer fire; its "
                     "codes are of little use for search: train again with a lower --lr (on MNIST the default "
                     "1e-3 collapses and `--arch \"c32 p c64 p c16 | c32 u c32 u c1\" --lr 1e-4` trains)\n",
                     100.0 * var_ratio, res->val_psnr_db);
        }
        prev_ratio = var_ratio;
        prev_psnr = res->val_psnr_db;
        if (ctx->rank == 0 && rc == AE_OK) {
            /* The steps since the last row first get their own row, so that
             * step rows always cover --csv-every steps or fewer. */
            if (csv.steps > 0)
                rc = window_row(&log, &csv, st.step, st.epoch + (double)st.batch / nb, NAN, NAN, now - t0,
                                ctx, m->n_params, err);
            if (!rc && ep.steps > 0)
                rc = window_row(&log, &ep, st.step, st.epoch + (double)st.batch / nb, res->val_loss,
                                res->val_psnr_db, now - t0, ctx, m->n_params, err);
            if (!rc) rc = write_grid(cfg, m, val, st.epoch, err);
        }
        csv = (Window){ 0 };
        ep = (Window){ 0 };
        if ((rc = par_agree(ctx, err))) break;
        CkptState next = st;
        if (st.batch >= nb) {
            next.epoch++;
            next.batch = 0;
        }
        if ((rc = save_checkpoint(ctx, cfg, m, opt, &next, &rot, last_ckpt, err))) break;
        if (stop) break;
    }
    if (st.batch >= nb) {
        st.epoch++;
        st.batch = 0;
    }
    if (rc == AE_OK && ctx->rank == 0) progress_finish(&prog);
    signals_restore(&sig);
    if (signalled && rc == AE_OK) {
        res->val_loss = res->val_psnr_db = NAN;
        par_log0(ctx, "stopped by a signal after step %lld: checkpoint %s written; continue with --resume %s\n",
                 (long long)st.step, last_ckpt, cfg->out);
        signals_exit_watchdog(TRAIN_STOP_EXIT_GRACE_S);
    }
    res->stopped = signalled;
    res->state = st;
    res->state.extra = NULL; /* tv's members: gone with this call */
    res->state.n_extra = 0;
    res->seconds = timer_now() - t0;
    res->steps_run = steps_done;
    res->images_per_s = train_s > 0 ? images_done / train_s : 0;
    if (steps_done > 0) {
        res->allreduce_ms = 1e3 * phase[PH_ALLREDUCE] / steps_done;
        res->comm_ms = 1e3 * (phase[PH_ALLREDUCE] + comm.in_backward_s) / steps_done;
        res->overlap = overlap_of(comm.early_floats, steps_done, m->n_params);
    }
    if (rc == AE_OK) report_phases(ctx, phase, steps_done, &comm, &sync, cfg->bucket_kib);
    if (ctx->rank == 0) metrics_close(&log);
    ckpt_rotation_free(&rot);
    if (use_views) train_views_free(&tv);
    free(perm);
    return rc;
}
