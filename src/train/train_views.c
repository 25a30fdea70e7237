/*
 * train_views.c - views, corruptions and the global-batch NT-Xent term of a
 * training step (see include/train_views.h).  MPI only through par.h (one
 * all-gather per step with --contrastive).  Threading: views are built in
 * an OpenMP loop over images (each image has its own Rng, so the result
 * does not depend on the thread count); the model's kernels as usual.
 */
#include "train/train_views.h"

#include <stdlib.h>
#include <string.h>

#include "data/augment.h"
#include "base/check.h"
#include "nn/ntxent.h"
#include "data/sampler.h"

int train_views_active(const TrainConfig *cfg)
{
    return cfg->aug.noise != NOISE_NONE || augment_has_views(&cfg->aug) || cfg->contrastive > 0;
}

static int views_of(const TrainConfig *cfg) { return cfg->contrastive > 0 ? 2 : 1; }

int train_views_per_rank(const TrainConfig *cfg, int64_t slice) { return (int)(views_of(cfg) * slice); }

void train_views_init(TrainViews *v, const ParCtx *ctx, const TrainConfig *cfg, const Model *m, int64_t max_slice)
{
    memset(v, 0, sizeof *v);
    v->ctx = ctx;
    v->cfg = cfg;
    v->views = views_of(cfg);
    v->chw = (size_t)m->spec.C * m->spec.H * m->spec.W;
    v->D = model_embedding_dim(m);
    v->clean = xmalloc((size_t)max_slice * v->chw * sizeof(float));
    v->target = xmalloc((size_t)v->views * max_slice * v->chw * sizeof(float));
    if (cfg->contrastive > 0) {
        size_t global = (size_t)cfg->batch_size;
        v->zall = xmalloc(2 * global * (size_t)v->D * sizeof(float));
        v->dzall = xmalloc(2 * global * (size_t)v->D * sizeof(float));
        v->zsend = xmalloc(2 * (size_t)max_slice * (size_t)v->D * sizeof(float));
        v->counts = xmalloc((size_t)ctx->size * sizeof(int));
    }
}

void train_views_free(TrainViews *v)
{
    free(v->clean);
    free(v->target);
    free(v->zall);
    free(v->dzall);
    free(v->zsend);
    free(v->counts);
    memset(v, 0, sizeof *v);
}

/* The code hook: gathers every rank's codes into the global order, computes
 * NT-Xent over them and hands back W * dL/dz of this rank's rows.  z[N][D]
 * with N = 2 cnt (rows [0, cnt) view 0, [cnt, 2 cnt) view 1). */
static void contrastive_grad(void *user, float *dz, const float *z, int N, int D)
{
    TrainViews *v = user;
    const ParCtx *ctx = v->ctx;
    const int64_t len = v->len, cnt = v->cnt;
    (void)N;
    int64_t total = 0;
    for (int r = 0; r < ctx->size; r++) {
        int64_t o, c;
        sampler_rank_slice(len, r, ctx->size, &o, &c);
        v->counts[r] = (int)(2 * c * D);
        total += 2 * c;
    }
    CHECK(total == 2 * len);
    /* gathered: rank r's block = its view-0 rows then its view-1 rows */
    if (cnt) memcpy(v->zsend, z, (size_t)(2 * cnt) * D * sizeof(float));
    float *gathered = v->dzall; /* reused as the receive buffer, then overwritten */
    par_allgatherv_f32(ctx, v->zsend, gathered, v->counts);
    int64_t at = 0;
    for (int r = 0; r < ctx->size; r++) {
        int64_t o, c;
        sampler_rank_slice(len, r, ctx->size, &o, &c);
        for (int64_t j = 0; j < c; j++) {
            memcpy(v->zall + (size_t)(o + j) * D, gathered + (size_t)(at + j) * D, (size_t)D * sizeof(float));
            memcpy(v->zall + (size_t)(len + o + j) * D, gathered + (size_t)(at + c + j) * D,
                   (size_t)D * sizeof(float));
        }
        at += 2 * c;
    }
    v->contrastive_loss = ntxent_loss(v->dzall, v->zall, (int)len, D, v->cfg->tau, v->cfg->contrastive);
    for (int64_t j = 0; j < cnt; j++) {
        memcpy(dz + (size_t)j * D, v->dzall + (size_t)(v->off + j) * D, (size_t)D * sizeof(float));
        memcpy(dz + (size_t)(cnt + j) * D, v->dzall + (size_t)(len + v->off + j) * D, (size_t)D * sizeof(float));
    }
}

double train_views_step(TrainViews *v, Model *m, const float *images, uint64_t seed, int64_t epoch, int64_t first,
                        int64_t off, int64_t cnt, int64_t len, const ModelGradHook *hook)
{
    const TrainConfig *cfg = v->cfg;
    const size_t chw = v->chw;
    const int V = v->views, views = augment_has_views(&cfg->aug);
    v->len = len;
    v->off = off;
    v->cnt = cnt;
    v->contrastive_loss = 0;
    const int H = m->spec.H, W = m->spec.W, C = m->spec.C;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(m->nthreads) if (V * cnt > 1)
#endif
    for (int64_t k = 0; k < V * cnt; k++) {
        const int64_t j = k % cnt, view = k / cnt;
        float *t = v->target + (size_t)k * chw, *x = m->input + (size_t)k * chw;
        Rng r;
        augment_rng(&r, seed, epoch, first + off + j, (int)view);
        if (views)
            augment_view(t, images + (size_t)j * chw, C, H, W, &cfg->aug, &r);
        else
            memcpy(t, images + (size_t)j * chw, chw * sizeof(float));
        memcpy(x, t, chw * sizeof(float));
        augment_noise(x, C, H, W, &cfg->aug, &r);
    }
    const double inv_count = 1.0 / ((double)V * (double)len * (double)chw);
    if (cnt == 0) {
        if (cfg->contrastive > 0) contrastive_grad(v, NULL, NULL, 0, v->D); /* the collective still runs */
        return 0;
    }
    const ModelCodeHook code = { contrastive_grad, v };
    return model_forward_backward_ex(m, m->input, v->target, (int)(V * cnt), inv_count, hook,
                                     cfg->contrastive > 0 ? &code : NULL);
}
