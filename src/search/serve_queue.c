/*
 * serve_queue.c - bounded job queue between HTTP threads and the MPI
 * thread of aesim-search serve (see include/serve_queue.h).  pthreads only.
 */
#include "search/serve_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/check.h"

void serve_queue_init(ServeQueue *q, int cap)
{
    memset(q, 0, sizeof *q);
    CHECK(cap >= 1);
    CHECK(pthread_mutex_init(&q->mu, NULL) == 0);
    /* Timed waits on CLOCK_MONOTONIC: a wall-clock step cannot stall them. */
    pthread_condattr_t ca;
    CHECK(pthread_condattr_init(&ca) == 0);
    CHECK(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0);
    CHECK(pthread_cond_init(&q->ready, &ca) == 0);
    CHECK(pthread_cond_init(&q->finished, &ca) == 0);
    pthread_condattr_destroy(&ca);
    q->cap = cap;
    q->jobs = xcalloc((size_t)cap, sizeof *q->jobs);
}

void serve_queue_free(ServeQueue *q)
{
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->ready);
    pthread_cond_destroy(&q->finished);
    free(q->jobs);
    memset(q, 0, sizeof *q);
}

int serve_queue_push(ServeQueue *q, ServeJob *job)
{
    pthread_mutex_lock(&q->mu);
    int ok = !q->closed && q->n < q->cap;
    if (ok) {
        job->done = 0;
        q->jobs[(q->head + q->n) % q->cap] = job;
        q->n++;
        pthread_cond_signal(&q->ready);
    }
    pthread_mutex_unlock(&q->mu);
    return ok ? 0 : -1;
}

int serve_queue_take(ServeQueue *q, ServeJob **out, int max, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->mu);
    while (q->n == 0 && !q->closed)
        if (pthread_cond_timedwait(&q->ready, &q->mu, &until) == ETIMEDOUT) break;
    int n = 0;
    while (n < max && q->n > 0) {
        out[n++] = q->jobs[q->head];
        q->head = (q->head + 1) % q->cap;
        q->n--;
    }
    pthread_mutex_unlock(&q->mu);
    return n;
}

int serve_queue_length(ServeQueue *q)
{
    pthread_mutex_lock(&q->mu);
    int n = q->n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void serve_queue_close(ServeQueue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->ready);
    pthread_mutex_unlock(&q->mu);
}

void serve_job_finish(ServeQueue *q, ServeJob *job, int status, char *body, size_t len, const char *content_type)
{
    pthread_mutex_lock(&q->mu);
    job->status = status;
    job->body = body;
    job->body_len = len;
    job->content_type = content_type;
    job->done = 1;
    pthread_cond_broadcast(&q->finished);
    pthread_mutex_unlock(&q->mu);
}

void serve_job_fail(ServeQueue *q, ServeJob *job, int status, const char *msg)
{
    char *body = api_error_json(status, msg);
    serve_job_finish(q, job, status, body, strlen(body), "application/json");
}

void serve_job_wait(ServeQueue *q, ServeJob *job)
{
    pthread_mutex_lock(&q->mu);
    while (!job->done) pthread_cond_wait(&q->finished, &q->mu);
    pthread_mutex_unlock(&q->mu);
}
