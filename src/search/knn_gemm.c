/*
 * knn_gemm.c - run-time choice of the kNN distance GEMM (see knn_gemm.h).
 *
 * Measured (issue 16, 2026-12-03, 2-core Xeon with AVX-512 and AVX512_BF16,
 * OpenBLAS 0.3.21 pthread at 1 thread, one kNN tile q[256][D] x x[1024][D]^T,
 * best of 40 calls, machine shared with other jobs):
 *   D = 512: OpenBLAS 17-21 GFLOP/s, gemm_avx512_nt 19-40, gemm_avx512_nt_bcast 98-99;
 *   D = 392: OpenBLAS 18-29, gemm_avx512_nt_bcast 102-103.
 * OpenBLAS's DYNAMIC_ARCH does not recognise this CPU and runs a generic
 * kernel (with OPENBLAS_CORETYPE=SkylakeX it reaches ~140 GFLOP/s; a user may
 * set that and AESIM_KNN_GEMM=blas).  So AUTO = AVX-512 wherever the CPU has
 * AVX-512F.  Whole search (bench/bench_knn.c --n 100000 --d 512 --nq 3000/3,
 * best of 3 calls of 1,000 queries, same day, load average ~6 on 2 cores):
 * 2 threads: AESIM_KNN_GEMM=avx512 374 queries/s (38 GFLOP/s), blas 188;
 * 1 thread avx512: 570 queries/s (58 GFLOP/s: the machine was too loaded
 * for 2 threads to help).  Re-measure with AESIM_KNN_GEMM=blas|avx512.
 * The query block packed once (knn_gemm_prepare; 12 x 32 register tiles,
 * k block 512) instead of read in place by nt_bcast (8 x 32, k block 128):
 * 2026-12-05, Zen 5, bench_knn --n 1000000 --d 512 --nq 3000/3 --threads
 * 2, 4 interleaved rounds, median queries/s per round: 294/279/285/294
 * before, 320/297/309/325 after (+7%); 1 thread, 500 queries: 147-167 ->
 * 164-174.  perf, 1 thread: the GEMM kernel 86% of the search, packing the
 * database rows (pack_bt) 10%, heap updates 2%.
 *
 * Does not: block, thread or allocate; knn.c does the blocking.
 */
#include "search/knn_gemm.h"

#include <stdlib.h>
#include <string.h>

#include "nn/gemm.h"
#include "nn/gemm_avx512.h"

int knn_gemm_parse(KnnGemm *out, const char *name, Err *err)
{
    if (!name || !*name || strcmp(name, "auto") == 0) {
        *out = KNN_GEMM_AUTO;
        return AE_OK;
    }
    if (strcmp(name, "blas") == 0) {
        *out = KNN_GEMM_BLAS;
        return AE_OK;
    }
    if (strcmp(name, "avx512") == 0) {
        if (!gemm_avx512_supported())
            return err_set(err, AE_EARG, "%s='%s': this CPU or build has no AVX-512F; hint: unset %s or use blas",
                           KNN_GEMM_ENV, name, KNN_GEMM_ENV);
        *out = KNN_GEMM_AVX512;
        return AE_OK;
    }
    return err_set(err, AE_EARG, "%s='%s' is not a kNN GEMM kernel; use auto, blas or avx512", KNN_GEMM_ENV, name);
}

int knn_gemm_from_env(KnnGemm *out, Err *err)
{
    return knn_gemm_parse(out, getenv(KNN_GEMM_ENV), err);
}

KnnGemm knn_gemm_resolve(KnnGemm g)
{
    if (g == KNN_GEMM_BLAS) return KNN_GEMM_BLAS;
    return gemm_avx512_supported() ? KNN_GEMM_AVX512 : KNN_GEMM_BLAS;
}

const char *knn_gemm_name(KnnGemm g)
{
    switch (g) {
    case KNN_GEMM_AUTO: return "auto";
    case KNN_GEMM_BLAS: return "blas";
    case KNN_GEMM_AVX512: return "avx512";
    }
    return "?";
}

size_t knn_gemm_queries_floats(KnnGemm g, int m, int D)
{
    return knn_gemm_resolve(g) == KNN_GEMM_AVX512 ? gemm_avx512_pack_a_nt_floats(m, D) : 0;
}

KnnGemmQueries knn_gemm_prepare(KnnGemm g, const float *q, int m, int D, float *buf)
{
    KnnGemmQueries qs = {knn_gemm_resolve(g), q, m, D};
    if (qs.kernel == KNN_GEMM_AVX512) {
        gemm_avx512_pack_a_nt(buf, q, m, D);
        qs.q = buf;
    }
    return qs;
}

void knn_gemm_tile(const KnnGemmQueries *qs, float *ip, const float *x, int n)
{
    if (qs->kernel == KNN_GEMM_AVX512) gemm_avx512_nt_packed_a(ip, qs->q, x, qs->m, n, qs->D);
    else gemm_nt(ip, qs->q, x, qs->m, n, qs->D, 0.0f);
}

void knn_gemm_nt(KnnGemm g, float *ip, const float *q, const float *x, int m, int n, int D)
{
    if (knn_gemm_resolve(g) == KNN_GEMM_AVX512) gemm_avx512_nt_bcast(ip, q, x, m, n, D, 0.0f);
    else gemm_nt(ip, q, x, m, n, D, 0.0f);
}
