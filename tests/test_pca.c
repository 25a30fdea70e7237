/*
 * test_pca.c - unit tests of include/search/pca.h against naive double loops
 * written here: data with a planted covariance (a few strong directions plus
 * isotropic noise), the covariance recomputed directly, and the fitted axes
 * checked as what they must be: orthonormal, eigenvectors (C a = lambda a up
 * to a residual), eigenvalues descending and equal to the variance of the
 * data along each axis, the leading axis aligned with the strongest planted
 * direction.  Sums split over "ranks" and added element-wise give the same
 * fit; pca_project equals (x - mean) . axis in double.  Serial, no MPI.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "search/pca.h"
#include "testutil.h"

#define N 700  /* rows (not a multiple of PCA_BLOCK_ROWS) */
#define P 24   /* input dimension */
#define D 5    /* axes kept */

/* x[N][P] = mean + sum_j z_j * s_j * dir_j + noise, dir_j random, s = 8,4,2. */
static void make_data(float *x, float *dir0)
{
    uint64_t rng = 2024;
    float dirs[3][P], mean[P];
    const float scale[3] = { 8.0f, 4.0f, 2.0f };
    for (int j = 0; j < 3; j++) test_fill_uniform(dirs[j], P, &rng, -1.0f, 1.0f);
    test_fill_uniform(mean, P, &rng, 0.0f, 5.0f);
    double nrm = 0;
    for (int p = 0; p < P; p++) nrm += (double)dirs[0][p] * dirs[0][p];
    for (int p = 0; p < P; p++) dir0[p] = (float)(dirs[0][p] / sqrt(nrm));
    for (int i = 0; i < N; i++)
        for (int p = 0; p < P; p++) x[i * P + p] = mean[p] + test_rng_uniform(&rng, -0.1f, 0.1f);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < 3; j++) {
            float z = test_rng_uniform(&rng, -1.0f, 1.0f) * scale[j];
            for (int p = 0; p < P; p++) x[i * P + p] += z * dirs[j][p];
        }
}

/* Naive covariance (divided by n) in double. */
static void naive_cov(double *cov, double *mu, const float *x)
{
    for (int p = 0; p < P; p++) {
        mu[p] = 0;
        for (int i = 0; i < N; i++) mu[p] += x[i * P + p];
        mu[p] /= N;
    }
    for (int a = 0; a < P; a++)
        for (int b = 0; b < P; b++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += (x[i * P + a] - mu[a]) * (x[i * P + b] - mu[b]);
            cov[a * P + b] = s / N;
        }
}

static void test_axes_are_eigenvectors(void **state)
{
    (void)state;
    float *x = malloc(sizeof(float) * N * P), dir0[P];
    make_data(x, dir0);
    double cov[P * P], mu[P];
    naive_cov(cov, mu, x);
    PcaStats st;
    pca_stats_init(&st, P);
    pca_stats_add(&st, x, N);
    Pca pca;
    Err err;
    assert_int_equal(pca_fit(&pca, &st, D, &err), AE_OK);
    double lmax = pca.var[0];
    for (int i = 0; i < D; i++) {
        const float *a = pca.axes + i * P;
        for (int j = 0; j <= i; j++) {
            double dot = 0;
            for (int p = 0; p < P; p++) dot += (double)a[p] * pca.axes[j * P + p];
            assert_true(fabs(dot - (i == j)) < 1e-5);
        }
        double rq = 0, res = 0;
        for (int r = 0; r < P; r++) {
            double ca = 0;
            for (int c = 0; c < P; c++) ca += cov[r * P + c] * a[c];
            rq += a[r] * ca;
            res += (ca - pca.var[i] * a[r]) * (ca - pca.var[i] * a[r]);
        }
        if (fabs(rq - pca.var[i]) > 1e-5 * lmax || sqrt(res) > 1e-5 * lmax)
            print_error("axis %d: lambda %g Rayleigh %g residual %g\n", i, pca.var[i], rq, sqrt(res));
        assert_true(fabs(rq - pca.var[i]) <= 1e-5 * lmax);
        assert_true(sqrt(res) <= 1e-5 * lmax);
        if (i > 0) assert_true(pca.var[i] <= pca.var[i - 1]);
        /* Variance of the data along the axis = lambda. */
        double v = 0;
        for (int n = 0; n < N; n++) {
            double t = 0;
            for (int p = 0; p < P; p++) t += (x[n * P + p] - mu[p]) * a[p];
            v += t * t;
        }
        assert_true(fabs(v / N - pca.var[i]) <= 1e-5 * lmax);
    }
    double align = 0;
    for (int p = 0; p < P; p++) align += (double)pca.axes[p] * dir0[p];
    assert_true(fabs(align) > 0.99);
    for (int p = 0; p < P; p++) assert_true(fabs(pca.mean[p] - mu[p]) < 1e-4);
    pca_free(&pca);
    pca_stats_free(&st);
    free(x);
}

static void test_split_sums_and_projection(void **state)
{
    (void)state;
    float *x = malloc(sizeof(float) * N * P), dir0[P];
    make_data(x, dir0);
    PcaStats all, part[3];
    pca_stats_init(&all, P);
    pca_stats_add(&all, x, N);
    const int cut[4] = { 0, 100, 101, N }; /* uneven "ranks", one of a single row */
    for (int r = 0; r < 3; r++) {
        pca_stats_init(&part[r], P);
        pca_stats_add(&part[r], x + cut[r] * P, cut[r + 1] - cut[r]);
    }
    for (int r = 1; r < 3; r++) { /* what par_allreduce_sum_f64 does */
        part[0].n += part[r].n;
        for (int p = 0; p < P; p++) part[0].sum[p] += part[r].sum[p];
        for (int p = 0; p < P * P; p++) part[0].sxx[p] += part[r].sxx[p];
    }
    Pca a, b;
    Err err;
    assert_int_equal(pca_fit(&a, &all, D, &err), AE_OK);
    assert_int_equal(pca_fit(&b, &part[0], D, &err), AE_OK);
    for (int i = 0; i < D; i++) {
        assert_true(fabs(a.var[i] - b.var[i]) <= 1e-9 * a.var[0]);
        double dot = 0;
        for (int p = 0; p < P; p++) dot += (double)a.axes[i * P + p] * b.axes[i * P + p];
        assert_true(fabs(fabs(dot) - 1.0) < 1e-5);
    }
    float *y = malloc(sizeof(float) * N * D);
    double *ref = malloc(sizeof(double) * N * D);
    pca_project(y, &a, x, N);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++) {
            double t = 0;
            for (int p = 0; p < P; p++) t += ((double)x[n * P + p] - a.mean[p]) * a.axes[i * P + p];
            ref[n * D + i] = t;
        }
    double *yd = malloc(sizeof(double) * N * D);
    for (int k = 0; k < N * D; k++) yd[k] = y[k];
    assert_true(check_tensor_d("pca_project", yd, ref, (size_t)N * D, 1e-4, 1e-5));
    free(yd);
    free(y);
    free(ref);
    pca_free(&a);
    pca_free(&b);
    pca_stats_free(&all);
    for (int r = 0; r < 3; r++) pca_stats_free(&part[r]);
    free(x);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    PcaStats st;
    pca_stats_init(&st, 3);
    float one[3] = { 1, 2, 3 };
    pca_stats_add(&st, one, 1);
    Pca p;
    Err err;
    assert_int_equal(pca_fit(&p, &st, 2, &err), AE_EARG); /* n < 2 */
    pca_stats_add(&st, one, 1);
    assert_int_equal(pca_fit(&p, &st, 4, &err), AE_EARG); /* D > P */
    assert_int_equal(pca_fit(&p, &st, 0, &err), AE_EARG);
    st.sum[0] = NAN;
    assert_int_equal(pca_fit(&p, &st, 1, &err), AE_ENUMERIC);
    pca_stats_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_axes_are_eigenvectors),
        cmocka_unit_test(test_split_sums_and_projection),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
