/*
 * knn.h - exact k-nearest-neighbour search of float32 vectors: the core of
 * aesim-search.  One shard (this rank's slice of the database) is searched
 * with blocked cblas_sgemm distances and per-query top-k heaps; shards are
 * combined by a k-way merge, on one process (knn_merge) or over MPI ranks
 * (knn_search_sharded, through par.h only).
 *
 * Shapes (letters as in the README): Q queries, M database rows of this
 * shard, D dimensions, k neighbours.  Vectors are float32 row-major:
 * queries q[Q][D], database x[M][D].
 *
 * Metrics (as faiss IndexFlatL2 / IndexFlatIP return them):
 *   KNN_L2  squared Euclidean distance sum_d (q_d - x_d)^2, smaller is better;
 *   KNN_IP  inner product sum_d q_d x_d, larger is better.  Cosine similarity
 *           is KNN_IP on rows normalised with knn_normalize.
 * Results are sorted best first, ties broken by the smaller global id
 * everywhere, missing results padded with (+inf, -1) for L2 and (-inf, -1)
 * for IP (topk.h).
 *
 * Exactness (why results do not depend on blocking, threads or shards):
 * a GEMM distance ||q||^2 + ||x||^2 - 2 q.x moves by a few ulps with the
 * block shape and the BLAS kernel, which could reorder near-ties between
 * runs on 1, 2 or 3 ranks.  So the GEMM pass only nominates the best
 * k + KNN_RESCORE_MARGIN candidates per query; each candidate is re-scored
 * with the fixed-order direct loop below, and the top k of the re-scored
 * values is kept.  Re-scored distance (the value reported):
 *   L2: (float) sum_{d=0}^{D-1} ((double)q_d - (double)x_d)^2
 *   IP: (float) sum_{d=0}^{D-1} (double)q_d * (double)x_d
 * accumulated in double in the order d = 0..D-1, then rounded to float.
 * A rounding-error bound of the float GEMM (|error| <= (D+4) u (|q|+|x|)^2
 * for L2, (D+2) u |q||x| for IP, u = 2^-24, times a safety factor) then
 * proves that no row outside the candidates can beat the k-th re-scored
 * result; if the proof fails for a query (many near-ties at the k-th
 * place), that query is re-scored against the whole shard with the same
 * direct loop.  Either way the result is the top k of the re-scored values
 * over all eligible rows: a pure function of the data, identical for any
 * block size, thread count, BLAS or split of the database into shards.
 * Small problems (one query, or a shard of at most k + KNN_RESCORE_MARGIN
 * rows) skip the GEMM and use the direct loop for every row.
 *
 * Follows faiss/utils/distances.cpp (exhaustive_L2sqr_blas: query-block x
 * database-block sgemm tiles, norms, clamp at 0; exhaustive_*_seq direct
 * path), faiss/utils/Heap.h and faiss/IndexShards.cpp (merge of per-shard
 * results, id translation by shard offset), faiss/impl/AuxIndexStructures.h
 * RangeSearchResult (lims/ids/distances).  Written from the description,
 * not copied.
 *
 * Threading: OpenMP across query blocks: each thread takes whole blocks of
 * queries and runs their sgemm tiles, heap updates and re-scoring itself
 * (each thread owns its queries' heaps: owner-writes), so the sgemm calls are
 * made INSIDE the OpenMP loop and BLAS must be single-threaded when
 * nthreads > 1 (threads.h sets OpenBLAS to 1 thread by default; BLAS and
 * OpenMP never nest).  The direct path runs OpenMP over queries, or over
 * row ranges when there are fewer queries than threads.  No global state: calls on different data may run
 * concurrently.
 * MPI: only knn_search_sharded communicates, through par.h; the rest is
 * rank-local.
 */
#ifndef AESIM_KNN_H
#define AESIM_KNN_H

#include <stdint.h>

#include "err.h"
#include "par.h"
#include "topk.h"

typedef enum {
    KNN_L2 = 0, /* squared Euclidean distance, smaller is better */
    KNN_IP = 1  /* inner product, larger is better */
} KnnMetric;

/* Extra candidates per query nominated by the GEMM pass and re-scored
 * exactly (see "Exactness" above).  With 16, no query of the random-data
 * cases of tests/test_knn.c needs the fallback full re-scan; exact ties and
 * cancellation beyond the margin are still handled (by the fallback). */
#define KNN_RESCORE_MARGIN 16

/* One shard of the database, borrowed (never freed or modified by knn.c).
 * Global id of row j (0 <= j < M): ids[j] if ids != NULL, else id_offset + j
 * (id_offset = this rank's first global id, e.g. par_exscan_sum_i64 of the
 * shard sizes, as faiss IndexShards translates ids). */
typedef struct KnnDb {
    const float *x;       /* [M][D] row-major vectors; may be NULL when M == 0 */
    int64_t M;            /* rows in this shard, >= 0 (0 = empty shard) */
    int D;                /* dimension, >= 1 */
    int64_t id_offset;    /* global id of row 0 when ids == NULL, >= 0 */
    const int64_t *ids;   /* [M] explicit global ids (>= 0), or NULL */
    const uint8_t *mask;  /* [M] 1 = row eligible, 0 = skipped inside the scan;
                             NULL = every row eligible */
} KnnDb;

/* Variable-length results of a range search (faiss RangeSearchResult):
 * the results of query i are ids[lims[i] .. lims[i+1]-1] and dist[same],
 * sorted best first, ties by id.  lims has size Q+1 (lims[0] = 0), ids and
 * dist have size lims[Q].  Owned by the KnnRange (free with knn_range_free). */
typedef struct KnnRange {
    int64_t Q;        /* number of queries */
    int64_t *lims;    /* [Q+1] offsets into ids/dist */
    int64_t *ids;     /* [lims[Q]] global ids */
    float *dist;      /* [lims[Q]] re-scored distances (L2) / scores (IP) */
} KnnRange;

/* The TopKOrder of a metric: TOPK_SMALLEST for KNN_L2, TOPK_LARGEST for
 * KNN_IP. */
TopKOrder knn_metric_order(KnnMetric metric);

/* L2-normalises each row of x[n][D] in place (norm accumulated in double),
 * so that KNN_IP gives cosine similarity.  Rows of norm 0 are left
 * unchanged (as faiss normalize_L2).  n >= 0, D >= 1.  OpenMP over rows. */
void knn_normalize(float *x, int64_t n, int D);

/* Exact k-NN of Q queries against one shard.
 *   out      result, allocated here (topk_alloc): out->dist, out->ids of size
 *            Q*k, query i's list at [i*k .. i*k+k-1], sorted best first,
 *            global ids, padded when fewer than k rows are eligible (k > M
 *            returns all eligible rows in order, then padding).  The caller
 *            frees it with topk_free.  On error *out is zeroed, nothing
 *            allocated.
 *   q        [Q][D] queries (may be NULL when Q == 0)
 *   Q        number of queries, >= 0
 *   db       the shard (KnnDb above); db->D is the dimension of q too
 *   k        neighbours per query, >= 1
 *   metric   KNN_L2 or KNN_IP
 *   nthreads OpenMP threads for this call (<= 0: the OpenMP default);
 *            results do not depend on it.  With nthreads > 1, OpenBLAS
 *            must be set to 1 thread (see Threading above)
 *   err      filled on failure (may be NULL)
 * Returns AE_OK, or
 *   AE_EARG      k <= 0, Q < 0, M < 0, unknown metric, id_offset < 0,
 *                id_offset + M overflowing int64, a negative explicit id;
 *   AE_ESHAPE    D <= 0;
 *   AE_ENUMERIC  a NaN or infinite component in q or x (names the row).
 * Out of memory aborts the job (check.h). */
int knn_search_local(TopK *out, const float *q, int64_t Q, const KnnDb *db, int k, KnnMetric metric,
                     int nthreads, Err *err);

/* Merges P per-shard result sets into the global top k per query:
 * out[i] = best k of the concatenation of parts[0..P-1][i], ties by id
 * (k-way merge of the sorted lists, faiss merge_knn_results).
 *   out    allocated here: Q x k with Q = parts[0].Q (free with topk_free)
 *   parts  [P] result sets with the same Q (assert) and sorted lists of any
 *          lengths parts[p].k, e.g. knn_search_local on disjoint shards;
 *          their order must be knn_metric_order(metric) (assert)
 *   P      >= 1 (assert); k >= 1 (assert)
 * Padding entries in the parts are skipped; the result is padded when the
 * parts hold fewer than k real entries.  Deterministic: does not depend on
 * the order of the parts. */
void knn_merge(TopK *out, const TopK *parts, int P, int k, KnnMetric metric);

/* Range search of Q queries against one shard: every eligible row with
 * re-scored distance <= radius (KNN_L2) or score >= radius (KNN_IP).  The
 * GEMM pass keeps rows within the rounding-error bound of the radius and
 * re-scores them exactly, so the set is the same as a direct loop's.
 *   out    allocated here (see KnnRange); freed by knn_range_free.  On error
 *          *out is zeroed, nothing allocated.
 *   radius finite threshold (squared distance for L2)
 * Other arguments and errors as knn_search_local (k is not used), plus
 * AE_EARG for a NaN or infinite radius. */
int knn_range_search_local(KnnRange *out, const float *q, int64_t Q, const KnnDb *db, float radius,
                           KnnMetric metric, int nthreads, Err *err);

/* Frees r->lims, r->ids, r->dist and zeroes *r.  r may be NULL. */
void knn_range_free(KnnRange *r);

/* Sharded exact k-NN over all ranks of ctx (collective: every rank calls it,
 * with the SAME q, Q, k, D and metric, and its own shard db; the shards must
 * hold disjoint global ids).  Each rank runs knn_search_local on its shard;
 * rank 0 gathers the per-rank lists with par_gather (in chunks of queries
 * bounded by KNN_GATHER_CHUNK_BYTES in knn.c), merges them with the k-way
 * merge of knn_merge, and broadcasts the result with par_bcast.
 *   out    allocated here on EVERY rank (Q x k, free with topk_free); the
 *          result is valid and identical on every rank.  Because the local
 *          results are exact (see "Exactness"), it is bit-identical to
 *          knn_search_local on the concatenated database, for any number of
 *          ranks and any split.
 * Returns the same code on every rank (par_agree): AE_OK, or any error of
 * knn_search_local on any rank (message of the lowest failing rank,
 * prefixed "[rank r]"), or AE_EARG if Q, k, D or metric differ from rank 0's.
 * On error *out is zeroed on every rank. */
int knn_search_sharded(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const KnnDb *db,
                       int k, KnnMetric metric, int nthreads, Err *err);

#endif
