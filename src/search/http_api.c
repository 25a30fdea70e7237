/*
 * http_api.c - query arguments, request bodies and JSON answers of
 * aesim-search serve (see include/http_api.h).  Images are decoded with
 * image_decode.h and resized with search_image_to_input; JSON is jansson.
 * No HTTP, no MPI; safe to call from several threads at once.
 */
#include "search/http_api.h"

#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/image_decode.h"
#include "search/search_input.h"
#include "search/vecdb.h"

/* Longest accepted text of one number in a query string. */
#define API_NUMBER_CHARS 64

void api_params_init(ApiParams *p)
{
    memset(p, 0, sizeof *p);
    p->k = API_DEFAULT_K;
}

/* strtoll of the whole of s (no spaces, no empty string). */
static int whole_ll(const char *s, long long *v)
{
    if (!s || !*s || strlen(s) > API_NUMBER_CHARS || *s == ' ' || *s == '+') return -1;
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return errno || *end ? -1 : 0;
}

int api_params_add(ApiParams *p, const char *key, const char *value, int max_k, Err *err)
{
    long long v;
    if (strcmp(key, "k") == 0) {
        if (p->has_k) return err_set(err, API_BAD_REQUEST, "k given twice");
        p->has_k = 1;
        if (whole_ll(value, &v) || v < 1 || v > max_k)
            return err_set(err, API_BAD_REQUEST, "k must be an integer in 1..%d (the server's --max-k), got '%.64s'",
                           max_k, value ? value : "");
        p->k = (int)v;
        return API_OK;
    }
    if (strcmp(key, "label") == 0) {
        if (!value || !*value) return err_set(err, API_BAD_REQUEST, "label needs a value, e.g. label=3 or label=1,4");
        const char *s = value;
        for (;;) {
            char tok[API_NUMBER_CHARS + 2];
            size_t n = strcspn(s, ",");
            if (n == 0 || n > API_NUMBER_CHARS)
                return err_set(err, API_BAD_REQUEST, "label: '%.64s' is not a list of integers such as 3 or 1,4",
                               value);
            memcpy(tok, s, n);
            tok[n] = '\0';
            if (whole_ll(tok, &v) || v < INT32_MIN || v > INT32_MAX)
                return err_set(err, API_BAD_REQUEST, "label: '%.64s' is not a list of integers such as 3 or 1,4",
                               value);
            if (p->n_labels >= API_MAX_LABELS)
                return err_set(err, API_BAD_REQUEST, "more than %d labels in one request", API_MAX_LABELS);
            p->labels[p->n_labels++] = (int32_t)v;
            if (!s[n]) break;
            s += n + 1;
        }
        return API_OK;
    }
    if (strcmp(key, "radius") == 0) {
        if (p->has_radius) return err_set(err, API_BAD_REQUEST, "radius given twice");
        /* A decimal number (strtod would also take hex "0x10", "inf",
         * "nan"); one too small for a double (1e-400) is 0. */
        int ok = value && *value && strlen(value) <= API_NUMBER_CHARS &&
                 strspn(value, "0123456789+-.eE") == strlen(value);
        double r = NAN;
        if (ok) {
            char *end;
            errno = 0;
            r = strtod(value, &end);
            ok = !*end && end != value && (!errno || (errno == ERANGE && fabs(r) <= DBL_MIN));
        }
        if (!ok || !isfinite(r) || r < 0)
            return err_set(err, API_BAD_REQUEST, "radius must be a decimal number >= 0, got '%.64s'",
                           value ? value : "");
        p->radius = r;
        p->has_radius = 1;
        return API_OK;
    }
    return err_set(err, API_BAD_REQUEST, "unknown query argument '%.64s' (known: k, label, radius)", key);
}

void api_query_free(ApiQuery *q)
{
    if (!q) return;
    free(q->input);
    free(q->pix);
    free(q->vec);
    memset(q, 0, sizeof *q);
}

int api_parse_image(ApiQuery *q, const uint8_t *body, size_t len, int C, int H, int W, Err *err)
{
    memset(q, 0, sizeof *q);
    DecodedImage im;
    Err e;
    err_clear(&e);
    if (image_decode(&im, body, len, "the uploaded image", API_MAX_IMAGE_PIXELS, &e)) {
        /* The decoder's hint speaks of files and data sources (skip_bad=1,
         * ?max_pixels=): one for an HTTP client instead. */
        char *hint = strstr(e.msg, " (hint: ");
        if (hint) *hint = '\0';
        return err_set(err, API_BAD_REQUEST, "%s (hint: %s)", e.msg,
                       strstr(e.msg, "too large") ? "downscale the image before sending it"
                                                  : "send the whole PNG or JPEG file as the request body");
    }
    const size_t chw = (size_t)C * (size_t)H * (size_t)W;
    q->kind = API_QUERY_IMAGE;
    q->pix = xmalloc(chw);
    q->input = xmalloc(chw * sizeof *q->input);
    search_image_to_input(q->input, q->pix, &im, C, H, W);
    image_free(&im);
    return API_OK;
}

int api_parse_query(ApiQuery *q, const uint8_t *body, size_t len, int D, int C, int H, int W, Err *err)
{
    memset(q, 0, sizeof *q);
    if (len == 0)
        return err_set(err, API_BAD_REQUEST, "empty body: send a PNG or JPEG image, {\"vector\": [...]} or "
                                             "{\"id\": N}");
    if (image_sniff(body, len)) return api_parse_image(q, body, len, C, H, W, err);
    json_error_t je;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set(err, API_BAD_REQUEST, "the body is neither a PNG/JPEG image nor valid JSON (%s at line %d "
                                             "column %d)", je.text, je.line, je.column);
    int rc = API_OK;
    json_t *vec = json_is_object(root) ? json_object_get(root, "vector") : NULL;
    json_t *id = json_is_object(root) ? json_object_get(root, "id") : NULL;
    if (!json_is_object(root) || json_object_size(root) != 1 || (!vec && !id)) {
        rc = err_set(err, API_BAD_REQUEST, "the JSON body must be {\"vector\": [%d numbers]} or {\"id\": N}", D);
    } else if (id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0)
            rc = err_set(err, API_BAD_REQUEST, "\"id\" must be an integer >= 0 (a database id)");
        else {
            q->kind = API_QUERY_ID;
            q->id = (int64_t)json_integer_value(id);
        }
    } else if (!json_is_array(vec) || json_array_size(vec) != (size_t)D) {
        rc = err_set(err, API_BAD_REQUEST, "\"vector\" must be an array of %d numbers (the database's D), got %zu "
                                           "values", D, json_is_array(vec) ? json_array_size(vec) : (size_t)1);
    } else {
        q->vec = xmalloc((size_t)D * sizeof *q->vec);
        for (int d = 0; d < D && rc == API_OK; d++) {
            json_t *x = json_array_get(vec, (size_t)d);
            if (!json_is_number(x)) {
                rc = err_set(err, API_BAD_REQUEST, "\"vector\"[%d] is not a number", d);
                break;
            }
            double v = json_number_value(x);
            /* A double beyond float range becomes inf: refused just below. */
            q->vec[d] = (float)v;
        }
        Err e;
        err_clear(&e);
        if (rc == API_OK && knn_check_vectors(q->vec, 1, D, "\"vector\"", &e))
            rc = err_set(err, API_BAD_REQUEST, "%s", e.msg);
        if (rc == API_OK) q->kind = API_QUERY_VECTOR;
    }
    json_decref(root);
    if (rc) api_query_free(q);
    return rc;
}

int api_parse_image_path(int64_t *id, const char *path)
{
    static const char prefix[] = "/images/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0) return API_NOT_FOUND;
    const char *s = path + sizeof prefix - 1;
    if (!*s || strlen(s) > 19) return API_NOT_FOUND;
    for (const char *c = s; *c; c++)
        if (*c < '0' || *c > '9') return API_NOT_FOUND;
    long long v;
    if (whole_ll(s, &v) || v < 0) return API_NOT_FOUND;
    *id = v;
    return API_OK;
}

/* json_dumps that never returns NULL (only out of memory could). */
static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    CHECK(s != NULL);
    json_decref(j);
    return s;
}

/* A JSON string of s; bytes of s that are not valid UTF-8 (a request path
 * or a file name can hold any bytes) make every byte >= 0x80 a '?'. */
static json_t *text(const char *s)
{
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s);
    char *ascii = xmalloc(n + 1);
    for (size_t i = 0; i <= n; i++) ascii[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
    j = json_string(ascii);
    free(ascii);
    CHECK(j != NULL);
    return j;
}

char *api_error_json(int status, const char *msg)
{
    return dump(json_pack("{s:o, s:i}", "error", text(msg), "status", status));
}

char *api_results_json(double took_ms, KnnMetric metric, int k, const ApiResult *res, int64_t n)
{
    json_t *list = json_array();
    for (int64_t i = 0; i < n; i++) {
        char url[40];
        snprintf(url, sizeof url, "/images/%lld", (long long)res[i].id);
        json_array_append_new(list, json_pack("{s:I, s:I, s:f, s:i, s:o, s:o, s:s}", "rank", (json_int_t)(i + 1), "id",
                                              (json_int_t)res[i].id, "distance",
                                              search_out_dist(metric, res[i].dist), "label", (int)res[i].label,
                                              "source", text(res[i].source), "class",
                                              res[i].cls ? text(res[i].cls) : json_null(), "image", url));
    }
    return dump(json_pack("{s:f, s:s, s:i, s:o}", "took_ms", took_ms, "metric", vecdb_metric_name(metric), "k", k,
                          "results", list));
}
