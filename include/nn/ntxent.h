/*
 * ntxent.h - the NT-Xent contrastive loss (normalized temperature-scaled
 * cross entropy, SimCLR: T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A
 * Simple Framework for Contrastive Learning of Visual Representations",
 * ICML 2020, eq. 1) and its gradient, on a batch of embedding pairs.
 *
 * Rows: z[2n][D], where rows i and i + n (0 <= i < n) are the two views of
 * one image (the positive pair) and every other row is a negative.  With
 * u_i = z_i / max(|z_i|, NTXENT_NORM_EPS) and s_ij = u_i . u_j / tau:
 *   l_i = -s_{i,p(i)} + log sum_{k != i} exp(s_ik),   L = 1/(2n) sum_i l_i
 * (the mean over all 2n anchors, as SimCLR's loss over both orders of each
 * pair; PyTorch: cross_entropy over the similarity matrix with the diagonal
 * masked out).
 *
 * Does: the loss and dL/dz of the whole batch.  Does not: communicate (the
 * trainer gathers the codes of every rank first, so the negatives are the
 * whole global batch) or allocate beyond its own O(n^2 + nD) work arrays.
 * Threading: two OpenBLAS sgemm calls (however many threads OpenBLAS has),
 * the rest serial; deterministic for a given OpenBLAS thread count.
 */
#ifndef AESIM_NTXENT_H
#define AESIM_NTXENT_H

/* Floor of |z| in the normalisation (PyTorch F.normalize's eps is 1e-12;
 * ours is larger so 1/|z| stays well inside float range for a dead code of
 * all-zero ReLU outputs, whose gradient is then z / eps, finite). */
#define NTXENT_NORM_EPS 1e-8

/* Returns L (above) for z[2n][D], n >= 1, D >= 1, tau > 0.  If dz is not
 * NULL, writes dz[2n][D] = scale * dL/dz (overwritten, not accumulated):
 * the trainer passes the loss weight as scale.  Sums of the softmax run in
 * double, after subtracting each row's maximum. */
double ntxent_loss(float *dz, const float *z, int n, int D, double tau, double scale);

#endif
