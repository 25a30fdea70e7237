/*
 * dataset_opts.c - DatasetOptions defaults and the KIND:PATH?KEY=VALUE item
 * syntax (see include/data/dataset_opts.h and include/data/dataset.h).
 *
 * String handling only: no I/O, no allocation, no global state.
 */
#include "data/dataset_opts.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest target side accepted, in pixels (png_io.h writes at most 65535). */
#define OPTS_MAX_SIDE 65535
/* Longest text before ':' that is taken as a KIND (longest kind: cifar100). */
#define KIND_MAX_CHARS 10
/* Option value buffer, bytes incl. NUL. */
#define VALUE_BYTES 256
/* Hex digits of an RRGGBB colour. */
#define BG_HEX_DIGITS 6

static const char *const KIND_NAMES[] = {"auto", "npz", "npy", "idx", "mnist", "cifar10", "cifar100", "folder", "list"};
#define N_KINDS ((int)(sizeof KIND_NAMES / sizeof KIND_NAMES[0]))

static const char OPTION_KEYS[] =
    "size, channels, layout, fit, bg, skip_bad, range, verify, map, coarse, max_pixels, images, labels, "
    "allow_gaps";

const char *dataset_kind_name(SourceKind k)
{
    return (int)k >= 0 && (int)k < N_KINDS ? KIND_NAMES[k] : "?";
}

void dataset_options_default(DatasetOptions *o)
{
    memset(o, 0, sizeof *o);
    o->layout = DATASET_LAYOUT_AUTO;
    o->fit = DATASET_FIT_CROP;
    o->bg[0] = o->bg[1] = o->bg[2] = 255;
    o->range = 1.0;
    o->verify = -1;
    o->map = -1;
    o->max_pixels = DATASET_DEFAULT_MAX_PIXELS;
}

/* Parses a decimal integer in [lo, hi]; -1 if not one. */
static int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    if (!*s) return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    if (!strcmp(s, "1") || !strcmp(s, "yes") || !strcmp(s, "true")) *out = 1;
    else if (!strcmp(s, "0") || !strcmp(s, "no") || !strcmp(s, "false")) *out = 0;
    else return -1;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int bad_value(Err *err, const char *key, const char *value, const char *accepted)
{
    return err_set(err, AE_EARG, "dataset option %s=%.200s is not valid (hint: %s)", key, value, accepted);
}

int dataset_options_set(DatasetOptions *o, const char *key, const char *value, Err *err)
{
    long long v;
    int b;
    if (!strcmp(key, "size")) {
        long long h, w;
        const char *x = strchr(value, 'x');
        char hs[32];
        if (x && (size_t)(x - value) < sizeof hs) {
            memcpy(hs, value, (size_t)(x - value));
            hs[x - value] = '\0';
            if (parse_int(hs, 1, OPTS_MAX_SIDE, &h) || parse_int(x + 1, 1, OPTS_MAX_SIDE, &w))
                return bad_value(err, key, value, "HxW with sides 1..65535, e.g. size=64x64, or S for SxS");
        } else if (parse_int(value, 1, OPTS_MAX_SIDE, &h) == 0) {
            w = h;
        } else {
            return bad_value(err, key, value, "HxW with sides 1..65535, e.g. size=64x64, or S for SxS");
        }
        o->H = (int)h;
        o->W = (int)w;
    } else if (!strcmp(key, "channels")) {
        if (parse_int(value, 1, 3, &v) || v == 2) return bad_value(err, key, value, "channels=1 (grey) or channels=3 (RGB)");
        o->C = (int)v;
    } else if (!strcmp(key, "layout")) {
        if (!strcmp(value, "auto")) o->layout = DATASET_LAYOUT_AUTO;
        else if (!strcmp(value, "nchw")) o->layout = DATASET_LAYOUT_NCHW;
        else if (!strcmp(value, "nhwc")) o->layout = DATASET_LAYOUT_NHWC;
        else return bad_value(err, key, value, "layout=auto, nchw or nhwc");
    } else if (!strcmp(key, "fit")) {
        if (!strcmp(value, "crop")) o->fit = DATASET_FIT_CROP;
        else if (!strcmp(value, "squash")) o->fit = DATASET_FIT_SQUASH;
        else return bad_value(err, key, value, "fit=crop (centre crop, default) or fit=squash");
    } else if (!strcmp(key, "bg")) {
        if (!strcmp(value, "white")) {
            o->bg[0] = o->bg[1] = o->bg[2] = 255;
        } else if (!strcmp(value, "black")) {
            o->bg[0] = o->bg[1] = o->bg[2] = 0;
        } else {
            const char *s = value[0] == '#' ? value + 1 : value;
            if (strlen(s) != BG_HEX_DIGITS) return bad_value(err, key, value, "bg=RRGGBB (hex), white or black");
            for (int i = 0; i < 3; i++) {
                int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
                if (hi < 0 || lo < 0) return bad_value(err, key, value, "bg=RRGGBB (hex), white or black");
                o->bg[i] = (uint8_t)(hi * 16 + lo);
            }
        }
    } else if (!strcmp(key, "skip_bad") || !strcmp(key, "skip-bad")) {
        if (parse_bool(value, &b)) return bad_value(err, key, value, "skip_bad=0 or 1");
        o->skip_bad = b;
    } else if (!strcmp(key, "range")) {
        char *end;
        errno = 0;
        double r = strtod(value, &end);
        if (errno || *end || !(r > 0) || !isfinite(r)) return bad_value(err, key, value, "range=1 or range=255 (a positive number)");
        o->range = r;
    } else if (!strcmp(key, "verify")) {
        if (parse_bool(value, &b)) return bad_value(err, key, value, "verify=0 or 1");
        o->verify = b;
    } else if (!strcmp(key, "map")) {
        if (!strcmp(value, "auto")) o->map = -1;
        else if (parse_bool(value, &b) == 0) o->map = b;
        else return bad_value(err, key, value, "map=auto, 0 or 1");
    } else if (!strcmp(key, "allow_gaps") || !strcmp(key, "allow-gaps")) {
        if (parse_bool(value, &b)) return bad_value(err, key, value, "allow_gaps=0 or 1");
        o->allow_gaps = b;
    } else if (!strcmp(key, "coarse")) {
        if (parse_bool(value, &b)) return bad_value(err, key, value, "coarse=0 or 1");
        o->coarse = b;
    } else if (!strcmp(key, "max_pixels")) {
        if (parse_int(value, 1, INT64_MAX, &v)) return bad_value(err, key, value, "max_pixels=N, a positive pixel count");
        o->max_pixels = v;
    } else if (!strcmp(key, "images") || !strcmp(key, "labels")) {
        char *dst = key[0] == 'i' ? o->images : o->labels;
        if (!*value || strlen(value) >= DATASET_MEMBER_BYTES)
            return bad_value(err, key, value, "a member name of 1..63 bytes, without .npy");
        strcpy(dst, value);
    } else {
        return err_set(err, AE_EARG, "unknown dataset option '%.100s' (hint: the options are %s)", key, OPTION_KEYS);
    }
    return AE_OK;
}

/* The kind named by item[0..len), or -1. */
int dataset_options_parse(DatasetOptions *o, const char *kv, Err *err)
{
    const char *s = kv;
    while (*s) {
        const char *amp = strchr(s, '&');
        size_t len = amp ? (size_t)(amp - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        if (!eq || eq == s)
            return err_set(err, AE_EARG, "option '%.*s' is not KEY=VALUE (hint: e.g. size=64x64&channels=3)",
                           (int)(len > 100 ? 100 : len), s);
        char key[VALUE_BYTES], value[VALUE_BYTES];
        size_t klen = (size_t)(eq - s), vlen = len - klen - 1;
        if (klen >= sizeof key || vlen >= sizeof value)
            return err_set(err, AE_EARG, "option '%.*s' is too long", (int)(len > 100 ? 100 : len), s);
        memcpy(key, s, klen);
        key[klen] = '\0';
        memcpy(value, eq + 1, vlen);
        value[vlen] = '\0';
        if (dataset_options_set(o, key, value, err)) return err->code;
        s += len;
        if (*s == '&') s++;
    }
    return AE_OK;
}

static int kind_from(const char *s, size_t len)
{
    for (int k = 1; k < N_KINDS; k++)
        if (strlen(KIND_NAMES[k]) == len && strncmp(s, KIND_NAMES[k], len) == 0) return k;
    return -1;
}

int dataset_item_parse(DatasetItem *out, const char *item, const DatasetOptions *defaults, Err *err)
{
    memset(out, 0, sizeof *out);
    if (defaults) out->opts = *defaults;
    else dataset_options_default(&out->opts);
    const char *p = item;
    /* KIND: a short run of lower-case letters and digits before ':'. */
    const char *colon = strchr(item, ':');
    if (colon) {
        size_t len = (size_t)(colon - item);
        int word = len > 0 && len <= KIND_MAX_CHARS;
        for (size_t i = 0; i < len && word; i++)
            word = (item[i] >= 'a' && item[i] <= 'z') || (item[i] >= '0' && item[i] <= '9');
        if (word) {
            int k = kind_from(item, len);
            if (k < 0)
                return err_set(err, AE_EARG, "unknown source kind '%.*s' in '%.300s' (hint: kinds are npz, npy, idx, "
                               "mnist, cifar10, cifar100, folder, list; write ./%.300s for a path holding ':')",
                               (int)len, item, item, item);
            out->kind = (SourceKind)k;
            p = colon + 1;
        }
    }
    const char *q = strchr(p, '?');
    size_t plen = q ? (size_t)(q - p) : strlen(p);
    if (plen == 0)
        return err_set(err, AE_EARG, "no path in dataset item '%.300s' (hint: write [KIND:]PATH[?key=value&...])", item);
    if (plen >= sizeof out->path)
        return err_set(err, AE_EARG, "path in dataset item '%.200s...' is longer than %d bytes", item,
                       DATASET_PATH_BYTES - 1);
    memcpy(out->path, p, plen);
    out->path[plen] = '\0';
    if (!q) return AE_OK;
    if (dataset_options_parse(&out->opts, q + 1, err)) {
        char msg[ERR_MSG_BYTES];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return err_set(err, AE_EARG, "in dataset item '%.300s': %s", item, msg);
    }
    return AE_OK;
}
