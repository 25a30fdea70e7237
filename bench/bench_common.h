/*
 * bench_common.h - small helpers shared by the benchmark programs in bench/
 * (bench_limits, bench_train, bench_knn): command-line options of the form
 * "--name value", and the JSON result lines that bench/report.py reads.
 *
 * What it does not do: time anything (timer.h's timer_now is the clock), pick
 * thread counts (each program does, see its header comment), or summarise
 * (medians, ratios and the table are computed by bench/report.py).
 *
 * Output protocol: every measurement is ONE line of JSON on stdout starting
 * with '{' (other lines are human-readable progress and are ignored by
 * report.py).  Fields used by every "result" line:
 *   kind        "result" (a workload), "limit" (a machine limit), "layer"
 *               (one row of a per-layer profile), "info" (machine facts)
 *   workload    the workload's name, e.g. "train imagenet64 B=128"
 *   impl        "aesim", "torch", "faiss"
 *   variant     how it was run, e.g. "1 rank x 2 threads"
 *   seconds     [runs] wall seconds of each timed run (warm-up excluded)
 *   items       items processed per run (images or queries)
 *   flop_item   FLOPs per item (2 x multiply-adds), 0 if not meaningful
 *   bytes_run   bytes that must be read from memory per run at least (for the
 *               roofline of memory-bound workloads), 0 if not meaningful
 * Threading/MPI: call from one thread; under MPI only rank 0 should print.
 */
#ifndef AESIM_BENCH_COMMON_H
#define AESIM_BENCH_COMMON_H

#include <stdint.h>
#include <stdio.h>

/* Most timed runs a program keeps (the report needs >= 3). */
#define BENCH_MAX_RUNS 64

/* Value of option "--name" in argv[1..argc), or def if absent.  A flag
 * that is present with no value following it ends the program with a
 * usage message (bench programs are run by launch/bench.sh, not users). */
const char *bench_opt_str(int argc, char **argv, const char *name, const char *def);
/* The same, parsed as an integer >= lo (ends the program if it is not). */
int64_t bench_opt_int(int argc, char **argv, const char *name, int64_t def, int64_t lo);

/* Prints one "result" line (see the protocol above) to f and flushes it.
 * seconds[n_runs] are the timed runs, n_runs in 1..BENCH_MAX_RUNS.
 * extra: more JSON members to append verbatim (e.g. "\"ranks\": 2"), or
 * NULL. */
void bench_print_result(FILE *f, const char *workload, const char *impl, const char *variant,
                        const double *seconds, int n_runs, double items, double flop_item, double bytes_run,
                        const char *extra);

/* Prints s as a JSON string literal (quotes and escapes included). */
void bench_print_json_string(FILE *f, const char *s);

/* Median of v[n] (n >= 1); v is not modified. */
double bench_median(const double *v, int n);

/* Sorts v[0..n) ascending in place (n >= 0). */
void bench_sort(double *v, size_t n);

#endif
