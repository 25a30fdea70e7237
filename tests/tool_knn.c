/*
 * tool_knn.c - test helper for tests/test_knn_faiss.py: runs the k-NN or
 * range search of include/search/knn.h on .fvecs files and writes the raw result,
 * which the Python test compares with FAISS.  Not run on its own.
 *
 *   tool_knn knn   l2|ip K      BASE.fvecs QUERY.fvecs OUT.bin [opts]
 *   tool_knn range l2|ip RADIUS BASE.fvecs QUERY.fvecs OUT.bin [opts]
 *   opts: --normalize   L2-normalise base and queries first (cosine with ip)
 *         --shards S    (knn) split the base into S uneven shards, search
 *                       each with its id offset and merge with knn_merge
 *         --threads N   OpenMP threads (default: OpenMP default)
 *
 * .fvecs (TEXMEX format): per vector an int32 dimension d, then d float32.
 * OUT.bin, native byte order:
 *   knn:   int64 Q, int64 k, float32 dist[Q*k], int64 ids[Q*k]
 *   range: int64 Q, int64 total, int64 lims[Q+1], int64 ids[total],
 *          float32 dist[total]
 * Serial (no MPI); exits 1 with a message on any error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "search/knn.h"

/* Reads a whole .fvecs file into *out ([n][d], xmalloc).  Returns 0 or -1
 * with a message on stderr. */
static int read_fvecs(const char *path, float **out, int64_t *n, int *d)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tool_knn: cannot open %s\n", path);
        return -1;
    }
    int32_t dim = 0;
    if (fread(&dim, sizeof dim, 1, f) != 1 || dim <= 0) {
        fprintf(stderr, "tool_knn: %s: bad or missing dimension header\n", path);
        fclose(f);
        return -1;
    }
    if (fseeko(f, 0, SEEK_END) != 0) {
        fclose(f);
        return -1;
    }
    int64_t bytes = (int64_t)ftello(f), rec = 4 + 4 * (int64_t)dim;
    if (bytes % rec != 0) {
        fprintf(stderr, "tool_knn: %s: size %lld is not a multiple of %lld\n", path, (long long)bytes,
                (long long)rec);
        fclose(f);
        return -1;
    }
    *n = bytes / rec;
    *d = dim;
    *out = xmalloc((size_t)(*n > 0 ? *n : 1) * (size_t)dim * sizeof(float));
    rewind(f);
    for (int64_t i = 0; i < *n; i++) {
        int32_t di = 0;
        if (fread(&di, sizeof di, 1, f) != 1 || di != dim ||
            fread(*out + (size_t)i * (size_t)dim, sizeof(float), (size_t)dim, f) != (size_t)dim) {
            fprintf(stderr, "tool_knn: %s: vector %lld is truncated or has another dimension\n", path,
                    (long long)i);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

static void write_or_die(FILE *f, const void *p, size_t size, size_t n)
{
    if (n && fwrite(p, size, n, f) != n) {
        fprintf(stderr, "tool_knn: write failed\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: tool_knn knn|range l2|ip K|RADIUS BASE.fvecs QUERY.fvecs OUT.bin "
                        "[--normalize] [--shards S] [--threads N]\n");
        return 1;
    }
    int is_range = strcmp(argv[1], "range") == 0;
    KnnMetric metric = strcmp(argv[2], "ip") == 0 ? KNN_IP : KNN_L2;
    int normalize = 0, shards = 1, nthreads = 0;
    for (int a = 7; a < argc; a++) {
        if (strcmp(argv[a], "--normalize") == 0) normalize = 1;
        else if (strcmp(argv[a], "--shards") == 0 && a + 1 < argc) shards = atoi(argv[++a]);
        else if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc) nthreads = atoi(argv[++a]);
        else {
            fprintf(stderr, "tool_knn: unknown option %s\n", argv[a]);
            return 1;
        }
    }
    float *x = NULL, *q = NULL;
    int64_t M = 0, Q = 0;
    int D = 0, Dq = 0;
    if (read_fvecs(argv[4], &x, &M, &D) || read_fvecs(argv[5], &q, &Q, &Dq)) return 1;
    if (D != Dq) {
        fprintf(stderr, "tool_knn: base has D=%d, queries D=%d\n", D, Dq);
        return 1;
    }
    if (normalize) {
        knn_normalize(x, M, D);
        knn_normalize(q, Q, D);
    }
    FILE *f = fopen(argv[6], "wb");
    if (!f) {
        fprintf(stderr, "tool_knn: cannot create %s\n", argv[6]);
        return 1;
    }
    Err err;
    err_clear(&err);
    if (is_range) {
        KnnRange r;
        KnnDb db = { x, M, D, 0, NULL, NULL, NULL, 0 };
        if (knn_range_search_local(&r, q, Q, &db, strtof(argv[3], NULL), metric, nthreads, &err) != AE_OK) {
            fprintf(stderr, "tool_knn: %s\n", err.msg);
            return 1;
        }
        int64_t total = r.lims[Q];
        write_or_die(f, &Q, sizeof Q, 1);
        write_or_die(f, &total, sizeof total, 1);
        write_or_die(f, r.lims, sizeof *r.lims, (size_t)Q + 1);
        write_or_die(f, r.ids, sizeof *r.ids, (size_t)total);
        write_or_die(f, r.dist, sizeof *r.dist, (size_t)total);
        knn_range_free(&r);
    } else {
        int k = atoi(argv[3]);
        if (shards < 1) shards = 1;
        TopK *parts = xcalloc((size_t)shards, sizeof *parts), res;
        /* uneven split: shard s gets a share proportional to s + 1 */
        int64_t start = 0, wsum = (int64_t)shards * (shards + 1) / 2;
        for (int s = 0; s < shards; s++) {
            int64_t end = s == shards - 1 ? M : start + M * (s + 1) / wsum;
            KnnDb db = { x + (size_t)start * (size_t)D, end - start, D, start, NULL, NULL, NULL, 0 };
            if (knn_search_local(&parts[s], q, Q, &db, k, metric, nthreads, &err) != AE_OK) {
                fprintf(stderr, "tool_knn: %s\n", err.msg);
                return 1;
            }
            start = end;
        }
        knn_merge(&res, parts, shards, k, metric);
        int64_t k64 = k;
        write_or_die(f, &Q, sizeof Q, 1);
        write_or_die(f, &k64, sizeof k64, 1);
        write_or_die(f, res.dist, sizeof *res.dist, (size_t)Q * (size_t)k);
        write_or_die(f, res.ids, sizeof *res.ids, (size_t)Q * (size_t)k);
        for (int s = 0; s < shards; s++) topk_free(&parts[s]);
        free(parts);
        topk_free(&res);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "tool_knn: closing %s failed\n", argv[6]);
        return 1;
    }
    free(x);
    free(q);
    return 0;
}
