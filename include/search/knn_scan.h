/*
 * knn_scan.h - the float32 pre-scan of knn.c's direct path: distances of a
 * few queries to a list of database rows in single precision, streaming each
 * row once, plus the rounding-error bounds that let knn.c turn the float
 * values into an exact result (include/search/knn.h "Exactness").
 *
 * What it computes, for query q[D] and row x[D] (u = 2^-24, the unit
 * roundoff of float32):
 *   KNN_L2  f = fl( sum_d (q_d - x_d)^2 )   the direct difference form, NOT
 *           ||q||^2 + ||x||^2 - 2 q.x: all terms are >= 0, so the error is
 *           RELATIVE to the distance (no cancellation);
 *   KNN_IP  f = fl( sum_d q_d x_d );
 * and for every row its float squared norm nf = fl( sum_d x_d^2 ) (used by
 * the IP bound, and by knn.c to detect non-finite or oversized rows in the
 * same pass).  Summation: 16 lanes, lane l accumulating d = l, l+16, ...
 * (one fused multiply-add, or multiply then add, per term), then the 16 lane
 * sums are added in an unspecified order.
 *
 * Error bounds (Higham, Accuracy and Stability of Numerical Algorithms, 2nd
 * ed., ch. 3: Lemma 3.1 and the inner-product analysis of section 3.1,
 * which holds for any order of summation; underflow by the model
 * fl(x op y) = (x op y)(1 + delta) + eta of ch. 2, |eta| at most half the
 * smallest subnormal for a multiplication, eta = 0 for +/-):
 * each term picks up one rounding factor (1+delta), |delta| <= u, per
 * operation on its path: the subtraction, squared (2, L2 only), its multiply
 * or FMA (1), the later additions of its lane (<= ceil(D/16) - 1) and of the
 * lane reduction (<= 15).  With n = ceil(D/16) + 17 (L2) or ceil(D/16) + 15
 * (IP, norms) and gamma_n = n u / (1 - n u):
 *   L2:  |f - S| <= gamma_n S + a,          S = sum_d (q_d - x_d)^2 exactly;
 *   IP:  |f - P| <= gamma_n sum_d |q_d x_d| + a <= gamma_n ||q|| ||x|| + a,
 *        ||x||^2 <= nf / (1 - gamma_n)     (Cauchy-Schwarz);
 * a = (D + 16) FLT_MIN covers gradual underflow (each multiply may add an
 * absolute error below the smallest subnormal; subtractions and additions
 * with subnormal results are exact).  The value knn.c reports, r (double
 * accumulation in order, rounded to float), is itself within
 * gamma^(double)_(D+2) S (relative, L2) or gamma^(double)_D ||q|| ||x|| (IP)
 * of the exact sum, then within u |r| of that.  knn_scan_l2_lower and
 * knn_scan_ip_upper combine the two and double every error term (so the
 * rounding of the bound arithmetic itself is covered).  These need
 * n u < 1/2, i.e. D below ~134 million; beyond that the bounds exclude
 * nothing and knn.c re-scores every row.
 *
 * Overflow: none as long as ||q||^2 and ||x||^2 are at most KNN_MAX_NORM2
 * (knn.h): |q_d - x_d| <= 2 sqrt(KNN_MAX_NORM2), partial sums of nonnegative
 * terms never exceed (1 + gamma_n) (||q|| + ||x||)^2 <= FLT_MAX / 8.  For
 * larger rows the values may be inf or NaN (knn.c detects those rows by nf).
 *
 * Kernels: AVX-512F (GCC target attribute, chosen at run time with
 * __builtin_cpu_supports, as src/nn/gemm_avx512.c does) processes 4 rows at a
 * time against one query (4 independent accumulator chains, plus 4 norm
 * chains) and prefetches the next 4 rows; the portable kernel is plain C in the same lane order (any
 * compiler, any CPU).  Both satisfy the bounds above; their values may
 * differ in the last bits, and knn.c's results do not depend on which runs.
 *
 * Does not: keep heaps, allocate, validate its input, or read masks (the
 * caller passes the list of eligible rows).
 * Threading: serial and reentrant (no state); knn.c calls it from inside its
 * OpenMP loop, one row range per call.  No MPI.
 */
#ifndef AESIM_KNN_SCAN_H
#define AESIM_KNN_SCAN_H

#include <math.h>
#include <stdint.h>

#include "search/knn.h"

/* Rows handed to one knn_scan_rows call by knn.c (the f buffer is
 * KNN_SCAN_BLOCK floats per query, in L1). */
#define KNN_SCAN_BLOCK 64

/* 1 if the running CPU has AVX-512F and this build has the kernel (x86 GCC
 * or Clang), else 0.  Pure CPU query. */
int knn_scan_avx512_supported(void);

/* Float pre-scan values of nq queries against nb rows of x, with the AVX-512
 * kernel when knn_scan_avx512_supported() says so, else the portable one.
 *   f      [nq][nb] out: f[i*nb + c] = pre-scan value (see top) of query i
 *          and row rows[c]
 *   nf     [nb] out: float squared norm of row rows[c]; may be NULL (not
 *          computed)
 *   q      [nq][D] queries
 *   nq     >= 1
 *   x      [*][D] database rows, row-major
 *   rows   [nb] row indices into x (any order, repeats allowed)
 *   nb     >= 0
 *   D      >= 1
 *   metric KNN_L2 or KNN_IP
 * Any finite input gives values satisfying the bounds at the top (for rows
 * and queries within KNN_MAX_NORM2). */
void knn_scan_rows(float *f, float *nf, const float *q, int nq, const float *x, const int64_t *rows, int nb,
                   int D, KnnMetric metric);

/* The same with the portable kernel forced (tests compare both kernels'
 * bounds; knn.c never calls it directly). */
void knn_scan_rows_portable(float *f, float *nf, const float *q, int nq, const float *x, const int64_t *rows,
                            int nb, int D, KnnMetric metric);

/* Coefficients of the bounds for one dimension D (knn_scan_bound_init):
 * the bounds below are affine in the pre-scan value, so they cost a
 * multiply-add per row. */
typedef struct KnnScanBound {
    double rel_l2; /* L2: r >= f - rel_l2 f - abs */
    double rel_ip; /* IP: r <= f + rel_ip sqrt(qn2 nf) + abs */
    double abs;    /* underflow allowance (doubled, plus the final rounding's) */
} KnnScanBound;

/* Fills b for dimension D >= 1 (see the top of this file for the
 * derivation): with g = gamma_n of the pre-scan (n = ceil(D/16) + 17 for
 * L2, + 15 for IP), gd = gamma_(D+2) in double, u = 2^-24,
 *   rel_l2 = 2 (g + gd + u),
 *   rel_ip = 2 (g + gd + u (1 + gd)) / sqrt(1 - g),
 *   abs    = 2 ((D + 16) FLT_MIN + FLT_MIN).
 * When D is too large for gamma_n (n u >= 1/2) the coefficients are
 * INFINITY, and the bounds below then never exclude a row (they come out
 * infinite or NaN, and every comparison with them fails). */
void knn_scan_bound_init(KnnScanBound *b, int D);

/* A lower bound on the reported (re-scored) L2 distance r of any row whose
 * L2 pre-scan value is >= f (f >= 0):  r >= knn_scan_l2_lower(b, f). */
static inline double knn_scan_l2_lower(const KnnScanBound *b, double f)
{
    return f - (b->rel_l2 * f + b->abs);
}

/* An upper bound on the reported (re-scored) inner product r of any row
 * whose IP pre-scan value is <= f and whose float squared norm (nf of
 * knn_scan_rows) is <= nf, against a query of squared norm qn2 accumulated
 * in double:  r <= knn_scan_ip_upper(b, f, qn2, nf). */
static inline double knn_scan_ip_upper(const KnnScanBound *b, double f, double qn2, double nf)
{
    return f + (b->rel_ip * sqrt(qn2 * nf) + b->abs);
}

#endif
