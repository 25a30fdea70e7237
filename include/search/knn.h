/*
 * knn.h - exact k-nearest-neighbour search of float32 vectors: the core of
 * aesim-search.  One shard (this rank's slice of the database) is searched
 * with a float32 SIMD pre-scan (few queries) or blocked sgemm distances
 * (many queries), per-query top-k heaps and exact re-scoring; shards are
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
 * every reported value is the fixed-order re-scored distance
 *   L2: (float) sum_{d=0}^{D-1} ((double)q_d - (double)x_d)^2
 *   IP: (float) sum_{d=0}^{D-1} (double)q_d * (double)x_d
 * accumulated in double in the order d = 0..D-1, then rounded to float, and
 * every result list is the top k of those values over all eligible rows
 * (ties by id).  The fast passes only NOMINATE candidates; a rounding-error
 * bound then proves that no other row can enter the top k, and when the
 * proof fails for a query (many near-ties at the k-th place) that query is
 * re-scored against the whole shard with the direct loop.  So the result is
 * a pure function of the data, identical for any block size, thread count,
 * BLAS, CPU (AVX-512 or not) or split of the database into shards.  The
 * passes, chosen by knn_search_local:
 *   - GEMM pass (KNN_SCAN_MAX_QUERIES queries or more, or D > 2^20): float
 *     ||q||^2 + ||x||^2 - 2 q.x from blocked sgemm tiles (knn_gemm.h:
 *     aesim's AVX-512 kernel or OpenBLAS, AESIM_KNN_GEMM forces one; it
 *     moves by a few ulps with the block shape and kernel); nominates the best
 *     k + KNN_RESCORE_MARGIN rows per query; bound |error| <=
 *     (D+4) u (|q|+|x|)^2 for L2, (D+2) u |q||x| for IP, u = 2^-24, times a
 *     safety factor (the dot-product bound of Higham, Accuracy and Stability
 *     of Numerical Algorithms, ch. 3, plus the roundings of the norms).
 *   - Float pre-scan (fewer queries, the common case of one query): each
 *     row is streamed once and its float32 distance computed directly,
 *     L2 as fl(sum_d (q_d - x_d)^2) (all terms >= 0: the error is relative,
 *     |f - S| <= gamma_n S with n = ceil(D/16) + 17, about 42 u S for
 *     D = 392), IP as fl(sum_d q_d x_d) with |f - P| <= gamma_n |q| |x|
 *     (row norms from the same pass); AVX-512 kernel when the CPU has it.
 *     Rows are split over the threads in chunks; each thread keeps the best
 *     k + KNN_RESCORE_MARGIN rows per query by float value; all threads'
 *     candidates are re-scored, and the proof compares each full heap's
 *     worst float value, widened by the bound (knn_scan.h, which derives it
 *     from Higham ch. 3), with the k-th re-scored value.
 *   - Direct loop only (shards of at most k + KNN_RESCORE_MARGIN rows, where
 *     nothing could be excluded): the re-scored value of every row.
 * Range search uses the same passes with the radius in place of the k-th
 * value: rows whose bound keeps them possibly within the radius are
 * re-scored, and only re-scored values are compared with the radius.
 *
 * Valid input: every component finite and every query and (eligible)
 * database row of squared norm at most KNN_MAX_NORM2, so that no distance,
 * score or float partial sum can overflow float32 (otherwise reported
 * distances would be inf and their order meaningless).  Queries are checked
 * up front; database rows inside the pass that reads them anyway (the
 * pre-scan's float norms, the GEMM pass's double norms), so the check costs
 * no extra read of the shard; a flagged row is then checked exactly and
 * named in the error.  Rows masked out are never read, hence not checked.
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
 * (each thread owns its queries' heaps: owner-writes); with at most one
 * block of queries (KNN_QUERY_BLOCK = 512 in knn.c) the threads instead
 * split the database tiles, each with its own heaps, merged before the
 * re-scoring.  Either way the sgemm calls are
 * made INSIDE the OpenMP loop and BLAS must be single-threaded when
 * nthreads > 1 (threads.h sets OpenBLAS to 1 thread by default; BLAS and
 * OpenMP never nest).  The pre-scan runs OpenMP over chunks of rows (each
 * thread owns its heaps, merged after the loop); the exact fallback scan of
 * one query splits its rows over the threads; the direct loop of small
 * shards runs OpenMP over queries.  No global state: calls on different data
 * may run concurrently.
 * MPI: only knn_search_sharded communicates, through par.h; the rest is
 * rank-local.
 */
#ifndef AESIM_KNN_H
#define AESIM_KNN_H

#include <float.h>
#include <stdint.h>

#include "base/err.h"
#include "par/par.h"
#include "search/topk.h"

typedef enum {
    KNN_L2 = 0, /* squared Euclidean distance, smaller is better */
    KNN_IP = 1  /* inner product, larger is better */
} KnnMetric;

/* Extra candidates per query (per thread for the pre-scan) nominated by
 * the GEMM pass or the pre-scan and re-scored exactly (see "Exactness"
 * above).  With 16, no query of the random-data
 * cases of tests/test_knn.c needs the fallback full re-scan; exact ties and
 * cancellation beyond the margin are still handled (by the fallback). */
#define KNN_RESCORE_MARGIN 16

/* Queries per call from which the GEMM pass replaces the float pre-scan
 * (see "Exactness"; measured in src/search/knn.c, where the numbers are). */
#define KNN_SCAN_MAX_QUERIES 32

/* Largest squared norm (sum_d v_d^2, in double) of a query or database
 * vector: FLT_MAX / 64, about 5.3e36 (norm about 2.3e18).  Then every L2
 * distance is at most (|q| + |x|)^2 <= FLT_MAX / 16 and every inner product
 * at most FLT_MAX / 64 in magnitude, and no float partial sum of the passes
 * can overflow.  Larger vectors are refused with AE_ENUMERIC. */
#define KNN_MAX_NORM2 ((double)FLT_MAX / 64.0)

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
    const float *norms;   /* [M] optional: every row's squared norm as knn_row_norms gives it, so that a
                             long-lived database (aesim-search serve) does not read the whole shard again
                             for the norms at each many-query search; NULL = computed per call */
    double norms_max2;    /* with norms: the largest squared norm (double) */
} KnnDb;

/* Squared norms of every row of db (mask ignored), accumulated in double
 * and rounded to float, into out[db->M], as the many-query pass computes
 * them; *max2 = the largest (double).  Returns 1 when every row is finite
 * with a squared norm <= KNN_MAX_NORM2 (then out may be set as db->norms),
 * 0 otherwise (leave db->norms NULL: the search checks such rows itself).
 * OpenMP over rows (nthreads, 0 = default). */
int knn_row_norms(float *out, double *max2, const KnnDb *db, int nthreads);

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

/* Checks n vectors v[n][D] as knn_search_local checks its queries (knn.h
 * "Valid input"), for callers that want the error to name their source
 * (e.g. the query file) before searching.
 *   what  names the source in the message, e.g. a file path
 * Returns AE_OK, or AE_ENUMERIC for the first vector with a NaN or infinite
 * component or a squared norm (double) above KNN_MAX_NORM2:
 * "<what>: vector i component d is NaN or infinite; hint: ..." or
 * "<what>: vector i has squared norm X, above the limit ...; hint: ...".
 * n >= 0, D >= 1. */
int knn_check_vectors(const float *v, int64_t n, int D, const char *what, Err *err);

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
 *                id_offset + M overflowing int64, a negative explicit id,
 *                an invalid AESIM_KNN_GEMM (knn_gemm.h);
 *   AE_ESHAPE    D <= 0;
 *   AE_ENUMERIC  a NaN or infinite component, or a squared norm above
 *                KNN_MAX_NORM2, in a query or an eligible database row
 *                (names the query, or the row by its global id and its row
 *                in this shard, and the problem; masked-out rows
 *                are not read).
 * Out of memory aborts the job (check.h).
 * Cost: Q < KNN_SCAN_MAX_QUERIES streams the shard once (float pre-scan, at
 * memory bandwidth with AVX-512); more queries run the GEMM pass (one norms
 * pass plus the sgemm tiles).  A query whose proof fails costs one exact
 * double-precision scan of the shard more. */
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
 * pre-scan (Q < KNN_SCAN_MAX_QUERIES) or GEMM pass keeps rows within the
 * rounding-error bound of the radius and re-scores them exactly, so the set
 * is the same as a direct loop's.
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
