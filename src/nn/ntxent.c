/*
 * ntxent.c - NT-Xent loss and gradient (see include/ntxent.h).
 *
 * Math (u_i = z_i / |z_i|, S = U U^T / tau, P_ik = softmax over k != i of
 * row i of S, p(i) the positive of row i):
 *   dL/ds_ik = (P_ik - [k == p(i)]) / (2n)          (as a function of row i)
 *   dL/du_i  = (1/tau) sum_k (G_ik + G_ki) u_k       (s_ik = s_ki is shared)
 *   dL/dz_i  = (dL/du_i - (u_i . dL/du_i) u_i) / |z_i|   (normalisation)
 * where G = dL/dS.  The two D-sized products (S = U U^T and (G + G^T) U) are
 * sgemm; the softmax is in double with the row maximum subtracted, so exp
 * never overflows whatever tau.  Does not communicate; single call, owns its
 * scratch (allocated per call: one step's worth, small next to the model).
 */
#include "nn/ntxent.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>

#include "base/check.h"
#include "nn/gemm.h"

double ntxent_loss(float *dz, const float *z, int n, int D, double tau, double scale)
{
    assert(n >= 1 && D >= 1 && tau > 0);
    const int R = 2 * n;
    float *u = xmalloc((size_t)R * D * sizeof *u);
    float *s = xmalloc((size_t)R * R * sizeof *s);
    double *inv_norm = xmalloc((size_t)R * sizeof *inv_norm);
    for (int i = 0; i < R; i++) {
        const float *zi = z + (size_t)i * D;
        double nn = 0;
        for (int d = 0; d < D; d++) nn += (double)zi[d] * zi[d];
        double norm = sqrt(nn);
        inv_norm[i] = 1.0 / (norm > NTXENT_NORM_EPS ? norm : NTXENT_NORM_EPS);
        for (int d = 0; d < D; d++) u[(size_t)i * D + d] = (float)(zi[d] * inv_norm[i]);
    }
    gemm_nt(s, u, u, R, R, D, 0.0f); /* s = U U^T (cosine similarities) */
    double loss = 0;
    const double inv_tau = 1.0 / tau, w = 1.0 / R;
    /* row i of s becomes G_i = dL/ds_i (as a function of row i only) */
    for (int i = 0; i < R; i++) {
        float *si = s + (size_t)i * R;
        const int p = i < n ? i + n : i - n;
        double mx = -INFINITY;
        for (int k = 0; k < R; k++)
            if (k != i && si[k] * inv_tau > mx) mx = si[k] * inv_tau;
        double sum = 0;
        for (int k = 0; k < R; k++)
            if (k != i) sum += exp(si[k] * inv_tau - mx);
        loss += -(si[p] * inv_tau) + mx + log(sum);
        if (!dz) continue;
        for (int k = 0; k < R; k++)
            si[k] = k == i ? 0.0f : (float)(w * (exp(si[k] * inv_tau - mx) / sum - (k == p ? 1.0 : 0.0)));
    }
    if (dz) {
        /* symmetrise: H = (G + G^T) / tau, then dU = H U into u's place via dz */
        for (int i = 0; i < R; i++)
            for (int k = i + 1; k < R; k++) {
                float h = (float)((s[(size_t)i * R + k] + s[(size_t)k * R + i]) * inv_tau);
                s[(size_t)i * R + k] = s[(size_t)k * R + i] = h;
            }
        gemm_nn(dz, s, u, R, D, R, 0.0f); /* dz = dL/dU for now */
        for (int i = 0; i < R; i++) {
            float *gi = dz + (size_t)i * D;
            const float *ui = u + (size_t)i * D;
            /* below the eps floor u = z / eps is linear in z: no projection */
            double dot = 0;
            if (inv_norm[i] < 1.0 / NTXENT_NORM_EPS)
                for (int d = 0; d < D; d++) dot += (double)gi[d] * ui[d];
            const double f = scale * inv_norm[i];
            for (int d = 0; d < D; d++) gi[d] = (float)(f * (gi[d] - dot * ui[d]));
        }
    }
    free(u);
    free(s);
    free(inv_norm);
    return loss * w;
}
