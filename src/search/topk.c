/*
 * topk.c - fixed-size (distance, id) heaps, their sort, and the k-way merge
 * of sorted lists (see include/search/topk.h for the ordering and the layout).
 *
 * Does not compute distances or touch MPI.  Every function works on the
 * caller's arrays only, so separate heaps can be filled by separate threads.
 * Follows faiss/utils/Heap.h (heap_replace_top, heap_reorder) and
 * merge_knn_results; written from the description, not copied.
 */
#include "search/topk.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "base/check.h"

float topk_pad_dist(TopKOrder order)
{
    return order == TOPK_SMALLEST ? INFINITY : -INFINITY;
}

void topk_heap_init(float *dist, int64_t *ids, int k, TopKOrder order)
{
    assert(k >= 1);
    float pad = topk_pad_dist(order);
    for (int j = 0; j < k; j++) {
        dist[j] = pad;
        ids[j] = TOPK_NO_ID;
    }
}

/* Sinks the entry (d, id) from slot `hole` of the heap of size n whose root
 * is the worst entry: at each level the worse child moves up while it is
 * worse than (d, id). */
static void heap_sift_down(float *dist, int64_t *ids, int n, TopKOrder order, int hole, float d,
                           int64_t id)
{
    for (;;) {
        int c = 2 * hole + 1;
        if (c >= n) break;
        /* pick the worse of the two children */
        if (c + 1 < n && topk_better(order, dist[c], ids[c], dist[c + 1], ids[c + 1])) c++;
        /* stop once the worse child is better than (d, id) */
        if (!topk_better(order, d, id, dist[c], ids[c])) break;
        dist[hole] = dist[c];
        ids[hole] = ids[c];
        hole = c;
    }
    dist[hole] = d;
    ids[hole] = id;
}

int topk_heap_push(float *dist, int64_t *ids, int k, TopKOrder order, float d, int64_t id)
{
    if (!topk_better(order, d, id, dist[0], ids[0])) return 0;
    heap_sift_down(dist, ids, k, order, 0, d, id);
    return 1;
}

void topk_heap_sort(float *dist, int64_t *ids, int k, TopKOrder order)
{
    /* Pop the worst entry to the end of the shrinking heap: the array ends
     * up sorted best first. */
    for (int n = k - 1; n > 0; n--) {
        float d = dist[n];
        int64_t id = ids[n];
        dist[n] = dist[0];
        ids[n] = ids[0];
        heap_sift_down(dist, ids, n, order, 0, d, id);
    }
}

void topk_merge(float *out_dist, int64_t *out_ids, int k, const float *const *in_dist,
                const int64_t *const *in_ids, const int *in_k, int P, TopKOrder order)
{
    assert(k >= 1 && P >= 0);
    /* pos[p]: next unread entry of list p.  P is the number of shards (MPI
     * ranks), small, so one small allocation per call is fine. */
    int *pos = xcalloc(P > 0 ? (size_t)P : 1, sizeof *pos);
    float pad = topk_pad_dist(order);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int p = 0; p < P; p++) {
            if (pos[p] >= in_k[p] || in_ids[p][pos[p]] == TOPK_NO_ID) continue;
            if (best < 0 || topk_better(order, in_dist[p][pos[p]], in_ids[p][pos[p]],
                                        in_dist[best][pos[best]], in_ids[best][pos[best]]))
                best = p;
        }
        if (best < 0) {
            out_dist[j] = pad;
            out_ids[j] = TOPK_NO_ID;
        } else {
            out_dist[j] = in_dist[best][pos[best]];
            out_ids[j] = in_ids[best][pos[best]];
            pos[best]++;
        }
    }
    free(pos);
}

void topk_alloc(TopK *t, int64_t Q, int k, TopKOrder order)
{
    assert(Q >= 0 && k >= 1);
    CHECK((uint64_t)Q <= SIZE_MAX / sizeof(int64_t) / (size_t)k);
    size_t n = (size_t)Q * (size_t)k;
    t->Q = Q;
    t->k = k;
    t->order = order;
    t->dist = xmalloc(n * sizeof *t->dist);
    t->ids = xmalloc(n * sizeof *t->ids);
    for (int64_t i = 0; i < Q; i++)
        topk_heap_init(t->dist + (size_t)i * (size_t)k, t->ids + (size_t)i * (size_t)k, k, order);
}

void topk_free(TopK *t)
{
    if (!t) return;
    free(t->dist);
    free(t->ids);
    t->Q = 0;
    t->k = 0;
    t->dist = NULL;
    t->ids = NULL;
}
