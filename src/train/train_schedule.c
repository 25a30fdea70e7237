/*
 * train_schedule.c - the schedule identity of a training run and what a
 * resume keeps from its checkpoint (see include/train_schedule.h).
 * Does not: read files (ckpt.h does), talk to MPI (the caller agrees the
 * status), or print anything but the notes it is given.  Single-threaded.
 */
#include "train/train_schedule.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "base/check.h"

/* Appends the little-endian bytes of v to a running CRC-32. */
static uLong crc_i64(uLong crc, int64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)v >> (8 * i));
    return crc32(crc, b, sizeof b);
}

uint32_t train_schedule_fingerprint(const Dataset *ds)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc_i64(crc, ds->n);
    crc = crc_i64(crc, ds->C);
    crc = crc_i64(crc, ds->H);
    crc = crc_i64(crc, ds->W);
    int64_t samples = ds->n < TRAIN_SCHEDULE_SAMPLES ? ds->n : TRAIN_SCHEDULE_SAMPLES;
    size_t bytes = (size_t)ds->C * ds->H * ds->W;
    uint8_t *img = xmalloc(bytes);
    for (int64_t j = 0; j < samples; j++) {
        int64_t i = samples > 1 ? j * (ds->n - 1) / (samples - 1) : 0;
        dataset_get_u8(img, ds, i);
        /* One image is at most C*H*W <= 3 * 65536^2 bytes: within a uInt
         * only for sane sizes, so feed it in chunks. */
        for (size_t off = 0; off < bytes;) {
            uInt c = bytes - off > (1u << 30) ? (1u << 30) : (uInt)(bytes - off);
            crc = crc32(crc, img + off, c);
            off += c;
        }
        int32_t label = dataset_label(ds, i);
        unsigned char lb[4];
        for (int k = 0; k < 4; k++) lb[k] = (unsigned char)((uint32_t)label >> (8 * k));
        crc = crc32(crc, lb, sizeof lb);
    }
    free(img);
    return (uint32_t)crc;
}

void train_schedule_identity(CkptState *st, const Dataset *train, const TrainConfig *cfg)
{
    st->n_train = train->n;
    st->shuffle_block = cfg->shuffle_block;
    st->shuffle_window = cfg->shuffle_window;
    st->data_crc = train_schedule_fingerprint(train);
    st->epochs = cfg->epochs;
    st->max_steps = cfg->max_steps;
    snprintf(st->data, sizeof st->data, "%.*s", (int)sizeof st->data - 1, train->source);
    /* a path is recorded absolute, so a resume from another folder finds it */
    char real[PATH_MAX];
    const char *arg = realpath(cfg->data, real) ? real : cfg->data;
    snprintf(st->data_arg, sizeof st->data_arg, "%.*s", (int)sizeof st->data_arg - 1, arg);
    st->contrastive = cfg->contrastive;
    st->tau = cfg->tau;
    st->contrastive_pool = cfg->contrastive_pool;
    st->contrastive_head = cfg->contrastive_head;
    st->aug = cfg->aug;
}

static const char *pool_name(int64_t pool) { return pool == CONTRASTIVE_POOL_AVG ? "avg" : "none"; }

/* The options of the training objective (train_views.h), a version >= 6
 * checkpoint's record of them taken for every one not given.  A given value
 * that differs is noted, unless it would drop or resize the trained
 * projection head (AE_EARG). */
static int adopt_views(TrainConfig *cfg, const Checkpoint *ck, FILE *notes, Err *err)
{
    const CkptState *s = &ck->state;
    const unsigned g = cfg->given;
    if ((g & TRAIN_GIVEN_HEAD) && s->contrastive_head > 0 && cfg->contrastive_head != s->contrastive_head)
        return err_set(err, AE_EARG, "--contrastive-head %d differs from the projection head of %s (%lld units), "
                       "whose trained weights it holds: a resumed run keeps its head (drop --contrastive-head, or "
                       "start a fresh run)", cfg->contrastive_head, ck->path, (long long)s->contrastive_head);
    char was[64], now[64];
    if (!(g & TRAIN_GIVEN_CONTRASTIVE))
        cfg->contrastive = s->contrastive;
    else if (cfg->contrastive != s->contrastive && notes)
        fprintf(notes, "resume: --contrastive %g replaces %g of %s\n", cfg->contrastive, s->contrastive, ck->path);
    if (!(g & TRAIN_GIVEN_TAU)) {
        if (s->tau > 0) cfg->tau = s->tau; /* 0: not recorded (no NT-Xent), --tau's default stays */
    } else if (s->tau > 0 && cfg->tau != s->tau && notes)
        fprintf(notes, "resume: --tau %g replaces %g of %s\n", cfg->tau, s->tau, ck->path);
    if (!(g & TRAIN_GIVEN_POOL))
        cfg->contrastive_pool = (int)s->contrastive_pool;
    else if (cfg->contrastive_pool != s->contrastive_pool && notes)
        fprintf(notes, "resume: --contrastive-pool %s replaces %s of %s\n", pool_name(cfg->contrastive_pool),
                pool_name(s->contrastive_pool), ck->path);
    if (!(g & TRAIN_GIVEN_HEAD))
        cfg->contrastive_head = (int)s->contrastive_head;
    else if (cfg->contrastive_head != s->contrastive_head && notes) /* a head added to a run without one */
        fprintf(notes, "resume: --contrastive-head %d replaces %lld of %s\n", cfg->contrastive_head,
                (long long)s->contrastive_head, ck->path);
    augment_noise_text(was, sizeof was, &s->aug);
    augment_noise_text(now, sizeof now, &cfg->aug);
    if (!(g & TRAIN_GIVEN_NOISE)) {
        cfg->aug.noise = s->aug.noise;
        cfg->aug.noise_level = s->aug.noise_level;
    } else if (strcmp(was, now) != 0 && notes) {
        fprintf(notes, "resume: --noise %s replaces %s of %s\n", now, was, ck->path);
    }
    augment_views_text(was, sizeof was, &s->aug);
    augment_views_text(now, sizeof now, &cfg->aug);
    if (!(g & TRAIN_GIVEN_AUGMENT)) {
        cfg->aug.crop_min = s->aug.crop_min;
        cfg->aug.flip = s->aug.flip;
        cfg->aug.shift = s->aug.shift;
    } else if (strcmp(was, now) != 0 && notes) {
        fprintf(notes, "resume: --augment %s replaces %s of %s\n", now, was, ck->path);
    }
    if (cfg->contrastive_head > 0 && (cfg->contrastive <= 0 || cfg->contrastive_pool != CONTRASTIVE_POOL_AVG)) {
        if (s->contrastive_head > 0)
            return err_set(err, AE_EARG, "%s holds a projection head (%lld units) trained by NT-Xent on pooled codes: "
                           "--contrastive %g --contrastive-pool %s would leave it untrained and drop it from the "
                           "checkpoints (drop those options to keep --contrastive %g --contrastive-pool avg, or "
                           "start a fresh run)", ck->path, (long long)s->contrastive_head, cfg->contrastive,
                           pool_name(cfg->contrastive_pool), s->contrastive);
        return err_set(err, AE_EARG, "--contrastive-head %d needs --contrastive W > 0 and --contrastive-pool avg (the "
                       "head takes the pooled bottleneck, as SimCLR's); %s has --contrastive %g --contrastive-pool %s",
                       cfg->contrastive_head, ck->path, s->contrastive, pool_name(s->contrastive_pool));
    }
    return AE_OK;
}

/* One line of the embedding options a resumed run trains with into
 * out[cap] ("" for the plain autoencoder). */
static void views_line(char *out, size_t cap, const TrainConfig *cfg)
{
    char noise[64], aug[64];
    augment_noise_text(noise, sizeof noise, &cfg->aug);
    augment_views_text(aug, sizeof aug, &cfg->aug);
    out[0] = '\0';
    if (cfg->contrastive > 0)
        snprintf(out, cap, ", --contrastive %g --tau %g --contrastive-pool %s --contrastive-head %d", cfg->contrastive,
                 cfg->tau, pool_name(cfg->contrastive_pool), cfg->contrastive_head);
    size_t len = strlen(out);
    if (cfg->aug.noise != NOISE_NONE && len < cap) len += (size_t)snprintf(out + len, cap - len, ", --noise %s", noise);
    if (augment_has_views(&cfg->aug) && len < cap) snprintf(out + len, cap - len, ", --augment %s", aug);
}

/* Takes ck's float hyper-parameter `ckv` into *v unless given; notes a
 * given value that differs. */
static void adopt_float(float *v, double ckv, int given, const char *opt, const char *path, FILE *notes)
{
    if (!given) {
        *v = (float)ckv;
    } else if (*v != (float)ckv && notes) {
        fprintf(notes, "resume: %s %g replaces %g of %s\n", opt, (double)*v, ckv, path);
    }
}

static int adopt(TrainConfig *cfg, const Checkpoint *ck, FILE *notes, Err *err);

/* The notes go to a buffer first and reach `notes` only when the resume is
 * accepted: a refused one says only why ("--contrastive 0 replaces 0.5" above
 * the error that refuses --contrastive 0 read as if it had been applied). */
int train_schedule_adopt(TrainConfig *cfg, const Checkpoint *ck, FILE *notes, Err *err)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = notes ? open_memstream(&buf, &len) : NULL;
    const int rc = adopt(cfg, ck, mem ? mem : notes, err);
    if (mem) {
        fclose(mem);
        if (rc == AE_OK && len) fwrite(buf, 1, len, notes);
        free(buf);
    }
    return rc;
}

static int adopt(TrainConfig *cfg, const Checkpoint *ck, FILE *notes, Err *err)
{
    const CkptState *s = &ck->state;
    unsigned g = cfg->given;
    if ((g & TRAIN_GIVEN_SEED) && cfg->seed != s->seed)
        return err_set(err, AE_EARG, "--seed %llu differs from the seed %llu of %s, which chose its initial weights "
                       "and its data order: a resumed run keeps its seed (drop --seed, or start a fresh run)",
                       (unsigned long long)cfg->seed, (unsigned long long)s->seed, ck->path);
    if ((g & TRAIN_GIVEN_OPTIMIZER) && cfg->opt != ck->opt_kind)
        return err_set(err, AE_EARG, "--optimizer %s differs from the optimizer %s of %s, whose state it holds "
                       "(drop --optimizer, or start a fresh run)", optimizer_name(cfg->opt),
                       optimizer_name(ck->opt_kind), ck->path);
    if ((g & TRAIN_GIVEN_SHUFFLE) && (cfg->shuffle_block != s->shuffle_block || cfg->shuffle_window != s->shuffle_window))
        return err_set(err, AE_EARG, "--shuffle differs from the order of %s (%s%lld:%lld), which decides which "
                       "images the rest of its epoch holds: a resumed run keeps its order (drop --shuffle, or start "
                       "a fresh run)", ck->path, s->shuffle_block ? "block:" : "global, recorded as ",
                       (long long)s->shuffle_block, (long long)s->shuffle_window);
    cfg->seed = s->seed;
    cfg->shuffle_block = s->shuffle_block;
    cfg->shuffle_window = s->shuffle_window;
    cfg->opt = ck->opt_kind;
    if (!(g & TRAIN_GIVEN_BATCH)) {
        cfg->batch_size = (int)s->batch_size;
    } else if (cfg->batch_size != s->batch_size && notes) {
        fprintf(notes, "aesim-train: warning: --batch-size %d replaces the global batch %lld of %s: from here on "
                "the steps differ from the original run's\n", cfg->batch_size, (long long)s->batch_size, ck->path);
    }
    if (s->epochs > 0) {
        if (!(g & TRAIN_GIVEN_EPOCHS))
            cfg->epochs = (int)s->epochs;
        else if (cfg->epochs != s->epochs && notes)
            fprintf(notes, "resume: --epochs %d replaces the run's %lld epochs (epochs count from its first step)\n",
                    cfg->epochs, (long long)s->epochs);
    }
    adopt_float(&cfg->adam.lr, ck->hparams[0], g & TRAIN_GIVEN_LR, "--lr", ck->path, notes);
    adopt_float(&cfg->adam.beta1, ck->hparams[1], g & TRAIN_GIVEN_BETA1, "--beta1", ck->path, notes);
    adopt_float(&cfg->adam.beta2, ck->hparams[2], g & TRAIN_GIVEN_BETA2, "--beta2", ck->path, notes);
    adopt_float(&cfg->adam.eps, ck->hparams[3], g & TRAIN_GIVEN_EPS, "--eps", ck->path, notes);
    adopt_float(&cfg->momentum, ck->hparams[4], g & TRAIN_GIVEN_MOMENTUM, "--momentum", ck->path, notes);
    int rc = AE_OK;
    if (ck->version >= CKPT_VERSION_VIEWS) {
        if ((rc = adopt_views(cfg, ck, notes, err))) return rc;
    } else if (cfg->contrastive_head > 0 &&
               (cfg->contrastive <= 0 || cfg->contrastive_pool != CONTRASTIVE_POOL_AVG)) {
        return err_set(err, AE_EARG, "--contrastive-head %d needs --contrastive W > 0 and --contrastive-pool avg (the "
                       "head takes the pooled bottleneck, as SimCLR's)", cfg->contrastive_head);
    }
    char views[256];
    views_line(views, sizeof views, cfg);
    if (notes)
        fprintf(notes, "resume: keeps seed %llu, global batch %d, %d epoch(s), %s lr %g%s%s (options given on the "
                "command line override all but the seed, the optimizer and a trained projection head)%s\n",
                (unsigned long long)cfg->seed, cfg->batch_size, cfg->epochs, optimizer_name(cfg->opt),
                (double)cfg->adam.lr, views,
                s->epochs > 0 ? "" : " [epochs not recorded in this older checkpoint: --epochs or its default]",
                ck->version >= CKPT_VERSION_VIEWS ? "" : " [--noise, --augment and --contrastive* not "
                "recorded in this older checkpoint: the command line's]");
    return AE_OK;
}

const char *train_schedule_data_name(const TrainConfig *cfg, const char **hint)
{
    const int given = (cfg->given & TRAIN_GIVEN_DATA) != 0;
    *hint = given || cfg->data_from_ckpt ? "" : " (hint: this checkpoint does not record its --data: give it)";
    return given ? "--data" : cfg->data_from_ckpt ? "the recorded --data (read again now)" : "the default --data";
}

int train_schedule_start(CkptState *start, const Checkpoint *ck, const TrainConfig *cfg, const Dataset *train,
                         FILE *notes, Err *err)
{
    const CkptState *s = &ck->state;
    *start = *s;
    train_schedule_identity(start, train, cfg);
    if (s->n_train == 0) {
        if (notes)
            fprintf(notes, "aesim-train: warning: %s (format version < 3) does not record its training data: "
                    "cannot check that --data is the same; the schedule continues as if it were\n", ck->path);
    }
    const char *hint;
    const char *what = train_schedule_data_name(cfg, &hint);
    if (s->n_train != 0 && s->n_train != train->n) {
        return err_set(err, AE_EARG, "%s was trained on %lld images (%.200s) but %s has %lld (%.200s): its "
                       "data order and epoch position do not carry over; resume with the same --data and "
                       "--data-opts (and --val/--val-fraction), or start a fresh run%s", ck->path,
                       (long long)s->n_train, s->data[0] ? s->data : "source not recorded", what,
                       (long long)train->n, train->source, hint);
    } else if (s->n_train != 0 && s->data_crc != start->data_crc) {
        return err_set(err, AE_EARG, "%s was trained on other images than %s, though as many (%lld): sampled "
                       "images differ (data CRC %08llx, now %08llx; it used %.200s, now %.200s); resume with "
                       "the same files, order, --data-opts and validation split, or start a fresh run%s", ck->path,
                       what, (long long)train->n, (unsigned long long)s->data_crc,
                       (unsigned long long)start->data_crc, s->data[0] ? s->data : "a source not recorded",
                       train->source, hint);
    }
    if (s->batch_size != cfg->batch_size && s->batch > 0) {
        /* Mid-epoch, the position is a count of old-size batches: it maps
         * onto the new size only if the images done divide evenly. */
        int64_t done = s->batch * s->batch_size;
        if (done % cfg->batch_size != 0)
            return err_set(err, AE_EARG, "%s stopped after %lld images of epoch %lld with --batch-size %lld; to "
                           "resume mid-epoch use a --batch-size that divides %lld (or the same size), or resume "
                           "from an epoch-end checkpoint", ck->path, (long long)done, (long long)s->epoch + 1,
                           (long long)s->batch_size, (long long)done);
        start->batch = done / cfg->batch_size;
    }
    start->batch_size = cfg->batch_size;
    return AE_OK;
}
