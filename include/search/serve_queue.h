/*
 * serve_queue.h - the hand-over between libmicrohttpd's connection threads
 * and rank 0's MPI thread in aesim-search serve.
 *
 * A connection thread parses its request into a ServeJob, pushes it and
 * blocks in serve_job_wait; the MPI thread takes every waiting job (up to a
 * batch) with serve_queue_take, answers them (one encoder call, one sharded
 * search) and wakes each with serve_job_finish.  HTTP threads never call
 * MPI: the queue is the only thing they share with the MPI thread.
 *
 * Threading: one mutex and two condition variables (pthreads) guard the
 * queue and the completion flags; the job's other fields belong to the
 * thread that holds the job (the pusher before push and after wait, the MPI
 * thread in between).  No MPI.
 */
#ifndef AESIM_SERVE_QUEUE_H
#define AESIM_SERVE_QUEUE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "search/http_api.h"

/* What the MPI thread is asked to do. */
typedef enum {
    JOB_SEARCH = 1, /* POST /search: params + query */
    JOB_ADD = 2,    /* POST /images: query (image) + params.labels[0] or -1 */
    JOB_IMAGE = 3,  /* GET /images/ID: id */
    JOB_LABELS = 4  /* GET /labels */
} ServeJobKind;

typedef struct ServeJob {
    ServeJobKind kind;
    ApiParams params;
    ApiQuery query;
    int64_t id;                /* JOB_IMAGE */
    /* The answer, set by the MPI thread (owned by the job afterwards). */
    int status;                /* HTTP status */
    char *body;                /* [body_len] bytes, free() */
    size_t body_len;
    const char *content_type;  /* static string */
    int done;                  /* guarded by the queue mutex */
} ServeJob;

typedef struct ServeQueue {
    pthread_mutex_t mu;
    pthread_cond_t ready;      /* a job was pushed (or the queue closed) */
    pthread_cond_t finished;   /* some job was finished */
    ServeJob **jobs;           /* [cap] ring buffer */
    int cap, head, n;
    int closed;                /* 1: push refuses (the server is stopping) */
} ServeQueue;

/* A queue holding at most cap waiting jobs. */
void serve_queue_init(ServeQueue *q, int cap);
void serve_queue_free(ServeQueue *q);

/* Appends job.  Returns 0, or -1 when the queue is full or closed (the
 * caller answers 503). */
int serve_queue_push(ServeQueue *q, ServeJob *job);

/* Takes up to max jobs in arrival order into out[]; waits up to timeout_ms
 * for the first one.  Returns how many (0 on timeout). */
int serve_queue_take(ServeQueue *q, ServeJob **out, int max, int timeout_ms);

/* Jobs waiting now. */
int serve_queue_length(ServeQueue *q);

/* Refuses further pushes (jobs already queued stay to be taken). */
void serve_queue_close(ServeQueue *q);

/* Sets the answer (takes ownership of body) and wakes the waiting thread. */
void serve_job_finish(ServeQueue *q, ServeJob *job, int status, char *body, size_t len, const char *content_type);

/* serve_job_finish with api_error_json(status, msg). */
void serve_job_fail(ServeQueue *q, ServeJob *job, int status, const char *msg);

/* Blocks until job is finished. */
void serve_job_wait(ServeQueue *q, ServeJob *job);

#endif
