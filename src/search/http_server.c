/*
 * http_server.c - libmicrohttpd handlers of aesim-search serve: body
 * collection with the size limit, routing, parsing (http_api.h) and the
 * hand-over of jobs to the MPI thread (serve_queue.h).  See
 * include/http_server.h.  Never calls MPI.
 */
#include "search/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/check.h"
#include "search/http_api.h"
#include "base/timer.h"
#include "search/web_page.h"

struct HttpServer {
    struct MHD_Daemon *d;
    HttpServerConfig cfg;
    ServeQueue *q;
    ServeMetrics *m;
    pthread_mutex_t mu;
    int in_flight;        /* guarded by mu */
    sem_t decodes;        /* bounds the uploads decoded at once (HTTP_MAX_DECODES) */
};

/* One request being received (MHD's per-connection request context). */
typedef struct ReqCtx {
    double t0;            /* first byte of the request seen */
    uint8_t *body;
    size_t len, cap;
    int too_big;          /* the body passed max_body: answer 413 */
    int answered;         /* a response was queued */
    ServeEndpoint ep;     /* from the path, for the metrics of early answers */
} ReqCtx;

/* The metrics endpoint of a path (EP_OTHER for unknown ones). */
static ServeEndpoint endpoint_of(const char *url, const char *method)
{
    if (strcmp(url, "/search") == 0) return EP_SEARCH;
    if (strcmp(url, "/images") == 0) return EP_IMAGE_POST;
    if (strncmp(url, "/images/", 8) == 0) return EP_IMAGE_GET;
    if (strcmp(url, "/healthz") == 0) return EP_HEALTHZ;
    if (strcmp(url, "/metrics") == 0) return EP_METRICS;
    if (strcmp(url, "/labels") == 0) return EP_LABELS;
    if ((strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) && method) return EP_PAGE;
    return EP_OTHER;
}

static const char JSON_TYPE[] = "application/json";

/* Queues an answer (takes body, malloc'ed) and counts it. */
static enum MHD_Result respond(HttpServer *s, struct MHD_Connection *c, ReqCtx *r, ServeEndpoint ep, int status,
                               char *body, size_t len, const char *type, const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    CHECK(resp != NULL);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->answered = 1;
    serve_metrics_request(s->m, ep, status, timer_now() - r->t0);
    return ok;
}

static enum MHD_Result respond_error(HttpServer *s, struct MHD_Connection *c, ReqCtx *r, ServeEndpoint ep,
                                     int status, const char *msg, const char *allow)
{
    char *body = api_error_json(status, msg);
    return respond(s, c, r, ep, status, body, strlen(body), JSON_TYPE, allow);
}

/* Hands a job to the MPI thread, waits, and sends its answer. */
static enum MHD_Result run_job(HttpServer *s, struct MHD_Connection *c, ReqCtx *r, ServeEndpoint ep, ServeJob *job)
{
    if (serve_queue_push(s->q, job)) {
        api_query_free(&job->query);
        return respond_error(s, c, r, ep, 503, "the server is stopping or overloaded; retry later", NULL);
    }
    serve_job_wait(s->q, job);
    api_query_free(&job->query);
    return respond(s, c, r, ep, job->status, job->body, job->body_len, job->content_type, NULL);
}

/* Query-string iterator state. */
typedef struct ArgCtx {
    ApiParams *p;
    int max_k;
    int allow_search;     /* k and radius are search-only */
    Err err;
} ArgCtx;

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    ArgCtx *a = cls;
    if (!a->allow_search && strcmp(key, "label") != 0) {
        err_set(&a->err, API_BAD_REQUEST, "unknown query argument '%.64s' (POST /images takes label only)", key);
        return MHD_NO;
    }
    return api_params_add(a->p, key, value, a->max_k, &a->err) ? MHD_NO : MHD_YES;
}

static int parse_args(struct MHD_Connection *c, ApiParams *p, int max_k, int search, Err *err)
{
    api_params_init(p);
    ArgCtx a = { .p = p, .max_k = max_k, .allow_search = search };
    err_clear(&a.err);
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, on_arg, &a);
    if (!search && p->n_labels > 1)
        err_set(&a.err, API_BAD_REQUEST, "POST /images takes one label, got %d", p->n_labels);
    else if (!search && p->n_labels == 1 && p->labels[0] < 0)
        err_set(&a.err, API_BAD_REQUEST, "POST /images: label %d: labels are 0 or more (omit label for an image "
                "without one)", (int)p->labels[0]);
    *err = a.err;
    return err->code;
}

static char *healthz_body(HttpServer *s, size_t *len)
{
    char *body = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&body, &n);
    CHECK(f != NULL);
    int shards = 0;
    const int64_t vectors = serve_metrics_total(s->m, &shards);
    fprintf(f, "{\"status\":\"ok\",\"vectors\":%lld,\"shards\":%d,%s}", (long long)vectors, shards, s->cfg.info);
    CHECK(fclose(f) == 0);
    *len = n;
    return body;
}

/* The whole request is in: route it. */
static enum MHD_Result route(HttpServer *s, struct MHD_Connection *c, ReqCtx *r, const char *url, const char *method)
{
    /* HEAD is GET without the body (RFC 9110, 9.3.2); libmicrohttpd drops the body of a HEAD reply itself. */
    const int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    const int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    Err err;
    err_clear(&err);
    int64_t id = 0;
    if (strcmp(url, "/search") == 0) {
        if (!post) return respond_error(s, c, r, EP_SEARCH, API_METHOD, "use POST /search", "POST");
        ServeJob job;
        memset(&job, 0, sizeof job);
        job.kind = JOB_SEARCH;
        if (parse_args(c, &job.params, s->cfg.max_k, 1, &err))
            return respond_error(s, c, r, EP_SEARCH, err.code, err.msg, NULL);
        while (sem_wait(&s->decodes) != 0) continue; /* EINTR (a signal) */
        int rc = api_parse_query(&job.query, r->body, r->len, s->cfg.D, s->cfg.C, s->cfg.H, s->cfg.W, &err);
        sem_post(&s->decodes);
        if (rc) return respond_error(s, c, r, EP_SEARCH, err.code, err.msg, NULL);
        return run_job(s, c, r, EP_SEARCH, &job);
    }
    if (strcmp(url, "/images") == 0) {
        if (!post) return respond_error(s, c, r, EP_IMAGE_POST, API_METHOD, "use POST /images", "POST");
        ServeJob job;
        memset(&job, 0, sizeof job);
        job.kind = JOB_ADD;
        if (parse_args(c, &job.params, s->cfg.max_k, 0, &err))
            return respond_error(s, c, r, EP_IMAGE_POST, err.code, err.msg, NULL);
        while (sem_wait(&s->decodes) != 0) continue;
        int rc = api_parse_image(&job.query, r->body, r->len, s->cfg.C, s->cfg.H, s->cfg.W, &err);
        sem_post(&s->decodes);
        if (rc) return respond_error(s, c, r, EP_IMAGE_POST, err.code, err.msg, NULL);
        return run_job(s, c, r, EP_IMAGE_POST, &job);
    }
    if (strncmp(url, "/images/", 8) == 0) {
        if (api_parse_image_path(&id, url))
            return respond_error(s, c, r, EP_IMAGE_GET, API_NOT_FOUND, "no such image: use /images/ID with a "
                                                                        "database id", NULL);
        if (!get) return respond_error(s, c, r, EP_IMAGE_GET, API_METHOD, "use GET /images/ID", "GET, HEAD");
        ServeJob job;
        memset(&job, 0, sizeof job);
        job.kind = JOB_IMAGE;
        job.id = id;
        return run_job(s, c, r, EP_IMAGE_GET, &job);
    }
    if (strcmp(url, "/labels") == 0) {
        if (!get) return respond_error(s, c, r, EP_LABELS, API_METHOD, "use GET /labels", "GET, HEAD");
        ServeJob job;
        memset(&job, 0, sizeof job);
        job.kind = JOB_LABELS;
        return run_job(s, c, r, EP_LABELS, &job);
    }
    if (strcmp(url, "/healthz") == 0) {
        if (!get) return respond_error(s, c, r, EP_HEALTHZ, API_METHOD, "use GET /healthz", "GET, HEAD");
        size_t n;
        char *body = healthz_body(s, &n);
        return respond(s, c, r, EP_HEALTHZ, 200, body, n, JSON_TYPE, NULL);
    }
    if (strcmp(url, "/metrics") == 0) {
        if (!get) return respond_error(s, c, r, EP_METRICS, API_METHOD, "use GET /metrics", "GET, HEAD");
        size_t n;
        char *body = serve_metrics_text(s->m, &n);
        return respond(s, c, r, EP_METRICS, 200, body, n, "text/plain; version=0.0.4", NULL);
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        if (!get) return respond_error(s, c, r, EP_PAGE, API_METHOD, "use GET /", "GET, HEAD");
        size_t n = web_page_len();
        char *body = xmalloc(n);
        memcpy(body, web_page_html(), n);
        return respond(s, c, r, EP_PAGE, 200, body, n, "text/html; charset=utf-8", NULL);
    }
    char msg[300];
    snprintf(msg, sizeof msg, "no such path '%.200s' (see GET / or the README's Serving section)", url);
    return respond_error(s, c, r, EP_OTHER, API_NOT_FOUND, msg, NULL);
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* libmicrohttpd's unescape callback: percent-decoding (RFC 3986, 2.1) in
 * place, as its own MHD_http_unescape, except that %00 stays as written: a
 * NUL would cut the string ("/images/1%00" read as image 1, "k=5%00" as 5). */
static size_t unescape_no_nul(void *cls, struct MHD_Connection *c, char *str)
{
    (void)cls;
    (void)c;
    char *w = str;
    for (const char *p = str; *p;) {
        const int hi = p[0] == '%' ? hex_digit(p[1]) : -1, lo = hi >= 0 ? hex_digit(p[2]) : -1;
        if (lo >= 0 && (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            p += 3;
        } else {
            *w++ = *p++;
        }
    }
    *w = '\0';
    return (size_t)(w - str);
}

/* The path of an absolute-form request target ("GET http://host/healthz",
 * which HTTP/1.1 servers must accept: RFC 9112, 3.2.2), else url itself. */
static const char *origin_path(const char *url)
{
    const char *rest = strncasecmp(url, "http://", 7) == 0 ? url + 7 : strncasecmp(url, "https://", 8) == 0 ? url + 8
                                                                                                          : NULL;
    if (!rest) return url;
    const char *slash = strchr(rest, '/');
    return slash ? slash : "/";
}

/* Header iterator: counts the Content-Length headers into *(int *)cls. */
static enum MHD_Result count_content_length(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    (void)value;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) ++*(int *)cls;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    HttpServer *s = cls;
    ReqCtx *r = *con_cls;
    url = origin_path(url);
    if (!r) {
        r = xcalloc(1, sizeof *r);
        r->t0 = timer_now();
        r->ep = endpoint_of(url, method);
        *con_cls = r;
        pthread_mutex_lock(&s->mu);
        s->in_flight++;
        pthread_mutex_unlock(&s->mu);
        /* A declared body over the limit is read and dropped, then refused
         * (so that the client, still sending, can read the 413); one far
         * over it is refused at once and the connection closed. */
        /* Two Content-Length headers (libmicrohttpd takes the first) could
         * make a proxy in front and this server split a stream into other
         * requests (request smuggling): 400 and the connection is closed
         * (RFC 9112, 6.3). */
        int n_cl = 0;
        MHD_get_connection_values(c, MHD_HEADER_KIND, count_content_length, &n_cl);
        if (n_cl > 1)
            return respond_error(s, c, r, r->ep, API_BAD_REQUEST, "more than one Content-Length header", NULL);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > s->cfg.max_body) r->too_big = 1;
        if (declared / HTTP_DRAIN_FACTOR > s->cfg.max_body) {
            char msg[160];
            snprintf(msg, sizeof msg, "request body of %.30s bytes is over %zu bytes (the server's --max-body-mib)",
                     cl, s->cfg.max_body);
            return respond_error(s, c, r, r->ep, API_TOO_BIG, msg, NULL);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->answered) { /* refused early: the rest of the body is dropped */
            *upload_size = 0;
            return MHD_YES;
        }
        if (!r->too_big && r->len + *upload_size > s->cfg.max_body) {
            r->too_big = 1;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
        }
        if (!r->too_big) {
            if (r->len + *upload_size > r->cap) {
                size_t cap = r->cap ? r->cap : 4096;
                while (cap < r->len + *upload_size) cap *= 2;
                if (cap > s->cfg.max_body) cap = s->cfg.max_body;
                uint8_t *b = xmalloc(cap);
                if (r->len) memcpy(b, r->body, r->len);
                free(r->body);
                r->body = b;
                r->cap = cap;
            }
            memcpy(r->body + r->len, upload, *upload_size);
            r->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "request body over %zu bytes (the server's --max-body-mib)", s->cfg.max_body);
        /* The connection is closed after the answer: the rest of an
         * oversized body is not read. */
        return respond_error(s, c, r, r->ep, API_TOO_BIG, msg, NULL);
    }
    return route(s, c, r, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    HttpServer *s = cls;
    ReqCtx *r = *con_cls;
    if (!r) return;
    free(r->body);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    pthread_mutex_unlock(&s->mu);
}

/* "HOST:PORT" (IPv4 address or name) or "[IPV6]:PORT" -> socket address. */
static int parse_listen(struct sockaddr_storage *sa, const char *listen, Err *err)
{
    char host[256];
    const char *colon = strrchr(listen, ':'), *h0 = listen, *h1 = colon;
    int v6 = listen[0] == '[';
    if (v6) { /* RFC 3986 section 3.2.2: an IPv6 literal in brackets */
        h0 = listen + 1;
        h1 = strchr(listen, ']');
        if (!h1 || h1[1] != ':') h1 = NULL;
        else colon = h1 + 1;
    }
    if (!colon || !h1 || h1 == h0 || (size_t)(h1 - h0) >= sizeof host)
        return err_set(err, AE_EARG, "--listen '%s' is not HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080 for every "
                                     "interface, or [::1]:8080 for IPv6)", listen);
    memcpy(host, h0, (size_t)(h1 - h0));
    host[h1 - h0] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return err_set(err, AE_EARG, "--listen '%s': the port must be 0..65535 (0 = any free port)", listen);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = v6 ? AF_INET6 : AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (v6) hints.ai_flags = AI_NUMERICHOST;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc || !res)
        return err_set(err, AE_EARG, "--listen '%s': cannot resolve '%s' to an %s address (%s)%s", listen, host,
                       v6 ? "IPv6" : "IPv4", gai_strerror(rc),
                       v6 ? "" : " (hint: write an IPv6 address in brackets, [::1]:8080)");
    memset(sa, 0, sizeof *sa);
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (v6) ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
    return AE_OK;
}

int http_server_start(HttpServer **out, const HttpServerConfig *cfg, ServeQueue *q, ServeMetrics *m, char *url,
                      size_t url_cap, Err *err)
{
    *out = NULL;
    struct sockaddr_storage sa;
    if (parse_listen(&sa, cfg->listen, err)) return err->code;
    const int v6 = sa.ss_family == AF_INET6;
    HttpServer *s = xcalloc(1, sizeof *s);
    s->cfg = *cfg;
    s->q = q;
    s->m = m;
    CHECK(pthread_mutex_init(&s->mu, NULL) == 0);
    CHECK(sem_init(&s->decodes, 0, HTTP_MAX_DECODES) == 0);
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                                MHD_USE_POLL | (v6 ? MHD_USE_IPv6 : 0),
                            0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout_s, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)HTTP_MAX_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)HTTP_MAX_CONNECTIONS_PER_IP, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_UNESCAPE_CALLBACK, unescape_no_nul,
                            NULL, MHD_OPTION_END);
    if (!s->d) {
        pthread_mutex_destroy(&s->mu);
        sem_destroy(&s->decodes);
        free(s);
        return err_set(err, AE_EIO, "cannot listen on %s (address in use, or not allowed?) (hint: choose another "
                                    "--listen port, or 0 for any free one)", cfg->listen);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    if (v6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
        port = ntohs(a6->sin6_port);
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
        port = ntohs(a4->sin_port);
    }
    if (info) port = info->port;
    snprintf(url, url_cap, v6 ? "http://[%s]:%u" : "http://%s:%u", ip, port);
    *out = s;
    return AE_OK;
}

void http_server_quiesce(HttpServer *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int http_server_in_flight(HttpServer *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void http_server_stop(HttpServer *s)
{
    if (!s) return;
    MHD_stop_daemon(s->d);
    pthread_mutex_destroy(&s->mu);
    sem_destroy(&s->decodes);
    free(s);
}
