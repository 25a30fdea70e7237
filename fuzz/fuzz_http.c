/*
 * fuzz_http.c - libFuzzer target for the request parsing of aesim-search
 * serve (src/http_api.c): query-string arguments (api_params_add), POST
 * /search bodies (api_parse_query: PNG/JPEG uploads, JSON vectors and ids),
 * POST /images bodies (api_parse_image) and /images/ID paths.  The first
 * byte picks the parser; the rest is the untrusted input.  The model shape
 * is a small fixed one (D = 8, 1 x 8 x 8 images).
 */
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "search/http_api.h"

/* Model shape the fuzzed bodies are parsed for. */
enum { FUZZ_D = 8, FUZZ_C = 1, FUZZ_H = 8, FUZZ_W = 8, FUZZ_MAX_K = 100 };

/* key=value&key=value... of s, each pair fed to api_params_add. */
static void fuzz_args(char *s)
{
    ApiParams p;
    api_params_init(&p);
    Err err;
    for (char *save = NULL, *tok = strtok_r(s, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(tok, '=');
        if (eq) *eq = '\0';
        err_clear(&err);
        if (api_params_add(&p, tok, eq ? eq + 1 : NULL, FUZZ_MAX_K, &err)) break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t mode = data[0] % 4;
    data++;
    size--;
    Err err;
    err_clear(&err);
    ApiQuery q;
    if (mode == 0) {
        char *s = xmalloc(size + 1);
        memcpy(s, data, size);
        s[size] = '\0';
        fuzz_args(s);
        int64_t id;
        api_parse_image_path(&id, s);
        char *e = api_error_json(400, s);
        free(e);
        free(s);
    } else if (mode == 1 || mode == 2) {
        if (api_parse_query(&q, data, size, FUZZ_D, FUZZ_C, FUZZ_H, FUZZ_W, &err) == API_OK) api_query_free(&q);
        else if (err.code < 400 || err.code > 499) abort(); /* parse errors are 4xx */
    } else {
        if (api_parse_image(&q, data, size, FUZZ_C, FUZZ_H, FUZZ_W, &err) == API_OK) api_query_free(&q);
    }
    return 0;
}
