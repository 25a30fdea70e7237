/*
 * ckpt.c - checkpoint save/load as .npz (see include/ckpt.h for the layout).
 * Uses npy.h for the container and fileio.h (through npz_write) for atomic
 * replacement.  No MPI: the trainer decides which rank writes and broadcasts
 * what rank 0 read.
 */
#include "ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Length of a member name such as "opt.m.conv12.weight". */
#define CKPT_NAME_MAX 64

int ckpt_save(const char *path, const Model *m, const Optimizer *opt, const CkptState *st, Err *err)
{
    int nt = model_num_tensors(m);
    int n_state = opt ? (opt->v ? 2 : 1) : 0;
    int cap = nt * (1 + n_state) + 4, n = 0;
    NpyArray *a = xcalloc((size_t)cap, sizeof *a);
    for (int s = 0; s <= n_state; s++) {
        const float *base = s == 0 ? m->params : s == 1 ? opt->m : opt->v;
        for (int i = 0; i < nt; i++) {
            ParamTensor t = model_tensor(m, i);
            NpyArray *x = &a[n++];
            snprintf(x->name, sizeof x->name, "%s%s", s == 0 ? "" : s == 1 ? "opt.m." : "opt.v.", t.name);
            x->dtype = NPY_F32;
            x->ndim = t.ndim;
            memcpy(x->shape, t.shape, sizeof t.shape);
            x->data = (void *)(base + t.offset);
        }
    }
    int64_t in_shape[3] = { m->spec.C, m->spec.H, m->spec.W };
    int64_t state[CKPT_STATE_LEN] = { CKPT_VERSION, st->step, st->epoch, st->batch, (int64_t)st->seed,
                                      st->batch_size, opt ? (int64_t)opt->kind : -1 };
    double hp[5] = { 0 };
    if (opt) {
        hp[0] = opt->adam.lr;
        hp[1] = opt->adam.beta1;
        hp[2] = opt->adam.beta2;
        hp[3] = opt->adam.eps;
        hp[4] = opt->momentum;
    }
    NpyArray *x = &a[n++];
    snprintf(x->name, sizeof x->name, "meta.arch");
    x->dtype = NPY_U8;
    x->ndim = 1;
    x->shape[0] = (int64_t)strlen(m->spec.text);
    x->data = (void *)m->spec.text;
    x = &a[n++];
    snprintf(x->name, sizeof x->name, "meta.input_shape");
    x->dtype = NPY_I64;
    x->ndim = 1;
    x->shape[0] = 3;
    x->data = in_shape;
    x = &a[n++];
    snprintf(x->name, sizeof x->name, "meta.state");
    x->dtype = NPY_I64;
    x->ndim = 1;
    x->shape[0] = CKPT_STATE_LEN;
    x->data = state;
    x = &a[n++];
    snprintf(x->name, sizeof x->name, "meta.hparams");
    x->dtype = NPY_F64;
    x->ndim = 1;
    x->shape[0] = 5;
    x->data = hp;
    int rc = npz_write(path, a, n, err);
    free(a);
    return rc;
}

/* Finds member `name` with dtype t and `numel` elements (numel < 0: any). */
static const NpyArray *member(const Checkpoint *ck, const char *path, const char *name, NpyDtype t,
                              int64_t numel, Err *err)
{
    const NpyArray *a = npz_find(ck->arrays, ck->n_arrays, name);
    if (!a) {
        err_set(err, AE_EFORMAT, "%s: checkpoint member '%s' is missing (not an aesim checkpoint, or damaged)",
                path, name);
        return NULL;
    }
    if (a->dtype != t || (numel >= 0 && npy_numel(a) != numel)) {
        err_set(err, AE_EFORMAT, "%s: checkpoint member '%s' has the wrong type or size", path, name);
        return NULL;
    }
    return a;
}

int ckpt_read(Checkpoint *ck, const char *path, Err *err)
{
    memset(ck, 0, sizeof *ck);
    snprintf(ck->path, sizeof ck->path, "%s", path);
    int rc = npz_read(path, &ck->arrays, &ck->n_arrays, err);
    if (rc) return rc;
    const NpyArray *arch = member(ck, path, "meta.arch", NPY_U8, -1, err);
    const NpyArray *shape = arch ? member(ck, path, "meta.input_shape", NPY_I64, 3, err) : NULL;
    const NpyArray *state = shape ? member(ck, path, "meta.state", NPY_I64, CKPT_STATE_LEN, err) : NULL;
    const NpyArray *hp = state ? member(ck, path, "meta.hparams", NPY_F64, 5, err) : NULL;
    if (!hp) {
        ckpt_free(ck);
        return AE_EFORMAT;
    }
    int64_t len = npy_numel(arch);
    if (len <= 0 || len >= MODEL_SPEC_MAX) {
        ckpt_free(ck);
        return err_set(err, AE_EFORMAT, "%s: meta.arch has a bad length %lld", path, (long long)len);
    }
    memcpy(ck->arch, arch->data, (size_t)len);
    ck->arch[len] = '\0';
    const int64_t *s = state->data, *sh = shape->data;
    if (s[0] != CKPT_VERSION) {
        long long v = (long long)s[0];
        ckpt_free(ck);
        return err_set(err, AE_EFORMAT, "%s: checkpoint format version %lld, this aesim reads version %d", path, v,
                       CKPT_VERSION);
    }
    for (int i = 0; i < 3; i++)
        if (sh[i] < 1 || sh[i] > 65536) {
            ckpt_free(ck);
            return err_set(err, AE_EFORMAT, "%s: meta.input_shape is not a valid C,H,W", path);
        }
    ck->C = (int)sh[0];
    ck->H = (int)sh[1];
    ck->W = (int)sh[2];
    ck->state.step = s[1];
    ck->state.epoch = s[2];
    ck->state.batch = s[3];
    ck->state.seed = (uint64_t)s[4];
    ck->state.batch_size = s[5];
    ck->opt_kind = s[6] == OPT_SGD ? OPT_SGD : OPT_ADAM;
    memcpy(ck->hparams, hp->data, sizeof ck->hparams);
    return AE_OK;
}

int ckpt_restore(const Checkpoint *ck, Model *m, Optimizer *opt, Err *err)
{
    int nt = model_num_tensors(m);
    int n_state = opt ? (opt->v ? 2 : 1) : 0;
    for (int s = 0; s <= n_state; s++) {
        float *base = s == 0 ? m->params : s == 1 ? opt->m : opt->v;
        for (int i = 0; i < nt; i++) {
            ParamTensor t = model_tensor(m, i);
            char name[CKPT_NAME_MAX];
            snprintf(name, sizeof name, "%s%s", s == 0 ? "" : s == 1 ? "opt.m." : "opt.v.", t.name);
            const NpyArray *a = member(ck, ck->path, name, NPY_F32, (int64_t)t.numel, err);
            if (!a) return AE_EFORMAT;
            memcpy(base + t.offset, a->data, t.numel * sizeof(float));
        }
    }
    return AE_OK;
}

void ckpt_free(Checkpoint *ck)
{
    if (ck->arrays) npz_free(ck->arrays, ck->n_arrays);
    ck->arrays = NULL;
    ck->n_arrays = 0;
}
