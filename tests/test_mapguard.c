/*
 * test_mapguard.c - mapguard_try (src/base/mapguard.c): a bus error reading a
 * watched mapping of a file that shrank ends the guarded function, not the
 * process.
 *
 * Checks, on a 4-page temporary file mapped read-only and then truncated to
 * one page (POSIX mmap(2): pages wholly past the end raise SIGBUS): a read
 * inside the surviving page still returns the file's bytes (0 from
 * mapguard_try); a read past it returns -1 with the registered path; a
 * second fault in the same thread is caught too (the signal mask restored by
 * the jump back); nested calls are caught by the innermost, the outer one
 * then returns normally; a fault in another thread's mapguard_try is caught
 * there.  A fault outside mapguard_try still ends the process with the
 * "changed while in use" line and exit status 1 (checked in a child).
 * cmocka sets its own SIGBUS handler around every setup and test function:
 * each test registers its mapping again (rearm), which reinstalls ours.  Runs in ~0.01 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/mapguard.h"

typedef struct Read {
    const volatile uint8_t *at;
    int value; /* what was read, or -1 */
} Read;

static void read_byte(void *arg)
{
    Read *r = arg;
    r->value = *r->at;
}

typedef struct Fixture {
    char path[64];
    long page;
    uint8_t *map;
    size_t len;
} Fixture;

/* A 4-page file of bytes (i * 7) & 255, mapped and registered, then cut to
 * its first page. */
static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->page = sysconf(_SC_PAGESIZE);
    f->len = 4 * (size_t)f->page;
    snprintf(f->path, sizeof f->path, "/tmp/test_mapguard.XXXXXX");
    int fd = mkstemp(f->path);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(f->len);
    assert_non_null(buf);
    for (size_t i = 0; i < f->len; i++) buf[i] = (uint8_t)(i * 7);
    assert_int_equal(write(fd, buf, f->len), (ssize_t)f->len);
    free(buf);
    f->map = mmap(NULL, f->len, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(f->map != MAP_FAILED);
    mapguard_register(f->map, f->len, f->path);
    assert_int_equal(ftruncate(fd, f->page), 0);
    close(fd);
    *state = f;
    return 0;
}

/* Registers f's mapping again: mapguard_register reinstalls the handler
 * that cmocka replaced for the test function. */
static Fixture *rearm(void **state)
{
    Fixture *f = *state;
    mapguard_unregister(f->map);
    mapguard_register(f->map, f->len, f->path);
    return f;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    mapguard_unregister(f->map);
    munmap(f->map, f->len);
    unlink(f->path);
    free(f);
    return 0;
}

static void test_read_inside_the_file_returns_its_byte(void **state)
{
    Fixture *f = rearm(state);
    Read r = { f->map + 100, -1 };
    char path[256] = "unset";
    assert_int_equal(mapguard_try(read_byte, &r, path, sizeof path), 0);
    assert_int_equal(r.value, (100 * 7) & 255);
    assert_string_equal(path, "unset");
}

static void test_fault_past_the_end_returns_the_path_twice(void **state)
{
    Fixture *f = rearm(state);
    for (int round = 0; round < 2; round++) {
        Read r = { f->map + 2 * f->page + 5, -1 };
        char path[256] = "";
        assert_int_equal(mapguard_try(read_byte, &r, path, sizeof path), -1);
        assert_int_equal(r.value, -1);
        assert_string_equal(path, f->path);
    }
    /* A short buffer gets a cut, NUL-terminated path; none at all is fine. */
    Read r = { f->map + 3 * f->page, -1 };
    char small[5];
    assert_int_equal(mapguard_try(read_byte, &r, small, sizeof small), -1);
    assert_int_equal(strlen(small), 4);
    assert_memory_equal(small, f->path, 4);
    assert_int_equal(mapguard_try(read_byte, &r, NULL, 0), -1);
}

typedef struct Nest {
    Fixture *f;
    int inner_rc;
    char inner_path[256];
} Nest;

static void nested(void *arg)
{
    Nest *n = arg;
    Read r = { n->f->map + 3 * n->f->page, -1 };
    n->inner_rc = mapguard_try(read_byte, &r, n->inner_path, sizeof n->inner_path);
}

static void test_nested_calls_are_caught_by_the_innermost(void **state)
{
    Nest n = { rearm(state), 0, "" };
    char outer[256] = "unset";
    assert_int_equal(mapguard_try(nested, &n, outer, sizeof outer), 0);
    assert_int_equal(n.inner_rc, -1);
    assert_string_equal(n.inner_path, n.f->path);
    assert_string_equal(outer, "unset");
}

static void *thread_fault(void *arg)
{
    Nest *n = arg;
    nested(n);
    return NULL;
}

static void test_fault_in_another_thread_is_caught_there(void **state)
{
    Nest n = { rearm(state), 0, "" };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, thread_fault, &n), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(n.inner_rc, -1);
    assert_string_equal(n.inner_path, n.f->path);
}

static void test_fault_outside_try_ends_the_process_with_the_path(void **state)
{
    Fixture *f = rearm(state);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], STDERR_FILENO);
        volatile uint8_t v = f->map[2 * f->page];
        (void)v;
        _exit(0); /* not reached: the handler ends the child */
    }
    close(pipefd[1]);
    char out[2048] = "";
    size_t n = 0;
    ssize_t k;
    while ((k = read(pipefd[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)k;
    out[n] = '\0';
    close(pipefd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    char want[256];
    snprintf(want, sizeof want, "aesim: fatal: %s changed while in use", f->path);
    assert_non_null(strstr(out, want));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_inside_the_file_returns_its_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_past_the_end_returns_the_path_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nested_calls_are_caught_by_the_innermost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_in_another_thread_is_caught_there, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_outside_try_ends_the_process_with_the_path, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
