/*
 * train_args.h - command-line options of aesim-train (getopt_long), their
 * defaults, units and the --help text.  No I/O besides printing usage;
 * no MPI (every rank parses the same argv).
 */
#ifndef AESIM_TRAIN_ARGS_H
#define AESIM_TRAIN_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "model/optimizer.h"
#include "data/augment.h"

/* Longest path option, bytes including the NUL. */
#define ARG_PATH_MAX 4096

/* How rank 0 shows progress: a live bar redrawn with '\r' (terminals) or
 * plain lines (logs).  AUTO = bar only when stdout is a terminal and the
 * process is not under mpirun, whose forwarded stdout looks like a terminal
 * even when it goes to a file (launch/train.sh asks for the bar itself). */
enum { PROGRESS_AUTO = 0, PROGRESS_BAR = 1, PROGRESS_LINES = 2 };

/* --shuffle block defaults: 256 consecutive samples a block (3 MiB of
 * 64x64 RGB images: long sequential reads), 64 blocks shuffled together
 * (16,384 samples mixed in each window). */
#define TRAIN_SHUFFLE_BLOCK_DEFAULT 256
#define TRAIN_SHUFFLE_WINDOW_DEFAULT 64

typedef struct TrainConfig {
    char data[ARG_PATH_MAX];   /* training source(s), comma-separated */
    char val[ARG_PATH_MAX];    /* validation source, "" = split off val_fraction */
    char data_opts[1024];      /* dataset options KEY=VALUE[&KEY=VALUE...] for --data and --val */
    int allow_gaps;            /* --allow-gaps: numbered sets with a file missing are taken, with a warning */
    double val_fraction;       /* fraction of data held out when val == "" */
    int64_t val_limit;         /* evaluate on at most this many val images (0 = all) */
    char arch[1024];           /* preset name or spec; "" = preset for the image shape */
    int epochs;
    int64_t max_steps;         /* stop after this many optimizer steps in total (0 = no limit) */
    int batch_size;            /* global batch, split across ranks */
    OptKind opt;
    AdamConfig adam;           /* lr, beta1, beta2, eps */
    float momentum;            /* SGD */
    uint64_t seed;
    int64_t shuffle_block;     /* --shuffle block:B:W: samples per block (sampler_block_permutation); 0 = global */
    int64_t shuffle_window;    /* blocks shuffled together */
    char out[ARG_PATH_MAX];    /* output folder */
    int64_t ckpt_every;        /* checkpoint every N steps (0 = only at epoch ends) */
    char resume[ARG_PATH_MAX]; /* checkpoint file or folder to resume from, "" = fresh start */
    int keep;                  /* step checkpoints kept in the output folder (ckpt.h), >= 1 */
    int threads;               /* OpenMP threads per rank, 0 = cores / ranks per node */
    double log_every;          /* seconds between progress lines when not on a terminal */
    int grid_n;                /* validation images in the reconstruction grid */
    int64_t csv_every;         /* optimizer steps per metrics.csv row */
    int progress;              /* PROGRESS_AUTO, PROGRESS_BAR or PROGRESS_LINES */
    int bucket_kib;            /* gradient allreduce bucket, KiB (grad_sync.h); 0 = one blocking
                                  allreduce after backward */
    /* Embeddings for search (train_views.h); all off by default = the plain MSE autoencoder. */
    AugmentConfig aug;         /* --noise and --augment */
    double contrastive;        /* --contrastive W: NT-Xent weight (0 = off) */
    double tau;                /* --tau: NT-Xent temperature */
    int contrastive_pool;      /* --contrastive-pool: CONTRASTIVE_POOL_NONE (NT-Xent on the
                                  flattened bottleneck) or CONTRASTIVE_POOL_AVG (on its channel means) */
    int contrastive_head;      /* --contrastive-head N: SimCLR projection head width (proj_head.h),
                                  0 = none; needs CONTRASTIVE_POOL_AVG */
    int overwrite;             /* --overwrite: a fresh run may replace another run's files in --out */
    int precision;             /* ModelPrecision (model.h): MODEL_PRECISION_AUTO (default), MODEL_FP32 or MODEL_BF16 */
    int help;                  /* --help was given */
    int version;               /* --version was given */
    unsigned given;            /* TRAIN_GIVEN_* bits: options set on the command line (the rest are
                                  defaults, which a resumed run takes from its checkpoint instead) */
    int data_from_ckpt;        /* 1: data is the --data recorded in the resumed checkpoint (no --data given) */
    char *resume_notes;        /* rank 0: train_schedule_adopt's notes ("--lr X replaces Y", "keeps ..."), held
                                  by train_setup_resume and printed by train_setup_model once every check passed
                                  (a refused resume prints only why); owned, NULL when none */
} TrainConfig;

/* TrainConfig.contrastive_pool. */
enum { CONTRASTIVE_POOL_NONE = 0, CONTRASTIVE_POOL_AVG = 1 };

/* Bits of TrainConfig.given. */
enum {
    TRAIN_GIVEN_OUT = 1u << 0,
    TRAIN_GIVEN_EPOCHS = 1u << 1,
    TRAIN_GIVEN_MAX_STEPS = 1u << 2,
    TRAIN_GIVEN_BATCH = 1u << 3,
    TRAIN_GIVEN_SEED = 1u << 4,
    TRAIN_GIVEN_OPTIMIZER = 1u << 5,
    TRAIN_GIVEN_LR = 1u << 6,
    TRAIN_GIVEN_BETA1 = 1u << 7,
    TRAIN_GIVEN_BETA2 = 1u << 8,
    TRAIN_GIVEN_EPS = 1u << 9,
    TRAIN_GIVEN_MOMENTUM = 1u << 10,
    TRAIN_GIVEN_SHUFFLE = 1u << 11,
    TRAIN_GIVEN_DATA = 1u << 12,
    TRAIN_GIVEN_CONTRASTIVE = 1u << 13,
    TRAIN_GIVEN_POOL = 1u << 14,
    TRAIN_GIVEN_HEAD = 1u << 15,
    TRAIN_GIVEN_TAU = 1u << 16,
    TRAIN_GIVEN_NOISE = 1u << 17,
    TRAIN_GIVEN_AUGMENT = 1u << 18
};

/* Parses argv into cfg (defaults first).  Errors: AE_EARG with a message
 * naming the option and the accepted values; without --resume also for
 * --contrastive-head without --contrastive W > 0 and --contrastive-pool avg
 * (with --resume the check follows the options taken from the checkpoint:
 * train_schedule_adopt). */
int train_args_parse(TrainConfig *cfg, int argc, char **argv, Err *err);

/* Prints the --help text (every option, unit and default). */
void train_args_usage(FILE *out);

#endif
