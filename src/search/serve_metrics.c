/*
 * serve_metrics.c - request/latency/batch counters of aesim-search serve and
 * the Prometheus text format (see include/serve_metrics.h).  One mutex; no MPI.
 */
#include "search/serve_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"

/* Latency bucket bounds in seconds (the last bucket is +Inf): 1 ms .. 10 s,
 * the range between a cached small-database hit and a large batch. */
static const double LAT_LE[SERVE_LAT_BUCKETS - 1] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1.0,   2.5,  5.0,   10.0 };
/* Batch-size bucket bounds (requests; powers of two up to 256, then +Inf). */
static const double BATCH_LE[SERVE_BATCH_BUCKETS - 1] = { 1, 2, 4, 8, 16, 32, 64, 128, 256 };

static const char *const EP_NAME[EP_COUNT] = { "search", "images_get", "images_post", "healthz",
                                               "metrics", "page",       "labels",      "other" };

void serve_metrics_init(ServeMetrics *m, int P)
{
    memset(m, 0, sizeof *m);
    CHECK(pthread_mutex_init(&m->mu, NULL) == 0);
    m->P = P;
    m->vectors = xcalloc((size_t)P, sizeof *m->vectors);
}

void serve_metrics_free(ServeMetrics *m)
{
    pthread_mutex_destroy(&m->mu);
    free(m->vectors);
    memset(m, 0, sizeof *m);
}

static int bucket_of(const double *le, int n_le, double v)
{
    int b = 0;
    while (b < n_le && v > le[b]) b++;
    return b;
}

void serve_metrics_request(ServeMetrics *m, ServeEndpoint ep, int status, double seconds)
{
    pthread_mutex_lock(&m->mu);
    m->requests[ep]++;
    if (status >= 400) m->errors[ep]++;
    m->lat_bucket[ep][bucket_of(LAT_LE, SERVE_LAT_BUCKETS - 1, seconds)]++;
    m->lat_sum[ep] += seconds;
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_batch(ServeMetrics *m, int n, int queue_length)
{
    pthread_mutex_lock(&m->mu);
    m->batch_bucket[bucket_of(BATCH_LE, SERVE_BATCH_BUCKETS - 1, (double)n)]++;
    m->batch_count++;
    m->batch_sum += (uint64_t)n;
    m->queue_length = queue_length;
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_vectors(ServeMetrics *m, const int64_t *vectors, int64_t total, int n_shards)
{
    pthread_mutex_lock(&m->mu);
    memcpy(m->vectors, vectors, (size_t)m->P * sizeof *vectors);
    m->total = total;
    m->n_shards = n_shards;
    pthread_mutex_unlock(&m->mu);
}

int64_t serve_metrics_total(ServeMetrics *m, int *n_shards)
{
    pthread_mutex_lock(&m->mu);
    int64_t t = m->total;
    if (n_shards) *n_shards = m->n_shards;
    pthread_mutex_unlock(&m->mu);
    return t;
}

char *serve_metrics_text(ServeMetrics *m, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    CHECK(f != NULL);
    pthread_mutex_lock(&m->mu);
    fprintf(f, "# HELP aesim_http_requests_total HTTP requests answered, by endpoint.\n"
               "# TYPE aesim_http_requests_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        fprintf(f, "aesim_http_requests_total{endpoint=\"%s\"} %llu\n", EP_NAME[e], (unsigned long long)m->requests[e]);
    fprintf(f, "# HELP aesim_http_errors_total HTTP answers with status >= 400, by endpoint.\n"
               "# TYPE aesim_http_errors_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        fprintf(f, "aesim_http_errors_total{endpoint=\"%s\"} %llu\n", EP_NAME[e], (unsigned long long)m->errors[e]);
    fprintf(f, "# HELP aesim_http_request_seconds Latency from a whole request received to its answer, by "
               "endpoint.\n# TYPE aesim_http_request_seconds histogram\n");
    for (int e = 0; e < EP_COUNT; e++) {
        uint64_t cum = 0;
        for (int b = 0; b < SERVE_LAT_BUCKETS; b++) {
            cum += m->lat_bucket[e][b];
            if (b < SERVE_LAT_BUCKETS - 1)
                fprintf(f, "aesim_http_request_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", EP_NAME[e],
                        LAT_LE[b], (unsigned long long)cum);
            else
                fprintf(f, "aesim_http_request_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", EP_NAME[e],
                        (unsigned long long)cum);
        }
        fprintf(f, "aesim_http_request_seconds_sum{endpoint=\"%s\"} %.9g\n", EP_NAME[e], m->lat_sum[e]);
        fprintf(f, "aesim_http_request_seconds_count{endpoint=\"%s\"} %llu\n", EP_NAME[e], (unsigned long long)cum);
    }
    fprintf(f, "# HELP aesim_batch_size Requests per MPI micro-batch.\n# TYPE aesim_batch_size histogram\n");
    uint64_t cum = 0;
    for (int b = 0; b < SERVE_BATCH_BUCKETS; b++) {
        cum += m->batch_bucket[b];
        if (b < SERVE_BATCH_BUCKETS - 1)
            fprintf(f, "aesim_batch_size_bucket{le=\"%g\"} %llu\n", BATCH_LE[b], (unsigned long long)cum);
        else
            fprintf(f, "aesim_batch_size_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    fprintf(f, "aesim_batch_size_sum %llu\naesim_batch_size_count %llu\n", (unsigned long long)m->batch_sum,
            (unsigned long long)m->batch_count);
    fprintf(f, "# HELP aesim_vectors Vectors in the shards each rank searches.\n# TYPE aesim_vectors gauge\n");
    for (int r = 0; r < m->P; r++) fprintf(f, "aesim_vectors{rank=\"%d\"} %lld\n", r, (long long)m->vectors[r]);
    fprintf(f, "# HELP aesim_vectors_total Vectors in the database.\n# TYPE aesim_vectors_total gauge\n"
               "aesim_vectors_total %lld\n", (long long)m->total);
    fprintf(f, "# HELP aesim_queue_length Requests waiting for the MPI thread at the last batch.\n"
               "# TYPE aesim_queue_length gauge\naesim_queue_length %d\n", m->queue_length);
    pthread_mutex_unlock(&m->mu);
    CHECK(fclose(f) == 0);
    *len = n;
    return buf;
}
