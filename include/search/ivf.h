/*
 * ivf.h - the inverted-file (IVF) index of a vector database: coarse
 * centroids from k-means over the ranks (kmeans.h), every vector assigned to
 * its nearest centroid's list, and approximate k-NN / range search that
 * scans only the nprobe lists nearest to each query (faiss IndexIVFFlat).
 *
 * Files (vecdb.h version 2; <crc> = 8 hex digits of the zlib CRC-32 of the
 * centroids' data bytes, recorded in the manifest's "ivf" object):
 *   DIR/ivf-<crc>.centroids.npy          float32 [NLIST][D]
 *   DIR/shard-SSSSS.ivf-<crc>.lists.npy  int64 [NLIST + 1 + n]: first the
 *        offsets lims[0..NLIST] (lims[0] = 0, non-decreasing, lims[NLIST] =
 *        n), then the shard's row numbers grouped by list: list l holds rows
 *        rows[lims[l] .. lims[l+1]-1], ascending.  Every row 0..n-1 appears
 *        exactly once.
 * The file names carry the CRC, so retraining writes new files and the
 * manifest (written last) switches to them atomically; files of other
 * centroids are ignored.  The vectors stay where they are (shard row order =
 * id order, vecdb.h): a list is a run of row numbers, 8 bytes per vector
 * (0.4% of a D = 512 vector).
 *
 * Search (ivf_search_knn): the nprobe lists of a query are its nprobe
 * nearest centroids (exact L2, ties to the smaller list number: the same on
 * every rank; cosine databases: largest inner product, below).  Each rank scans the eligible rows (filters: KnnDb masks) of
 * those lists of its shards in place, as knn.c's pre-scan scans a shard:
 * float32 distances (knn_scan_rows, AVX-512 when present) keep the best
 * k + KNN_RESCORE_MARGIN rows, these are re-scored exactly, and the
 * rounding-error bound of knn_scan.h proves that no other probed row can
 * enter (else every probed row is re-scored).  So every reported value is
 * the exact re-scored distance and lists are ordered as exact search orders
 * them (distance, then smaller id); the per-rank lists are merged on rank 0
 * as search_knn does (search_merge_topk).  With nprobe = NLIST every row is
 * probed and the result is bit for bit search_knn's.  The result does not
 * depend on the number of ranks or threads.  Range search: rows the bound
 * cannot exclude are re-scored and compared with the radius.
 *
 * Cosine databases (VecDb.metric KNN_IP; faiss's convention: IndexIVFFlat
 * with METRIC_INNER_PRODUCT over L2-normalised vectors): the whole index
 * lives in the space of the normalised vectors, VecDb.ivf_normalized = 1,
 * manifest "ivf": {"normalized": true}.  Training normalises the sample and
 * runs spherical k-means (kmeans.h: unit centroids, as faiss's IndexIVF
 * with METRIC_INNER_PRODUCT trains); every vector (train-ivf, index --ivf,
 * index --append, serve's POST /images) joins the list of the centroid
 * with the largest inner product with the normalised vector (knn.h's exact
 * score, ties to the smaller list: faiss's IndexFlatIP quantizer); a query
 * probes its nprobe lists by the largest inner product of the normalised
 * query with the centroids, whatever the search metric, so a stored vector
 * searched with itself probes its own list first.  Candidates are scored
 * by the search metric (cosine: on normalised copies, search_core.h).
 * The stored vectors stay as indexed.  Otherwise (l2) everything is by L2
 * on the stored vectors.  A cosine database whose manifest lacks
 * "normalized" was indexed by an older aesim-search that clustered the raw
 * vectors but probed with the normalised query (recall@10 0.06 at nprobe 1
 * where l2 reached 0.79): ivf_read_centroids refuses it with a hint to
 * retrain (train-ivf --overwrite); --exact still searches it.
 *
 * Many queries (16 or more in one call, as eval, query --queries and the
 * server's micro-batches give) are scanned list by list: the rows of a
 * probed list are read once, a block of 64 at a time, and scanned for every
 * query that probes the list, 8 queries per knn_scan_rows call (the same
 * float values as one at a time); each thread keeps a pre-scan heap per
 * query, merged per shard before the exact re-score and the proof (the
 * same result).  Measured at N = 1,000,000, d = 512, nlist 1,024, nq =
 * 1,000, 2 threads: 4.3x the query-by-query scan at nprobe 2 (README).
 *
 * Threading: OpenMP over lists (batched) or over queries (each thread its
 * own scratch); with fewer queries than threads, each query's probes are
 * dealt over the threads and the exact per-thread lists merged (the same
 * result).  MPI through par.h; collective functions say so
 * and agree on errors (par_agree).
 */
#ifndef AESIM_IVF_H
#define AESIM_IVF_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "par/par.h"
#include "search/kmeans.h"
#include "search/knn.h"
#include "search/search_core.h"
#include "search/topk.h"
#include "search/vecdb.h"

/* k-means iterations of train-ivf: faiss's for an IVF's coarse quantizer
 * (Level1Quantizer sets cp.niter = 10: "typically used for large
 * clusterings"). */
#define IVF_KMEANS_ITERS 10

/* Lists probed per query when --nprobe is not given. */
#define IVF_DEFAULT_NPROBE 8
/* Most lists of an index. */
#define IVF_MAX_NLIST (1 << 20)

/* One shard's lists (see the file layout above). */
typedef struct IvfLists {
    int nlist;
    int64_t n;          /* rows of the shard */
    const int64_t *lims; /* [nlist + 1] */
    const int64_t *rows; /* [n] */
    void *data;         /* owned block holding both */
} IvfLists;

/* "DIR/ivf-<crc>.centroids.npy" / "DIR/shard-SSSSS.ivf-<crc>.lists.npy" for
 * db's IVF into out[cap]; AE_EARG when it does not fit. */
int ivf_centroids_path(char *out, size_t cap, const VecDb *db, Err *err);
int ivf_lists_path(char *out, size_t cap, const VecDb *db, int shard, Err *err);

/* Local.  Reads db's centroids into *c (float [nlist][D], free with free()).
 * Errors (naming the file and the reason, hint: retrain with train-ivf):
 * AE_EIO missing file; AE_EFORMAT not float32 [nlist][D] as the manifest
 * says, or CRC-32 different from the manifest's (damaged), or a cosine
 * database whose index is not normalised (built before the cosine fix,
 * above; hint: train-ivf --overwrite). */
int ivf_read_centroids(float **c, const VecDb *db, Err *err);

/* Local.  Reads and checks shard `shard`'s lists (layout above: size,
 * offsets, every row once, ascending within a list).  Errors as
 * ivf_read_centroids.  On error *l holds nothing. */
int ivf_read_lists(IvfLists *l, const VecDb *db, int shard, Err *err);
void ivf_lists_free(IvfLists *l);

/* Local.  list[i] = the list of x[i], x[n][D] as stored, centroids[nlist][D]:
 * normalized = 0: the centroid nearest to x[i] (exact L2, ties to the
 * smaller number: kmeans_assign); normalized = 1 (db->ivf_normalized): the
 * centroid with the largest inner product with x[i] / ||x[i]|| (knn_normalize,
 * then knn.h's exact score, ties to the smaller number).
 * Errors: AE_ENUMERIC for a NaN/Inf or too large vector (knn_check_vectors). */
int ivf_assign(int32_t *list, const float *x, int64_t n, const float *centroids, int nlist, int D, int normalized,
               int nthreads, Err *err);

/* Local.  Writes shard `shard`'s lists file (atomically) from the
 * assignment list[n] (values in 0..nlist-1).  Errors: AE_EIO naming the file. */
int ivf_write_lists(const VecDb *db, int shard, const int32_t *list, int64_t n, Err *err);

/* Collective.  Trains nlist centroids (kmeans.h: seeded sample of
 * min(count, 256 nlist) vectors, each rank holding the sampled rows of its
 * shards), writes them (rank 0), and the lists of every shard (its owner),
 * then sets db->ivf_nlist and db->ivf_crc on every rank.  Does not write the
 * manifest: the caller commits with vecdb_write_manifest on rank 0.  Cosine
 * databases (db->metric KNN_IP) are clustered on the normalised vectors by
 * spherical k-means and get db->ivf_normalized = 1 (above); l2 ones on the
 * stored vectors (ivf_normalized = 0).  Errors (agreed): AE_EARG
 * for nlist outside 1..min(count, IVF_MAX_NLIST); shard errors
 * (vecdb_shard_map); AE_EIO writing. */
int ivf_train_db(const ParCtx *ctx, VecDb *db, int nlist, int iters, int nthreads, KmeansStats *stats, Err *err);

/* Collective.  Writes the lists of shards first_shard .. db->n_shards-1 (new
 * shards of --append) with db's existing centroids.  Errors as above. */
int ivf_add_shards(const ParCtx *ctx, const VecDb *db, int first_shard, int nthreads, Err *err);

/* This rank's IVF data for searching the shards of a LocalShards. */
typedef struct IvfLocal {
    int nlist, D;
    int normalized;     /* db->ivf_normalized: probe by inner product of the normalised query */
    float *centroids;   /* [nlist][D] */
    int n;              /* = LocalShards.n */
    IvfLists *lists;    /* [n], lists[i] belongs to LocalShards.maps[i] */
} IvfLocal;

/* Collective.  Reads the centroids and the lists of the shards in ls.
 * Errors (agreed): those of ivf_read_centroids / ivf_read_lists, AE_EFORMAT
 * when a lists file's row count differs from its shard's. */
int ivf_local_open(const ParCtx *ctx, IvfLocal *il, const VecDb *db, const LocalShards *ls, Err *err);
void ivf_local_close(IvfLocal *il);

/* Not collective.  Reads the lists of the shards ls gained since il was
 * opened (ls->maps[il->n .. ls->n - 1]: aesim-search serve's live
 * additions; a rank that gained none reads nothing).  Errors: those of
 * ivf_read_lists (the caller agrees them). */
int ivf_local_add(IvfLocal *il, const VecDb *db, const LocalShards *ls, Err *err);

/* Collective.  Approximate k-NN over the nprobe nearest lists (the same
 * shape as search_knn; dbs[n_dbs] are the LocalShards' KnnDbs, il their
 * lists).  nprobe >= 1 (capped at nlist).  *out valid on rank 0.  Errors:
 * knn_search_local's on any rank. */
int ivf_search_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                   const IvfLocal *il, int nprobe, int k, KnnMetric metric, int nthreads, Err *err);

/* Collective.  Range search (as search_range) over the nprobe nearest lists. */
int ivf_search_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const KnnDb *dbs, int n_dbs,
                     const IvfLocal *il, int nprobe, float radius, KnnMetric metric, int nthreads, Err *err);

#endif
