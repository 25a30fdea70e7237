/*
 * search_core.h - the pieces aesim-search's index, query and eval share:
 * the encoder loaded identically on every rank, batched encoding with a
 * NaN/Inf check, this rank's shards prepared for a metric and filters, the
 * exact k-NN and range search over the shards of all ranks, and the rank-0
 * lookup of labels and names of result ids.
 *
 * Sharded search (search_knn): a rank may own any number of shards (vecdb.h:
 * shard s -> rank s % P).  Each owned shard is searched with
 * knn_search_local, the rank's lists are merged with knn_merge, then rank 0
 * gathers every rank's Q x k lists with par_gather (chunks of queries of at
 * most SEARCH_GATHER_CHUNK_BYTES) and merges them with knn_merge again.  The
 * local results are exact re-scored values (knn.h "Exactness") and the merge
 * breaks ties by id, so the result is the same for any P and any split into
 * shards.  (knn_search_sharded does the same for exactly one shard per rank.)
 *
 * Collective functions are marked so; they agree on errors with par_agree
 * and return the same status on every rank.  Threading: encoding and search
 * run the OpenMP threads given (BLAS single-threaded inside, threads.h).
 */
#ifndef AESIM_SEARCH_CORE_H
#define AESIM_SEARCH_CORE_H

#include <stdint.h>

#include "data/class_names.h"
#include "data/imgset.h"
#include "search/knn.h"
#include "model/model.h"
#include "par/par.h"
#include "search/topk.h"
#include "search/vecdb.h"
#include "data/image_decode.h"
#include "search/search_input.h"

/* Bytes of one rank's part of a result gather (bounds the buffers of rank 0
 * to P times this). */
#define SEARCH_GATHER_CHUNK_BYTES ((size_t)64 << 20)
/* Most range-search hits one rank may send to rank 0 (24 bytes each). */
#define SEARCH_RANGE_MAX_HITS ((int64_t)1 << 26)

/* Local: 1 when --precision auto encodes in bf16 on this CPU: it has AMX
 * (conv_amx_available(CONV_AMX_NATIVE): the forward convolutions run on
 * tiles, 2-4x fp32, README Performance) or VDPBF16PS pays
 * (conv_bf16_auto_runs_bf16).  Measures on the first call. */
int search_auto_runs_bf16(void);

/* Collective.  The encoder arithmetic of --precision value `request`
 * (ModelPrecision): MODEL_PRECISION_AUTO becomes bf16 only when every rank's
 * CPU encodes bf16 faster than float32 (search_auto_runs_bf16,
 * model_precision_resolve), so all shards are
 * encoded alike; where the CPUs have AVX512_BF16 and auto still gives fp32,
 * rank 0 says why on stderr.  fp32 and bf16 are returned as they are. */
ModelPrecision search_precision(const ParCtx *ctx, int request);

/* Collective.  Rank 0 reads the checkpoint; every rank builds the same model
 * (max batch `batch`, `nthreads` OpenMP threads) with the broadcast weights,
 * in the arithmetic of --precision value `precision` (search_precision; every
 * command that encodes passes its --precision, so index, query, eval and
 * serve encode alike); *crc = CRC-32 of the parameter bytes
 * (ckpt_params_crc32).  Errors: those of ckpt_read / ckpt_restore /
 * model_parse (AE_EIO, AE_EFORMAT, AE_EARG, AE_ESHAPE).  On error *m holds
 * nothing to free. */
int search_load_encoder(const ParCtx *ctx, const char *path, int batch, int nthreads, int precision, Model *m,
                        uint32_t *crc, Err *err);

/* Local.  AE_ESHAPE if the model's D differs from the database's (checked
 * first: "manifest D mismatch"), AE_EARG if its CRC-32 differs (another model
 * or other weights), AE_ESHAPE if the manifest's model.input_shape is not
 * the model's C, H, W (an edited manifest).  ckpt names the checkpoint in
 * the message. */
int search_check_model(const VecDb *db, const Model *m, uint32_t crc, const char *ckpt, Err *err);

/* Local.  Encodes n images into out[n][D]: images [lo, lo+n) of `set` when
 * set != NULL, else imgs[n][C][H][W] (NCHW, not modified).  tta (may be
 * NULL = none): each vector is the mean of the codes of the image's
 * vecdb_tta_views(tta) views (vecdb.h VecDbTta: mirror along W, translations
 * by tta->shift pixels with zero fill; test-time augmentation), summed in
 * view order and divided by the count, so the work is views times one
 * encoding.  Returns -1 if every vector is finite, else the index (0..n-1)
 * of the first vector holding NaN or Inf. */
int64_t search_encode(float *out, Model *m, const ImageSet *set, const float *imgs, int64_t lo, int64_t n,
                      const VecDbTta *tta);

/* Rank 0 (or any one process): if db was indexed with --whiten, applies its
 * transform (DIR/whiten.npz, whiten.h) to the query codes q[Q][D] in place;
 * nothing otherwise.  Errors: those of whiten_load. */
int search_whiten_queries(const VecDb *db, float *q, int64_t Q, Err *err);

/* The shards this rank owns, ready for knn (vectors mapped; for cosine a
 * normalised copy; a mask per shard when filters are given). */
typedef struct LocalShards {
    int n;            /* shards owned */
    VecShard *maps;   /* [n] */
    KnnDb *dbs;       /* [n] */
    float **copies;   /* [n] normalised copies (KNN_IP) or NULL entries */
    uint8_t **masks;  /* [n] masks or NULL entries */
    float **norms;    /* [n] cached squared norms (search_shards_cache_norms) or NULL entries */
} LocalShards;

/* Filters applied inside the scan (mask = 1 for eligible rows). */
typedef struct SearchFilter {
    const int32_t *labels;  /* [n_labels] accepted labels; n_labels = 0: any */
    int n_labels;
    const int64_t *ids;     /* [n_ids] accepted ids (any order); used if has_ids */
    int64_t n_ids;
    int has_ids;
} SearchFilter;

/* Collective.  Maps the shards of this rank (rank r owns s with
 * vecdb_shard_owner(s, P) == r), normalises copies for KNN_IP (cosine) and
 * builds masks from filter (may be NULL).  Errors: vecdb_shard_map's
 * (missing or damaged shard files).  On error ls holds nothing. */
int search_shards_open(const ParCtx *ctx, LocalShards *ls, const VecDb *db, KnnMetric metric,
                       const SearchFilter *filter, Err *err);
void search_shards_close(LocalShards *ls);

/* For a long-lived LocalShards (serve): computes each shard's squared norms
 * once (knn_row_norms) and hands them to its KnnDb, so that many-query
 * searches do not read the whole shard again for them at every call.
 * Shards that already have them, and shards with a non-finite or huge row
 * (left to the search's own check), are skipped.  Memory: 4 bytes a vector. */
void search_shards_cache_norms(LocalShards *ls, int nthreads);

/* Local.  Replaces the masks of ls by those of filter (NULL or no labels
 * and no ids: no mask): the filter of the next search_knn / search_range
 * over ls->dbs.  Needs the labels mapped, which search_shards_open does
 * whenever it is given a filter (even an empty one). */
void search_shards_set_filter(LocalShards *ls, const SearchFilter *filter);

/* Local.  Maps shard `shard` of db (added to the manifest after
 * search_shards_open) into ls when this rank owns it (with the labels, a
 * normalised copy for KNN_IP and no mask); nothing otherwise.  Errors:
 * vecdb_shard_map's. */
int search_shards_add(const ParCtx *ctx, LocalShards *ls, const VecDb *db, int shard, KnnMetric metric, Err *err);

/* Collective.  Exact k-NN of q[Q][D] (same on every rank) over the KnnDbs of
 * all ranks (dbs[n_dbs], n_dbs may be 0).  *out (Q x k, sorted best first,
 * padded) is valid on rank 0 only; other ranks get a zeroed TopK.  Errors:
 * those of knn_search_local on any rank. */
int search_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs, int k,
               KnnMetric metric, int nthreads, Err *err);

/* Collective.  Alpha query expansion (alpha-QE: Radenovic, Tolias and Chum,
 * "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2019,
 * section 5; the same form as their cirtorch code): each query row
 * q[i][D] (the same on every rank; unit rows, metric KNN_IP) becomes
 *   q'_i = normalise(q_i + sum_{j < n} max(0, s_ij)^alpha x_ij)
 * where x_ij is the database row of first->ids[i][j] (as the rows of
 * dbs[n_dbs] hold it: the normalised copies) and s_ij = first->dist[i][j]
 * its inner product with q_i.  first is the result of a k-NN search of q
 * with first->k >= n, valid on rank 0 (search_knn's *out); padded entries
 * add nothing.  Rows are fetched from their owner ranks: each rank writes the
 * rows it holds into a zeroed [chunk][n][D] buffer and one allreduce sums
 * them (one owner per row, so the sum is exact and the result the same for
 * any P and shard split); chunks of at most SEARCH_GATHER_CHUNK_BYTES.
 * The caller then searches again with q'.  KnnDbs with explicit ids are not
 * supported (assert).  Collective; no error path. */
void search_query_expand(const ParCtx *ctx, float *q, int64_t Q, int D, const TopK *first, const KnnDb *dbs,
                         int n_dbs, int n, double alpha);

/* Collective.  Range search: every eligible row with distance <= radius
 * (KNN_L2) / score >= radius (KNN_IP), over all ranks; *out valid on rank 0
 * (sorted best first, ties by id), zeroed elsewhere.  Errors: those of
 * knn_range_search_local, or AE_EARG when one rank has more than
 * SEARCH_RANGE_MAX_HITS hits ("lower --radius or give --k"). */
int search_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                 float radius, KnnMetric metric, int nthreads, Err *err);

/* Collective.  The rank-0 half of search_knn: gathers every rank's local
 * top-k lists local (Q x k, sorted, e.g. this rank's shards merged) and
 * merges them (knn_merge) into *out on rank 0 (zeroed TopK elsewhere).  Q,
 * k and metric must be the same on every rank.  Used by the IVF search
 * (ivf.h). */
void search_merge_topk(const ParCtx *ctx, TopK *out, const TopK *local, int64_t Q, int k, KnnMetric metric);

/* Collective.  The rank-0 half of search_range: gathers every rank's range
 * hits parts[n_parts] (each over the same Q queries, any order within a
 * query) into *out on rank 0, sorted best first, ties by id.  err holds this
 * rank's error so far (agreed here).  Errors: that one, or AE_EARG when one
 * rank has more than SEARCH_RANGE_MAX_HITS hits. */
int search_merge_range(const ParCtx *ctx, KnnRange *out, const KnnRange *parts, int n_parts, int64_t Q,
                       KnnMetric metric, Err *err);

/* Top-k lists without their padding (and, with has_radius, without entries
 * whose reported distance exceeds radius) as a KnnRange (r->lims[Q+1],
 * ids, dist; free with knn_range_free). */
void search_topk_to_range(KnnRange *r, const TopK *t, KnnMetric metric, int has_radius, double radius);

/* The options every image source of aesim-search is opened with (index
 * --data, query --data, eval --queries, the database's sources): the
 * model's input channels and size C x H x W as targets, so images of another
 * size or channel count are converted exactly as query --image converts its
 * files (alpha over white, channels, centre crop to the aspect ratio unless
 * ?fit=squash, box filter: dataset.h, image_convert.h); allow_gaps as given.
 * An item's own ?key=value options still override these. */
void search_data_options(DatasetOptions *o, int C, int H, int W, int allow_gaps);

/* Query images whose mean pixel (in [0, 1]) is farther than this from the
 * database images' mean, while their inverse 1 - mean is closer, are
 * reported as of the opposite polarity.  Measured on Fashion-MNIST's 10,000
 * test images (mean 0.287; per image 0.03..0.71, s.d. 0.126): 0.3 flags
 * 0.73% of single genuine images and none of 100,000 random sets of 8
 * (largest set mean 0.50); inverted (255 - x), 81% of single images and
 * every set of 8 (mean about 0.71, 0.43 away). */
#define SEARCH_POLARITY_DIFF 0.3

/* 1 if query images of mean q look like the opposite polarity of database
 * images of mean d (see SEARCH_POLARITY_DIFF), else 0. */
int search_polarity_suspect(double q, double d);

/* Collective: one writer per database.  Rank 0 takes the exclusive lock of
 * folder dir (fileio_lock_dir on VECDB_LOCK_NAME, holder `who`, e.g.
 * "aesim-search serve") when the folder exists (*fd stays -1 otherwise);
 * the other ranks get *fd = -1.  Release with fileio_unlock_dir.  Writers
 * are index --append and train-ivf, for their whole run, a new index from
 * the moment it has created the folder (search.c takes that lock itself,
 * before it checks that no manifest is there), and serve while it adds a
 * batch of POST /images (serve.c takes the lock itself); query and eval
 * only read.
 * Errors (agreed): AE_EARG when another process holds it (the message names
 * it: pid and host), AE_EIO as fileio_lock_dir. */
int search_lock_db(const ParCtx *ctx, const char *dir, const char *who, int *fd, Err *err);

/* Local, rank 0, holding dir's writer lock: vecdb_remove_stale_temps, with a
 * note on stderr naming how many files it removed (none: silent).
 * Writers call it just before their first write (index after encoding,
 * train-ivf before k-means, serve at its first POST /images), so a refused
 * command has removed nothing. */
void search_note_stale_temps(const char *dir);

/* Local.  Opens file `rel` (a name inside the database folder, e.g. serve's
 * added-SSSSS.npz) with imgset_open; a folder whose path holds what the
 * source syntax parses (',', '?', a "KIND:" prefix) is reached through a
 * descriptor of it.  Errors: imgset_open's; AE_EARG for a too long path. */
int search_open_db_file(ImageSet *set, const VecDb *db, const char *rel, Err *err);

/* Local.  Opens the images of the database's source run i (0 <= i <
 * db->n_sources) from the item paths recorded in the manifest (absolute, or
 * relative to the database folder: vecdb_item_path).
 * Opened with search_data_options (allow_gaps=1: the index run already
 * warned, and the counts below catch any change).
 * Errors: imgset_open's (a file moved or deleted: AE_EIO), AE_EFORMAT when an
 * item now holds another number of images than at index time, AE_ESHAPE
 * when the images do not have the model's input shape.  On error *set holds
 * nothing.  (Item paths holding commas cannot be reopened.) */
int search_open_source(ImageSet *set, const VecDb *db, int i, Err *err);

/* The source run holding database id (0 <= id < db->count), or -1. */
int search_source_of(const VecDb *db, int64_t id);

/* The class name of database id with label `label`, for query's `class`
 * column, the sheet's captions and serve's "class" field: from `given`
 * (--class-names FILE, class_names.h; may be NULL) when it holds names (NULL past its
 * end), else the class names the database recorded for the id's source
 * (image folders' class sub-folders, aesim-pack stores' meta.json), else
 * Fashion-MNIST's ten (sheet.h) when the source's path names it (Debian's
 * dataset-fashion-mnist holds IDX files like MNIST's: the path is the only
 * sign); for a source with no names of its own (serve's additions), the
 * name the other sources give the label when they all agree.  NULL when
 * unknown or label < 0.  The string belongs to given or db. */
const char *search_class_name(const ClassNames *given, const VecDb *db, int64_t id, int32_t label);

/* Labels and names of database ids, read on demand one shard at a time
 * (labels mapped, names read from names.txt): used by rank 0 for outputs. */
typedef struct SearchMeta {
    const VecDb *db;
    VecShard *maps;       /* [n_shards] labels mapped on first use */
    char **names;         /* [n_shards] packed names (vecdb_read_names_packed) or NULL */
    int64_t **name_offs;  /* [n_shards] their offsets or NULL */
    uint8_t *state;       /* [n_shards] bit 1 labels loaded, bit 2 names loaded */
    int n;                /* shards the arrays cover */
} SearchMeta;

/* Starts sm over db's shards with nothing loaded (loads happen on demand);
 * db must outlive sm.  Never fails (allocation failure aborts, as xmalloc). */
void search_meta_init(SearchMeta *sm, const VecDb *db);

/* Extends sm to shards added to its db since (what is loaded stays). */
void search_meta_sync(SearchMeta *sm);

/* Unmaps and frees what sm loaded; sm is zeroed (free again is a no-op). */
void search_meta_free(SearchMeta *sm);

/* Label of id (and its name when name != NULL; the pointer stays valid until
 * search_meta_free).  Errors: vecdb_shard_map / vecdb_read_names errors;
 * AE_EARG for an id outside the database. */
int search_meta_get(SearchMeta *sm, int64_t id, int32_t *label, const char **name, Err *err);

#endif
