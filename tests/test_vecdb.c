/*
 * test_vecdb.c - unit tests of the vector database files (include/search/vecdb.h):
 * a manifest and three shards (one empty) written and read back, mapped
 * arrays equal to what was written, the id -> shard lookup and the shard
 * ownership rule against a naive scan, and every kind of damage refused with
 * the right status and a message naming the file: truncated or padded
 * vectors, wrong D, wrong dtype, ids with a gap, missing file, names count,
 * and manifests with bad JSON, another version or counts that do not add up.
 * Serial, no MPI; files go to a fresh folder under $AESIM_TEST_TMP or /tmp.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "data/npy.h"
#include "testutil.h"
#include "search/vecdb.h"

/* Shard sizes of the test database (one empty shard in the middle). */
static const int64_t SIZES[3] = { 5, 0, 3 };
#define TEST_D 4
#define TEST_N 8

typedef struct Fixture {
    char dir[512];
    float x[TEST_N * TEST_D];
    int32_t labels[TEST_N];
    char names[TEST_N][32];
} Fixture;

static void path_of(char *out, size_t cap, const Fixture *f, int shard, VecDbFile file)
{
    assert_int_equal(vecdb_shard_path(out, cap, f->dir, shard, file, NULL), AE_OK);
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, fp), (size_t)n);
    s[n] = '\0';
    fclose(fp);
    return s;
}

static void write_text(const char *path, const char *s)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(s, fp);
    fclose(fp);
}

/* Replaces the first `from` in the manifest by `to`. */
static void edit_manifest(const Fixture *f, const char *from, const char *to)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, VECDB_MANIFEST);
    char *s = read_text(path);
    char *at = strstr(s, from);
    assert_non_null(at);
    size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
    char *t = malloc(n);
    snprintf(t, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    write_text(path, t);
    free(s);
    free(t);
}

static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("AESIM_TEST_TMP");
    snprintf(f->dir, sizeof f->dir, "%s/test_vecdb_XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    uint64_t rng = 11;
    test_fill_uniform(f->x, TEST_N * TEST_D, &rng, -2.0f, 2.0f);
    const char *name_ptrs[TEST_N];
    for (int i = 0; i < TEST_N; i++) {
        f->labels[i] = i % 3 - 1; /* includes -1 = no label */
        snprintf(f->names[i], sizeof f->names[i], "file.idx#%d", i);
        name_ptrs[i] = f->names[i];
    }
    VecDb db;
    vecdb_init(&db, f->dir, 0xdeadbeefu, "c4 p | u c1", 1, 8, 8, "/x/ckpt.npz", TEST_D, KNN_IP);
    const char *paths[2] = { "/data/a.idx", "/data/b.idx" };
    const int64_t counts[2] = { 6, 2 };
    vecdb_add_source(&db, "a.idx,b.idx", 2, paths, counts);
    Err err;
    err_clear(&err);
    int64_t first = 0;
    for (int s = 0; s < 3; s++) {
        assert_int_equal(vecdb_write_shard(f->dir, s, f->x + first * TEST_D, f->labels + first, name_ptrs + first,
                                           SIZES[s], TEST_D, first, &err), AE_OK);
        vecdb_add_shard(&db, SIZES[s]);
        first += SIZES[s];
    }
    assert_int_equal(vecdb_write_manifest(&db, &err), AE_OK);
    vecdb_free(&db);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void test_roundtrip(void **state)
{
    Fixture *f = *state;
    VecDb db;
    Err err;
    err_clear(&err);
    assert_int_equal(vecdb_read(&db, f->dir, &err), AE_OK);
    assert_int_equal(db.model_crc, 0xdeadbeefu);
    assert_string_equal(db.arch, "c4 p | u c1");
    assert_int_equal(db.C * 100 + db.H * 10 + db.W, 188);
    assert_int_equal(db.D, TEST_D);
    assert_int_equal(db.count, TEST_N);
    assert_int_equal(db.metric, KNN_IP);
    assert_int_equal(db.n_sources, 1);
    assert_string_equal(db.sources[0].spec, "a.idx,b.idx");
    assert_int_equal(db.sources[0].n_items, 2);
    assert_string_equal(db.sources[0].items[1].path, "/data/b.idx");
    assert_int_equal(db.sources[0].items[0].count, 6);
    assert_int_equal(db.n_shards, 3);
    int64_t first = 0;
    for (int s = 0; s < 3; s++) {
        assert_int_equal(db.shards[s].count, SIZES[s]);
        assert_int_equal(db.shards[s].first_id, first);
        VecShard sh;
        assert_int_equal(vecdb_shard_map(&sh, &db, s, VECDB_MAP_ALL, &err), AE_OK);
        assert_int_equal(sh.count, SIZES[s]);
        for (int64_t j = 0; j < sh.count; j++) {
            assert_int_equal(sh.ids[j], first + j);
            assert_int_equal(sh.labels[j], f->labels[first + j]);
            for (int d = 0; d < TEST_D; d++) assert_true(sh.x[j * TEST_D + d] == f->x[(first + j) * TEST_D + d]);
        }
        vecdb_shard_unmap(&sh);
        char *names;
        assert_int_equal(vecdb_read_names(&names, &db, s, &err), AE_OK);
        for (int64_t j = 0; j < SIZES[s]; j++) assert_string_equal(names + j * VECDB_NAME_BYTES, f->names[first + j]);
        free(names);
        char *packed;
        int64_t *offs;
        assert_int_equal(vecdb_read_names_packed(&packed, &offs, &db, s, &err), AE_OK);
        for (int64_t j = 0; j < SIZES[s]; j++) assert_string_equal(packed + offs[j], f->names[first + j]);
        free(packed);
        free(offs);
        first += SIZES[s];
    }
    /* Only the arrays asked for are mapped. */
    VecShard sh;
    assert_int_equal(vecdb_shard_map(&sh, &db, 2, VECDB_MAP_LABELS, &err), AE_OK);
    assert_null(sh.x);
    assert_null(sh.ids);
    assert_non_null(sh.labels);
    vecdb_shard_unmap(&sh);
    vecdb_free(&db);
}

static void test_lookup_and_owner(void **state)
{
    Fixture *f = *state;
    VecDb db;
    Err err;
    assert_int_equal(vecdb_read(&db, f->dir, &err), AE_OK);
    for (int64_t id = -2; id < TEST_N + 2; id++) {
        int want = -1; /* naive scan over the shards */
        int64_t first = 0;
        for (int s = 0; s < 3; s++) {
            if (id >= first && id < first + SIZES[s]) want = s;
            first += SIZES[s];
        }
        assert_int_equal(vecdb_shard_of(&db, id), want);
    }
    for (int P = 1; P <= 4; P++) {
        int owned = 0;
        for (int s = 0; s < 10; s++) {
            int r = vecdb_shard_owner(s, P);
            assert_true(r >= 0 && r < P);
            assert_int_equal(r, s % P);
            owned++;
        }
        assert_int_equal(owned, 10); /* every shard has exactly one owner */
    }
    vecdb_free(&db);
}

/* Maps shard s and expects `code` with `needle` in the message. */
static void expect_map_error(const Fixture *f, int s, int code, const char *needle)
{
    VecDb db;
    Err err;
    err_clear(&err);
    assert_int_equal(vecdb_read(&db, f->dir, &err), AE_OK);
    VecShard sh;
    int rc = vecdb_shard_map(&sh, &db, s, VECDB_MAP_ALL, &err);
    if (rc != code || !strstr(err.msg, needle)) print_error("got %d '%s', want %d with '%s'\n", rc, err.msg, code, needle);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, needle));
    assert_null(sh.x);
    vecdb_free(&db);
}

static void test_damaged_shards(void **state)
{
    Fixture *f = *state;
    char path[700];
    path_of(path, sizeof path, f, 0, VECDB_VECTORS);
    /* Truncated vectors (one float short). */
    assert_int_equal(truncate(path, 128 + 5 * TEST_D * 4 - 4), 0);
    expect_map_error(f, 0, AE_EFORMAT, "shard-00000.vectors.npy");
    /* Padded vectors (4 bytes too many). */
    Err err;
    NpyArray good = { .dtype = NPY_F32, .ndim = 2, .shape = { 5, TEST_D }, .data = f->x };
    assert_int_equal(npy_write(path, &good, &err), AE_OK);
    FILE *fp = fopen(path, "ab");
    assert_non_null(fp);
    fputs("pad!", fp);
    fclose(fp);
    expect_map_error(f, 0, AE_EFORMAT, "shard-00000.vectors.npy");
    /* Wrong D (a valid npy of another width). */
    float wide[5 * 5] = { 0 };
    NpyArray a = { .dtype = NPY_F32, .ndim = 2, .shape = { 5, 5 }, .data = wide };
    assert_int_equal(npy_write(path, &a, &err), AE_OK);
    expect_map_error(f, 0, AE_EFORMAT, "D = 4");
    /* Wrong dtype. */
    double dbl[5 * TEST_D] = { 0 };
    a = (NpyArray){ .dtype = NPY_F64, .ndim = 2, .shape = { 5, TEST_D }, .data = dbl };
    assert_int_equal(npy_write(path, &a, &err), AE_OK);
    expect_map_error(f, 0, AE_EFORMAT, "<f4");
    /* Restore the vectors; ids with a gap. */
    a = (NpyArray){ .dtype = NPY_F32, .ndim = 2, .shape = { 5, TEST_D }, .data = f->x };
    assert_int_equal(npy_write(path, &a, &err), AE_OK);
    int64_t ids[5] = { 0, 1, 2, 4, 5 };
    a = (NpyArray){ .dtype = NPY_I64, .ndim = 1, .shape = { 5 }, .data = ids };
    path_of(path, sizeof path, f, 0, VECDB_IDS);
    assert_int_equal(npy_write(path, &a, &err), AE_OK);
    expect_map_error(f, 0, AE_EFORMAT, "row 3 holds id 4");
    /* Missing labels file of shard 2. */
    path_of(path, sizeof path, f, 2, VECDB_LABELS);
    assert_int_equal(unlink(path), 0);
    expect_map_error(f, 2, AE_EIO, "shard-00002.labels.npy");
    /* names.txt with a line too few. */
    VecDb db;
    assert_int_equal(vecdb_read(&db, f->dir, &err), AE_OK);
    path_of(path, sizeof path, f, 2, VECDB_NAMES);
    write_text(path, "file.idx#5\nfile.idx#6\n");
    char *names = NULL;
    assert_int_equal(vecdb_read_names(&names, &db, 2, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "2 names"));
    assert_null(names);
    int64_t *offs = NULL;
    err_clear(&err);
    assert_int_equal(vecdb_read_names_packed(&names, &offs, &db, 2, &err), AE_EFORMAT);
    assert_non_null(strstr(err.msg, "2 names"));
    assert_null(names);
    assert_null(offs);
    vecdb_free(&db);
}

static void expect_read_error(const Fixture *f, int code, const char *needle)
{
    VecDb db;
    Err err;
    err_clear(&err);
    int rc = vecdb_read(&db, f->dir, &err);
    if (rc != code || !strstr(err.msg, needle)) print_error("got %d '%s', want %d with '%s'\n", rc, err.msg, code, needle);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, needle));
}

static void test_bad_manifests(void **state)
{
    Fixture *f = *state;
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, VECDB_MANIFEST);
    char *good = read_text(path);
    edit_manifest(f, "\"version\": 1", "\"version\": 7");
    expect_read_error(f, AE_EFORMAT, "version 7");
    write_text(path, good);
    edit_manifest(f, "\"count\": 8", "\"count\": 9");
    expect_read_error(f, AE_EFORMAT, "9");
    write_text(path, good);
    edit_manifest(f, "\"last_id\": 4", "\"last_id\": 5");
    expect_read_error(f, AE_EFORMAT, "shards[0]");
    write_text(path, good);
    edit_manifest(f, "\"dim\": 4", "\"dim\": \"4\"");
    expect_read_error(f, AE_EFORMAT, "'dim'");
    write_text(path, good);
    edit_manifest(f, "{", "[");
    expect_read_error(f, AE_EFORMAT, "invalid JSON");
    write_text(path, good);
    edit_manifest(f, "\"metric\": \"cosine\"", "\"metric\": \"hamming\"");
    expect_read_error(f, AE_EFORMAT, "hamming");
    write_text(path, good);
    free(good);
    Fixture missing = *f;
    snprintf(missing.dir, sizeof missing.dir, "%.400s/nope", f->dir);
    expect_read_error(&missing, AE_EIO, "nope");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_and_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_manifests, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
