/*
 * search_args.c - aesim-search command line with getopt_long (see
 * include/search/search_args.h).  argv[1] is the subcommand; getopt_long then parses
 * argv[1..] as if the subcommand were the program name.
 */
#include "search/search_args.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "model/model.h"
#include "search/ivf.h"
#include "search/knn.h"
#include "search/vecdb.h"

/* Which subcommands accept an option (bit mask: 1 << (SearchCmd - 1)). */
enum { FOR_INDEX = 1, FOR_QUERY = 2, FOR_EVAL = 4, FOR_SERVE = 8, FOR_TRAIN_IVF = 16, FOR_ALL = 31 };

enum {
    OPT_DB = 256, OPT_MODEL, OPT_DATA, OPT_APPEND, OPT_K, OPT_IMAGE, OPT_IDS, OPT_QUERIES, OPT_METRIC, OPT_LABEL,
    OPT_IDS_FROM, OPT_RADIUS, OPT_JSON, OPT_SHEET, OPT_OUT, OPT_MAX_QUERIES, OPT_BASELINE, OPT_BATCH, OPT_THREADS,
    OPT_LISTEN, OPT_MAX_BATCH, OPT_MAX_K, OPT_MAX_BODY_MIB, OPT_TIMEOUT, OPT_PRECISION, OPT_WHITEN, OPT_WHITEN_DIM, OPT_ALLOW_GAPS, OPT_RECIPE,
    OPT_IVF, OPT_NLIST, OPT_NPROBE, OPT_EXACT, OPT_RECALL, OPT_CLASS_NAMES, OPT_OVERWRITE, OPT_TTA, OPT_QE, OPT_QE_ALPHA, OPT_HELP
};

static const struct option LONG_OPTS[] = {
    { "db", required_argument, 0, OPT_DB },
    { "model", required_argument, 0, OPT_MODEL },
    { "data", required_argument, 0, OPT_DATA },
    { "append", no_argument, 0, OPT_APPEND },
    { "k", required_argument, 0, OPT_K },
    { "image", required_argument, 0, OPT_IMAGE },
    { "ids", required_argument, 0, OPT_IDS },
    { "queries", required_argument, 0, OPT_QUERIES },
    { "metric", required_argument, 0, OPT_METRIC },
    { "label", required_argument, 0, OPT_LABEL },
    { "ids-from", required_argument, 0, OPT_IDS_FROM },
    { "radius", required_argument, 0, OPT_RADIUS },
    { "json", no_argument, 0, OPT_JSON },
    { "sheet", required_argument, 0, OPT_SHEET },
    { "out", required_argument, 0, OPT_OUT },
    { "max-queries", required_argument, 0, OPT_MAX_QUERIES },
    { "baseline", required_argument, 0, OPT_BASELINE },
    { "batch", required_argument, 0, OPT_BATCH },
    { "threads", required_argument, 0, OPT_THREADS },
    { "listen", required_argument, 0, OPT_LISTEN },
    { "max-batch", required_argument, 0, OPT_MAX_BATCH },
    { "max-k", required_argument, 0, OPT_MAX_K },
    { "max-body-mib", required_argument, 0, OPT_MAX_BODY_MIB },
    { "timeout", required_argument, 0, OPT_TIMEOUT },
    { "precision", required_argument, 0, OPT_PRECISION },
    { "whiten", no_argument, 0, OPT_WHITEN },
    { "whiten-dim", required_argument, 0, OPT_WHITEN_DIM },
    { "allow-gaps", no_argument, 0, OPT_ALLOW_GAPS },
    { "recipe", required_argument, 0, OPT_RECIPE },
    { "ivf", required_argument, 0, OPT_IVF },
    { "nlist", required_argument, 0, OPT_NLIST },
    { "nprobe", required_argument, 0, OPT_NPROBE },
    { "exact", no_argument, 0, OPT_EXACT },
    { "recall", no_argument, 0, OPT_RECALL },
    { "class-names", required_argument, 0, OPT_CLASS_NAMES },
    { "overwrite", no_argument, 0, OPT_OVERWRITE },
    { "tta", required_argument, 0, OPT_TTA },
    { "qe", required_argument, 0, OPT_QE },
    { "qe-alpha", required_argument, 0, OPT_QE_ALPHA },
    { "help", no_argument, 0, OPT_HELP },
    { 0, 0, 0, 0 },
};

/* The long name of option code o (LONG_OPTS is searched, so its order need
 * not follow the enum's). */
static const char *option_name(int o)
{
    for (const struct option *l = LONG_OPTS; l->name; l++)
        if (l->val == o) return l->name;
    return "?";
}

/* Subcommands each option belongs to, indexed by option - OPT_DB. */
static const int OPT_FOR[] = {
    [OPT_DB - OPT_DB] = FOR_ALL,         [OPT_MODEL - OPT_DB] = FOR_ALL,
    [OPT_DATA - OPT_DB] = FOR_INDEX | FOR_QUERY, [OPT_APPEND - OPT_DB] = FOR_INDEX,
    [OPT_K - OPT_DB] = FOR_QUERY | FOR_EVAL, [OPT_IMAGE - OPT_DB] = FOR_QUERY,
    [OPT_IDS - OPT_DB] = FOR_QUERY,      [OPT_QUERIES - OPT_DB] = FOR_QUERY | FOR_EVAL,
    [OPT_METRIC - OPT_DB] = FOR_ALL,     [OPT_LABEL - OPT_DB] = FOR_QUERY,
    [OPT_IDS_FROM - OPT_DB] = FOR_QUERY, [OPT_RADIUS - OPT_DB] = FOR_QUERY,
    [OPT_JSON - OPT_DB] = FOR_QUERY | FOR_EVAL, [OPT_SHEET - OPT_DB] = FOR_QUERY,
    [OPT_OUT - OPT_DB] = FOR_QUERY | FOR_EVAL, [OPT_MAX_QUERIES - OPT_DB] = FOR_EVAL,
    [OPT_BASELINE - OPT_DB] = FOR_EVAL,  [OPT_BATCH - OPT_DB] = FOR_ALL,
    [OPT_THREADS - OPT_DB] = FOR_ALL,    [OPT_HELP - OPT_DB] = FOR_ALL,
    [OPT_LISTEN - OPT_DB] = FOR_SERVE,   [OPT_MAX_BATCH - OPT_DB] = FOR_SERVE,
    [OPT_MAX_K - OPT_DB] = FOR_SERVE,    [OPT_MAX_BODY_MIB - OPT_DB] = FOR_SERVE,
    [OPT_TIMEOUT - OPT_DB] = FOR_SERVE,
    [OPT_PRECISION - OPT_DB] = FOR_ALL,
    [OPT_WHITEN - OPT_DB] = FOR_INDEX,  [OPT_WHITEN_DIM - OPT_DB] = FOR_INDEX,
    [OPT_ALLOW_GAPS - OPT_DB] = FOR_ALL,
    [OPT_RECIPE - OPT_DB] = FOR_INDEX,
    [OPT_IVF - OPT_DB] = FOR_INDEX,      [OPT_NLIST - OPT_DB] = FOR_TRAIN_IVF,
    [OPT_NPROBE - OPT_DB] = FOR_QUERY | FOR_EVAL | FOR_SERVE, [OPT_EXACT - OPT_DB] = FOR_QUERY | FOR_EVAL | FOR_SERVE,
    [OPT_RECALL - OPT_DB] = FOR_EVAL,   [OPT_CLASS_NAMES - OPT_DB] = FOR_QUERY | FOR_SERVE,
    [OPT_OVERWRITE - OPT_DB] = FOR_QUERY | FOR_EVAL | FOR_TRAIN_IVF,
    [OPT_TTA - OPT_DB] = FOR_INDEX,
    [OPT_QE - OPT_DB] = FOR_INDEX | FOR_QUERY | FOR_EVAL | FOR_SERVE,
    [OPT_QE_ALPHA - OPT_DB] = FOR_INDEX | FOR_QUERY | FOR_EVAL | FOR_SERVE,
};

static const char *const CMD_NAME[] = { "", "index", "query", "eval", "serve", "train-ivf" };

void search_args_usage(FILE *out)
{
    fprintf(out,
"Usage: mpirun -np P aesim-search COMMAND [options]     (or plain aesim-search for one rank)\n"
"Image similarity search with the encoder of an aesim-train checkpoint: images become\n"
"D-dimensional vectors (the bottleneck), stored as a sharded database; queries are exact\n"
"k-nearest-neighbour searches over all shards, spread over the P ranks.\n"
"\n"
"Commands\n"
"  index --model CKPT --data SRC --db DIR [--append] [--metric l2|cosine] [--whiten | --whiten-dim K]\n"
"        [--tta none|flip|shift:S|flip,shift:S] [--qe N [--qe-alpha A]] [--recipe retrieval]\n"
"        Every rank encodes its contiguous slice of SRC and writes one shard\n"
"        (DIR/shard-SSSSS.{vectors,ids,labels}.npy + .names.txt); rank 0 writes\n"
"        DIR/manifest.json. --append adds new shards (ids continue after the existing\n"
"        count) for new images, without re-encoding; the model must be the same.\n"
"        --whiten: store PCA-whitened codes (PCA of the indexed codes, every direction\n"
"        scaled to unit variance; DIR/whiten.npz, manifest \"transform\": \"whiten\");\n"
"        query and eval apply it to the query codes (and --append to new images).\n"
"        --whiten-dim K (implies --whiten): keep only the K directions of largest\n"
"        variance (the others become 0; vectors keep their D floats; manifest\n"
"        \"whiten_dim\"). K < D; README \"Search quality\" has measured values.\n"
"        --tta flip,shift:S: each vector is the mean of the codes of views of the\n"
"        image: itself and its horizontal mirror (flip), each also translated by S\n"
"        pixels left, right, up and down with zero fill (shift:S); flip,shift:1 = 10\n"
"        views, 10x the encoding work (test-time augmentation). Queries are encoded\n"
"        the same way (manifest \"tta\"). Default none.\n"
"        --qe N: record alpha query expansion as the database's default for query,\n"
"        eval and serve (see --qe below; needs the cosine metric).\n"
"        --recipe retrieval: --whiten --metric cosine --tta %s --qe %d (the best\n"
"        measured combination, README \"Search quality\"; explicit options win).\n"
"  query --db DIR --model CKPT --k K  QUERY-INPUT  [filters] [output]\n"
"        QUERY-INPUT, exactly one of:\n"
"          --image FILE [FILE ...]         PNG or JPEG images, any colour type and size\n"
"                                          (converted as under Images below)\n"
"          --data SRC --ids LIST           images of SRC by 0-based index, LIST = 3,17,20-29\n"
"          --queries FILE.npy              float32 vectors [Q][D] (no --model needed)\n"
"        Shard s is searched by rank s %% P, for any P. Results are the exact k nearest,\n"
"        by distance, ties by smaller id; k larger than the database returns all of it.\n"
"  eval --db DIR --model CKPT --queries SRC [-k 10] [--max-queries N] [--baseline pixels|pca]\n"
"        [--json]\n"
"        Precision@k by label (fraction of the k neighbours whose label is the query's),\n"
"        per label and mean. --baseline pixels: raw pixels as vectors; --baseline pca: PCA\n"
"        of the pixels to the same D (LAPACK dsyevd on the covariance of the database\n"
"        images); both index the database's own source images in memory. If SRC is the\n"
"        database's source, each query's own image is left out of its neighbours.\n"
"        Also mAP@k (AP@k = sum over ranks j <= k of rel_j * precision@j / relevant in\n"
"        the top k) and 1-NN accuracy per method.  On a --whiten database the\n"
"        baselines are whitened the same way (--whiten-dim K: min(K, the baseline's D)\n"
"        directions), and query expansion (--qe) applies to every method.  --json: the\n"
"        same as one JSON object (with \"tta\", \"query_expansion\" and, whitened,\n"
"        \"whiten_dim\": the database's, and per method the directions kept).\n"
"  serve --db DIR --model CKPT [--listen HOST:PORT] [--max-batch N] [--max-k K]\n"
"        [--max-body-mib M] [--timeout S] [--class-names FILE]\n"
"        Long-running search service: every rank maps its shards once; rank 0 answers\n"
"        HTTP/1.1 (libmicrohttpd) on HOST:PORT (default %s; IPv6 as [::1]:PORT)\n"
"        and batches the waiting requests (up to --max-batch, default %d) into one\n"
"        encoder call and one sharded search. POST /search, GET /images/ID, POST /images,\n"
"        GET /labels, GET /healthz, GET /metrics, GET / (web page): see the README's Serving section.\n"
"        SIGTERM or SIGINT stops it after answering the requests in flight.\n"
"        --max-k K: largest k a request may ask (default %d); --max-body-mib M: largest\n"
"        request body in MiB (default %d, else 413); --timeout S: a client silent for S\n"
"        seconds is disconnected (default %d).\n"
"  train-ivf --db DIR --nlist NLIST [--overwrite]\n"
"        Builds an IVF index (faiss IndexIVFFlat) over an existing database: NLIST\n"
"        centroids by k-means (10 iterations, as faiss) over a seeded sample of\n"
"        min(count, 256 NLIST) vectors spread over the P ranks (the same centroids for\n"
"        any P), then per shard the rows of each list (DIR/ivf-CRC.centroids.npy,\n"
"        DIR/shard-SSSSS.ivf-CRC.lists.npy; manifest version 2). index --ivf NLIST does\n"
"        the same after indexing; index --append puts new vectors in their nearest\n"
"        list (and so do serve's live additions). query, eval and serve then scan the\n"
"        --nprobe nearest lists (default %d) and\n"
"        re-score the candidates exactly; --nprobe NLIST gives exactly the exact\n"
"        answer, --exact forces the full scan. eval --recall --queries Q.npy: recall@k\n"
"        against exact search and queries/s for nprobe = 1, 2, 4, ... NLIST.\n"
"        An existing IVF index is replaced only with --overwrite.\n"
"\n"
"Options\n"
"  --db DIR              database folder (index creates it)\n"
"  --model CKPT          checkpoint.npz of aesim-train; query and eval refuse a model\n"
"                        other than the one that built the database (CRC-32 of its weights)\n"
"  --data SRC[,SRC...]   images: [KIND:]PATH[?key=value&...], any source aesim-train reads:\n"
"                        npz (downsampled ImageNet, any images array, aesim-pack stores), npy,\n"
"                        idx (MNIST IDX, plain or gzip), mnist (a folder with train-images-\n"
"                        idx3-ubyte[.gz]), cifar10, cifar100, folder (PNG/JPEG, sub-folder =\n"
"                        label), list (text file of image paths); KIND is guessed when omitted\n"
"                        (datasets/README.md). Labels come with the source (-1 when none).\n"
"                        Images of another size or channel count are converted to the model's\n"
"                        input as query --image does (see Images below); index and query report\n"
"                        how many were resized\n"
"  --allow-gaps          take a numbered set (train_data_batch_*.npz, a folder of batches) with\n"
"                        a file missing, with a warning; without it such a gap is an error\n"
"  --k K, -k K           neighbours per query, >= 1 (query: required unless --radius;\n"
"                        eval: default %d)\n"
"  --metric l2|cosine    l2: distance = squared Euclidean distance; cosine: distance =\n"
"                        1 - cosine similarity. Default: the database's (index: l2)\n"
"  --label L[,L...]      query: search only vectors with one of these labels (repeatable)\n"
"  --ids-from FILE       query: search only these ids (text: integers separated by\n"
"                        spaces, commas or newlines; or an integer .npy)\n"
"  --radius R            query: every vector with distance <= R (same units as the distance\n"
"                        column); with --k, at most the k nearest of them\n"
"  --json                query: results as JSON instead of TSV; eval: the table as JSON\n"
"                        (per method: dim, precision, map, nn1_accuracy, seconds, per_label)\n"
"  --out FILE            write the results (query) or the table (eval) to FILE, not stdout;\n"
"                        an existing FILE is refused unless --overwrite is given\n"
"  --sheet FILE.png      query: contact sheet, one row per query: the query image, then its\n"
"                        neighbours (read from the sources recorded in the manifest); an\n"
"                        existing FILE.png is refused unless --overwrite is given\n"
"  --qe N                alpha query expansion (Radenovic et al., TPAMI 2019) of every\n"
"                        k-NN search: the query q becomes q + sum of its N nearest database\n"
"                        vectors x_i, each weighted by max(0, cos(q, x_i))^A, normalised, and\n"
"                        is searched again (one more sharded round); reported distances are\n"
"                        those to the expanded query. Cosine metric only. index: recorded as\n"
"                        the database's default; query, eval, serve: overrides it, 0 = off.\n"
"                        eval applies it to the baselines too. Not used by --radius alone\n"
"  --qe-alpha A          the exponent A of --qe (default: the database's, else %g)\n"
"  --overwrite           query, eval: replace an existing --out or --sheet file; train-ivf:\n"
"                        replace the database's existing IVF index\n"
"  --class-names FILE    query, serve: class names for the `class` column (serve: field) and\n"
"                        the sheet's captions:\n"
"                        the ILSVRC devkit's map_clsloc.txt (\"WNID LABEL NAME\" per line, the\n"
"                        1-based labels of the downsampled-ImageNet files) or one name per\n"
"                        line (line 1 = label 0). Default: the names the data carries (image\n"
"                        folders' class sub-folders, aesim-pack stores, Fashion-MNIST's ten)\n"
"  --max-queries N       eval: use the first N query images only (default 0 = all)\n"
"  --baseline B          eval: pixels, pca or pixels,pca (repeatable)\n"
"  --batch N             images per encoder call (default %d)\n"
"  --threads T           OpenMP threads per rank (default: the CPUs this rank may run on /\n"
"                        the ranks of the node sharing them; BLAS single-threaded inside)\n"
"  --precision P         encoder arithmetic: fp32 (default), bf16 (convolution inputs and\n"
"                        weights rounded to bfloat16, float32 sums) or auto (bf16 where every\n"
"                        rank's CPU has AVX512_BF16 and runs it faster than fp32, as\n"
"                        aesim-train --precision)\n"
"  --ivf NLIST           index: then train an IVF index of NLIST lists (see train-ivf)\n"
"  --nlist NLIST         train-ivf: lists of the IVF index, 1..count\n"
"  --nprobe N            query, eval, serve: IVF lists scanned per query (default %d when the\n"
"                        database has an IVF index)\n"
"  --exact               query, eval, serve: exact search (full scan) even with an IVF index\n"
"  --recall              eval: recall@k of the IVF answer against exact search and\n"
"                        queries/s, for nprobe = 1, 2, 4, ... NLIST\n"
"  --help                this text\n"
"  --version             version, git commit, build flags, the CPU kernels chosen and\n"
"                        what --precision auto runs on this CPU\n"
"\n"
"Images (index --data, query --image / --data, eval --queries, all alike): alpha composited\n"
"over white, converted to the model's channels (RGB->grey: ITU-R 601-2 luma), the largest\n"
"centred region with the input's aspect ratio cut out (?fit=squash: the whole image) and\n"
"box-filtered to the model's input size; the count of resized (and, with ?skip_bad=1,\n"
"skipped) images is reported on stderr. A warning says when query images are much\n"
"brighter or darker on average than the indexed ones (opposite polarity: white background\n"
"vs Fashion-MNIST's black).\n"
"\n"
"Output of query (TSV with a header line; --json gives the same fields):\n"
"  query  rank  id  distance  label  source  class\n"
"  query = 0-based query number, rank = 1 for the nearest, id = global database id,\n"
"  label = the database image's label (-1 none), source = the file and row it was encoded\n"
"  from, FILE#ROW (train_data_batch_7.npz#1, even for a wildcard or a folder of batches),\n"
"  or FOLDER/NAME for images with their own names (photos/cat/x.png).\n"
"  class = the label's name where it is known (image folders, aesim-pack stores,\n"
"  Fashion-MNIST, --class-names FILE), else empty (JSON null).\n"
"Exit status: 0 success, 1 runtime error, 2 bad usage.\n",
            SEARCH_RECIPE_TTA, SEARCH_RECIPE_QE_N, SEARCH_DEFAULT_LISTEN, SEARCH_DEFAULT_MAX_BATCH, SEARCH_DEFAULT_MAX_K,
            SEARCH_DEFAULT_MAX_BODY_MIB, SEARCH_DEFAULT_TIMEOUT_S, IVF_DEFAULT_NPROBE, SEARCH_DEFAULT_EVAL_K,
            SEARCH_DEFAULT_QE_ALPHA, SEARCH_DEFAULT_BATCH,
            IVF_DEFAULT_NPROBE);
}

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out, Err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return err_set(err, AE_EARG, "%s: '%s' is not an integer in %lld..%lld", opt, s, (long long)lo,
                       (long long)hi);
    *out = v;
    return AE_OK;
}

static int copy_str(char *dst, size_t cap, const char *opt, const char *s, Err *err)
{
    if (!*s) return err_set(err, AE_EARG, "%s: empty value (is a shell variable unset?)", opt);
    if (strlen(s) >= cap) return err_set(err, AE_EARG, "%s: value longer than %zu characters", opt, cap - 1);
    memcpy(dst, s, strlen(s) + 1);
    return AE_OK;
}

static int parse_labels(SearchConfig *c, const char *s, Err *err)
{
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (*end && *end != ','))
            return err_set(err, AE_EARG, "--label: '%s' is not a list of integers such as 3 or 1,4,7", s);
        if (c->n_labels >= SEARCH_MAX_LABELS)
            return err_set(err, AE_EARG, "--label: more than %d labels", SEARCH_MAX_LABELS);
        c->labels[c->n_labels++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (p == s) return err_set(err, AE_EARG, "--label: empty list");
    return AE_OK;
}

static int parse_baselines(SearchConfig *c, const char *s, Err *err)
{
    char buf[64];
    if (copy_str(buf, sizeof buf, "--baseline", s, err)) return AE_EARG;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (strcmp(tok, "pixels") == 0) c->baselines |= SEARCH_BASE_PIXELS;
        else if (strcmp(tok, "pca") == 0) c->baselines |= SEARCH_BASE_PCA;
        else return err_set(err, AE_EARG, "--baseline: '%s' is not pixels or pca", tok);
    }
    return AE_OK;
}

static int add_image(SearchConfig *c, const char *path, Err *err)
{
    if (c->n_images >= SEARCH_MAX_IMAGES)
        return err_set(err, AE_EARG, "--image: more than %d images (hint: use --data with --ids)", SEARCH_MAX_IMAGES);
    c->images[c->n_images++] = path;
    return AE_OK;
}

static int parse_option(SearchConfig *c, int o, const char *arg, Err *err)
{
    int64_t i = 0;
    switch (o) {
    case OPT_DB: return copy_str(c->db, sizeof c->db, "--db", arg, err);
    case OPT_MODEL: return copy_str(c->model, sizeof c->model, "--model", arg, err);
    case OPT_DATA: return copy_str(c->data, sizeof c->data, "--data", arg, err);
    case OPT_APPEND: c->append = 1; return AE_OK;
    case OPT_WHITEN: c->whiten = 1; return AE_OK;
    case OPT_WHITEN_DIM: /* directions kept; checked against D when the model is read */
        if (parse_i64("--whiten-dim", arg, 1, INT32_MAX, &i, err)) return AE_EARG;
        c->whiten = 1;
        c->whiten_dim = (int)i;
        return AE_OK;
    case OPT_TTA:
        c->has_tta = 1;
        return vecdb_tta_parse(&c->tta, arg, "--tta", err);
    case OPT_QE: /* neighbours added to each query; 0 = no query expansion */
        if (parse_i64("--qe", arg, 0, VECDB_MAX_QE, &i, err)) return AE_EARG;
        c->qe = (int)i;
        return AE_OK;
    case OPT_QE_ALPHA: {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (errno || end == arg || *end || !(v >= 0 && v <= VECDB_MAX_QE_ALPHA))
            return err_set(err, AE_EARG, "--qe-alpha: '%s' is not a number in 0..%g", arg, VECDB_MAX_QE_ALPHA);
        c->qe_alpha = v;
        return AE_OK;
    }
    case OPT_ALLOW_GAPS: c->allow_gaps = 1; return AE_OK;
    case OPT_RECIPE:
        /* the measured best search-side combination (README "Search quality") */
        if (strcmp(arg, "retrieval") != 0)
            return err_set(err, AE_EARG, "--recipe: '%s' is unknown (the one recipe is 'retrieval')", arg);
        c->recipe_retrieval = 1;
        return AE_OK;
    case OPT_K: {
        char *end;
        errno = 0;
        long long v = strtoll(arg, &end, 10);
        if (errno || end == arg || *end || v > INT_MAX)
            return err_set(err, AE_EARG, "--k: '%s' is not an integer in 1..%d", arg, INT_MAX);
        if (v < 1)
            return err_set(err, AE_EARG, "--k: k must be at least 1 (got %lld): it is the number of neighbours "
                                         "returned per query", v);
        c->k = (int)v;
        return AE_OK;
    }
    case OPT_IMAGE: return add_image(c, arg, err);
    case OPT_IDS: return copy_str(c->ids, sizeof c->ids, "--ids", arg, err);
    case OPT_QUERIES: return copy_str(c->queries, sizeof c->queries, "--queries", arg, err);
    case OPT_METRIC: {
        KnnMetric m;
        if (strcmp(arg, "l2") == 0) m = KNN_L2;
        else if (strcmp(arg, "cosine") == 0) m = KNN_IP;
        else return err_set(err, AE_EARG, "--metric: '%s' is not l2 or cosine", arg);
        c->metric = (int)m;
        return AE_OK;
    }
    case OPT_LABEL: return parse_labels(c, arg, err);
    case OPT_IDS_FROM: return copy_str(c->ids_from, sizeof c->ids_from, "--ids-from", arg, err);
    case OPT_RADIUS: {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (errno || end == arg || *end || !isfinite(v) || v < 0)
            return err_set(err, AE_EARG, "--radius: '%s' is not a finite number >= 0", arg);
        c->radius = v;
        c->has_radius = 1;
        return AE_OK;
    }
    case OPT_JSON: c->json = 1; return AE_OK;
    case OPT_SHEET: return copy_str(c->sheet, sizeof c->sheet, "--sheet", arg, err);
    case OPT_CLASS_NAMES: return copy_str(c->class_names, sizeof c->class_names, "--class-names", arg, err);
    case OPT_OUT: return copy_str(c->out, sizeof c->out, "--out", arg, err);
    case OPT_MAX_QUERIES:
        if (parse_i64("--max-queries", arg, 0, INT64_MAX, &i, err)) return AE_EARG;
        c->max_queries = i;
        return AE_OK;
    case OPT_BASELINE: return parse_baselines(c, arg, err);
    case OPT_BATCH:
        if (parse_i64("--batch", arg, 1, 1 << 16, &i, err)) return AE_EARG;
        c->batch = (int)i;
        return AE_OK;
    case OPT_THREADS:
        if (parse_i64("--threads", arg, 1, 1024, &i, err)) return AE_EARG;
        c->threads = (int)i;
        return AE_OK;
    case OPT_LISTEN: return copy_str(c->listen, sizeof c->listen, "--listen", arg, err);
    case OPT_MAX_BATCH:
        if (parse_i64("--max-batch", arg, 1, SEARCH_MAX_SERVE_BATCH, &i, err)) return AE_EARG;
        c->max_batch = (int)i;
        return AE_OK;
    case OPT_MAX_K:
        if (parse_i64("--max-k", arg, 1, SEARCH_MAX_SERVE_K, &i, err)) return AE_EARG;
        c->max_k = (int)i;
        return AE_OK;
    case OPT_MAX_BODY_MIB:
        if (parse_i64("--max-body-mib", arg, 1, SEARCH_MAX_BODY_MIB, &i, err)) return AE_EARG;
        c->max_body_mib = (int)i;
        return AE_OK;
    case OPT_TIMEOUT:
        if (parse_i64("--timeout", arg, 1, 3600, &i, err)) return AE_EARG;
        c->timeout_s = (int)i;
        return AE_OK;
    case OPT_PRECISION: {
        ModelPrecision p;
        if (model_precision_parse(&p, arg, err)) return AE_EARG;
        c->precision = (int)p;
        return AE_OK;
    }
    case OPT_IVF:
    case OPT_NLIST:
        if (parse_i64(o == OPT_IVF ? "--ivf" : "--nlist", arg, 1, 1 << 20, &i, err)) return AE_EARG;
        c->nlist = (int)i;
        return AE_OK;
    case OPT_NPROBE:
        if (parse_i64("--nprobe", arg, 1, 1 << 20, &i, err)) return AE_EARG;
        c->nprobe = (int)i;
        return AE_OK;
    case OPT_EXACT: c->exact = 1; return AE_OK;
    case OPT_OVERWRITE: c->overwrite = 1; return AE_OK;
    case OPT_RECALL: c->recall = 1; return AE_OK;
    default: return AE_OK;
    }
}

/* Checks that need all options: required ones and combinations. */
static int check_config(SearchConfig *c, Err *err)
{
    const char *cmd = CMD_NAME[c->cmd];
    if (!c->db[0]) return err_set(err, AE_EARG, "%s needs --db DIR (see --help)", cmd);
    switch (c->cmd) {
    case SEARCH_INDEX:
        if (!c->model[0] || !c->data[0])
            return err_set(err, AE_EARG, "index needs --model CKPT and --data SRC (see --help)");
        if (c->qe_alpha >= 0 && c->qe <= 0)
            return err_set(err, AE_EARG, "--qe-alpha goes with --qe N (the query expansion the database records)");
        break;
    case SEARCH_QUERY: {
        int inputs = (c->n_images > 0) + (c->data[0] || c->ids[0]) + (c->queries[0] != 0);
        if (inputs != 1)
            return err_set(err, AE_EARG, "query needs exactly one query input: --image FILE.png..., --data SRC "
                                         "--ids LIST, or --queries FILE.npy (see --help)");
        if ((c->data[0] != 0) != (c->ids[0] != 0))
            return err_set(err, AE_EARG, "--data and --ids go together in query (images of SRC by index)");
        if (!c->queries[0] && !c->model[0])
            return err_set(err, AE_EARG, "query needs --model CKPT to encode its query images");
        if (!c->k && !c->has_radius) return err_set(err, AE_EARG, "query needs --k K (or --radius R)");
        if (c->sheet[0] && c->queries[0])
            return err_set(err, AE_EARG, "--sheet needs query images (--image or --data --ids), not --queries vectors");
        if (c->sheet[0] && strcmp(c->sheet, c->out) == 0)
            return err_set(err, AE_EARG, "--sheet and --out name the same file %s (hint: give each its own)", c->out);
        break;
    }
    case SEARCH_TRAIN_IVF:
        if (!c->nlist) return err_set(err, AE_EARG, "train-ivf needs --nlist N (see --help)");
        break;
    case SEARCH_EVAL:
        if (c->recall && c->exact) return err_set(err, AE_EARG, "eval: --recall compares IVF with exact search; drop --exact");
        if (c->recall && !c->queries[0])
            return err_set(err, AE_EARG, "eval --recall needs --queries (vectors .npy, or images with --model)");
        if (!c->recall && (!c->model[0] || !c->queries[0]))
            return err_set(err, AE_EARG, "eval needs --model CKPT and --queries SRC (labelled images; see --help)");
        if (!c->k) c->k = SEARCH_DEFAULT_EVAL_K;
        break;
    case SEARCH_SERVE:
        if (!c->model[0]) return err_set(err, AE_EARG, "serve needs --model CKPT to encode uploaded images (see --help)");
        break;
    default: break;
    }
    return AE_OK;
}

int search_args_parse(SearchConfig *c, int argc, char **argv, Err *err)
{
    memset(c, 0, sizeof *c);
    c->metric = SEARCH_METRIC_DEFAULT;
    c->batch = SEARCH_DEFAULT_BATCH;
    snprintf(c->listen, sizeof c->listen, "%s", SEARCH_DEFAULT_LISTEN);
    c->max_batch = SEARCH_DEFAULT_MAX_BATCH;
    c->max_k = SEARCH_DEFAULT_MAX_K;
    c->max_body_mib = SEARCH_DEFAULT_MAX_BODY_MIB;
    c->timeout_s = SEARCH_DEFAULT_TIMEOUT_S;
    c->qe = -1;
    c->qe_alpha = -1;
    if (argc < 2)
        return err_set(err, AE_EARG, "missing command: index, query, eval, serve or train-ivf (see --help)");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        c->help = 1;
        return AE_OK;
    }
    if (strcmp(cmd, "index") == 0) c->cmd = SEARCH_INDEX;
    else if (strcmp(cmd, "query") == 0) c->cmd = SEARCH_QUERY;
    else if (strcmp(cmd, "eval") == 0) c->cmd = SEARCH_EVAL;
    else if (strcmp(cmd, "serve") == 0) c->cmd = SEARCH_SERVE;
    else if (strcmp(cmd, "train-ivf") == 0) c->cmd = SEARCH_TRAIN_IVF;
    else return err_set(err, AE_EARG, "unknown command '%s': expected index, query, eval, serve or train-ivf "
                        "(see --help)", cmd);
    const int mask = 1 << (c->cmd - 1);
    optind = 1;
    opterr = 0;
    int o, idx = 0, sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    while ((o = getopt_long(sub_argc, sub_argv, ":hk:", LONG_OPTS, &idx)) != -1) {
        if (o == 'h') o = OPT_HELP;
        if (o == 'k') o = OPT_K;
        if (o == ':')
            return err_set(err, AE_EARG, "option %s needs a value (see --help)", sub_argv[optind - 1]);
        if (o < OPT_DB || o > OPT_HELP) /* the last option */
            /* optopt: the bad character of a short option ("-xq"); 0 or >= 256 for a long one. */
            return optopt > 0 && optopt < 256
                       ? err_set(err, AE_EARG, "unknown option '-%c' (see --help)", optopt)
                       : err_set(err, AE_EARG, "unknown option '%s' (see --help)", sub_argv[optind - 1]);
        if (!(OPT_FOR[o - OPT_DB] & mask))
            return err_set(err, AE_EARG, "option --%s is not an option of %s (see --help)",
                           option_name(o), cmd);
        if (o == OPT_HELP) {
            c->help = 1;
            return AE_OK;
        }
        int rc = parse_option(c, o, optarg, err);
        if (rc) return rc;
    }
    /* Further plain arguments are more --image files ("--image a.png b.png"). */
    for (int i = optind; i < sub_argc; i++) {
        if (c->n_images == 0)
            return err_set(err, AE_EARG, "unexpected argument '%s' (options start with --; see --help)",
                           sub_argv[i]);
        int rc = add_image(c, sub_argv[i], err);
        if (rc) return rc;
    }
    if (c->recipe_retrieval) { /* explicit options win */
        c->whiten = 1;
        if (c->metric == SEARCH_METRIC_DEFAULT) c->metric = KNN_IP;
        if (!c->has_tta) {
            Err e;
            CHECK(vecdb_tta_parse(&c->tta, SEARCH_RECIPE_TTA, "recipe", &e) == AE_OK);
            c->has_tta = 1;
        }
        if (c->qe < 0) c->qe = SEARCH_RECIPE_QE_N;
    }
    return check_config(c, err);
}
