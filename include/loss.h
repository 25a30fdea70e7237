/*
 * loss.h - mean squared error, L = inv_count * sum_i (y[i] - t[i])^2.
 * With inv_count = 1/n this is PyTorch nn.MSELoss(reduction='mean'); the
 * caller picks inv_count (e.g. 1 / global element count when the sum is
 * allreduced over MPI ranks).
 *
 * Threading: OpenMP over elements, serial below a size threshold; the sum is
 * a double reduction, so its value depends on the thread count only in the
 * last bits of a double.  No MPI here.
 */
#ifndef AESIM_LOSS_H
#define AESIM_LOSS_H

#include <stddef.h>

/* Sum of (y[i]-t[i])^2 for i < n, accumulated in double. */
double mse_sum(const float *y, const float *t, size_t n);

/* dy[i] = 2*(y[i]-t[i])*inv_count (overwritten): dL/dy of the L above.
 * Computed as PyTorch mse_loss_backward does: (float)(2*inv_count) * (y - t). */
void mse_backward(float *dy, const float *y, const float *t, size_t n, double inv_count);

#endif
