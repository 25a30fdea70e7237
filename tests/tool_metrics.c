/*
 * tool_metrics.c - test helper for tests/test_metrics.py (not a test itself).
 *
 *   tool_metrics write PATH RESUME RESUME_STEP
 *       metrics_open(PATH, RESUME, RESUME_STEP), then one metrics_append per
 *       stdin line "step epoch train_loss val_loss val_psnr_db images_per_s
 *       seconds allreduce_ms comm_ms overlap" (doubles parsed with strtod:
 *       "nan" gives an empty field),
 *       then metrics_close.
 *   tool_metrics psnr MSE...
 *       prints metrics_psnr_db(MSE) with "%.17g", one per line.
 * On error prints the Err message to stderr and exits 1.  No MPI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/metrics.h"

/* Longest stdin row accepted, bytes. */
#define ROW_BYTES 1024
/* Values after the step in a stdin row. */
#define N_VALUES (METRICS_CSV_COLUMNS - 1)
_Static_assert(N_VALUES == 9, "the sscanf and metrics_append calls below list 9 values");

static int write_rows(const char *path, int resume, long long resume_step)
{
    Err err;
    err_clear(&err);
    MetricsLog m;
    if (metrics_open(&m, path, resume, (int64_t)resume_step, &err)) {
        fprintf(stderr, "tool_metrics: %s: %s\n", err_name(err.code), err.msg);
        return 1;
    }
    char line[ROW_BYTES];
    while (fgets(line, sizeof line, stdin)) {
        long long step;
        char v[N_VALUES][64];
        if (sscanf(line, "%lld %63s %63s %63s %63s %63s %63s %63s %63s %63s", &step, v[0], v[1], v[2], v[3], v[4],
                   v[5], v[6], v[7], v[8]) != 1 + N_VALUES) {
            fprintf(stderr, "tool_metrics: bad input row: %s", line);
            metrics_close(&m);
            return 2;
        }
        double d[N_VALUES];
        for (int i = 0; i < N_VALUES; i++) d[i] = strtod(v[i], NULL);
        if (metrics_append(&m, (int64_t)step, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], &err)) {
            fprintf(stderr, "tool_metrics: %s: %s\n", err_name(err.code), err.msg);
            metrics_close(&m);
            return 1;
        }
    }
    metrics_close(&m);
    metrics_close(&m); /* documented as safe */
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "write") == 0)
        return write_rows(argv[2], atoi(argv[3]), strtoll(argv[4], NULL, 10));
    if (argc >= 2 && strcmp(argv[1], "psnr") == 0) {
        for (int i = 2; i < argc; i++) printf("%.17g\n", metrics_psnr_db(strtod(argv[i], NULL)));
        return 0;
    }
    fprintf(stderr, "usage: tool_metrics write PATH RESUME RESUME_STEP < rows\n"
                    "       tool_metrics psnr MSE...\n");
    return 2;
}
