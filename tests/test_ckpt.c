/*
 * test_ckpt.c - checkpoint verification and rotation (ckpt.h).
 *
 * References: zlib's crc32 computed here over the members as npz_read returns
 * them (the format promise of meta.crc32), the model/optimizer buffers we
 * wrote (bitwise round trip), and the file system itself (stat: which step
 * files exist, st_ino of checkpoint.npz).  Damage is made the way it happens:
 * truncation (a crash or full disk during a non-atomic copy), one flipped
 * bit in the file, and an edited tensor written back with valid zip CRCs
 * (only meta.crc32 can catch that).  Scratch files go under $AESIM_TEST_TMP
 * (or /tmp).  No MPI.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "base/check.h"
#include "model/ckpt.h"
#include "base/fileio.h"
#include "data/npy.h"
#include "testutil.h"

/* A small model: conv 1->2, pool, upsample, conv 2->1 on 1x4x4 images. */
#define SPEC "c2 p | u c1"
#define IMG_C 1
#define IMG_HW 4

/* Room for the scratch folder's path: short, so every file path built from
 * it fits FILEIO_PATH_MAX. */
#define DIR_BYTES 256

typedef struct Fixture {
    char dir[DIR_BYTES];
    Model m;
    Optimizer opt;
} Fixture;

static void fill_model(Fixture *f, uint64_t seed)
{
    uint64_t s = seed;
    test_fill_uniform(f->m.params, f->m.n_params, &s, -1.0f, 1.0f);
    test_fill_uniform(f->opt.m, f->opt.n, &s, -0.1f, 0.1f);
    test_fill_uniform(f->opt.v, f->opt.n, &s, 0.0f, 0.01f);
}

static int setup(void **state)
{
    Fixture *f = xcalloc(1, sizeof *f);
    const char *tmp = getenv("AESIM_TEST_TMP");
    snprintf(f->dir, sizeof f->dir, "%s/ckptXXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->dir)) return -1;
    ModelSpec spec;
    Err err;
    err_clear(&err);
    if (model_parse(&spec, SPEC, IMG_C, IMG_HW, IMG_HW, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    model_build(&f->m, &spec, 1, 1);
    AdamConfig adam = { 1e-3f, 0.9f, 0.999f, 1e-7f };
    optimizer_init(&f->opt, OPT_ADAM, &adam, 0.9f, f->m.n_params);
    fill_model(f, 1);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    char cmd[FILEIO_PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    optimizer_free(&f->opt);
    model_free(&f->m);
    free(f);
    return 0;
}

static CkptState state_at(int64_t step)
{
    CkptState st = { .step = step, .epoch = step / 10, .batch = step % 10, .seed = 7, .batch_size = 30,
                     .n_train = 600, .data_crc = 0xfedcba98, .epochs = 3, .max_steps = 40,
                     .shuffle_block = 256, .shuffle_window = 64 };
    snprintf(st.data, sizeof st.data, "train.npz (600 images 3x8x8)");
    snprintf(st.data_arg, sizeof st.data_arg, "/data/train.npz");
    st.contrastive = 1.5;
    st.tau = 0.25;
    st.contrastive_pool = 1;
    st.contrastive_head = 16;
    st.aug = (AugmentConfig){ .crop_min = 0.5, .flip = 1, .shift = 2, .noise = NOISE_GAUSS, .noise_level = 0.1 };
    return st;
}

static void path_in(char *out, const Fixture *f, const char *name)
{
    snprintf(out, FILEIO_PATH_MAX, "%s/%s", f->dir, name);
}

static void step_file(char *out, const Fixture *f, int64_t step)
{
    snprintf(out, FILEIO_PATH_MAX, "%s/ckpt-step%08lld.npz", f->dir, (long long)step);
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void truncate_half(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(truncate(p, st.st_size / 2), 0);
}

/* Offset of the first occurrence of needle[len] in the file, or -1. */
static long find_bytes(const char *p, const void *needle, size_t len)
{
    FILE *fp = fopen(p, "rb");
    assert_non_null(fp);
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    for (size_t i = 0; i + len <= n; i++)
        if (memcmp(buf + i, needle, len) == 0) return (long)i;
    return -1;
}

/* Flips one bit at byte `off` of the file. */
static void flip_bit(const char *p, long off)
{
    FILE *fp = fopen(p, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, off, SEEK_SET), 0);
    int c = fgetc(fp);
    assert_true(c != EOF);
    assert_int_equal(fseek(fp, off, SEEK_SET), 0);
    fputc(c ^ 0x10, fp);
    assert_int_equal(fclose(fp), 0);
}

static void test_roundtrip_and_crc_format(void **state)
{
    Fixture *f = *state;
    char p[FILEIO_PATH_MAX];
    path_in(p, f, "rt.npz");
    Err err;
    err_clear(&err);
    CkptState st = state_at(1234);
    assert_int_equal(ckpt_save(p, &f->m, &f->opt, &st, &err), AE_OK);

    /* meta.crc32 is the last member and holds zlib crc32 of each other one. */
    NpyArray *a;
    int n;
    assert_int_equal(npz_read(p, &a, &n, &err), AE_OK);
    assert_string_equal(a[n - 1].name, "meta.crc32");
    assert_int_equal(a[n - 1].dtype, NPY_U32);
    assert_int_equal(npy_numel(&a[n - 1]), n - 1);
    const uint32_t *crc = a[n - 1].data;
    for (int i = 0; i < n - 1; i++) {
        size_t bytes = (size_t)npy_numel(&a[i]) * npy_dtype_size(a[i].dtype);
        assert_int_equal(crc[i], (uint32_t)crc32(crc32(0L, Z_NULL, 0), a[i].data, (uInt)bytes));
    }
    npz_free(a, n);

    Checkpoint ck;
    assert_int_equal(ckpt_read(&ck, p, &err), AE_OK);
    assert_int_equal(ck.state.step, 1234);
    assert_int_equal(ck.state.epoch, 123);
    assert_int_equal(ck.state.batch, 4);
    assert_int_equal(ck.state.seed, 7);
    /* Version 3: the schedule identity comes back. */
    assert_int_equal(ck.state.n_train, 600);
    assert_int_equal(ck.state.data_crc, 0xfedcba98);
    assert_int_equal(ck.state.epochs, 3);
    assert_int_equal(ck.state.max_steps, 40);
    assert_string_equal(ck.state.data, "train.npz (600 images 3x8x8)");
    /* Version 4: the epoch order. */
    assert_int_equal(ck.state.shuffle_block, 256);
    assert_int_equal(ck.state.shuffle_window, 64);
    /* Version 5: the --data argument. */
    assert_string_equal(ck.state.data_arg, "/data/train.npz");
    /* Version 6: the training objective's options. */
    assert_int_equal(ck.version, CKPT_VERSION);
    assert_true(ck.state.contrastive == 1.5 && ck.state.tau == 0.25);
    assert_int_equal(ck.state.contrastive_pool, 1);
    assert_int_equal(ck.state.contrastive_head, 16);
    assert_int_equal(ck.state.aug.noise, NOISE_GAUSS);
    assert_true(ck.state.aug.noise_level == 0.1 && ck.state.aug.crop_min == 0.5);
    assert_int_equal(ck.state.aug.flip, 1);
    assert_int_equal(ck.state.aug.shift, 2);
    assert_string_equal(ck.arch, f->m.spec.text);
    Fixture g;
    model_build(&g.m, &f->m.spec, 1, 1);
    optimizer_init(&g.opt, OPT_ADAM, &f->opt.adam, 0.9f, g.m.n_params);
    assert_int_equal(ckpt_restore(&ck, &g.m, &g.opt, &err), AE_OK);
    assert_memory_equal(g.m.params, f->m.params, f->m.n_params * sizeof(float));
    assert_memory_equal(g.opt.m, f->opt.m, f->opt.n * sizeof(float));
    assert_memory_equal(g.opt.v, f->opt.v, f->opt.n * sizeof(float));
    optimizer_free(&g.opt);
    model_free(&g.m);
    ckpt_free(&ck);
}

static void test_damage_is_refused(void **state)
{
    Fixture *f = *state;
    char p[FILEIO_PATH_MAX];
    Err err;
    err_clear(&err);
    CkptState st = state_at(5);
    Checkpoint ck;

    /* Truncated. */
    path_in(p, f, "trunc.npz");
    assert_int_equal(ckpt_save(p, &f->m, &f->opt, &st, &err), AE_OK);
    truncate_half(p);
    assert_int_not_equal(ckpt_read(&ck, p, &err), AE_OK);
    assert_non_null(strstr(err.msg, p));
    assert_null(ck.arrays);

    /* One bit flipped in the weights (found by their bytes in the file). */
    path_in(p, f, "flip.npz");
    err_clear(&err);
    assert_int_equal(ckpt_save(p, &f->m, &f->opt, &st, &err), AE_OK);
    long off = find_bytes(p, f->m.params, 2 * sizeof(float));
    assert_true(off > 0);
    flip_bit(p, off + 1);
    assert_int_equal(ckpt_read(&ck, p, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, p));

    /* A tensor edited and written back as a valid zip: only meta.crc32 sees it. */
    path_in(p, f, "edit.npz");
    err_clear(&err);
    assert_int_equal(ckpt_save(p, &f->m, &f->opt, &st, &err), AE_OK);
    NpyArray *a;
    int n;
    assert_int_equal(npz_read(p, &a, &n, &err), AE_OK);
    const NpyArray *w = npz_find(a, n, "conv1.weight");
    assert_non_null(w);
    ((float *)w->data)[0] += 1.0f;
    assert_int_equal(npz_write(p, a, n, &err), AE_OK);
    assert_int_equal(ckpt_read(&ck, p, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "conv1.weight"));
    assert_non_null(strstr(err.msg, "CRC-32"));

    /* Same file without meta.crc32 but still claiming version 2. */
    assert_int_equal(npz_write(p, a, n - 1, &err), AE_OK);
    assert_int_equal(ckpt_read(&ck, p, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "meta.crc32"));

    /* Version 1 (before meta.crc32) is still read. */
    ((float *)w->data)[0] -= 1.0f;
    NpyArray *state_m = (NpyArray *)npz_find(a, n, "meta.state");
    ((int64_t *)state_m->data)[0] = 1;
    err_clear(&err);
    assert_int_equal(npz_write(p, a, n - 1, &err), AE_OK);
    assert_int_equal(ckpt_read(&ck, p, &err), AE_OK);
    assert_int_equal(ck.state.step, 5);
    /* Older versions record no schedule identity: read as "not recorded". */
    assert_int_equal(ck.state.n_train, 0);
    assert_int_equal(ck.state.epochs, 0);
    assert_string_equal(ck.state.data, "");
    assert_string_equal(ck.state.data_arg, "");
    assert_int_equal(ck.state.shuffle_block, 0); /* the global shuffle */
    /* ... nor an objective: read as the plain autoencoder. */
    assert_int_equal(ck.version, 1);
    assert_true(ck.state.contrastive == 0 && ck.state.tau == 0);
    assert_int_equal(ck.state.contrastive_head, 0);
    assert_int_equal(ck.state.aug.noise, NOISE_NONE);
    assert_int_equal(ck.state.aug.shift, 0);
    ckpt_free(&ck);
    npz_free(a, n);

    /* Non-finite weights are never saved by training: refused on load. */
    path_in(p, f, "nan.npz");
    float keep = f->m.params[3];
    f->m.params[3] = NAN;
    assert_int_equal(ckpt_save(p, &f->m, &f->opt, &st, &err), AE_OK);
    f->m.params[3] = keep;
    assert_int_equal(ckpt_read(&ck, p, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "nan"));
}

static void test_rotation(void **state)
{
    Fixture *f = *state;
    Err err;
    err_clear(&err);
    char p[FILEIO_PATH_MAX], latest[FILEIO_PATH_MAX], stale[FILEIO_PATH_MAX], other[FILEIO_PATH_MAX];
    path_in(latest, f, "checkpoint.npz");
    /* Left by a crashed writer, and a file that is not ours. */
    path_in(stale, f, "ckpt-step00000009.npz.tmp.99999999"); /* no such pid */
    path_in(other, f, "ckpt-notes.txt");
    FILE *fp = fopen(stale, "wb");
    fclose(fp);
    fp = fopen(other, "wb");
    fclose(fp);
    for (int64_t s = 1; s <= 5; s++) {
        CkptState st = state_at(s);
        char written[FILEIO_PATH_MAX];
        assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, NULL, written, &err), AE_OK);
        step_file(p, f, s);
        assert_string_equal(written, p);
    }
    for (int64_t s = 1; s <= 5; s++) {
        step_file(p, f, s);
        assert_int_equal(exists(p), s >= 3);
    }
    assert_false(exists(stale));
    assert_true(exists(other));
    /* checkpoint.npz is the newest step file itself (hard link). */
    struct stat a, b;
    step_file(p, f, 5);
    assert_int_equal(stat(latest, &a), 0);
    assert_int_equal(stat(p, &b), 0);
    assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
    Checkpoint ck;
    assert_int_equal(ckpt_read(&ck, latest, &err), AE_OK);
    assert_int_equal(ck.state.step, 5);
    ckpt_free(&ck);

    /* Saving an older step (a run resumed from step 2 into this folder)
     * removes the abandoned newer steps, keeps at most `keep` older ones. */
    CkptState st = state_at(2);
    assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 1, NULL, NULL, &err), AE_OK);
    for (int64_t s = 1; s <= 5; s++) {
        step_file(p, f, s);
        assert_int_equal(exists(p), s == 2);
    }
    assert_int_equal(ckpt_read(&ck, latest, &err), AE_OK);
    assert_int_equal(ck.state.step, 2);
    ckpt_free(&ck);
}

/* A run resumed from step 3 of a folder holding steps 1..5 (step 2
 * damaged): its first save removes the abandoned 4 and 5, and the damaged 2
 * does not displace the intact 1 (with --keep 3: 6, 3 and 1 count, 2 stays
 * uncounted, reported once); the next save drops both older ones. */
static void test_rotation_branch_and_damage(void **state)
{
    Fixture *f = *state;
    Err err;
    err_clear(&err);
    char p[FILEIO_PATH_MAX], damaged[FILEIO_PATH_MAX];
    for (int64_t s = 1; s <= 5; s++) {
        CkptState st = state_at(s);
        assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 5, NULL, NULL, &err), AE_OK);
    }
    step_file(damaged, f, 2);
    truncate_half(damaged);
    char *buf = NULL;
    size_t len = 0;
    FILE *notes = open_memstream(&buf, &len);
    assert_non_null(notes);
    CkptRotation rot;
    ckpt_rotation_init(&rot, 3, notes);
    CkptState st = state_at(6);
    assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, &rot, NULL, &err), AE_OK);
    for (int64_t s = 1; s <= 6; s++) {
        step_file(p, f, s);
        assert_int_equal(exists(p), s == 1 || s == 2 || s == 3 || s == 6);
    }
    st = state_at(7);
    assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, &rot, NULL, &err), AE_OK);
    for (int64_t s = 1; s <= 7; s++) {
        step_file(p, f, s);
        assert_int_equal(exists(p), s == 3 || s == 6 || s == 7);
    }
    ckpt_rotation_free(&rot);
    fclose(notes);
    /* One line, naming the damaged file; nothing about the intact ones. */
    const char *hit = strstr(buf, damaged);
    assert_non_null(hit);
    assert_null(strstr(hit + 1, damaged));
    assert_non_null(strstr(buf, "not counted toward --keep"));
    step_file(p, f, 1);
    assert_null(strstr(buf, p));
    free(buf);
}

static void write_bytes(const char *path, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    for (size_t i = 0; i < n; i++) fputc('x', fp);
    fclose(fp);
}

/* fileio_temp_name_parse: atomic_open's "<final>.tmp.<pid>" and libzip's
 * "<final>.tmp.<pid>.XXXXXX", nothing else; ckpt_is_own_name. */
static void test_temp_names(void **state)
{
    (void)state;
    const struct { const char *name, *final; long pid; } yes[] = {
        {"checkpoint.npz.tmp.4242", "checkpoint.npz", 4242}, {"manifest.json.tmp.17", "manifest.json", 17},
        {"a.tmp.b.tmp.9", "a.tmp.b", 9}, {"whiten.npz.tmp.4242.Ab12Cd", "whiten.npz", 4242},
        {"x.tmp.1.000000", "x", 1}};
    const char *no[] = {"notes.tmp.txt", "checkpoint.npz", "a.tmp.", "a.tmp.12x", "a.tmp.12.Ab12C", "a.tmp.12.Ab12Cde",
                        "a.tmp.12.Ab-2Cd", ".tmp", ".tmp.5", "a.tmp.9.tmp.x", "a.tmp.0", "a.tmp.123456789012"};
    char final[64];
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        assert_int_equal(fileio_temp_name_parse(yes[i].name, final, sizeof final), yes[i].pid);
        assert_string_equal(final, yes[i].final);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) assert_int_equal(fileio_temp_name_parse(no[i], final, sizeof final), 0);
    assert_true(ckpt_is_own_name("checkpoint.npz") && ckpt_is_own_name("ckpt-step00000005.npz"));
    assert_false(ckpt_is_own_name("ckpt-stepnotes") || ckpt_is_own_name("metrics.csv") ||
                 ckpt_is_own_name("checkpoint.npz.bak"));
}

/* The temps of a killed writer go, with their size; other files stay. */
static void test_stale_temps(void **state)
{
    Fixture *f = *state;
    char a[FILEIO_PATH_MAX], b[FILEIO_PATH_MAX], csv[FILEIO_PATH_MAX], other[FILEIO_PATH_MAX], step[FILEIO_PATH_MAX];
    /* pid 99999999 is above any pid_max (2^22): no such process */
    path_in(a, f, "ckpt-step00000005.npz.tmp.99999999");
    path_in(b, f, "checkpoint.npz.tmp.99999999.Ab12Cd");
    path_in(csv, f, "metrics.csv.tmp.99999999");
    path_in(other, f, "notes.tmp.txt");
    char user[FILEIO_PATH_MAX], live[FILEIO_PATH_MAX], name[64];
    path_in(user, f, "ckpt-stepnotes.tmp.99999999"); /* a user's file that looks like a temp */
    snprintf(name, sizeof name, "checkpoint.npz.tmp.%ld", (long)getpid()); /* a live writer's */
    path_in(live, f, name);
    step_file(step, f, 5);
    write_bytes(a, 1000);
    write_bytes(b, 24);
    write_bytes(csv, 10);
    write_bytes(other, 10);
    write_bytes(user, 10);
    write_bytes(live, 10);
    write_bytes(step, 10);
    int64_t bytes = -1;
    assert_int_equal(ckpt_remove_stale_temps(f->dir, &bytes), 2);
    assert_int_equal(bytes, 1024);
    assert_false(exists(a));
    assert_false(exists(b));
    assert_true(exists(csv));
    assert_true(exists(other));
    assert_true(exists(user));
    assert_true(exists(live));
    assert_true(exists(step));
    assert_int_equal(ckpt_remove_stale_temps(f->dir, NULL), 0);
}

/* Runs ckpt_read_latest, capturing the notes; returns the status. */
static int read_latest(Checkpoint *ck, const char *arg, char *notes, size_t cap, Err *err)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    assert_non_null(ms);
    int rc = ckpt_read_latest(ck, arg, ms, err);
    fclose(ms);
    snprintf(notes, cap, "%s", buf ? buf : "");
    free(buf);
    return rc;
}

static void test_resume_falls_back(void **state)
{
    Fixture *f = *state;
    Err err;
    err_clear(&err);
    char notes[8192], p[FILEIO_PATH_MAX], latest[FILEIO_PATH_MAX];
    Checkpoint ck;

    assert_int_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_EIO);
    assert_non_null(strstr(err.msg, "no checkpoint"));

    for (int64_t s = 10; s <= 30; s += 10) {
        fill_model(f, (uint64_t)s);
        CkptState st = state_at(s);
        assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, NULL, NULL, &err), AE_OK);
    }
    assert_int_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 30);
    assert_string_equal(notes, "");
    ckpt_free(&ck);

    /* The newest is truncated (so is checkpoint.npz: the same file). */
    step_file(p, f, 30);
    truncate_half(p);
    assert_int_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 20);
    assert_non_null(strstr(notes, p));
    step_file(p, f, 20);
    assert_string_equal(ck.path, p);
    /* The weights are those saved at step 20. */
    fill_model(f, 20);
    Fixture g;
    model_build(&g.m, &f->m.spec, 1, 1);
    optimizer_init(&g.opt, OPT_ADAM, &f->opt.adam, 0.9f, g.m.n_params);
    assert_int_equal(ckpt_restore(&ck, &g.m, &g.opt, &err), AE_OK);
    assert_memory_equal(g.m.params, f->m.params, f->m.n_params * sizeof(float));
    optimizer_free(&g.opt);
    model_free(&g.m);
    ckpt_free(&ck);

    /* Naming the damaged file (or checkpoint.npz) falls back the same way. */
    path_in(latest, f, "checkpoint.npz");
    assert_int_equal(read_latest(&ck, latest, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 20);
    ckpt_free(&ck);
    step_file(p, f, 30);
    assert_int_equal(read_latest(&ck, p, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 20);
    ckpt_free(&ck);
    /* Naming step 20 never goes forward to 30, only back to 10. */
    step_file(p, f, 20);
    flip_bit(p, find_bytes(p, f->m.params, 2 * sizeof(float)) + 1);
    assert_int_equal(read_latest(&ck, p, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 10);
    ckpt_free(&ck);

    /* A step file that does not exist (a typo: no step 25) is an error
     * naming it, never a fallback to an older step; the hint lists the
     * steps there are. */
    step_file(p, f, 25);
    assert_int_equal(read_latest(&ck, p, notes, sizeof notes, &err), AE_EIO);
    assert_non_null(strstr(err.msg, p));
    assert_non_null(strstr(err.msg, "No such file"));
    assert_non_null(strstr(err.msg, "holds the step(s) 30 20 10"));
    assert_string_equal(notes, "");
    assert_null(ck.arrays);

    /* A damaged file of another name: refused, no guessing. */
    char own[FILEIO_PATH_MAX];
    path_in(own, f, "mine.npz");
    FILE *fp = fopen(own, "wb");
    fputs("not a zip", fp);
    fclose(fp);
    assert_int_not_equal(read_latest(&ck, own, notes, sizeof notes, &err), AE_OK);
    assert_non_null(strstr(err.msg, own));

    /* Nothing intact: the error says so. */
    step_file(p, f, 10);
    truncate_half(p);
    assert_int_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "none of the 3 checkpoints"));
    assert_null(ck.arrays);
}

/* ---- edited meta values (meta.crc32 recomputed) ---------------------- */

/* One edit of a checkpoint: member `name`, entry `idx` set to i64 or f64
 * (by the member's dtype), or, with bytes, the whole uint8 member replaced. */
typedef struct Forge {
    const char *name;
    int idx;
    int64_t i64;
    double f64;
    const char *bytes;
    size_t len;
} Forge;

/* Writes src with the edit as dst, meta.crc32 recomputed as ckpt.h says
 * (zlib crc32 of each other member's raw bytes): what a hand edit that knows
 * the format makes.  No CRC can catch it; only the values can. */
static void forge(const char *src, const char *dst, const Forge *e)
{
    Err err;
    err_clear(&err);
    NpyArray *a;
    int n;
    assert_int_equal(npz_read(src, &a, &n, &err), AE_OK);
    NpyArray *m = (NpyArray *)npz_find(a, n, e->name);
    assert_non_null(m);
    void *owned = m->data;
    int64_t shape0 = m->shape[0];
    if (e->bytes) {
        assert_int_equal(m->dtype, NPY_U8);
        m->data = (void *)e->bytes;
        m->shape[0] = (int64_t)e->len;
    } else if (m->dtype == NPY_I64) {
        ((int64_t *)m->data)[e->idx] = e->i64;
    } else {
        assert_int_equal(m->dtype, NPY_F64);
        ((double *)m->data)[e->idx] = e->f64;
    }
    assert_string_equal(a[n - 1].name, "meta.crc32");
    uint32_t *crc = a[n - 1].data;
    for (int i = 0; i < n - 1; i++) {
        size_t bytes = (size_t)npy_numel(&a[i]) * npy_dtype_size(a[i].dtype);
        crc[i] = (uint32_t)crc32(crc32(0L, Z_NULL, 0), a[i].data, (uInt)bytes);
    }
    assert_int_equal(npz_write(dst, a, n, &err), AE_OK);
    m->data = owned;
    m->shape[0] = shape0;
    npz_free(a, n);
}

/* ckpt_read of src edited by e: refused (AE_EFORMAT, nothing kept) with a
 * message naming the file and holding each of want[] (field and value), or,
 * with want NULL, accepted. */
static void expect_forged(const Fixture *f, const char *src, const Forge *e, const char *const *want)
{
    char p[FILEIO_PATH_MAX];
    path_in(p, f, "forged.npz");
    forge(src, p, e);
    Checkpoint ck;
    Err err;
    err_clear(&err);
    int rc = ckpt_read(&ck, p, &err);
    if (!want) {
        if (rc != AE_OK) fail_msg("%s[%d] edit refused: %s", e->name, e->idx, err.msg);
        ckpt_free(&ck);
        return;
    }
    if (rc != AE_EFORMAT) fail_msg("%s[%d] edit: ckpt_read returned %d (%s)", e->name, e->idx, rc, err.msg);
    assert_null(ck.arrays);
    assert_non_null(strstr(err.msg, p));
    assert_non_null(strstr(err.msg, "hint: the checkpoint was edited"));
    for (; *want; want++)
        if (!strstr(err.msg, *want)) fail_msg("'%s' not in: %s", *want, err.msg);
}

#define WANT(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void test_forged_meta_is_refused(void **state)
{
    Fixture *f = *state;
    Err err;
    err_clear(&err);
    /* mid: epoch 2 (0-based), batch 5 of 20 (600 images / 30), step 25;
     * first: batch 5 of the first epoch, step 5 (150 images done). */
    char mid[FILEIO_PATH_MAX], first[FILEIO_PATH_MAX];
    path_in(mid, f, "mid.npz");
    path_in(first, f, "first.npz");
    CkptState st = state_at(25);
    st.epoch = 2;
    assert_int_equal(ckpt_save(mid, &f->m, &f->opt, &st, &err), AE_OK);
    st = state_at(5);
    assert_int_equal(ckpt_save(first, &f->m, &f->opt, &st, &err), AE_OK);
    const int64_t big = (int64_t)1 << 40;
    static const char arch_nul[] = "c2 p | u c1\0junk", arch_c3[] = "c2 p | u c3", data_nul[] = "a\0b";

    /* Refused: out of the command line's ranges, or a position no run reaches. */
    expect_forged(f, mid, &(Forge){ "meta.state", 5, .i64 = big }, WANT("meta.state batch size 1099511627776", "1..1048576"));
    expect_forged(f, mid, &(Forge){ "meta.state", 5, .i64 = 0 }, WANT("meta.state batch size 0"));
    expect_forged(f, mid, &(Forge){ "meta.state", 1, .i64 = -1 }, WANT("meta.state step -1"));
    expect_forged(f, mid, &(Forge){ "meta.state", 2, .i64 = big }, WANT("meta.state epoch 1099511627776"));
    expect_forged(f, mid, &(Forge){ "meta.state", 2, .i64 = 30 }, WANT("meta.state step 25", "epoch 30"));
    expect_forged(f, mid, &(Forge){ "meta.state", 3, .i64 = 20 }, WANT("meta.state batch 20", "0..19"));
    expect_forged(f, mid, &(Forge){ "meta.state", 3, .i64 = -2 }, WANT("meta.state batch -2"));
    expect_forged(f, mid, &(Forge){ "meta.state", 4, .i64 = -5 }, WANT("meta.state seed -5"));
    expect_forged(f, mid, &(Forge){ "meta.state", 6, .i64 = 7 }, WANT("meta.state optimizer kind 7"));
    expect_forged(f, first, &(Forge){ "meta.state", 1, .i64 = (int64_t)1 << 62 },
                  WANT("meta.state step 4611686018427387904", "first epoch"));
    expect_forged(f, first, &(Forge){ "meta.state", 1, .i64 = 151 }, WANT("meta.state step 151"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 0, .f64 = -1 }, WANT("meta.hparams lr -1"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 1, .f64 = 1.5 }, WANT("meta.hparams beta1 1.5"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 2, .f64 = 1.0000001 }, WANT("meta.hparams beta2 1.0000001"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 3, .f64 = 0 }, WANT("meta.hparams eps 0"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 4, .f64 = NAN }, WANT("meta.hparams momentum nan"));
    expect_forged(f, mid, &(Forge){ "meta.hparams", 0, .f64 = INFINITY }, WANT("meta.hparams lr inf"));
    expect_forged(f, mid, &(Forge){ "meta.schedule", 2, .i64 = big }, WANT("meta.schedule epochs 1099511627776"));
    expect_forged(f, mid, &(Forge){ "meta.schedule", 1, .i64 = (int64_t)1 << 32 }, WANT("meta.schedule data_crc"));
    expect_forged(f, mid, &(Forge){ "meta.schedule", 0, .i64 = -1 }, WANT("meta.schedule n_train -1"));
    expect_forged(f, mid, &(Forge){ "meta.schedule", 0, .i64 = 100 }, WANT("meta.state batch 5", "0..3"));
    expect_forged(f, mid, &(Forge){ "meta.shuffle", 0, .i64 = (int64_t)1 << 31 }, WANT("meta.shuffle block 2147483648"));
    expect_forged(f, mid, &(Forge){ "meta.shuffle", 1, .i64 = 0 }, WANT("meta.shuffle = 256, 0"));
    expect_forged(f, mid, &(Forge){ "meta.arch", .bytes = arch_nul, .len = sizeof arch_nul - 1 },
                  WANT("meta.arch holds a NUL byte at offset 11"));
    expect_forged(f, mid, &(Forge){ "meta.arch", .bytes = arch_c3, .len = sizeof arch_c3 - 1 },
                  WANT("meta.arch does not fit"));
    expect_forged(f, mid, &(Forge){ "meta.data", .bytes = data_nul, .len = sizeof data_nul - 1 },
                  WANT("meta.data holds a NUL byte"));
    expect_forged(f, mid, &(Forge){ "meta.data_arg", .bytes = data_nul, .len = sizeof data_nul - 1 },
                  WANT("meta.data_arg holds a NUL byte"));
    expect_forged(f, mid, &(Forge){ "meta.views", 0, .f64 = -1 }, WANT("meta.views contrastive -1"));
    expect_forged(f, mid, &(Forge){ "meta.views", 0, .f64 = 2e6 }, WANT("meta.views contrastive 2000000"));
    expect_forged(f, mid, &(Forge){ "meta.views", 1, .f64 = 0 }, WANT("meta.views tau 0"));
    expect_forged(f, mid, &(Forge){ "meta.views", 2, .f64 = 2 }, WANT("meta.views contrastive-pool 2"));
    expect_forged(f, mid, &(Forge){ "meta.views", 2, .f64 = 0 }, WANT("projection head of 16 units", "pool 0"));
    expect_forged(f, mid, &(Forge){ "meta.views", 0, .f64 = 0 }, WANT("projection head of 16 units"));
    expect_forged(f, mid, &(Forge){ "meta.views", 3, .f64 = 16.5 }, WANT("meta.views contrastive-head 16.5",
                                                                           "an integer"));
    expect_forged(f, mid, &(Forge){ "meta.views", 3, .f64 = 4097 }, WANT("meta.views contrastive-head 4097"));
    expect_forged(f, mid, &(Forge){ "meta.views", 4, .f64 = 3 }, WANT("meta.views noise kind 3"));
    expect_forged(f, mid, &(Forge){ "meta.views", 4, .f64 = NOISE_NONE }, WANT("noise level 0.1", "kind 0"));
    expect_forged(f, mid, &(Forge){ "meta.views", 5, .f64 = NAN }, WANT("meta.views noise level nan"));
    expect_forged(f, mid, &(Forge){ "meta.views", 6, .f64 = 1.5 }, WANT("meta.views augment crop 1.5"));
    expect_forged(f, mid, &(Forge){ "meta.views", 7, .f64 = 0.5 }, WANT("meta.views augment flip 0.5"));
    expect_forged(f, mid, &(Forge){ "meta.views", 8, .f64 = AUGMENT_MAX_SHIFT + 1 }, WANT("meta.views augment shift 65"));

    /* beta2 = 1 (the float of --beta2 0.999999999, which the command line
     * now refuses): Adam's bias correction 1 - beta2^t would be zero. */
    expect_forged(f, mid, &(Forge){ "meta.hparams", 2, .f64 = 1.0 }, WANT("meta.hparams beta2 1"));

    /* Accepted: the edges of what runs write (--lr 0; the largest --beta2,
     * 0.9999999 as a float; the largest --batch-size and --epochs; the last
     * batch of an epoch; a first epoch of full batches of one image each). */
    expect_forged(f, mid, &(Forge){ "meta.hparams", 0, .f64 = 0 }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.views", 3, .f64 = 0 }, NULL);           /* no head */
    expect_forged(f, mid, &(Forge){ "meta.views", 3, .f64 = CKPT_HEAD_MAX }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.views", 5, .f64 = AUGMENT_GAUSS_SIGMA_MAX }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.hparams", 2, .f64 = (double)(float)OPTIMIZER_BETA2_MAX }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.hparams", 3, .f64 = (double)(float)1e-30 }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.state", 3, .i64 = 19 }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.state", 2, .i64 = 24 }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.state", 4, .i64 = INT64_MAX }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.schedule", 2, .i64 = CKPT_EPOCHS_MAX }, NULL);
    expect_forged(f, mid, &(Forge){ "meta.schedule", 0, .i64 = 0 }, NULL); /* not recorded */
    expect_forged(f, first, &(Forge){ "meta.state", 1, .i64 = 150 }, NULL);
    expect_forged(f, first, &(Forge){ "meta.schedule", 0, .i64 = 1 << 21 }, NULL);

    /* In a folder the newest refused one is skipped with the reason, as a
     * damaged one: the next older is used. */
    for (int64_t s = 10; s <= 20; s += 10) {
        st = state_at(s);
        assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, NULL, NULL, &err), AE_OK);
    }
    char p[FILEIO_PATH_MAX], notes[8192];
    step_file(p, f, 20);
    forge(p, p, &(Forge){ "meta.state", 5, .i64 = big });
    Checkpoint ck;
    assert_int_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_OK);
    assert_int_equal(ck.state.step, 10);
    assert_non_null(strstr(notes, p));
    assert_non_null(strstr(notes, "meta.state batch size 1099511627776"));
    ckpt_free(&ck);
}

/* A resume never falls back past a newer checkpoint of the history that a
 * run from an older step would delete at its first save: not past an intact
 * newer step (the named file damaged), not past a file from a newer aesim. */
static void test_no_fallback_past_newer(void **state)
{
    Fixture *f = *state;
    Err err;
    err_clear(&err);
    char notes[8192], p[FILEIO_PATH_MAX];
    Checkpoint ck;
    for (int64_t s = 10; s <= 30; s += 10) {
        fill_model(f, (uint64_t)s);
        CkptState st = state_at(s);
        assert_int_equal(ckpt_save_rotate(f->dir, &f->m, &f->opt, &st, 3, NULL, NULL, &err), AE_OK);
    }
    /* Step 20 named but damaged, step 30 intact: an error, not step 10. */
    step_file(p, f, 20);
    truncate_half(p);
    assert_int_equal(read_latest(&ck, p, notes, sizeof notes, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "holds an intact newer one (step 30)"));
    assert_null(ck.arrays);
    /* Step 30 from a newer aesim (format version CKPT_VERSION + 1): the
     * folder is refused, not resumed from step 10. */
    char newest[FILEIO_PATH_MAX];
    step_file(newest, f, 30);
    path_in(p, f, "v-next.npz");
    forge(newest, p, &(Forge){ "meta.state", 0, .i64 = CKPT_VERSION + 1 });
    assert_int_equal(rename(p, newest), 0);
    path_in(p, f, "checkpoint.npz");
    unlink(p);
    assert_int_not_equal(read_latest(&ck, f->dir, notes, sizeof notes, &err), AE_OK);
    assert_non_null(strstr(err.msg, "written by a newer aesim"));
    assert_null(ck.arrays);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_and_crc_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damage_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_branch_and_damage, setup, teardown),
        cmocka_unit_test(test_temp_names),
        cmocka_unit_test_setup_teardown(test_stale_temps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_fallback_past_newer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_meta_is_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
