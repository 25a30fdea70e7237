/*
 * topk.h - bounded top-k selection of (distance, id) pairs: a fixed-size
 * binary heap per query, its in-place sort, and the k-way merge of sorted
 * lists.  The building block of knn.c (exact k-NN) and of the merge of
 * per-rank / per-shard results.
 *
 * Ordering (used everywhere, heaps, sorts and merges alike):
 *   TOPK_SMALLEST (L2 distances): a is better than b if a.dist < b.dist, or
 *       a.dist == b.dist and a.id < b.id;
 *   TOPK_LARGEST (inner products): a is better than b if a.dist > b.dist, or
 *       a.dist == b.dist and a.id < b.id.
 * Ties are broken by the SMALLER id in both orders, so a result never depends
 * on the order in which candidates were offered.  The padding id -1 compares
 * as the largest possible id (ids are compared as uint64_t), so a padding
 * entry (+inf, -1) (TOPK_SMALLEST) / (-inf, -1) (TOPK_LARGEST) is worse than
 * every real entry, even a real entry with an infinite distance.  A NaN
 * distance is never better than anything: it never enters a heap.
 *
 * Heap layout: the k slots hold a binary heap with the WORST entry at index
 * 0 (a max-heap for TOPK_SMALLEST, a min-heap for TOPK_LARGEST), so a new
 * candidate is compared with one value and, if better, replaces the root and
 * sinks.  Initialised full of padding, a heap always has exactly k entries;
 * topk_heap_sort turns it into a list sorted best first with the padding at
 * the end, which is the output format of every search (faiss Index::search:
 * "missing results are -1 with distance +inf/-inf").
 *
 * Follows faiss/utils/Heap.h (heap_replace_top, heap_reorder, CMax/CMin::cmp2
 * tie-break on ids) and faiss/IndexShards.cpp / utils merge_knn_results (k-way
 * merge of per-shard sorted lists).
 *
 * Does not: allocate inside the heap functions, compute distances (knn.h),
 * deduplicate ids (the lists merged must come from disjoint shards).
 * Threading: no shared state; different heaps may be used concurrently from
 * different threads (owner-writes).  No MPI.
 */
#ifndef AESIM_TOPK_H
#define AESIM_TOPK_H

#include <stdint.h>

/* Which end of the distance axis is kept. */
typedef enum {
    TOPK_SMALLEST = 0, /* keep the k smallest distances (L2); pad with +inf */
    TOPK_LARGEST = 1   /* keep the k largest scores (inner product); pad with -inf */
} TopKOrder;

/* Id of a padding entry (no result). */
#define TOPK_NO_ID ((int64_t)-1)

/* Result lists of Q queries, k entries each, row-major and sorted best first:
 * dist[i*k + j], ids[i*k + j] for query i, rank j.  dist and ids have size
 * Q*k each, 64-byte aligned, owned by the TopK (free with topk_free). */
typedef struct TopK {
    int64_t Q;       /* number of queries (rows) */
    int k;           /* entries per query, k >= 1 */
    TopKOrder order; /* how the lists are sorted */
    float *dist;     /* [Q][k] distances (L2: squared Euclidean) or scores (IP) */
    int64_t *ids;    /* [Q][k] global ids, TOPK_NO_ID for padding */
} TopK;

/* 1 if (da, ia) is strictly better than (db, ib) under `order` (see the
 * ordering at the top of this file), else 0.  Inline: it is the comparison
 * in the hot loop of the k-NN scan. */
static inline int topk_better(TopKOrder order, float da, int64_t ia, float db, int64_t ib)
{
    if (order == TOPK_SMALLEST) {
        if (da < db) return 1;
        if (!(da == db)) return 0;
    } else {
        if (da > db) return 1;
        if (!(da == db)) return 0;
    }
    return (uint64_t)ia < (uint64_t)ib;
}

/* Padding distance of `order`: +INFINITY for TOPK_SMALLEST, -INFINITY for
 * TOPK_LARGEST. */
float topk_pad_dist(TopKOrder order);

/* Fills dist[k], ids[k] with k padding entries, which is a valid heap.
 * k >= 1 (assert). */
void topk_heap_init(float *dist, int64_t *ids, int k, TopKOrder order);

/* Offers (d, id) to the heap dist[k], ids[k] (built by topk_heap_init and
 * changed only by this function).  If (d, id) is better than the root (the
 * current worst), it replaces the root and sinks; otherwise nothing changes.
 * Returns 1 if it entered, 0 if not.  O(log k). */
int topk_heap_push(float *dist, int64_t *ids, int k, TopKOrder order, float d, int64_t id);

/* Turns the heap dist[k], ids[k] into a list sorted best first (padding
 * last), in place, O(k log k).  Afterwards the arrays are no longer a heap. */
void topk_heap_sort(float *dist, int64_t *ids, int k, TopKOrder order);

/* k-way merge of P sorted lists into the best k entries, sorted best first.
 * in_dist[p], in_ids[p] point to list p of length in_k[p] >= 0, sorted best
 * first under `order` (padding entries, id TOPK_NO_ID, are skipped).  Writes
 * out_dist[k], out_ids[k]; if the lists hold fewer than k real entries the
 * rest is padding.  Equal to the top k of the concatenation of the lists,
 * ties by id.  The output must not alias an input.  Linear scan of the P
 * list heads per output entry: O(k P), cheap for P = number of MPI ranks. */
void topk_merge(float *out_dist, int64_t *out_ids, int k, const float *const *in_dist,
                const int64_t *const *in_ids, const int *in_k, int P, TopKOrder order);

/* Allocates t->dist and t->ids for Q*k entries (xmalloc: aborts the job if
 * memory runs out) and fills every list with padding.  Q >= 0, k >= 1. */
void topk_alloc(TopK *t, int64_t Q, int k, TopKOrder order);

/* Frees t->dist and t->ids and zeroes *t.  t may be NULL or already freed
 * (zeroed). */
void topk_free(TopK *t);

#endif
