/*
 * serve_metrics.h - counters of aesim-search serve and their Prometheus text
 * exposition (format 0.0.4: "# HELP", "# TYPE", one sample per line;
 * histograms as cumulative _bucket{le=...}, _sum and _count).
 *
 * Exported (GET /metrics):
 *   aesim_http_requests_total{endpoint}        requests answered
 *   aesim_http_errors_total{endpoint}          answers with status >= 400
 *   aesim_http_request_seconds{endpoint}       latency histogram (receipt of the
 *                                              whole request to the answer queued)
 *   aesim_batch_size                           requests per MPI micro-batch (histogram)
 *   aesim_vectors{rank}                        vectors in the shards each rank searches
 *   aesim_vectors_total                        vectors in the database
 *   aesim_queue_length                         jobs waiting for the MPI thread
 *
 * Threading: every function takes the one mutex; called from HTTP threads
 * and the MPI thread.  No MPI.
 */
#ifndef AESIM_SERVE_METRICS_H
#define AESIM_SERVE_METRICS_H

#include <pthread.h>
#include <stdint.h>

typedef enum {
    EP_SEARCH = 0, EP_IMAGE_GET, EP_IMAGE_POST, EP_HEALTHZ, EP_METRICS, EP_PAGE, EP_LABELS, EP_OTHER, EP_COUNT
} ServeEndpoint;

/* Histogram bucket upper bounds: latency in seconds, batch sizes in requests. */
#define SERVE_LAT_BUCKETS 14
#define SERVE_BATCH_BUCKETS 10

typedef struct ServeMetrics {
    pthread_mutex_t mu;
    uint64_t requests[EP_COUNT], errors[EP_COUNT];
    uint64_t lat_bucket[EP_COUNT][SERVE_LAT_BUCKETS]; /* non-cumulative counts; last = +Inf */
    double lat_sum[EP_COUNT];
    uint64_t batch_bucket[SERVE_BATCH_BUCKETS];
    uint64_t batch_count, batch_sum;
    int P;
    int64_t *vectors;          /* [P] per rank */
    int64_t total;             /* vectors in the database */
    int n_shards;              /* shards in the database */
    int queue_length;
} ServeMetrics;

/* Zeroes every counter and sets up m for P ranks (the mutex and the [P]
 * vector counts); allocation failure aborts (xmalloc). */
void serve_metrics_init(ServeMetrics *m, int P);

/* Frees what serve_metrics_init allocated and destroys the mutex. */
void serve_metrics_free(ServeMetrics *m);

/* One answered request. */
void serve_metrics_request(ServeMetrics *m, ServeEndpoint ep, int status, double seconds);

/* One micro-batch of n requests. */
void serve_metrics_batch(ServeMetrics *m, int n, int queue_length);

/* Vectors per rank (vectors[P]), in all, and the database's shard count
 * (both grow with POST /images). */
void serve_metrics_vectors(ServeMetrics *m, const int64_t *vectors, int64_t total, int n_shards);

/* Vectors in the database now; *n_shards (when not NULL) its shards. */
int64_t serve_metrics_total(ServeMetrics *m, int *n_shards);

/* The exposition text (NUL-terminated, free()); *len its length. */
char *serve_metrics_text(ServeMetrics *m, size_t *len);

#endif
