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
#include "nn/global_avgpool.h"
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
    int bc, bh, bw;
    model_bottleneck_shape(m, &bc, &bh, &bw);
    v->pool_c = bc;
    v->pool_hw = bh * bw;
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

int train_views_head_setup(TrainViews *v, const Optimizer *opt, const Checkpoint *ck, CkptState *st, Err *err)
{
    const TrainConfig *cfg = v->cfg;
    if (cfg->contrastive_head <= 0) return AE_OK;
    ProjHead *h = &v->head;
    proj_head_init(h, v->pool_c, cfg->contrastive_head, 2 * cfg->batch_size, st->seed); /* the run's seed */
    optimizer_init(&v->head_opt, opt->kind, &opt->adam, opt->momentum, h->n);
    v->head_opt.t = opt->t;
    v->dp = xmalloc(2 * (size_t)cfg->batch_size * (size_t)h->hid * sizeof(float));
    ProjHeadTensor ten[4];
    proj_head_tensors(h, ten);
    const int n_state = v->head_opt.v ? 2 : 1;
    v->n_members = 0;
    for (int s = 0; s <= n_state; s++)
        for (int t = 0; t < 4; t++) {
            NpyArray *a = &v->members[v->n_members++];
            memset(a, 0, sizeof *a);
            snprintf(a->name, sizeof a->name, "%shead.%s", s == 0 ? "" : s == 1 ? "opt.m." : "opt.v.", ten[t].name);
            a->dtype = NPY_F32;
            a->ndim = ten[t].ndim;
            a->shape[0] = ten[t].shape[0];
            a->shape[1] = ten[t].shape[1];
            a->data = (s == 0 ? h->params : s == 1 ? v->head_opt.m : v->head_opt.v) + ten[t].offset;
        }
    int64_t t = opt->t; /* the head's step count: the model's, or 0 for a new head */
    if (v->ctx->rank == 0 && ck && ck->n_arrays > 0) {
        int found = 0;
        for (int k = 0; k < v->n_members; k++) {
            const NpyArray *a = &v->members[k], *c = npz_find(ck->arrays, ck->n_arrays, a->name);
            if (!c) continue;
            found++;
            if (err->code) continue; /* the first mismatch is the message */
            if (c->dtype != NPY_F32 || npy_numel(c) != npy_numel(a))
                err_set(err, AE_EFORMAT, "%.300s: its projection head member '%s' has %lld values, --contrastive-head "
                        "%d on this bottleneck needs %lld (resume with the run's own --contrastive-head)", ck->path,
                        a->name, (long long)npy_numel(c), h->hid, (long long)npy_numel(a));
            else
                memcpy(a->data, c->data, (size_t)npy_numel(a) * sizeof(float));
        }
        if (!err->code && found == 0 && ck->version >= CKPT_VERSION_VIEWS && ck->state.contrastive_head > 0) {
            err_set(err, AE_EFORMAT, "%.300s: records --contrastive-head %lld but holds no projection head (damaged "
                    "or edited checkpoint)", ck->path, (long long)ck->state.contrastive_head);
        } else if (!err->code && found == 0) {
            t = 0;
            par_log0(v->ctx, "note: %s has no projection head (trained without --contrastive-head): a new head starts "
                     "at step %lld\n", ck->path, (long long)st->step);
        } else if (!err->code && found != v->n_members)
            err_set(err, AE_EFORMAT, "%.300s: its projection head is incomplete (%d of %d members; damaged or "
                    "edited checkpoint)", ck->path, found, v->n_members);
    }
    int rc = par_agree(v->ctx, err);
    if (rc) return rc;
    for (int k = 0; k < v->n_members; k++)
        par_bcast(v->ctx, (void *)v->members[k].data, (size_t)npy_numel(&v->members[k]) * sizeof(float), 0);
    par_bcast(v->ctx, &t, sizeof t, 0);
    v->head_opt.t = t;
    st->extra = v->members;
    st->n_extra = v->n_members;
    return AE_OK;
}

void train_views_head_step(TrainViews *v)
{
    if (!v->head.n) return;
    optimizer_step(&v->head_opt, v->head.params, v->head.grads);
    /* rank 0's weights for all: NT-Xent's sgemm rounds alike only for the
     * same OpenBLAS thread count, which nodes may not share */
    par_bcast(v->ctx, v->head.params, v->head.n * sizeof(float), 0);
}

void train_views_free(TrainViews *v)
{
    free(v->clean);
    free(v->target);
    free(v->zall);
    free(v->dzall);
    free(v->zsend);
    free(v->counts);
    free(v->dp);
    if (v->head.n) {
        proj_head_free(&v->head);
        optimizer_free(&v->head_opt);
    }
    memset(v, 0, sizeof *v);
}

/* The code hook: gathers every rank's codes (or their channel means) into
 * the global order, computes NT-Xent over them and hands back W * dL/dz of
 * this rank's rows.  z[N][Dz] with N = 2 cnt (rows [0, cnt) view 0, [cnt,
 * 2 cnt) view 1). */
static void contrastive_grad(void *user, float *dz, const float *z, int N, int Dz)
{
    TrainViews *v = user;
    const ParCtx *ctx = v->ctx;
    const int64_t len = v->len, cnt = v->cnt;
    const int pooled = v->cfg->contrastive_pool == CONTRASTIVE_POOL_AVG;
    const int D = pooled ? v->pool_c : Dz; /* floats per row that NT-Xent sees */
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
    if (cnt && pooled) global_avgpool_forward(v->zsend, z, (int)(2 * cnt), v->pool_c, v->pool_hw);
    else if (cnt) memcpy(v->zsend, z, (size_t)(2 * cnt) * D * sizeof(float));
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
    if (v->head.n) { /* NT-Xent on g(rows); back through the head into dzall */
        const float *g = proj_head_forward(&v->head, v->zall, (int)(2 * len));
        v->contrastive_loss = ntxent_loss(v->dp, g, (int)len, v->head.hid, v->cfg->tau, v->cfg->contrastive);
        proj_head_backward(&v->head, v->dzall, v->dp, v->zall, (int)(2 * len));
    } else {
        v->contrastive_loss = ntxent_loss(v->dzall, v->zall, (int)len, D, v->cfg->tau, v->cfg->contrastive);
    }
    for (int64_t j = 0; j < cnt; j++) {
        const float *g0 = v->dzall + (size_t)(v->off + j) * D, *g1 = v->dzall + (size_t)(len + v->off + j) * D;
        float *d0 = dz + (size_t)j * Dz, *d1 = dz + (size_t)(cnt + j) * Dz;
        if (pooled) {
            global_avgpool_backward(d0, g0, 1, v->pool_c, v->pool_hw);
            global_avgpool_backward(d1, g1, 1, v->pool_c, v->pool_hw);
        } else {
            memcpy(d0, g0, (size_t)D * sizeof(float));
            memcpy(d1, g1, (size_t)D * sizeof(float));
        }
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
