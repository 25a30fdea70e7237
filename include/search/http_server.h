/*
 * http_server.h - the HTTP/1.1 front of aesim-search serve, on
 * libmicrohttpd (one thread per connection plus its listening thread; no
 * hand-written HTTP parsing).
 *
 * Routes (the answers are JSON unless said otherwise; errors are JSON
 * {"error", "status"} with a 4xx/5xx status):
 *   POST /search?k=K[&label=L...][&radius=R]  body: PNG/JPEG, {"vector"} or {"id"}
 *   POST /images[?label=L]                     body: PNG/JPEG -> {"id": N}
 *   GET  /images/ID                            image/png
 *   GET  /labels                               {"labels": [...]} (for the page's filter)
 *   GET  /healthz                              {"status": "ok", ...}
 *   GET  /metrics                              Prometheus text (serve_metrics.h)
 *   GET  /                                     the web page (text/html, web_page.h)
 * Anything else: 404 (unknown path) or 405 (known path, wrong method, with
 * an Allow header).  Bodies over max_body bytes: 413 (drained first up to
 * HTTP_DRAIN_FACTOR x max_body, refused unread beyond).  A client silent
 * for timeout_s seconds is disconnected by libmicrohttpd; it only ever holds
 * its own thread.  Search, add, image and label jobs go to the MPI thread
 * through the ServeQueue (serve_queue.h); a full queue answers 503.
 *
 * Threading: libmicrohttpd's threads run the handlers; they parse and
 * decode (http_api.h), touch only the queue and the metrics, and never call
 * MPI.  Start, quiesce and stop are called from the MPI thread.
 */
#ifndef AESIM_HTTP_SERVER_H
#define AESIM_HTTP_SERVER_H

#include <stddef.h>

#include "base/err.h"
#include "search/serve_metrics.h"
#include "search/serve_queue.h"

/* Most connections open at once (one thread each). */
#define HTTP_MAX_CONNECTIONS 512
/* Most connections from one client address: one client (a slow one
 * trickling its headers, which the inactivity --timeout does not cut) can
 * take a quarter of the server, not all of it. */
#define HTTP_MAX_CONNECTIONS_PER_IP 128
/* Most uploads decoded at once: a decoded image may take up to
 * API_MAX_IMAGE_PIXELS x 4 bytes, so 64 clients uploading large photos must
 * not all hold one (the rest wait their turn; small images decode in ~1 ms). */
#define HTTP_MAX_DECODES 4
/* A body over the limit is drained (read and dropped) before the 413 when
 * it is at most this many times the limit, so that ordinary clients read
 * the answer instead of a broken pipe; beyond, the connection is cut. */
#define HTTP_DRAIN_FACTOR 4

typedef struct HttpServerConfig {
    const char *listen;  /* "HOST:PORT" (IPv4 address or name) or "[IPV6]:PORT" (RFC 3986 brackets); PORT 0 = any
                            free port */
    int timeout_s;       /* idle connection timeout, seconds */
    size_t max_body;     /* bytes */
    int max_k;
    int D, C, H, W;      /* vector dim and model input shape (body parsing) */
    const char *info;    /* JSON object text merged into /healthz (static fields) */
} HttpServerConfig;

typedef struct HttpServer HttpServer;

/* Binds and starts serving.  *url receives "http://HOST:PORT" with the bound
 * port.  Errors: AE_EARG (bad --listen), AE_EIO (cannot bind: address in
 * use, no permission). */
int http_server_start(HttpServer **out, const HttpServerConfig *cfg, ServeQueue *q, ServeMetrics *m, char *url,
                      size_t url_cap, Err *err);

/* Stops accepting new connections (the listening socket is closed);
 * connections already open keep being served. */
void http_server_quiesce(HttpServer *s);

/* Requests received and not yet answered. */
int http_server_in_flight(HttpServer *s);

/* Closes every connection, joins the threads and frees s (s may be NULL). */
void http_server_stop(HttpServer *s);

#endif
