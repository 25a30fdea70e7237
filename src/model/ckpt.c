/*
 * ckpt.c - checkpoint save/load as .npz, verification, and the rotation of
 * step checkpoints in an output folder (see include/model/ckpt.h for the layout).
 * Uses npy.h for the container and fileio.h (through npz_write) for atomic
 * replacement; zlib's crc32 for meta.crc32.  No MPI: the trainer decides
 * which rank writes and broadcasts what rank 0 read.  Single-threaded.
 */
#include "model/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "base/check.h"
#include "base/fileio.h"

/* Length of a member name such as "opt.m.conv12.weight". */
#define CKPT_NAME_MAX 64
/* Members after the tensors: meta.arch, meta.input_shape, meta.state,
 * meta.hparams, meta.schedule, meta.data, meta.shuffle, meta.data_arg,
 * meta.views, meta.crc32. */
#define CKPT_META_MEMBERS 10
/* meta.data of a state that records no source (a member needs >= 1 byte). */
#define CKPT_DATA_UNKNOWN "unknown"
/* Oldest format version with meta.schedule and meta.data. */
#define CKPT_VERSION_SCHEDULE 3
/* Oldest format version with meta.shuffle. */
#define CKPT_VERSION_SHUFFLE 4
/* Oldest format version with meta.data_arg. */
#define CKPT_VERSION_DATA_ARG 5
/* Entries of meta.hparams: lr, beta1, beta2, eps, momentum. */
#define CKPT_HPARAMS_LEN 5
/* Largest chunk passed to one zlib crc32 call (its length is a uInt). */
#define CKPT_CRC_CHUNK ((size_t)1 << 30)
/* Marks a temporary file of fileio.h (fileio_temp_name_parse): "<name>.tmp.<pid>". */
#define CKPT_TMP_MARK ".tmp."
/* Largest plausible image side in meta.input_shape (sanity bound). */
#define CKPT_MAX_SIDE 65536

/* The words of the refusal of a checkpoint from a newer aesim: resume does
 * not fall back past such a file (it is not damaged, and a run on an older
 * step would delete it). */
#define NEWER_FORMAT_TEXT "this aesim reads versions"

static uint32_t crc32_bytes(const void *data, size_t len)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    const unsigned char *p = data;
    while (len) {
        uInt c = len > CKPT_CRC_CHUNK ? (uInt)CKPT_CRC_CHUNK : (uInt)len;
        crc = crc32(crc, p, c);
        p += c;
        len -= c;
    }
    return (uint32_t)crc;
}

static size_t array_bytes(const NpyArray *a) { return (size_t)npy_numel(a) * npy_dtype_size(a->dtype); }

/* One 1-D metadata member named name: len entries of type t at data. */
static void meta_1d(NpyArray *x, const char *name, NpyDtype t, int64_t len, void *data)
{
    snprintf(x->name, sizeof x->name, "%s", name);
    x->dtype = t;
    x->ndim = 1;
    x->shape[0] = len;
    x->data = data;
}

int ckpt_save(const char *path, const Model *m, const Optimizer *opt, const CkptState *st, Err *err)
{
    int nt = model_num_tensors(m);
    int n_state = opt ? (opt->v ? 2 : 1) : 0;
    int cap = nt * (1 + n_state) + st->n_extra + CKPT_META_MEMBERS, n = 0;
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
    for (int i = 0; i < st->n_extra; i++) a[n++] = st->extra[i];
    int64_t in_shape[3] = { m->spec.C, m->spec.H, m->spec.W };
    int64_t state[CKPT_STATE_LEN] = { CKPT_VERSION, st->step, st->epoch, st->batch, (int64_t)st->seed,
                                      st->batch_size, opt ? (int64_t)opt->kind : CKPT_OPT_NONE };
    double hp[CKPT_HPARAMS_LEN] = { 0 };
    if (opt) {
        hp[0] = opt->adam.lr;
        hp[1] = opt->adam.beta1;
        hp[2] = opt->adam.beta2;
        hp[3] = opt->adam.eps;
        hp[4] = opt->momentum;
    }
    meta_1d(&a[n++], "meta.arch", NPY_U8, (int64_t)strlen(m->spec.text), (void *)m->spec.text);
    meta_1d(&a[n++], "meta.input_shape", NPY_I64, 3, in_shape);
    meta_1d(&a[n++], "meta.state", NPY_I64, CKPT_STATE_LEN, state);
    meta_1d(&a[n++], "meta.hparams", NPY_F64, CKPT_HPARAMS_LEN, hp);
    int64_t sched[CKPT_SCHEDULE_LEN] = { st->n_train, st->data_crc, st->epochs, st->max_steps };
    meta_1d(&a[n++], "meta.schedule", NPY_I64, CKPT_SCHEDULE_LEN, sched);
    const char *data = st->data[0] ? st->data : CKPT_DATA_UNKNOWN;
    meta_1d(&a[n++], "meta.data", NPY_U8, (int64_t)strnlen(data, CKPT_DATA_BYTES - 1), (void *)data);
    int64_t shuf[2] = { st->shuffle_block, st->shuffle_window };
    meta_1d(&a[n++], "meta.shuffle", NPY_I64, 2, shuf);
    const char *data_arg = st->data_arg[0] ? st->data_arg : CKPT_DATA_UNKNOWN;
    meta_1d(&a[n++], "meta.data_arg", NPY_U8, (int64_t)strnlen(data_arg, CKPT_DATA_ARG_BYTES - 1), (void *)data_arg);
    double views[CKPT_VIEWS_LEN] = { st->contrastive, st->tau, (double)st->contrastive_pool,
                                     (double)st->contrastive_head, (double)st->aug.noise, st->aug.noise_level,
                                     st->aug.crop_min, (double)st->aug.flip, (double)st->aug.shift };
    meta_1d(&a[n++], "meta.views", NPY_F64, CKPT_VIEWS_LEN, views);
    /* meta.crc32 last: one CRC per member written before it. */
    uint32_t *crcs = xmalloc((size_t)n * sizeof *crcs);
    for (int i = 0; i < n; i++) crcs[i] = crc32_bytes(a[i].data, array_bytes(&a[i]));
    meta_1d(&a[n], "meta.crc32", NPY_U32, n, crcs);
    n++;
    int rc = npz_write(path, a, n, err);
    free(crcs);
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

/* Checks meta.crc32 (the last member) against every other member. */
static int verify_crcs(const Checkpoint *ck, const char *path, Err *err)
{
    const NpyArray *c = &ck->arrays[ck->n_arrays - 1];
    if (strcmp(c->name, "meta.crc32") != 0 || c->dtype != NPY_U32 || npy_numel(c) != ck->n_arrays - 1)
        return err_set(err, AE_EFORMAT,
                       "%s: meta.crc32 is missing, misplaced or has the wrong size (damaged or edited "
                       "checkpoint; resume from an older one)", path);
    const uint32_t *want = c->data;
    for (int i = 0; i < ck->n_arrays - 1; i++) {
        uint32_t got = crc32_bytes(ck->arrays[i].data, array_bytes(&ck->arrays[i]));
        if (got != want[i])
            return err_set(err, AE_EFORMAT,
                           "%s: member '%s' fails its CRC-32 check (stored %08x, computed %08x): the file is "
                           "damaged (resume from an older checkpoint)", path, ck->arrays[i].name,
                           (unsigned)want[i], (unsigned)got);
    }
    return AE_OK;
}

/* Refuses NaN/Inf in any float32 member: training never saves them. */
static int verify_finite(const Checkpoint *ck, const char *path, Err *err)
{
    for (int i = 0; i < ck->n_arrays; i++) {
        const NpyArray *a = &ck->arrays[i];
        if (a->dtype != NPY_F32) continue;
        const float *v = a->data;
        int64_t n = npy_numel(a);
        for (int64_t j = 0; j < n; j++)
            if (!isfinite(v[j]))
                return err_set(err, AE_EFORMAT,
                               "%s: member '%s' holds %g at index %lld (damaged checkpoint; resume from an "
                               "older one)", path, a->name, (double)v[j], (long long)j);
    }
    return AE_OK;
}

/* The end of every refusal of a value that aesim-train cannot have written. */
#define CKPT_EDITED_HINT "(hint: the checkpoint was edited or is from another program)"

/* One int64 meta field and the values aesim-train can write into it. */
typedef struct MetaInt {
    const char *field; /* "meta.state batch size" */
    int64_t v, lo, hi;
} MetaInt;

static int check_ints(const MetaInt *f, int n, const char *path, Err *err)
{
    for (int i = 0; i < n; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return err_set(err, AE_EFORMAT, "%s: %s %lld is out of range (%lld..%lld) " CKPT_EDITED_HINT, path,
                           f[i].field, (long long)f[i].v, (long long)f[i].lo, (long long)f[i].hi);
    return AE_OK;
}

/* meta.state s, meta.schedule sc (NULL before version 3) and meta.shuffle sh
 * (NULL before version 4), as stored (before anything is narrowed): each
 * value in the range of its aesim-train option, and the position possible.
 * What a training run guarantees: every epoch takes at least one step (the
 * training set is never empty), every step at least one image, and a saved
 * position is inside its epoch (batch * batch_size < n_train, the images of
 * the run that saved it).  Steps of earlier epochs are not bounded: a resume
 * from a version 1-2 checkpoint may have changed the data. */
static int check_state(const char *path, const int64_t *s, const int64_t *sc, const int64_t *sh, Err *err)
{
    const int64_t bs = s[5], n_train = sc ? sc[0] : 0;
    const MetaInt first[] = {
        { "meta.state step", s[1], 0, INT64_MAX },
        { "meta.state epoch", s[2], 0, CKPT_EPOCHS_MAX },
        { "meta.state seed", s[4], 0, INT64_MAX },
        { "meta.state batch size", bs, 1, CKPT_BATCH_SIZE_MAX },
        { "meta.schedule n_train", n_train, 0, INT64_MAX },
        { "meta.schedule data_crc", sc ? sc[1] : 0, 0, UINT32_MAX },
        { "meta.schedule epochs", sc ? sc[2] : 0, 0, CKPT_EPOCHS_MAX },
        { "meta.schedule max_steps", sc ? sc[3] : 0, 0, INT64_MAX },
        { "meta.shuffle block", sh ? sh[0] : 0, 0, CKPT_SHUFFLE_MAX },
        { "meta.shuffle window", sh ? sh[1] : 0, 0, CKPT_SHUFFLE_MAX },
    };
    int rc = check_ints(first, (int)(sizeof first / sizeof *first), path, err);
    if (rc) return rc;
    /* The images done of the epoch, batch * batch_size, are fewer than its
     * images (than INT64_MAX when n_train is not recorded). */
    const MetaInt pos = { "meta.state batch", s[3], 0, n_train > 0 ? (n_train - 1) / bs : (INT64_MAX - 1) / bs };
    if ((rc = check_ints(&pos, 1, path, err))) return rc;
    if (s[6] != CKPT_OPT_NONE && s[6] != OPT_ADAM && s[6] != OPT_SGD)
        return err_set(err, AE_EFORMAT, "%s: meta.state optimizer kind %lld is not %d (%s), %d (%s) or %d (none) "
                       CKPT_EDITED_HINT, path, (long long)s[6], OPT_ADAM, optimizer_name(OPT_ADAM), OPT_SGD,
                       optimizer_name(OPT_SGD), CKPT_OPT_NONE);
    if (sh && (sh[0] == 0) != (sh[1] == 0))
        return err_set(err, AE_EFORMAT, "%s: meta.shuffle = %lld, %lld is neither 0, 0 nor a block and window "
                       CKPT_EDITED_HINT, path, (long long)sh[0], (long long)sh[1]);
    const int64_t step = s[1], epoch = s[2], batch = s[3];
    if (step < epoch + (batch > 0))
        return err_set(err, AE_EFORMAT, "%s: meta.state step %lld is fewer than its position needs (epoch %lld, batch "
                       "%lld: every epoch and every batch started takes a step) " CKPT_EDITED_HINT, path,
                       (long long)step, (long long)epoch, (long long)batch);
    if (epoch == 0 && step > batch * bs)
        return err_set(err, AE_EFORMAT, "%s: meta.state step %lld is more than the %lld image(s) done in the first "
                       "epoch (batch %lld of %lld; every step takes at least one image) " CKPT_EDITED_HINT, path,
                       (long long)step, (long long)(batch * bs), (long long)batch, (long long)bs);
    return AE_OK;
}

/* meta.hparams of optimizer kind `kind`: in the ranges of the command line
 * (compared as the floats the run used), or all 0 without optimizer state. */
static int check_hparams(const char *path, const double *hp, int64_t kind, Err *err)
{
    static const char *const names[CKPT_HPARAMS_LEN] = { "lr", "beta1", "beta2", "eps", "momentum" };
    static const double lo[CKPT_HPARAMS_LEN] = { OPTIMIZER_LR_MIN, 0, 0, OPTIMIZER_EPS_MIN, 0 };
    static const double hi[CKPT_HPARAMS_LEN] = { OPTIMIZER_LR_MAX, OPTIMIZER_BETA1_MAX, OPTIMIZER_BETA2_MAX,
                                                 OPTIMIZER_EPS_MAX, OPTIMIZER_MOMENTUM_MAX };
    for (int i = 0; i < CKPT_HPARAMS_LEN; i++) {
        double l = kind == CKPT_OPT_NONE ? 0 : (float)lo[i], h = kind == CKPT_OPT_NONE ? 0 : (float)hi[i];
        if (!(hp[i] >= l && hp[i] <= h)) /* also NaN */
            return err_set(err, AE_EFORMAT, "%s: meta.hparams %s %.9g is out of range [%g, %g]%s " CKPT_EDITED_HINT,
                           path, names[i], hp[i], l, h, kind == CKPT_OPT_NONE ? " (no optimizer state)" : "");
    }
    return AE_OK;
}

/* meta.views v: each value in the range of its option (an integer where
 * the option takes one), a head only with NT-Xent on pooled codes, the
 * noise level that of its kind. */
static int check_views(const char *path, const double *v, Err *err)
{
    static const char *const names[CKPT_VIEWS_LEN] = { "contrastive", "tau", "contrastive-pool", "contrastive-head",
                                                       "noise kind", "noise level", "augment crop", "augment flip",
                                                       "augment shift" };
    static const double lo[CKPT_VIEWS_LEN] = { 0, CKPT_TAU_MIN, 0, 0, NOISE_NONE, 0, 0, 0, 0 };
    static const double hi[CKPT_VIEWS_LEN] = { CKPT_CONTRASTIVE_MAX, CKPT_TAU_MAX, 1, CKPT_HEAD_MAX, NOISE_MASK,
                                               AUGMENT_GAUSS_SIGMA_MAX, 1, 1, AUGMENT_MAX_SHIFT };
    static const int integer[CKPT_VIEWS_LEN] = { 0, 0, 1, 1, 1, 0, 0, 1, 1 };
    for (int i = 0; i < CKPT_VIEWS_LEN; i++)
        if (i == 1 && v[1] == 0 && v[0] == 0) /* tau 0: not recorded, allowed without NT-Xent (a writer */
            continue;                          /* that trains none, e.g. the reference tools, leaves it 0) */
        else if (!(v[i] >= lo[i] && v[i] <= hi[i]) || (integer[i] && v[i] != floor(v[i]))) /* also NaN */
            return err_set(err, AE_EFORMAT, "%s: meta.views %s %.9g is out of range (%s%g..%g) " CKPT_EDITED_HINT,
                           path, names[i], v[i], integer[i] ? "an integer in " : "", lo[i], hi[i]);
    if (v[3] > 0 && !(v[0] > 0 && v[2] == 1))
        return err_set(err, AE_EFORMAT, "%s: meta.views records a projection head of %g units without NT-Xent on "
                       "pooled codes (contrastive %g, pool %g) " CKPT_EDITED_HINT, path, v[3], v[0], v[2]);
    const int kind = (int)v[4];
    const double level = v[5];
    const int level_ok = kind == NOISE_NONE ? level == 0 : kind == NOISE_GAUSS ? level > 0 : level > 0 && level < 1;
    if (!level_ok)
        return err_set(err, AE_EFORMAT, "%s: meta.views noise level %.9g does not fit noise kind %d (none: 0, gauss: "
                       "(0, %g], mask: (0, 1)) " CKPT_EDITED_HINT, path, level, kind, AUGMENT_GAUSS_SIGMA_MAX);
    return AE_OK;
}

/* meta.arch: text without NUL bytes that parses as a model for C x H x W. */
static int check_arch(const char *path, const NpyArray *arch, const char *text, int C, int H, int W, Err *err)
{
    const char *nul = memchr(arch->data, '\0', (size_t)npy_numel(arch));
    if (nul)
        return err_set(err, AE_EFORMAT, "%s: meta.arch holds a NUL byte at offset %lld " CKPT_EDITED_HINT, path,
                       (long long)(nul - (const char *)arch->data));
    ModelSpec spec;
    Err why;
    err_clear(&why);
    if (model_parse(&spec, text, C, H, W, &why) == AE_OK) return AE_OK;
    const char *msg = strncmp(why.msg, "--arch ", 7) == 0 ? why.msg + 7 : why.msg;
    return err_set(err, AE_EFORMAT, "%.300s: meta.arch does not fit its %dx%dx%d images (HxWxC): %.500s "
                   CKPT_EDITED_HINT, path, H, W, C, msg);
}

static int read_impl(Checkpoint *ck, const char *path, Err *err)
{
    snprintf(ck->path, sizeof ck->path, "%s", path);
    int rc = npz_read(path, &ck->arrays, &ck->n_arrays, err);
    if (rc) return rc;
    if (ck->n_arrays == 0)
        return err_set(err, AE_EFORMAT, "%s: empty archive, not an aesim checkpoint", path);
    const NpyArray *arch = member(ck, path, "meta.arch", NPY_U8, -1, err);
    const NpyArray *shape = arch ? member(ck, path, "meta.input_shape", NPY_I64, 3, err) : NULL;
    const NpyArray *state = shape ? member(ck, path, "meta.state", NPY_I64, CKPT_STATE_LEN, err) : NULL;
    const NpyArray *hp = state ? member(ck, path, "meta.hparams", NPY_F64, CKPT_HPARAMS_LEN, err) : NULL;
    if (!hp) return AE_EFORMAT;
    const int64_t *s = state->data, *sh = shape->data;
    if (s[0] < 1 || s[0] > CKPT_VERSION)
        return err_set(err, AE_EFORMAT, "%s: checkpoint format version %lld, " NEWER_FORMAT_TEXT " 1..%d", path,
                       (long long)s[0], CKPT_VERSION);
    if (s[0] >= 2 && (rc = verify_crcs(ck, path, err))) return rc;
    if ((rc = verify_finite(ck, path, err))) return rc;
    int64_t len = npy_numel(arch);
    if (len <= 0 || len >= MODEL_SPEC_MAX)
        return err_set(err, AE_EFORMAT, "%s: meta.arch has a bad length %lld", path, (long long)len);
    memcpy(ck->arch, arch->data, (size_t)len);
    ck->arch[len] = '\0';
    for (int i = 0; i < 3; i++)
        if (sh[i] < 1 || sh[i] > CKPT_MAX_SIDE)
            return err_set(err, AE_EFORMAT, "%s: meta.input_shape is not a valid C,H,W", path);
    ck->C = (int)sh[0];
    ck->H = (int)sh[1];
    ck->W = (int)sh[2];
    if ((rc = check_arch(path, arch, ck->arch, ck->C, ck->H, ck->W, err))) return rc;
    const NpyArray *sc = NULL, *data = NULL, *shuf = NULL;
    if (s[0] >= CKPT_VERSION_SCHEDULE) {
        sc = member(ck, path, "meta.schedule", NPY_I64, CKPT_SCHEDULE_LEN, err);
        data = sc ? member(ck, path, "meta.data", NPY_U8, -1, err) : NULL;
        if (!data) return AE_EFORMAT;
        if (memchr(data->data, '\0', (size_t)npy_numel(data)))
            return err_set(err, AE_EFORMAT, "%s: meta.data holds a NUL byte " CKPT_EDITED_HINT, path);
    }
    if (s[0] >= CKPT_VERSION_SHUFFLE && !(shuf = member(ck, path, "meta.shuffle", NPY_I64, 2, err)))
        return AE_EFORMAT;
    const NpyArray *views = NULL;
    if (s[0] >= CKPT_VERSION_VIEWS) {
        if (!(views = member(ck, path, "meta.views", NPY_F64, CKPT_VIEWS_LEN, err))) return AE_EFORMAT;
        if ((rc = check_views(path, views->data, err))) return rc;
    }
    const NpyArray *data_arg = NULL;
    if (s[0] >= CKPT_VERSION_DATA_ARG) {
        if (!(data_arg = member(ck, path, "meta.data_arg", NPY_U8, -1, err))) return AE_EFORMAT;
        const int64_t dl = npy_numel(data_arg);
        if (dl < 1 || dl >= CKPT_DATA_ARG_BYTES)
            return err_set(err, AE_EFORMAT, "%s: meta.data_arg has %lld bytes (1..%d) " CKPT_EDITED_HINT, path,
                           (long long)dl, CKPT_DATA_ARG_BYTES - 1);
        if (memchr(data_arg->data, '\0', (size_t)dl))
            return err_set(err, AE_EFORMAT, "%s: meta.data_arg holds a NUL byte " CKPT_EDITED_HINT, path);
    }
    if ((rc = check_state(path, s, sc ? sc->data : NULL, shuf ? shuf->data : NULL, err)) ||
        (rc = check_hparams(path, hp->data, s[6], err)))
        return rc;
    /* Every value is in range: narrow. */
    ck->version = (int)s[0];
    ck->state.step = s[1];
    ck->state.epoch = s[2];
    ck->state.batch = s[3];
    ck->state.seed = (uint64_t)s[4];
    ck->state.batch_size = s[5];
    ck->opt_kind = s[6] == OPT_SGD ? OPT_SGD : OPT_ADAM;
    memcpy(ck->hparams, hp->data, sizeof ck->hparams);
    if (sc) {
        const int64_t *v = sc->data;
        ck->state.n_train = v[0];
        ck->state.data_crc = v[1];
        ck->state.epochs = v[2];
        ck->state.max_steps = v[3];
        size_t dl = (size_t)npy_numel(data) < CKPT_DATA_BYTES - 1 ? (size_t)npy_numel(data) : CKPT_DATA_BYTES - 1;
        memcpy(ck->state.data, data->data, dl);
        ck->state.data[dl] = '\0';
        if (strcmp(ck->state.data, CKPT_DATA_UNKNOWN) == 0) ck->state.data[0] = '\0';
    }
    if (shuf) {
        const int64_t *v = shuf->data;
        ck->state.shuffle_block = v[0];
        ck->state.shuffle_window = v[1];
    }
    if (views) {
        const double *v = views->data;
        ck->state.contrastive = v[0];
        ck->state.tau = v[1];
        ck->state.contrastive_pool = (int64_t)v[2];
        ck->state.contrastive_head = (int64_t)v[3];
        ck->state.aug.noise = (NoiseKind)(int)v[4];
        ck->state.aug.noise_level = v[5];
        ck->state.aug.crop_min = v[6];
        ck->state.aug.flip = (int)v[7];
        ck->state.aug.shift = (int)v[8];
    }
    if (data_arg) {
        memcpy(ck->state.data_arg, data_arg->data, (size_t)npy_numel(data_arg));
        ck->state.data_arg[npy_numel(data_arg)] = '\0';
        if (strcmp(ck->state.data_arg, CKPT_DATA_UNKNOWN) == 0) ck->state.data_arg[0] = '\0';
    }
    return AE_OK;
}

int ckpt_read(Checkpoint *ck, const char *path, Err *err)
{
    memset(ck, 0, sizeof *ck);
    int rc = read_impl(ck, path, err);
    if (rc) ckpt_free(ck);
    return rc;
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

/* ---- the files of an output folder ---------------------------------- */

/* If name is exactly CKPT_STEP_PREFIX <digits> ".npz", stores the step and
 * returns 1; otherwise 0 (temporary files, other names). */
static int parse_step_name(const char *name, int64_t *step)
{
    static const char ext[] = ".npz";
    size_t pre = strlen(CKPT_STEP_PREFIX), len = strlen(name), ext_len = sizeof ext - 1;
    if (len <= pre + ext_len || strncmp(name, CKPT_STEP_PREFIX, pre) != 0 || strcmp(name + len - ext_len, ext) != 0)
        return 0;
    int64_t v = 0;
    for (size_t i = pre; i < len - ext_len; i++) {
        if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10) return 0;
        v = v * 10 + (name[i] - '0');
    }
    *step = v;
    return 1;
}

int ckpt_step_path(char *out, size_t cap, const char *dir, int64_t step)
{
    int n = snprintf(out, cap, "%s/%s%0*lld.npz", dir, CKPT_STEP_PREFIX, CKPT_STEP_DIGITS, (long long)step);
    return n > 0 && (size_t)n < cap;
}

int ckpt_step_intact(const char *dir, int64_t step)
{
    char path[FILEIO_PATH_MAX];
    Checkpoint probe;
    Err e;
    err_clear(&e);
    const int ok = ckpt_step_path(path, sizeof path, dir, step) && ckpt_read(&probe, path, &e) == AE_OK;
    if (ok) ckpt_free(&probe);
    return ok;
}

/* Step numbers of the ckpt-step files in dir, sorted newest first.
 * *steps is allocated (free it); returns the count, or -1 if dir cannot be
 * listed (errno kept). */
static int cmp_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int ckpt_list_steps(const char *dir, int64_t **steps)
{
    *steps = NULL;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t s;
        if (!parse_step_name(e->d_name, &s)) continue;
        if (n == cap) {
            int ncap = cap ? 2 * cap : 16;
            int64_t *grown = xmalloc((size_t)ncap * sizeof *grown);
            if (n) memcpy(grown, *steps, (size_t)n * sizeof *grown);
            free(*steps);
            *steps = grown;
            cap = ncap;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    if (n) qsort(*steps, (size_t)n, sizeof **steps, cmp_desc);
    return n;
}

/* Best effort: fsync the folder so a rename or unlink in it is durable. */
static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

/* Makes dir/checkpoint.npz the file at step_file: a hard link renamed over
 * it (atomic), or, where links are not supported, a second atomic copy. */
static int update_latest(const char *dir, const char *step_file, const Model *m, const Optimizer *opt,
                         const CkptState *st, Err *err)
{
    char latest[FILEIO_PATH_MAX], tmp[FILEIO_PATH_MAX + 32];
    if (snprintf(latest, sizeof latest, "%s/%s", dir, CKPT_LATEST_NAME) >= (int)sizeof latest)
        return err_set(err, AE_EARG, "%s: path too long", dir);
    snprintf(tmp, sizeof tmp, "%s%s%ld", latest, CKPT_TMP_MARK, (long)getpid());
    unlink(tmp);
    if (link(step_file, tmp) != 0) {
        if (errno == ENOSPC || errno == EROFS || errno == EACCES || errno == EDQUOT)
            return err_set(err, AE_EIO, "cannot link %s to %s: %s", step_file, tmp, strerror(errno));
        /* EPERM / EOPNOTSUPP / EXDEV / EMLINK: no hard links here. */
        return ckpt_save(latest, m, opt, st, err);
    }
    if (rename(tmp, latest) != 0) {
        int e = errno;
        unlink(tmp);
        return err_set(err, AE_EIO, "cannot rename %s to %s: %s", tmp, latest, strerror(e));
    }
    fsync_dir(dir);
    return AE_OK;
}

int ckpt_is_own_name(const char *name)
{
    int64_t step;
    return strcmp(name, CKPT_LATEST_NAME) == 0 || parse_step_name(name, &step);
}

int ckpt_remove_stale_temps(const char *dir, int64_t *bytes)
{
    return fileio_remove_dead_temps(dir, ckpt_is_own_name, bytes);
}

void ckpt_rotation_init(CkptRotation *r, int64_t start, FILE *notes)
{
    memset(r, 0, sizeof *r);
    r->start = start;
    r->notes = notes;
}

void ckpt_rotation_free(CkptRotation *r)
{
    free(r->checked);
    free(r->intact);
    r->checked = NULL;
    r->intact = NULL;
    r->n_checked = r->cap = 0;
}

/* 1 if the step file `path` of step s (from before the run) reads and
 * verifies; each is read once per run, a refusal reported once on notes. */
static int older_intact(CkptRotation *r, const char *path, int64_t s)
{
    for (int i = 0; i < r->n_checked; i++)
        if (r->checked[i] == s) return r->intact[i];
    if (r->n_checked == r->cap) {
        int ncap = r->cap ? 2 * r->cap : 8;
        int64_t *c = xmalloc((size_t)ncap * sizeof *c);
        unsigned char *ok = xmalloc((size_t)ncap);
        if (r->n_checked) {
            memcpy(c, r->checked, (size_t)r->n_checked * sizeof *c);
            memcpy(ok, r->intact, (size_t)r->n_checked);
        }
        free(r->checked);
        free(r->intact);
        r->checked = c;
        r->intact = ok;
        r->cap = ncap;
    }
    Checkpoint ck;
    Err e;
    err_clear(&e);
    const int good = ckpt_read(&ck, path, &e) == AE_OK;
    ckpt_free(&ck);
    if (!good && r->notes)
        fprintf(r->notes, "aesim-train: warning: left in place but not counted toward --keep: %s\n", e.msg);
    r->checked[r->n_checked] = s;
    r->intact[r->n_checked++] = (unsigned char)good;
    return good;
}

int ckpt_save_rotate(const char *dir, const Model *m, const Optimizer *opt, const CkptState *st, int keep,
                     CkptRotation *rot, char *written, Err *err)
{
    char path[FILEIO_PATH_MAX];
    if (!ckpt_step_path(path, sizeof path, dir, st->step)) return err_set(err, AE_EARG, "%s: path too long", dir);
    /* first: on a nearly full disk a dead writer's temp may be the room this save needs */
    ckpt_remove_stale_temps(dir, NULL);
    int rc = ckpt_save(path, m, opt, st, err);
    if (!rc) rc = update_latest(dir, path, m, opt, st, err);
    if (rc) return rc;
    if (written) snprintf(written, FILEIO_PATH_MAX, "%s", path);
    /* Newest first: the new file counts; newer ones, and at a run's first
     * save those after its start, are another history; the rest count
     * while fewer than `keep` do, except older files that fail to read. */
    const int first = rot && rot->saved == 0;
    int64_t *steps;
    int n = ckpt_list_steps(dir, &steps), kept = 0;
    for (int i = 0; i < n; i++) {
        char old[FILEIO_PATH_MAX];
        if (!ckpt_step_path(old, sizeof old, dir, steps[i])) continue;
        const int64_t s = steps[i];
        const int drop = s > st->step || (first && s > rot->start && s != st->step) ||
                         (s != st->step && kept >= (keep > 0 ? keep : 1));
        if (drop)
            unlink(old);
        else if (s == st->step || !rot || s > rot->start || older_intact(rot, old, s))
            kept++;
    }
    free(steps);
    if (rot) rot->saved++;
    fsync_dir(dir);
    return AE_OK;
}

/* Tries one candidate; on failure keeps the first error in *first and
 * reports the one before on notes: the last refusal is only reported once it
 * is clear that another candidate follows (a single candidate's refusal is
 * the error itself, printed once by the caller). */
static int try_candidate(Checkpoint *ck, const char *path, FILE *notes, Err *first, Err *pending, int *tried)
{
    Err e;
    err_clear(&e);
    if (pending->code && notes) fprintf(notes, "aesim-train: warning: refusing checkpoint: %s\n", pending->msg);
    err_clear(pending);
    (*tried)++;
    if (ckpt_read(ck, path, &e) == AE_OK) return 1;
    if (first->code == AE_OK) *first = e;
    *pending = e;
    if (strstr(e.msg, NEWER_FORMAT_TEXT)) return -1;
    return 0;
}

/* The error for a checkpoint written by a newer aesim (e: its refusal). */
static int newer_format_error(Err *err, const Err *e)
{
    char msg[ERR_MSG_BYTES];
    snprintf(msg, sizeof msg, "%s", e->msg);
    return err_set(err, e->code, "%.800s: written by a newer aesim; not falling back to older checkpoints, which "
                   "would delete it (hint: resume with that version of aesim)", msg);
}

static int same_file(const struct stat *a, const char *path)
{
    struct stat b;
    return stat(path, &b) == 0 && a->st_dev == b.st_dev && a->st_ino == b.st_ino;
}

void ckpt_resume_folder(char *out, size_t cap, const char *arg)
{
    struct stat st;
    const char *slash = strrchr(arg, '/');
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, cap, "%s", arg);
    else if (!slash)
        snprintf(out, cap, ".");
    else if (slash == arg)
        snprintf(out, cap, "/");
    else
        snprintf(out, cap, "%.*s", (int)(slash - arg), arg);
}

/* The error of a --resume ARG that cannot be stat'ed (errno e): a named
 * file is that file, never another one; the hint lists the steps its folder
 * holds, if any. */
static int missing_arg(const char *arg, int e, Err *err)
{
    char dir[FILEIO_PATH_MAX], hint[256] = "";
    ckpt_resume_folder(dir, sizeof dir, arg);
    int64_t *steps;
    int n = ckpt_list_steps(dir, &steps);
    if (n > 0) {
        size_t len = (size_t)snprintf(hint, sizeof hint, "; %.100s holds the step(s)", dir);
        for (int i = 0; i < n && i < 5 && len < sizeof hint; i++)
            len += (size_t)snprintf(hint + len, sizeof hint - len, " %lld", (long long)steps[i]);
        if (n > 5 && len < sizeof hint) len += (size_t)snprintf(hint + len, sizeof hint - len, " ...");
    }
    free(steps);
    return err_set(err, AE_EIO, "--resume %.900s: %s%s (hint: name an existing checkpoint, or the folder: "
                   "--resume FOLDER takes its newest intact one)", arg, strerror(e), hint);
}

int ckpt_read_latest(Checkpoint *ck, const char *arg, FILE *notes, Err *err)
{
    memset(ck, 0, sizeof *ck);
    char dir[FILEIO_PATH_MAX];
    if (strlen(arg) >= sizeof dir) return err_set(err, AE_EARG, "--resume %s: path too long", arg);
    struct stat st;
    if (stat(arg, &st) != 0) return missing_arg(arg, errno, err);
    int is_dir = S_ISDIR(st.st_mode);
    int64_t below = INT64_MAX; /* fall back only to steps older than this */
    Err first, pending;
    err_clear(&first);
    err_clear(&pending);
    int tried = 0;
    struct stat tried_file;
    int have_tried_file = 0;
    if (is_dir) {
        snprintf(dir, sizeof dir, "%s", arg);
    } else {
        /* A file: try it, then (for our own names) the older steps beside it. */
        const int got = try_candidate(ck, arg, notes, &first, &pending, &tried);
        if (got > 0) return AE_OK;
        if (got < 0) return newer_format_error(err, &first);
        const char *slash = strrchr(arg, '/');
        const char *base = slash ? slash + 1 : arg;
        int64_t s;
        if (parse_step_name(base, &s))
            below = s;
        else if (strcmp(base, CKPT_LATEST_NAME) != 0) {
            *err = first;
            return err->code;
        }
        ckpt_resume_folder(dir, sizeof dir, arg);
        have_tried_file = stat(arg, &tried_file) == 0;
        /* Falling back past a newer step of the same history would let the
         * run's first save delete it (a branch): refuse instead. */
        int64_t *all;
        const int m = ckpt_list_steps(dir, &all);
        long long newer = 0; /* the newest intact step after the named one */
        for (int i = 0; i < m && below != INT64_MAX && all[i] > below && !newer; i++)
            if (ckpt_step_intact(dir, all[i])) newer = all[i];
        const long long newest = newer;
        free(all);
        if (newer) {
            char msg[ERR_MSG_BYTES];
            snprintf(msg, sizeof msg, "%s", first.msg);
            return err_set(err, first.code, "%.700s; not falling back to an older step, since %.200s holds an intact "
                           "newer one (step %lld) that a run from an older step would delete (hint: --resume %.200s "
                           "takes the newest intact checkpoint)", msg, dir, newest, dir);
        }
    }
    int64_t *steps;
    int n = ckpt_list_steps(dir, &steps);
    if (n < 0 && is_dir) return err_set(err, AE_EIO, "--resume %s: cannot list the folder: %s", arg, strerror(errno));
    char path[FILEIO_PATH_MAX];
    int found = 0;
    for (int i = 0; i < n && !found; i++) {
        if (steps[i] >= below || !ckpt_step_path(path, sizeof path, dir, steps[i])) continue;
        if (have_tried_file && same_file(&tried_file, path)) continue;
        found = try_candidate(ck, path, notes, &first, &pending, &tried);
        if (found < 0) {
            free(steps);
            return newer_format_error(err, &pending);
        }
    }
    /* checkpoint.npz is normally a hard link to the newest step file, tried
     * above; on its own it matters for folders without step files. */
    struct stat lst;
    if (!found && is_dir && snprintf(path, sizeof path, "%s/%s", dir, CKPT_LATEST_NAME) < (int)sizeof path &&
        stat(path, &lst) == 0) {
        int dup = 0;
        char sp[FILEIO_PATH_MAX];
        for (int i = 0; i < n && !dup; i++) dup = ckpt_step_path(sp, sizeof sp, dir, steps[i]) && same_file(&lst, sp);
        if (!dup) found = try_candidate(ck, path, notes, &first, &pending, &tried);
    }
    free(steps);
    /* Several refused: every one is reported; one refused: it is the error. */
    if (pending.code && notes && tried > 1 && !found)
        fprintf(notes, "aesim-train: warning: refusing checkpoint: %s\n", pending.msg);
    if (found) return AE_OK;
    if (tried == 0)
        return err_set(err, AE_EIO, "--resume %s: no checkpoint there (expected %s or %s*.npz)", arg,
                       CKPT_LATEST_NAME, CKPT_STEP_PREFIX);
    *err = first;
    if (tried > 1)
        snprintf(err->msg, sizeof err->msg, "--resume %.900s: none of the %d checkpoints tried is intact (%s)", arg,
                 tried, notes ? "each refusal is listed above" : "the newest was damaged");
    return err->code;
}

uint32_t ckpt_params_crc32(const Model *m)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    const unsigned char *p = (const unsigned char *)m->params;
    size_t left = m->n_params * sizeof(float);
    while (left) {
        uInt c = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, c);
        p += c;
        left -= c;
    }
    return (uint32_t)crc;
}
