/*
 * test_optim.c - adam_step and sgd_step against independent double-precision
 * implementations of the published update rules, written here from the
 * torch.optim documentation (PyTorch 1.13):
 *   Adam (https://pytorch.org/docs/1.13/generated/torch.optim.Adam.html,
 *   Kingma & Ba 2015 Algorithm 1), no weight decay, amsgrad off:
 *     m_t = b1 m_{t-1} + (1 - b1) g_t        v_t = b2 v_{t-1} + (1 - b2) g_t^2
 *     mhat = m_t / (1 - b1^t)                vhat = v_t / (1 - b2^t)
 *     theta_t = theta_{t-1} - lr * mhat / (sqrt(vhat) + eps)
 *   SGD (https://pytorch.org/docs/1.13/generated/torch.optim.SGD.html),
 *   dampening 0, nesterov off, buffer b_1 = g_1:
 *     b_t = mu b_{t-1} + g_t                 theta_t = theta_{t-1} - lr b_t
 * Several steps with fresh random gradients each step, so bias correction
 * and momentum are exercised; one block of gradients of size ~eps makes the
 * placement of eps (outside the square root) visible.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "base/check.h"
#include "naive_ref.h"
#include "nn/optim_step.h"
#include "testutil.h"

#define STEPS 12
/* Parameters: the float run rounds p (~1) once per step, so after STEPS
 * steps it is within ~STEPS float ulps of the double run. */
#define P_ATOL 2e-6
#define P_RTOL 1e-6
/* Moments of O(1) gradients: float rounding of sums of O(1) terms. */
#define MOMENT_ATOL 1e-6
#define MOMENT_RTOL 1e-5
/* Block with tiny gradients (scale TINY_G), where p starts at 0 so p is the
 * sum of the updates.  Updates are ~lr = 1e-3 with mixed signs, so p can
 * cancel to tiny values while its rounding error stays ~ulps of 1e-3
 * (~1e-10 per step): TINY_P_ATOL is 1e-5 of one update, far below what a
 * misplaced eps changes (a factor ~2 or more).  m likewise can cancel: its
 * absolute tolerance is 1e-5 of TINY_G.  v is a sum of squares: relative. */
#define TINY_G 1e-7f
#define TINY_P_ATOL 1e-8
#define TINY_M_ATOL 1e-12
#define TINY_V_ATOL 1e-24
#define TINY_RTOL 1e-4

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const size_t SIZES[] = {1, 1000, 40000};

static void adam_ref(double *p, const double *g, double *m, double *v, size_t n, const AdamConfig *c, int64_t t)
{
    const double b1 = c->beta1, b2 = c->beta2, lr = c->lr, eps = c->eps;
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        const double mhat = m[i] / (1.0 - pow(b1, (double)t));
        const double vhat = v[i] / (1.0 - pow(b2, (double)t));
        p[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

static void sgd_ref(double *p, const double *g, double *b, size_t n, double lr, double mu, int64_t t)
{
    for (size_t i = 0; i < n; i++) {
        b[i] = t == 1 ? g[i] : mu * b[i] + g[i];
        p[i] -= lr * b[i];
    }
}

/* Runs STEPS Adam steps on n parameters with gradients uniform in
 * [-gscale, gscale] and compares p, m, v with the double reference. */
static void check_adam(const AdamConfig *c, size_t n, float p0_scale, float gscale, double atol_p,
                       double atol_m, double atol_v, double rtol_p, double rtol_mv, uint64_t seed)
{
    float *p = xmalloc(sizeof(float) * n), *g = xmalloc(sizeof(float) * n);
    float *m = xcalloc(n, sizeof(float)), *v = xcalloc(n, sizeof(float));
    double *pd = xmalloc(sizeof(double) * n), *gd = xmalloc(sizeof(double) * n);
    double *md = xcalloc(n, sizeof(double)), *vd = xcalloc(n, sizeof(double));
    double *tmp = xmalloc(sizeof(double) * n);
    test_fill_uniform(p, n, &seed, -p0_scale, p0_scale);
    ref_to_double(pd, p, n);
    for (int64_t t = 1; t <= STEPS; t++) {
        test_fill_uniform(g, n, &seed, -gscale, gscale);
        ref_to_double(gd, g, n);
        adam_step(p, g, m, v, n, c, t);
        adam_ref(pd, gd, md, vd, n, c, t);
        char name[3][96];
        snprintf(name[0], sizeof name[0], "adam p n=%zu g~%g step %d", n, (double)gscale, (int)t);
        snprintf(name[1], sizeof name[1], "adam m n=%zu g~%g step %d", n, (double)gscale, (int)t);
        snprintf(name[2], sizeof name[2], "adam v n=%zu g~%g step %d", n, (double)gscale, (int)t);
        assert_true(ref_check(name[0], p, pd, n, atol_p, rtol_p, tmp));
        assert_true(ref_check(name[1], m, md, n, atol_m, rtol_mv, tmp));
        assert_true(ref_check(name[2], v, vd, n, atol_v, rtol_mv, tmp));
    }
    free(p); free(g); free(m); free(v); free(pd); free(gd); free(md); free(vd); free(tmp);
}

static void test_adam_matches_formula(void **state)
{
    (void)state;
    const AdamConfig c = ADAM_CONFIG_DEFAULT;
    for (size_t k = 0; k < COUNT(SIZES); k++)
        check_adam(&c, SIZES[k], 1.0f, 1.0f, P_ATOL, MOMENT_ATOL, MOMENT_ATOL, P_RTOL, MOMENT_RTOL, 10 + k);
}

/* Gradients ~ eps: sqrt(vhat) ~ eps, so eps inside the square root or a
 * missing bias correction would change the update by a large factor. */
static void test_adam_tiny_gradients_eps(void **state)
{
    (void)state;
    const AdamConfig c = ADAM_CONFIG_DEFAULT;
    for (size_t k = 0; k < COUNT(SIZES); k++)
        check_adam(&c, SIZES[k], 0.0f, TINY_G, TINY_P_ATOL, TINY_M_ATOL, TINY_V_ATOL, TINY_RTOL, TINY_RTOL, 20 + k);
}

/* Non-default hyper-parameters, so a hard-coded constant would show. */
static void test_adam_other_config(void **state)
{
    (void)state;
    const AdamConfig c = {.lr = 0.05f, .beta1 = 0.5f, .beta2 = 0.9f, .eps = 1e-3f};
    check_adam(&c, 1000, 1.0f, 1.0f, 1e-5, MOMENT_ATOL, MOMENT_ATOL, P_RTOL, MOMENT_RTOL, 30);
}

static void check_sgd(size_t n, float lr, float mu, uint64_t seed)
{
    float *p = xmalloc(sizeof(float) * n), *g = xmalloc(sizeof(float) * n), *b = xcalloc(n, sizeof(float));
    double *pd = xmalloc(sizeof(double) * n), *gd = xmalloc(sizeof(double) * n);
    double *bd = xcalloc(n, sizeof(double)), *tmp = xmalloc(sizeof(double) * n);
    test_fill_uniform(p, n, &seed, -1.0f, 1.0f);
    ref_to_double(pd, p, n);
    for (int64_t t = 1; t <= STEPS; t++) {
        test_fill_uniform(g, n, &seed, -1.0f, 1.0f);
        ref_to_double(gd, g, n);
        sgd_step(p, g, b, n, lr, mu);
        sgd_ref(pd, gd, bd, n, lr, mu, t);
        char name[2][96];
        snprintf(name[0], sizeof name[0], "sgd p n=%zu lr %g mu %g step %d", n, (double)lr, (double)mu, (int)t);
        snprintf(name[1], sizeof name[1], "sgd buf n=%zu lr %g mu %g step %d", n, (double)lr, (double)mu, (int)t);
        assert_true(ref_check(name[0], p, pd, n, P_ATOL, P_RTOL, tmp));
        assert_true(ref_check(name[1], b, bd, n, MOMENT_ATOL, MOMENT_RTOL, tmp));
    }
    free(p); free(g); free(b); free(pd); free(gd); free(bd); free(tmp);
}

static void test_sgd_matches_formula(void **state)
{
    (void)state;
    for (size_t k = 0; k < COUNT(SIZES); k++) {
        check_sgd(SIZES[k], 0.01f, 0.9f, 40 + k);
        check_sgd(SIZES[k], 0.1f, 0.0f, 50 + k);  /* momentum 0: plain SGD */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_matches_formula),
        cmocka_unit_test(test_adam_tiny_gradients_eps),
        cmocka_unit_test(test_adam_other_config),
        cmocka_unit_test(test_sgd_matches_formula),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
