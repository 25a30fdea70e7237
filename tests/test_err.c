/*
 * test_err.c - err_set and err_fit (src/base/err.c): a message too long for
 * Err.msg keeps its start and its end (the reason and the hint) around
 * " [...] " instead of losing the end; short messages are unchanged; an
 * argument may be err->msg itself.  Runs in ~0.001 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "base/err.h"

static void test_short_message_unchanged(void **unused)
{
    (void)unused;
    Err e;
    err_clear(&e);
    assert_int_equal(err_set(&e, AE_EIO, "cannot open %s: %s", "x.npz", "No such file"), AE_EIO);
    assert_int_equal(e.code, AE_EIO);
    assert_string_equal(e.msg, "cannot open x.npz: No such file");
}

static void test_long_path_keeps_the_reason(void **unused)
{
    (void)unused;
    char path[4001];
    memset(path, 'a', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    Err e;
    err_set(&e, AE_EARG, "%s/metrics.csv: path too long (hint: a shorter --out)", path);
    assert_int_equal(strlen(e.msg), ERR_MSG_BYTES - 1);
    assert_memory_equal(e.msg, "/aaaa", 5);
    assert_non_null(strstr(e.msg, "a [...] a"));
    const char *end = "/metrics.csv: path too long (hint: a shorter --out)";
    assert_string_equal(e.msg + strlen(e.msg) - strlen(end), end);
}

static void test_argument_may_be_the_message(void **unused)
{
    (void)unused;
    Err e;
    err_set(&e, AE_EFORMAT, "bad header");
    err_set(&e, AE_EIO, "x.npy: %s (hint: re-create it)", e.msg);
    assert_string_equal(e.msg, "x.npy: bad header (hint: re-create it)");
    assert_int_equal(e.code, AE_EIO);
}

static void test_fit_edges(void **unused)
{
    (void)unused;
    char out[16];
    err_fit(out, sizeof out, "0123456789abcde", 15); /* fits exactly */
    assert_string_equal(out, "0123456789abcde");
    err_fit(out, sizeof out, "0123456789abcdefXYZ", 19); /* 15 kept: 2 + " [...] " + 6 */
    assert_string_equal(out, "01 [...] defXYZ");
    err_fit(out, 0, "x", 1); /* nothing written, no crash */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_message_unchanged),
        cmocka_unit_test(test_long_path_keeps_the_reason),
        cmocka_unit_test(test_argument_may_be_the_message),
        cmocka_unit_test(test_fit_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
