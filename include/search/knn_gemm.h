/*
 * knn_gemm.h - the inner-product GEMM of knn.c's many-query pass (issue 16):
 * ip[m][n] = q[m][D] x x[n][D]^T, on aesim's own AVX-512 kernel
 * (gemm_avx512_nt_packed_a, the query block packed once and multiplied with
 * every database tile) or on OpenBLAS cblas_sgemm (gemm_nt), chosen at run
 * time.  kmeans.c's assignment GEMM (a new A each call) uses knn_gemm_nt,
 * on gemm_avx512_nt_bcast.
 *
 * Choice (measured, as the convolutions' kernels are chosen; figures in
 * src/search/knn_gemm.c): KNN_GEMM_AUTO runs the AVX-512 kernel when the
 * running CPU has AVX-512F, else OpenBLAS.  A program or test may force one
 * with the environment variable KNN_GEMM_ENV (AESIM_KNN_GEMM=auto|blas|avx512),
 * which knn.c reads at each search call (knn_gemm_from_env): no global
 * state.  Exactness does not depend on the choice: both kernels are float32
 * dot products in some summation order, which the rounding-error bound of
 * knn.h "Exactness" covers (any order, FMA or not), and every reported value
 * is re-scored in a fixed order; results are bit-identical either way.
 *
 * Threading: knn_gemm_nt is serial on the AVX-512 path; on the OpenBLAS path
 * it runs on however many threads OpenBLAS has (knn.c calls it inside its
 * OpenMP loop, with OpenBLAS at 1 thread; see knn.h "Threading").
 * Does not allocate: the packed queries live in the caller's buffer.
 */
#ifndef AESIM_KNN_GEMM_H
#define AESIM_KNN_GEMM_H

#include "base/err.h"

/* Environment variable that forces the kNN GEMM kernel (tests, benchmarks). */
#define KNN_GEMM_ENV "AESIM_KNN_GEMM"

typedef enum KnnGemm {
    KNN_GEMM_AUTO = 0,  /* AVX-512 when the CPU has AVX-512F, else OpenBLAS */
    KNN_GEMM_BLAS = 1,  /* OpenBLAS cblas_sgemm (gemm.h) */
    KNN_GEMM_AVX512 = 2 /* gemm_avx512_nt_packed_a / nt_bcast (gemm_avx512.h) */
} KnnGemm;

/* *out = the kernel named by `name`: NULL, "" or "auto" -> KNN_GEMM_AUTO,
 * "blas" -> KNN_GEMM_BLAS, "avx512" -> KNN_GEMM_AVX512.  Returns AE_OK, or
 * AE_EARG (*out unchanged) for an unknown name or for "avx512" on a
 * CPU/build without AVX-512F; the message names the value, KNN_GEMM_ENV and
 * the accepted values. */
int knn_gemm_parse(KnnGemm *out, const char *name, Err *err);

/* knn_gemm_parse of getenv(KNN_GEMM_ENV). */
int knn_gemm_from_env(KnnGemm *out, Err *err);

/* The kernel knn_gemm_nt runs for choice g on this CPU: KNN_GEMM_BLAS or
 * KNN_GEMM_AVX512 (AUTO resolved; AVX512 without AVX-512F -> BLAS). */
KnnGemm knn_gemm_resolve(KnnGemm g);

/* "auto", "blas" or "avx512" (static string; "?" otherwise). */
const char *knn_gemm_name(KnnGemm g);

/* ip[m][n] = q[m][D] x x[n][D]^T (row-major, densely packed; ip
 * overwritten, may hold anything on entry) with kernel knn_gemm_resolve(g).
 * m, n, D >= 1. */
void knn_gemm_nt(KnnGemm g, float *ip, const float *q, const float *x, int m, int n, int D);

/* A block of queries prepared for knn_gemm_tile: on the AVX-512 path q
 * packed (gemm_avx512_pack_a_nt) into the caller's buffer, on OpenBLAS q
 * itself.  Valid while q and the buffer are. */
typedef struct KnnGemmQueries {
    KnnGemm kernel;   /* knn_gemm_resolve of the choice */
    const float *q;   /* [m][D] the queries, or their packed copy */
    int m, D;
} KnnGemmQueries;

/* Floats of the buffer knn_gemm_prepare needs for m queries of dimension
 * D with kernel choice g (0 on the OpenBLAS path).  m, D >= 1. */
size_t knn_gemm_queries_floats(KnnGemm g, int m, int D);

/* Prepares q[m][D] for knn_gemm_tile; buf has knn_gemm_queries_floats(g,
 * m, D) floats (may be NULL when that is 0), owned by the caller.  Costs
 * m*D copies on the AVX-512 path, nothing on OpenBLAS. */
KnnGemmQueries knn_gemm_prepare(KnnGemm g, const float *q, int m, int D, float *buf);

/* ip[m][n] = q[m][D] x x[n][D]^T for prepared queries (ip overwritten, may
 * hold anything on entry).  n >= 1.  Same results as knn_gemm_nt up to the
 * summation order (the kNN's error bound covers any). */
void knn_gemm_tile(const KnnGemmQueries *qs, float *ip, const float *x, int n);

#endif
