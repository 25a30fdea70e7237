/*
 * train_args.c - aesim-train option parsing with getopt_long (see train_args.h).
 */
#include "train/train_args.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/ckpt.h"
#include "model/model.h"
#include "par/grad_sync.h"

/* NT-Xent temperature when --tau is not given (SimCLR's CIFAR-10 setting). */
#define DEFAULT_TAU 0.5

/* The default training data: Debian's dataset-fashion-mnist package. */
#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"

enum {
    OPT_DATA = 256, OPT_DATA_OPTS, OPT_ALLOW_GAPS, OPT_VAL, OPT_VAL_FRACTION, OPT_VAL_LIMIT, OPT_ARCH, OPT_EPOCHS, OPT_MAX_STEPS,
    OPT_BATCH, OPT_OPTIMIZER, OPT_LR, OPT_BETA1, OPT_BETA2, OPT_EPS, OPT_MOMENTUM, OPT_SEED, OPT_OUT,
    OPT_CKPT_EVERY, OPT_RESUME, OPT_KEEP, OPT_THREADS, OPT_LOG_EVERY, OPT_GRID, OPT_CSV_EVERY, OPT_PROGRESS, OPT_BUCKET_KIB,
    OPT_NOISE, OPT_AUGMENT, OPT_CONTRASTIVE, OPT_CONTRASTIVE_POOL, OPT_CONTRASTIVE_HEAD, OPT_TAU, OPT_OVERWRITE, OPT_PRECISION, OPT_SHUFFLE, OPT_HELP, OPT_VERSION
};

static const struct option LONG_OPTS[] = {
    { "data", required_argument, 0, OPT_DATA },
    { "data-opts", required_argument, 0, OPT_DATA_OPTS },
    { "allow-gaps", no_argument, 0, OPT_ALLOW_GAPS },
    { "val", required_argument, 0, OPT_VAL },
    { "val-fraction", required_argument, 0, OPT_VAL_FRACTION },
    { "val-limit", required_argument, 0, OPT_VAL_LIMIT },
    { "arch", required_argument, 0, OPT_ARCH },
    { "epochs", required_argument, 0, OPT_EPOCHS },
    { "max-steps", required_argument, 0, OPT_MAX_STEPS },
    { "batch-size", required_argument, 0, OPT_BATCH },
    { "optimizer", required_argument, 0, OPT_OPTIMIZER },
    { "lr", required_argument, 0, OPT_LR },
    { "beta1", required_argument, 0, OPT_BETA1 },
    { "beta2", required_argument, 0, OPT_BETA2 },
    { "eps", required_argument, 0, OPT_EPS },
    { "momentum", required_argument, 0, OPT_MOMENTUM },
    { "seed", required_argument, 0, OPT_SEED },
    { "shuffle", required_argument, 0, OPT_SHUFFLE },
    { "out", required_argument, 0, OPT_OUT },
    { "ckpt-every", required_argument, 0, OPT_CKPT_EVERY },
    { "resume", required_argument, 0, OPT_RESUME },
    { "keep", required_argument, 0, OPT_KEEP },
    { "threads", required_argument, 0, OPT_THREADS },
    { "log-every", required_argument, 0, OPT_LOG_EVERY },
    { "grid", required_argument, 0, OPT_GRID },
    { "csv-every", required_argument, 0, OPT_CSV_EVERY },
    { "progress", required_argument, 0, OPT_PROGRESS },
    { "bucket-kib", required_argument, 0, OPT_BUCKET_KIB },
    { "noise", required_argument, 0, OPT_NOISE },
    { "augment", required_argument, 0, OPT_AUGMENT },
    { "contrastive", required_argument, 0, OPT_CONTRASTIVE },
    { "contrastive-pool", required_argument, 0, OPT_CONTRASTIVE_POOL },
    { "contrastive-head", required_argument, 0, OPT_CONTRASTIVE_HEAD },
    { "tau", required_argument, 0, OPT_TAU },
    { "overwrite", no_argument, 0, OPT_OVERWRITE },
    { "precision", required_argument, 0, OPT_PRECISION },
    { "help", no_argument, 0, OPT_HELP },
    { "version", no_argument, 0, OPT_VERSION },
    { 0, 0, 0, 0 },
};

void train_args_usage(FILE *out)
{
    fprintf(out,
"Usage: mpirun -np P aesim-train [options]      (or plain aesim-train for one rank)\n"
"Trains a convolutional autoencoder (conv3x3+ReLU, 2x2 max-pooling, 2x upsampling,\n"
"sigmoid output, MSE loss) data-parallel over P ranks: every rank reads its slice\n"
"of each global batch; each rank's loss is scaled by 1/(global batch x pixels) and the\n"
"gradients are summed over ranks during backward (bucketed MPI_Iallreduce, --bucket-kib),\n"
"so every rank applies the gradient of the mean over the global batch.\n"
"\n"
"Data\n"
"  --data SRC[,SRC...]   training images (default " DEFAULT_DATA "; with --resume: the\n"
"                        --data recorded in the checkpoint).\n"
"                        SRC: downsampled-ImageNet .npz (train_data_batch_N.npz, val_data.npz;\n"
"                        several files form one set), an IDX images file (.gz or plain;\n"
"                        labels read from the matching *labels-idx1* file), or a folder\n"
"                        holding train-images-idx3-ubyte[.gz] (MNIST / Fashion-MNIST).\n"
"                        Any source may carry options: KIND:PATH?key=value&... (PNG/JPEG\n"
"                        folders, list files, .npy/.npz arrays, CIFAR, aesim stores; see\n"
"                        datasets/README.md).\n"
"  --data-opts K=V[&K=V] options for every --data and --val source, e.g.\n"
"                        'size=64x64&channels=3&fit=crop' (resize with a box filter, centre crop)\n"
"  --allow-gaps          take a numbered set (train_data_batch_*.npz, a folder of batches) with a\n"
"                        file missing, with a warning; without it such a gap is an error\n"
"  --val SRC[,SRC...]    held-out validation images (default: split off --val-fraction;\n"
"                        for a MNIST-style folder: its t10k-images file)\n"
"  --val-fraction F      fraction of --data held out by seed when --val is not given (default 0.05)\n"
"  --val-limit N         evaluate on the first N validation images only (default 0 = all)\n"
"\n"
"Model\n"
"  --arch NAME|SPEC      preset mnist (28x28x1), imagenet32 (32x32x3), imagenet64 (64x64x3),\n"
"                        or a spec such as \"c16 p c8 p c8 | c16 u c16 u c1\": cN = 3x3 conv to\n"
"                        N channels + ReLU (cNkK: odd kernel K), p = 2x2 max-pool, u = 2x\n"
"                        upsample, | = end of encoder (bottleneck); the last conv gets a\n"
"                        sigmoid and must output the image's channels.\n"
"                        Default: the preset matching the image shape.\n"
"\n"
"Embeddings for search (no labels; all off by default: the plain MSE autoencoder)\n"
"  --noise gauss:SIGMA|mask:RATIO|none  denoising: corrupt the input (Gaussian noise, or\n"
"                        zero a fraction of pixels); the loss compares with the clean image\n"
"  --augment LIST        random views: crop:MIN (random resized crop, area >= MIN), flip,\n"
"                        shift:PX, default (= crop:0.5,flip,shift:2), or none\n"
"  --contrastive W       add W x NT-Xent (SimCLR) on the bottleneck: two views of each image,\n"
"                        the other images of the GLOBAL batch as negatives (default 0 = off)\n"
"  --contrastive-pool none|avg  what NT-Xent compares: none (default) the flattened bottleneck,\n"
"                        avg its channel means (global average pooling, as SimCLR pools its\n"
"                        encoder); the search vector stays the whole bottleneck either way\n"
"  --contrastive-head N  NT-Xent on g(h) = W2 ReLU(W1 h + b1) + b2, N units (SimCLR's\n"
"                        projection head, trained along, saved in checkpoints, not used by\n"
"                        search); needs --contrastive-pool avg (default 0 = no head)\n"
"  --tau T               NT-Xent temperature (default 0.5)\n"
"                        Views and noise are seeded by (seed, epoch, position) and do not\n"
"                        depend on the number of ranks.  Measured effect on search quality:\n"
"                        README \"Search quality\" (the best search recipe is on the search\n"
"                        side: aesim-search index --recipe retrieval).\n"
"\n"
"Optimisation (hyper-parameters mean the same for any P)\n"
"  --epochs N            train until N passes over the training set are done, counted from the\n"
"                        run's first step, also after --resume (default 5)\n"
"  --max-steps N         stop once N optimizer steps are done, counted from the run's first step,\n"
"                        also after --resume (default 0 = no limit; a resume without it trains\n"
"                        on to --epochs)\n"
"  --batch-size N        GLOBAL batch in images, split across ranks (default 128)\n"
"  --precision P         auto (default), fp32 or bf16: bf16 rounds convolution inputs, weights\n"
"                        and output gradients to bfloat16 and sums products in float32 (master\n"
"                        weights, Adam, loss and allreduce stay float32): VDPBF16PS kernels on\n"
"                        CPUs with AVX512_BF16, emulated (slower) elsewhere; auto = bf16 when\n"
"                        every rank's CPU has AVX512_BF16 and its VDPBF16PS, measured at start,\n"
"                        does >= 1.4x the multiply-adds/s of float32 FMAs (AMD Zen 4 and 5;\n"
"                        not Intel Xeons, about 0.5x), else fp32 (the model: line says which,\n"
"                        --version the rate); fp32 for results that equal PyTorch float32\n"
"  --optimizer adam|sgd  (default adam)\n"
"  --lr X                learning rate (default 1e-3)\n"
"  --beta1 X --beta2 X   Adam moment decay (defaults 0.9, 0.999)\n"
"  --eps X               Adam epsilon, added to sqrt(v_hat) as in torch.optim.Adam (default 1e-7)\n"
"  --momentum X          SGD momentum (default 0.9)\n"
"  --seed N              seed of the initial weights and of every epoch's shuffle (default 42)\n"
"  --shuffle global|block[:B[:W]]  order of the samples in an epoch: global (default) = a\n"
"                        uniformly random permutation; block = blocks of B consecutive samples\n"
"                        in random order, the samples of each W blocks shuffled together\n"
"                        (FFCV's quasi-random order: reads W runs of the files at a time, for\n"
"                        data larger than the page cache; default B %d, W %d). Same for any\n"
"                        number of ranks; kept by --resume\n"
"  After --resume, --epochs, --batch-size, --seed, --optimizer, --lr, --beta1/2, --eps,\n"
"  --momentum, --noise, --augment, --contrastive, --contrastive-pool, --contrastive-head and --tau\n"
"  default to the resumed run's values (from its checkpoint), so the run continues as it was\n"
"  started; --seed and --optimizer cannot change, nor can anything that drops or resizes a\n"
"  trained projection head; the others may (each change is reported).\n"
"\n"
"Output and restart\n"
"  --out DIR             output folder (default runs/aesim; with --resume: the folder resumed\n"
"                        from): checkpoint.npz (the newest checkpoint), ckpt-stepNNNNNNNN.npz\n"
"                        (the last --keep ones), metrics.csv, recon_epochNNN.png (validation\n"
"                        originals over reconstructions).  A fresh run refuses a folder holding\n"
"                        another run's files (those): --resume it, or --overwrite\n"
"  --overwrite           let a fresh run (or a resume into another --out) first delete the\n"
"                        checkpoints, metrics.csv and recon_epoch*.png found in --out; let a\n"
"                        resume of an older step in its own folder delete the newer ones\n"
"  --ckpt-every N        also checkpoint every N steps (default 500; 0 = epoch ends only)\n"
"  --keep N              step checkpoints kept in --out, newest first (default 3); each is\n"
"                        written atomically and carries a CRC-32 per tensor; a damaged one\n"
"                        does not count\n"
"  --resume CKPT|DIR     continue from a checkpoint (any number of ranks; the same number of\n"
"                        ranks and --threads reproduces an uninterrupted run bit for bit) in\n"
"                        its folder (new checkpoints there, rows appended to its metrics.csv)\n"
"                        unless --out names another.  DIR: its newest intact checkpoint.  A\n"
"                        damaged (truncated, bit-flipped) or edited (a value these options\n"
"                        refuse) checkpoint is refused with the reason and the next older one\n"
"                        is used; a CKPT that does not exist is an error.  The training data\n"
"                        must be the data the checkpoint was trained on (count and a CRC of\n"
"                        sampled images).\n"
"  --progress MODE       bar (live, for terminals), lines (for logs) or auto (default: bar on a\n"
"                        terminal outside mpirun; launch/train.sh picks bar on a terminal)\n"
"  --log-every S         seconds between progress lines when stdout is not a terminal (default 10)\n"
"  --grid N              validation images in the reconstruction grid (default 8)\n"
"  --csv-every N         steps per metrics.csv step row: the means of train loss and throughput\n"
"                        over them (default 20); each epoch end adds a row with the means over\n"
"                        the epoch and the validation loss and PSNR\n"
"\n"
"Stopping and faults\n"
"  SIGTERM, SIGINT or SIGUSR1 to mpirun or to any rank: every rank finishes the current step,\n"
"  rank 0 writes a checkpoint, all exit with status 0; resume with --resume DIR.  On SIGTERM or\n"
"  SIGINT, mpirun (Open MPI 4.1) sends the ranks SIGTERM after odls_base_sigkill_timeout s\n"
"  (default 1) and SIGKILL as long again later, and itself exits 1: for steps longer than that,\n"
"  set OMPI_MCA_odls_base_sigkill_timeout=60, or send SIGUSR1 (forwarded at once, no SIGKILL).\n"
"  A SIGINT after a stop request ends the process at once.\n"
"  NaN/Inf in the loss, gradients or weights stops training with an error naming the step; the\n"
"  last checkpoint is kept.  A dead rank ends the whole job (Open MPI aborts it); a failed write\n"
"  (full disk, read-only folder) stops with the file and errno text; older files stay intact.\n"
"\n"
"Communication\n"
"  --bucket-kib N        gradient allreduce bucket size in KiB (default %d): as the backward\n"
"                        pass finishes the last layers, their gradients (whole layers, about N\n"
"                        KiB per bucket) are summed with a non-blocking MPI_Iallreduce while the\n"
"                        earlier layers are still computed (PyTorch DDP bucketing); 0 = one\n"
"                        blocking allreduce of all gradients after backward.  The summary line\n"
"                        reports the exposed allreduce time and the overlap achieved.\n"
"\n"
"Threads\n"
"  --threads T           OpenMP threads per rank (default: the CPUs this rank may run on, from\n"
"                        its affinity mask, / the ranks of the node that share them; BLAS runs\n"
"                        single-threaded inside the kernels).  OMP_NUM_THREADS is used when\n"
"                        --threads is not given, capped at that share.  mpirun binds each rank\n"
"                        to one core when it starts 2 or fewer: --bind-to none lets threads\n"
"                        spread, --map-by slot:PE=T --bind-to core gives each rank T cores\n"
"  --help                this text\n"
"  --version             version, git commit, build flags, the CPU kernels chosen and\n"
"                        what --precision auto runs on this CPU\n"
"\n"
"Exit status: 0 success (also after a SIGTERM/SIGINT/SIGUSR1 stop), 1 runtime error\n"
"(\"aesim-train: error: ...\" on stderr, every rank), 2 bad usage (a bad option or value).\n",
            TRAIN_SHUFFLE_BLOCK_DEFAULT,
            TRAIN_SHUFFLE_WINDOW_DEFAULT, GRAD_SYNC_BUCKET_KIB_DEFAULT);
}

/* The TRAIN_GIVEN_* bit of an option, 0 for options a resume does not
 * take from the checkpoint. */
static unsigned given_bit(int o)
{
    switch (o) {
    case OPT_OUT: return TRAIN_GIVEN_OUT;
    case OPT_EPOCHS: return TRAIN_GIVEN_EPOCHS;
    case OPT_MAX_STEPS: return TRAIN_GIVEN_MAX_STEPS;
    case OPT_BATCH: return TRAIN_GIVEN_BATCH;
    case OPT_SEED: return TRAIN_GIVEN_SEED;
    case OPT_OPTIMIZER: return TRAIN_GIVEN_OPTIMIZER;
    case OPT_LR: return TRAIN_GIVEN_LR;
    case OPT_BETA1: return TRAIN_GIVEN_BETA1;
    case OPT_BETA2: return TRAIN_GIVEN_BETA2;
    case OPT_EPS: return TRAIN_GIVEN_EPS;
    case OPT_MOMENTUM: return TRAIN_GIVEN_MOMENTUM;
    case OPT_SHUFFLE: return TRAIN_GIVEN_SHUFFLE;
    case OPT_DATA: return TRAIN_GIVEN_DATA;
    case OPT_CONTRASTIVE: return TRAIN_GIVEN_CONTRASTIVE;
    case OPT_CONTRASTIVE_POOL: return TRAIN_GIVEN_POOL;
    case OPT_CONTRASTIVE_HEAD: return TRAIN_GIVEN_HEAD;
    case OPT_TAU: return TRAIN_GIVEN_TAU;
    case OPT_NOISE: return TRAIN_GIVEN_NOISE;
    case OPT_AUGMENT: return TRAIN_GIVEN_AUGMENT;
    default: return 0;
    }
}

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out, Err *err);

/* --shuffle global | block[:B[:W]]. */
static int parse_shuffle(TrainConfig *c, const char *s, Err *err)
{
    if (!strcmp(s, "global")) {
        c->shuffle_block = c->shuffle_window = 0;
        return AE_OK;
    }
    if (strncmp(s, "block", 5) != 0 || (s[5] && s[5] != ':'))
        return err_set(err, AE_EARG, "--shuffle: '%s' is not global, block, block:B or block:B:W", s);
    int64_t b = TRAIN_SHUFFLE_BLOCK_DEFAULT, w = TRAIN_SHUFFLE_WINDOW_DEFAULT;
    if (s[5] == ':') {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%s", s + 6);
        char *colon = strchr(tmp, ':');
        if (colon) *colon = '\0';
        if (parse_i64("shuffle block:B", tmp, 1, CKPT_SHUFFLE_MAX, &b, err)) return err->code;
        if (colon && parse_i64("shuffle block:B:W", colon + 1, 1, CKPT_SHUFFLE_MAX, &w, err)) return err->code;
    }
    c->shuffle_block = b;
    c->shuffle_window = w;
    return AE_OK;
}

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out, Err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return err_set(err, AE_EARG, "--%s: '%s' is not an integer in %lld..%lld", opt, s, (long long)lo,
                       (long long)hi);
    *out = v;
    return AE_OK;
}

static int parse_f64(const char *opt, const char *s, double lo, double hi, double *out, Err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return err_set(err, AE_EARG, "--%s: '%s' is not a number in [%.10g, %.10g]", opt, s, lo, hi);
    *out = v;
    return AE_OK;
}

static int copy_str(char *dst, size_t cap, const char *opt, const char *s, Err *err)
{
    if (!*s) return err_set(err, AE_EARG, "--%s: empty value (is a shell variable unset?)", opt);
    if (strlen(s) >= cap) return err_set(err, AE_EARG, "--%s: value longer than %zu characters", opt, cap - 1);
    memcpy(dst, s, strlen(s) + 1);
    return AE_OK;
}

int train_args_parse(TrainConfig *c, int argc, char **argv, Err *err)
{
    memset(c, 0, sizeof *c);
    snprintf(c->data, sizeof c->data, "%s", DEFAULT_DATA);
    c->val_fraction = 0.05;
    c->epochs = 5;
    c->batch_size = 128;
    c->opt = OPT_ADAM;
    c->adam = (AdamConfig){ 1e-3f, 0.9f, 0.999f, 1e-7f };
    c->momentum = 0.9f;
    c->seed = 42;
    snprintf(c->out, sizeof c->out, "runs/aesim");
    c->ckpt_every = 500;
    c->keep = CKPT_KEEP_DEFAULT;
    c->log_every = 10;
    c->grid_n = 8;
    c->csv_every = 20;
    c->bucket_kib = GRAD_SYNC_BUCKET_KIB_DEFAULT;
    c->tau = DEFAULT_TAU;
    c->precision = MODEL_PRECISION_AUTO;
    optind = 1;
    opterr = 0;
    int o, idx = 0;
    while ((o = getopt_long(argc, argv, ":h", LONG_OPTS, &idx)) != -1) {
        const char *name = NULL;
        for (const struct option *lo = LONG_OPTS; lo->name; lo++)
            if (lo->val == o) name = lo->name;
        int64_t i = 0;
        double f = 0;
        int rc = AE_OK;
        switch (o) {
        case OPT_DATA: rc = copy_str(c->data, sizeof c->data, name, optarg, err); break;
        case OPT_VAL: rc = copy_str(c->val, sizeof c->val, name, optarg, err); break;
        case OPT_DATA_OPTS: rc = copy_str(c->data_opts, sizeof c->data_opts, name, optarg, err); break;
        case OPT_ALLOW_GAPS: c->allow_gaps = 1; break;
        case OPT_VAL_FRACTION:
            if (!(rc = parse_f64(name, optarg, 1e-9, 0.5, &f, err))) c->val_fraction = f;
            break;
        case OPT_VAL_LIMIT:
            if (!(rc = parse_i64(name, optarg, 0, INT64_MAX, &i, err))) c->val_limit = i;
            break;
        case OPT_ARCH: rc = copy_str(c->arch, sizeof c->arch, name, optarg, err); break;
        case OPT_EPOCHS:
            if (!(rc = parse_i64(name, optarg, 1, CKPT_EPOCHS_MAX, &i, err))) c->epochs = (int)i;
            break;
        case OPT_MAX_STEPS:
            if (!(rc = parse_i64(name, optarg, 0, INT64_MAX, &i, err))) c->max_steps = i;
            break;
        case OPT_BATCH:
            if (!(rc = parse_i64(name, optarg, 1, CKPT_BATCH_SIZE_MAX, &i, err))) c->batch_size = (int)i;
            break;
        case OPT_PRECISION: {
            ModelPrecision p;
            if (!(rc = model_precision_parse(&p, optarg, err))) c->precision = (int)p;
            break;
        }
        case OPT_OPTIMIZER:
            if (strcmp(optarg, "adam") == 0) c->opt = OPT_ADAM;
            else if (strcmp(optarg, "sgd") == 0) c->opt = OPT_SGD;
            else rc = err_set(err, AE_EARG, "--optimizer: '%s' is not adam or sgd", optarg);
            break;
        case OPT_LR:
            if (!(rc = parse_f64(name, optarg, OPTIMIZER_LR_MIN, OPTIMIZER_LR_MAX, &f, err))) c->adam.lr = (float)f;
            break;
        case OPT_BETA1:
            if (!(rc = parse_f64(name, optarg, 0, OPTIMIZER_BETA1_MAX, &f, err))) c->adam.beta1 = (float)f;
            break;
        case OPT_BETA2:
            if (!(rc = parse_f64(name, optarg, 0, OPTIMIZER_BETA2_MAX, &f, err))) c->adam.beta2 = (float)f;
            break;
        case OPT_EPS:
            if (!(rc = parse_f64(name, optarg, OPTIMIZER_EPS_MIN, OPTIMIZER_EPS_MAX, &f, err))) c->adam.eps = (float)f;
            break;
        case OPT_MOMENTUM:
            if (!(rc = parse_f64(name, optarg, 0, OPTIMIZER_MOMENTUM_MAX, &f, err))) c->momentum = (float)f;
            break;
        case OPT_SEED:
            if (!(rc = parse_i64(name, optarg, 0, INT64_MAX, &i, err))) c->seed = (uint64_t)i;
            break;
        case OPT_SHUFFLE: rc = parse_shuffle(c, optarg, err); break;
        case OPT_OUT: rc = copy_str(c->out, sizeof c->out, name, optarg, err); break;
        case OPT_CKPT_EVERY:
            if (!(rc = parse_i64(name, optarg, 0, INT64_MAX, &i, err))) c->ckpt_every = i;
            break;
        case OPT_RESUME: rc = copy_str(c->resume, sizeof c->resume, name, optarg, err); break;
        case OPT_KEEP:
            if (!(rc = parse_i64(name, optarg, 1, 1000000, &i, err))) c->keep = (int)i;
            break;
        case OPT_THREADS:
            if (!(rc = parse_i64(name, optarg, 1, 1024, &i, err))) c->threads = (int)i;
            break;
        case OPT_LOG_EVERY:
            if (!(rc = parse_f64(name, optarg, 0, 1e6, &f, err))) c->log_every = f;
            break;
        case OPT_GRID:
            if (!(rc = parse_i64(name, optarg, 0, 64, &i, err))) c->grid_n = (int)i;
            break;
        case OPT_CSV_EVERY:
            if (!(rc = parse_i64(name, optarg, 1, INT64_MAX, &i, err))) c->csv_every = i;
            break;
        case OPT_PROGRESS:
            if (strcmp(optarg, "auto") == 0) c->progress = PROGRESS_AUTO;
            else if (strcmp(optarg, "bar") == 0) c->progress = PROGRESS_BAR;
            else if (strcmp(optarg, "lines") == 0) c->progress = PROGRESS_LINES;
            else rc = err_set(err, AE_EARG, "--progress: '%s' is not auto, bar or lines", optarg);
            break;
        case OPT_BUCKET_KIB:
            if (!(rc = parse_i64(name, optarg, 0, GRAD_SYNC_BUCKET_KIB_MAX, &i, err))) c->bucket_kib = (int)i;
            break;
        case OPT_NOISE:
            rc = augment_parse_noise(&c->aug, optarg, err);
            break;
        case OPT_AUGMENT:
            rc = augment_parse(&c->aug, optarg, err);
            break;
        case OPT_CONTRASTIVE:
            if (!(rc = parse_f64(name, optarg, 0, CKPT_CONTRASTIVE_MAX, &f, err))) c->contrastive = f;
            break;
        case OPT_CONTRASTIVE_POOL:
            if (strcmp(optarg, "none") == 0) c->contrastive_pool = CONTRASTIVE_POOL_NONE;
            else if (strcmp(optarg, "avg") == 0) c->contrastive_pool = CONTRASTIVE_POOL_AVG;
            else rc = err_set(err, AE_EARG, "--contrastive-pool: '%s' is not none or avg", optarg);
            break;
        case OPT_CONTRASTIVE_HEAD:
            if (!(rc = parse_i64(name, optarg, 0, CKPT_HEAD_MAX, &i, err))) c->contrastive_head = (int)i;
            break;
        case OPT_TAU:
            if (!(rc = parse_f64(name, optarg, CKPT_TAU_MIN, CKPT_TAU_MAX, &f, err))) c->tau = f;
            break;
        case OPT_OVERWRITE: c->overwrite = 1; break;
        case 'h':
        case OPT_HELP: c->help = 1; break;
        case OPT_VERSION: c->version = 1; break;
        case ':':
            rc = err_set(err, AE_EARG, "option %s needs a value (see --help)", argv[optind - 1]);
            break;
        default:
            /* optopt: the bad character of a short option ("-xq"); 0 or >= 256 for a long one. */
            if (optopt > 0 && optopt < 256) rc = err_set(err, AE_EARG, "unknown option '-%c' (see --help)", optopt);
            else rc = err_set(err, AE_EARG, "unknown option '%s' (see --help)", argv[optind - 1]);
            break;
        }
        if (rc) return rc;
        c->given |= given_bit(o);
    }
    if (optind < argc)
        return err_set(err, AE_EARG, "unexpected argument '%s' (options start with --; see --help)", argv[optind]);
    if (!c->resume[0] && c->contrastive_head > 0 &&
        (c->contrastive <= 0 || c->contrastive_pool != CONTRASTIVE_POOL_AVG))
        return err_set(err, AE_EARG, "--contrastive-head %d needs --contrastive W > 0 and --contrastive-pool avg (the "
                       "head takes the pooled bottleneck, as SimCLR's)", c->contrastive_head);
    return AE_OK;
}
