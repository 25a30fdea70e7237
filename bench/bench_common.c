/*
 * bench_common.c - option parsing and JSON result lines for the benchmark
 * programs (see bench_common.h).  No MPI, no threads, no global state.
 */
#include "bench_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"

const char *bench_opt_str(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) != 0) continue;
        if (i + 1 >= argc) {
            fprintf(stderr, "bench: option %s needs a value (these programs are run by launch/bench.sh)\n", name);
            exit(2);
        }
        return argv[i + 1];
    }
    return def;
}

int64_t bench_opt_int(int argc, char **argv, const char *name, int64_t def, int64_t lo)
{
    const char *s = bench_opt_str(argc, argv, name, NULL);
    if (!s) return def;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo) {
        fprintf(stderr, "bench: option %s: '%s' is not an integer >= %lld\n", name, s, (long long)lo);
        exit(2);
    }
    return (int64_t)v;
}

void bench_print_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void bench_print_result(FILE *f, const char *workload, const char *impl, const char *variant,
                        const double *seconds, int n_runs, double items, double flop_item, double bytes_run,
                        const char *extra)
{
    CHECK(n_runs >= 1 && n_runs <= BENCH_MAX_RUNS);
    fputs("{\"kind\": \"result\", \"workload\": ", f);
    bench_print_json_string(f, workload);
    fputs(", \"impl\": ", f);
    bench_print_json_string(f, impl);
    fputs(", \"variant\": ", f);
    bench_print_json_string(f, variant);
    fputs(", \"seconds\": [", f);
    for (int i = 0; i < n_runs; i++) fprintf(f, "%s%.9g", i ? ", " : "", seconds[i]);
    fprintf(f, "], \"items\": %.17g, \"flop_item\": %.17g, \"bytes_run\": %.17g", items, flop_item, bytes_run);
    if (extra && *extra) fprintf(f, ", %s", extra);
    fputs("}\n", f);
    fflush(f);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_sort(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
}

double bench_median(const double *v, int n)
{
    CHECK(n >= 1 && n <= BENCH_MAX_RUNS);
    double s[BENCH_MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *s);
    bench_sort(s, (size_t)n);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}
