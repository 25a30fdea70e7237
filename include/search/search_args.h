/*
 * search_args.h - command line of aesim-search (getopt_long): the
 * subcommand (index, query, eval, serve, train-ivf), its options, their defaults and units,
 * the --help text, and the checks that need no file (which options go with
 * which subcommand, k >= 1, exactly one query input, ...).
 * No I/O besides printing usage; no MPI (every rank parses the same argv).
 */
#ifndef AESIM_SEARCH_ARGS_H
#define AESIM_SEARCH_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "search/vecdb.h"

/* Longest path option, bytes including the NUL. */
#define SEARCH_PATH_MAX 4096
/* Most --image files and most --label values. */
#define SEARCH_MAX_IMAGES 4096
#define SEARCH_MAX_LABELS 1024
/* Default images per encoder call (memory: batch x largest activation). */
#define SEARCH_DEFAULT_BATCH 256
/* Default neighbours of eval (precision@10, the table). */
#define SEARCH_DEFAULT_EVAL_K 10

/* Test-time augmentation and query expansion (neighbours n) of index
 * --recipe retrieval, and the default alpha of --qe (README "Search
 * quality": measured best). */
#define SEARCH_RECIPE_TTA "flip,shift:1"
#define SEARCH_RECIPE_QE_N 5
#define SEARCH_DEFAULT_QE_ALPHA 3.0

/* serve defaults and limits: listen address, requests per micro-batch,
 * largest k a request may ask, largest request body (MiB) and the seconds a
 * silent client keeps its connection. */
#define SEARCH_DEFAULT_LISTEN "127.0.0.1:8080"
#define SEARCH_DEFAULT_MAX_BATCH 64
#define SEARCH_MAX_SERVE_BATCH 4096
#define SEARCH_DEFAULT_MAX_K 1000
#define SEARCH_MAX_SERVE_K 100000
#define SEARCH_DEFAULT_MAX_BODY_MIB 16
#define SEARCH_MAX_BODY_MIB 1024
#define SEARCH_DEFAULT_TIMEOUT_S 10

typedef enum { SEARCH_NONE = 0, SEARCH_INDEX = 1, SEARCH_QUERY = 2, SEARCH_EVAL = 3, SEARCH_SERVE = 4, SEARCH_TRAIN_IVF = 5 } SearchCmd;

/* Metric choice: from the manifest unless given. */
enum { SEARCH_METRIC_DEFAULT = -1 };

/* eval baselines (bit mask). */
enum { SEARCH_BASE_PIXELS = 1, SEARCH_BASE_PCA = 2 };

typedef struct SearchConfig {
    SearchCmd cmd;
    char db[SEARCH_PATH_MAX];       /* --db folder */
    char model[SEARCH_PATH_MAX];    /* --model checkpoint ("" = none) */
    char data[SEARCH_PATH_MAX];     /* --data source spec ("" = none) */
    int append;                     /* index --append */
    int whiten;                     /* index --whiten: store PCA-whitened codes (whiten.h) */
    int whiten_dim;                 /* index --whiten-dim K: directions kept (implies whiten), 0 = all */
    int allow_gaps;                 /* --allow-gaps: numbered sets with a file missing are taken (warning) */
    int recipe_retrieval;           /* index --recipe retrieval: --whiten --metric cosine */
    int k;                          /* --k / -k, 0 = not given */
    const char *images[SEARCH_MAX_IMAGES]; /* --image files (point into argv) */
    int n_images;
    char ids[SEARCH_PATH_MAX];      /* query --ids LIST: "3,17,20-29" ("" = none) */
    char queries[SEARCH_PATH_MAX];  /* query: .npy of vectors; eval: source spec */
    int metric;                     /* KnnMetric or SEARCH_METRIC_DEFAULT */
    int32_t labels[SEARCH_MAX_LABELS]; /* --label filter */
    int n_labels;
    char ids_from[SEARCH_PATH_MAX]; /* --ids-from FILE ("" = none) */
    int has_radius;
    double radius;                  /* --radius, in the units of the distance column */
    int json;                       /* --json */
    char sheet[SEARCH_PATH_MAX];    /* --sheet PNG ("" = none) */
    char class_names[SEARCH_PATH_MAX]; /* query --class-names FILE ("" = the data's own, class_names.h) */
    char out[SEARCH_PATH_MAX];      /* --out FILE ("" = stdout) */
    int64_t max_queries;            /* eval --max-queries, 0 = all */
    unsigned baselines;             /* eval --baseline: SEARCH_BASE_* bits */
    int batch;                      /* --batch images per encoder call */
    int threads;                    /* --threads, 0 = cores / ranks per node */
    char listen[256];               /* serve --listen HOST:PORT */
    int max_batch;                  /* serve --max-batch requests per batch */
    int max_k;                      /* serve --max-k */
    int max_body_mib;               /* serve --max-body-mib */
    int timeout_s;                  /* serve --timeout seconds */
    int precision;                  /* --precision: ModelPrecision (model.h) of the encoder, MODEL_FP32 default */
    int help;                       /* --help given */
    int nlist;                      /* index --ivf N / train-ivf --nlist N: IVF lists, 0 = no IVF */
    int nprobe;                     /* query/eval --nprobe N, 0 = IVF_DEFAULT_NPROBE */
    int exact;                      /* query/eval --exact: full scan even with an IVF */
    int recall;                     /* eval --recall: recall@k and queries/s of IVF vs exact, nprobe sweep */
    VecDbTta tta;                   /* index --tta (vecdb.h) */
    int has_tta;                    /* --tta given (else none, or the database's with --append) */
    int qe;                         /* --qe N: query expansion neighbours, 0 = off, -1 = not given (the database's) */
    double qe_alpha;                /* --qe-alpha A, < 0 = not given (the database's, else SEARCH_DEFAULT_QE_ALPHA) */
    int overwrite;                  /* --overwrite: replace existing --out/--sheet files (query, eval) or IVF index (train-ivf) */
} SearchConfig;

/* Parses argv (argv[1] = subcommand) into cfg, defaults first.  With --help
 * (anywhere) only cfg->help and cfg->cmd are meaningful.  Errors: AE_EARG
 * with a message naming the option and what is accepted: unknown subcommand
 * or option, an option that does not belong to the subcommand, a missing
 * required option (--db, --model, --data, k, a query input), a bad number
 * (k <= 0, negative radius), more than one query input. */
int search_args_parse(SearchConfig *cfg, int argc, char **argv, Err *err);

/* Prints the --help text (every subcommand, option, unit and default). */
void search_args_usage(FILE *out);

#endif
