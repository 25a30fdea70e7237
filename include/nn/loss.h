/*
 * loss.h - mean squared error, L = inv_count * sum_i (y[i] - t[i])^2.
 * With inv_count = 1/n this is PyTorch nn.MSELoss(reduction='mean'); the
 * caller picks inv_count (e.g. 1 / global element count when the sum is
 * allreduced over MPI ranks).
 *
 * Threading: OpenMP over elements, serial below a size threshold.  The sum
 * is accumulated in double, in index order within each thread's range of
 * elements (OpenMP's static schedule), the per-thread sums then added in
 * thread order: the same bits on every run with the same thread count,
 * and only the last bits of a double change with the thread count.  No MPI
 * here.
 */
#ifndef AESIM_LOSS_H
#define AESIM_LOSS_H

#include <stddef.h>

#include "nn/act.h"

/* Sum of (y[i]-t[i])^2 for i < n, accumulated in double (order above). */
double mse_sum(const float *y, const float *t, size_t n);

/* dy[i] = 2*(y[i]-t[i])*inv_count (overwritten): dL/dy of the L above.
 * Computed as PyTorch mse_loss_backward does: (float)(2*inv_count) * (y - t). */
void mse_backward(float *dy, const float *y, const float *t, size_t n, double inv_count);

/* The loss and output-layer gradient of a sigmoid output in one pass over
 * y, t (issue 6): y[n] = sigmoid(z) is the model output (act.h
 * sigmoid_forward), t[n] the target.  Returns mse_sum(y, t, n), the same
 * bits, and overwrites dz[n] = dL/dz, sigmoid_backward of mse_backward:
 *   g = (float)(2*inv_count) * (y[i] - t[i]);  dz[i] = (g * (1 - y[i])) * y[i]
 * in float, the operations and order of mse_backward followed by
 * sigmoid_backward(dz, dz, y, n), so dz has their bits (a NaN may carry
 * another NaN operand's payload, as between sigmoid_backward's two
 * implementations).  dz must not overlap y or t.
 * Same as mse_sigmoid_backward_kernel(..., ACT_KERNEL_AUTO). */
double mse_sigmoid_backward(float *dz, const float *y, const float *t, size_t n, double inv_count);

/* mse_sigmoid_backward with implementation k of its loop (act.h ActKernel,
 * resolved by act_kernel_resolve: portable C or AVX-512F; both give the
 * same bits).  For tests and benchmarks. */
double mse_sigmoid_backward_kernel(float *dz, const float *y, const float *t, size_t n, double inv_count,
                                   ActKernel k);

#endif
