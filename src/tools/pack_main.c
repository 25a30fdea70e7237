/*
 * pack_main.c - aesim-pack: packs any dataset source into one
 * memory-mappable sample store (sample_store.h), decoding in parallel over
 * MPI ranks (pack.h).  Main only: init -> options -> pack -> report.
 * Exit status: 0 success, 1 runtime error (message on stderr, all ranks),
 * 2 bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "data/pack.h"
#include "par/par.h"
#include "tools/version.h"

enum { OPT_OUT = 256, OPT_WINDOW, OPT_HELP, OPT_DATAOPT, OPT_OVERWRITE };

static void usage(FILE *f)
{
    fprintf(f,
"Usage: [mpirun -np P] aesim-pack --out STORE.npz [options] SOURCE[,SOURCE...]\n"
"Packs images from any source into one uncompressed, memory-mappable sample\n"
"store (uint8 NCHW images + labels + names; a valid .npz).  Train on it with\n"
"--data STORE.npz.\n"
"SOURCE: [KIND:]PATH[?key=value&...]; KIND (guessed when omitted, the guess and its\n"
"reason are named in errors): npz (downsampled ImageNet, any images array, aesim\n"
"stores), npy, idx (MNIST IDX, plain or gzip), mnist (a folder holding\n"
"train-images-idx3-ubyte[.gz]), cifar10, cifar100, folder (PNG/JPEG, sub-folder =\n"
"label), list (a text file of image paths).  * and [...] are wildcards.  Keys and\n"
"formats: datasets/README.md.\n"
"  --out PATH           the store to write (written to a temporary file, then renamed);\n"
"                       an existing file is refused unless --overwrite is given\n"
"  --overwrite          replace an existing --out file\n"
"  --size HxW|S         resize every image to HxW (default: the source's / first image's)\n"
"  --channels 1|3       grey or RGB (default: the source's; folders: 3)\n"
"  --fit crop|squash    aspect ratio: centre crop (default) or squash\n"
"  --bg RRGGBB          background under transparent pixels (default ffffff)\n"
"  --layout auto|nchw|nhwc   layout of 4-D NumPy arrays (default auto)\n"
"  --range 1|255        full-intensity value of float arrays (default 1)\n"
"  --skip-bad           skip images that do not decode (counted and reported)\n"
"  --allow-gaps         take a numbered set (train_data_batch_*.npz) with a file missing,\n"
"                       with a warning; without it such a gap is an error\n"
"  --window N           images decoded per window and rank (default %d)\n"
"  --version            version, git commit, build flags and the CPU kernels chosen\n"
"  --help               this text\n"
"Exit status: 0 success, 1 runtime error, 2 bad usage.\n",
            PACK_DEFAULT_WINDOW);
}

/* The image decoders' hints end "skip bad files with skip_bad=1)", the
 * source key; aesim-pack's users have the option --skip-bad, which the same
 * hint names here (the same length: replaced in place). */
static void hint_the_option(char *msg)
{
    static const char key[] = "skip_bad=1)", opt[] = "--skip-bad)";
    _Static_assert(sizeof key == sizeof opt, "replaced in place");
    for (char *p = msg; (p = strstr(p, key)) != NULL; p += sizeof key - 1) memcpy(p, opt, sizeof opt - 1);
}

/* Length of a skipped file's reason without its " (hint: ...)": the files
 * were skipped as asked, so the way out is no longer news. */
static int without_hint(const char *note)
{
    const char *h = strstr(note, " (hint: ");
    return (int)(h ? (size_t)(h - note) : strlen(note));
}

int main(int argc, char **argv)
{
    if (version_requested(argc, argv)) return version_print(stdout, "aesim-pack");
    ParCtx ctx;
    par_init(&ctx, &argc, &argv);
    static const struct option longs[] = {
        {"out", required_argument, 0, OPT_OUT},       {"window", required_argument, 0, OPT_WINDOW},
        {"size", required_argument, 0, OPT_DATAOPT},  {"channels", required_argument, 0, OPT_DATAOPT},
        {"fit", required_argument, 0, OPT_DATAOPT},   {"bg", required_argument, 0, OPT_DATAOPT},
        {"layout", required_argument, 0, OPT_DATAOPT}, {"range", required_argument, 0, OPT_DATAOPT},
        {"skip-bad", no_argument, 0, OPT_DATAOPT},    {"allow-gaps", no_argument, 0, OPT_DATAOPT},
        {"overwrite", no_argument, 0, OPT_OVERWRITE}, {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0}};
    PackConfig cfg = {0};
    dataset_options_default(&cfg.opts);
    cfg.window = PACK_DEFAULT_WINDOW;
    Err err;
    err_clear(&err);
    int c, idx, bad = 0, overwrite = 0;
    opterr = 0; /* getopt's own messages lack the "aesim-pack: error:" form */
    while (!bad && (c = getopt_long(argc, argv, ":", longs, &idx)) != -1) {
        if (c == ':') bad = err_set(&err, AE_EARG, "option %s needs a value", argv[optind - 1]);
        else if (c == '?')
            bad = optopt > 0 && optopt < 256 ? err_set(&err, AE_EARG, "unknown option '-%c'", optopt)
                                             : err_set(&err, AE_EARG, "unknown option '%s'", argv[optind - 1]);
        else if (c == OPT_OUT) cfg.out = optarg;
        else if (c == OPT_OVERWRITE) overwrite = 1;
        else if (c == OPT_WINDOW) {
            char *end;
            errno = 0;
            long long w = strtoll(optarg, &end, 10);
            if (errno || end == optarg || *end || w < 1 || w > PACK_MAX_WINDOW)
                bad = err_set(&err, AE_EARG, "--window: '%s' is not an integer in 1..%d (images per window)", optarg,
                              PACK_MAX_WINDOW);
            else
                cfg.window = w;
        }
        else if (c == OPT_DATAOPT) {
            const char *key = !strcmp(longs[idx].name, "skip-bad")     ? "skip_bad"
                              : !strcmp(longs[idx].name, "allow-gaps") ? "allow_gaps"
                                                                       : longs[idx].name;
            bad = dataset_options_set(&cfg.opts, key, optarg ? optarg : "1", &err) != AE_OK;
        } else if (c == OPT_HELP) {
            if (ctx.rank == 0) usage(stdout);
            par_finalize(&ctx);
            return 0;
        } else bad = 1;
    }
    if (!bad && (optind != argc - 1 || !cfg.out)) {
        if (optind == argc) err_set(&err, AE_EARG, "no SOURCE given%s", cfg.out ? "" : " and no --out STORE.npz");
        else if (optind < argc - 1) err_set(&err, AE_EARG, "one SOURCE argument expected, got %d (hint: join several "
                                                           "sources with commas)", argc - optind);
        else err_set(&err, AE_EARG, "--out STORE.npz is missing");
        bad = 1;
    }
    if (bad) {
        if (err.code) par_err0(&ctx, "aesim-pack: error: %s (see aesim-pack --help)\n", err.msg);
        else par_err0(&ctx, "aesim-pack: error: bad usage (see aesim-pack --help)\n");
        par_finalize(&ctx);
        return 2;
    }
    cfg.spec = argv[optind];
    cfg.overwrite = overwrite;
    /* Every rank must pack the same sources into the same store. */
    par_check_same_args(&ctx, argc, argv, &err);
    if (par_agree(&ctx, &err)) {
        par_err0(&ctx, "aesim-pack: error: %s\n", err.msg);
        par_finalize(&ctx);
        return 2;
    }
    /* Another run's store is never replaced without being asked, nor a
     * device, folder or pipe ever. */
    fileio_check_output(cfg.out, "--out", overwrite, &err);
    if (par_agree(&ctx, &err)) {
        par_err0(&ctx, "aesim-pack: error: %s\n", err.msg);
        par_finalize(&ctx);
        return 1;
    }
    PackStats st;
    int rc = pack_run(&ctx, &cfg, &st, &err);
    if (rc) {
        hint_the_option(err.msg);
        par_err0(&ctx, "aesim-pack: error: %s\n", err.msg);
    }
    else {
        if (st.warning[0]) par_err0(&ctx, "aesim-pack: warning: %s\n", st.warning);
        par_log0(&ctx, "aesim-pack: %s: %lld images %dx%dx%d (CxHxW) from %lld in %s | %d rank(s) | decode %.2f s "
                 "(%.0f images/s) | finish %.2f s\n", cfg.out, (long long)st.n_out, st.C, st.H, st.W,
                 (long long)st.n_in, cfg.spec, ctx.size, st.decode_s, st.decode_s > 0 ? st.n_in / st.decode_s : 0.0,
                 st.finish_s);
        if (st.skipped)
            par_log0(&ctx, "aesim-pack: skipped %lld bad file(s); first: %.*s\n", (long long)st.skipped,
                     without_hint(st.skip_note), st.skip_note);
    }
    par_finalize(&ctx);
    return rc ? 1 : 0;
}
