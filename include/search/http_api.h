/*
 * http_api.h - the request and answer formats of aesim-search serve, apart
 * from HTTP itself: query-string arguments of POST /search and POST /images,
 * the body of POST /search (a PNG/JPEG image, JSON {"vector": [...]} or JSON
 * {"id": N}), the path of GET /images/ID, and the JSON answers (results,
 * errors).  The HTTP transport is libmicrohttpd (http_server.h); the search
 * itself runs on the MPI thread (serve.h).
 *
 * Every parser takes untrusted bytes and either fills its output or returns
 * an HTTP status (400, 404, 413) with a one-line message in err: never a
 * crash, never an unbounded allocation (images are capped at
 * API_MAX_IMAGE_PIXELS, vectors at the database's D).  The parsers are
 * covered by a libFuzzer target (fuzz/fuzz_http.c).
 *
 * Threading: pure functions of their arguments; called from libmicrohttpd's
 * connection threads at once.  No MPI, no global state.
 */
#ifndef AESIM_HTTP_API_H
#define AESIM_HTTP_API_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "search/knn.h"

/* Most label filters per request (label=L repeated or L1,L2). */
#define API_MAX_LABELS 64
/* Largest decoded upload, pixels: 16.7 Mpixel (a 12 Mpixel phone photo
 * fits; the model input is far smaller, uploads are resized).  A small PNG
 * can declare a huge image: this bounds what one request may allocate. */
#define API_MAX_IMAGE_PIXELS ((int64_t)1 << 24)
/* Default k of POST /search when ?k= is absent. */
#define API_DEFAULT_K 10

/* HTTP statuses the parsers return (0 = fine). */
enum { API_OK = 0, API_BAD_REQUEST = 400, API_NOT_FOUND = 404, API_METHOD = 405, API_TOO_BIG = 413 };

/* Query-string arguments of POST /search and POST /images. */
typedef struct ApiParams {
    int k;                          /* ?k= (API_DEFAULT_K if absent) */
    int has_k;                      /* 1 once ?k= was given */
    int n_labels;
    int32_t labels[API_MAX_LABELS]; /* ?label= filters (search) or the label (add: n_labels <= 1) */
    int has_radius;
    double radius;                  /* ?radius= in the units of "distance" */
} ApiParams;

/* Defaults (k = API_DEFAULT_K, no labels, no radius). */
void api_params_init(ApiParams *p);

/* One query-string argument key=value (value may be NULL: "?k").  Known
 * keys: k (1..max_k), label (integers, comma-separated or repeated),
 * radius (finite, >= 0).  Returns API_OK or API_BAD_REQUEST (unknown key,
 * bad number, k out of range, too many labels, k or radius given twice)
 * with err set. */
int api_params_add(ApiParams *p, const char *key, const char *value, int max_k, Err *err);

/* What a POST /search body asks for. */
typedef enum { API_QUERY_IMAGE = 1, API_QUERY_VECTOR = 2, API_QUERY_ID = 3 } ApiQueryKind;

typedef struct ApiQuery {
    ApiQueryKind kind;
    float *input;     /* IMAGE: [C][H][W] model input (pixels / 255), owned */
    uint8_t *pix;     /* IMAGE: [C][H][W] the same as bytes, owned */
    float *vec;       /* VECTOR: [D], owned */
    int64_t id;       /* ID: a database id (>= 0; checked against the count later) */
} ApiQuery;

/* Parses a POST /search body[len]: a PNG or JPEG (sniffed from its first
 * bytes; decoded and resized to the model's C x H x W with
 * search_image_to_input, as `aesim-search query --image` does) or a JSON
 * object {"vector": [D numbers]} / {"id": N}.  Errors (API_BAD_REQUEST):
 * empty body, an undecodable or truncated image, invalid JSON, a JSON value
 * that is not one of the two objects, a vector of another length or with a
 * non-finite or too large component (knn_check_vectors), a negative id.  On
 * error *q holds nothing to free. */
int api_parse_query(ApiQuery *q, const uint8_t *body, size_t len, int D, int C, int H, int W, Err *err);

/* Parses an image body only (POST /images): q->kind = API_QUERY_IMAGE. */
int api_parse_image(ApiQuery *q, const uint8_t *body, size_t len, int C, int H, int W, Err *err);

void api_query_free(ApiQuery *q);

/* "/images/ID" -> *id (decimal, no sign, no leading '+'/spaces, fits int64).
 * Returns API_OK, or API_NOT_FOUND when the path is not of that form. */
int api_parse_image_path(int64_t *id, const char *path);

/* {"error": msg, "status": status} as a NUL-terminated string (free()). */
char *api_error_json(int status, const char *msg);

/* One result row of POST /search. */
typedef struct ApiResult {
    int64_t id;
    float dist;          /* the knn's value (search_out_dist gives "distance") */
    int32_t label;
    const char *source;  /* the database image's name (vecdb names.txt) */
    const char *cls;     /* its class name (search_class_name), or NULL */
} ApiResult;

/* {"took_ms": took_ms, "metric": ..., "k": k, "results": [{"rank", "id",
 * "distance", "label", "source", "class", "image": "/images/ID"}, ...]}
 * (free()); "class" is null when the label has no known name.
 * distance = search_out_dist(metric, dist), printed by jansson as `query
 * --json` prints it, so the two agree to the bit. */
char *api_results_json(double took_ms, KnnMetric metric, int k, const ApiResult *res, int64_t n);

#endif
