/*
 * act.h - element-wise activations ReLU and sigmoid, forward and backward,
 * float32, any layout (n contiguous elements).
 *
 * Semantics follow PyTorch: torch.relu (NaN propagates) and torch.sigmoid,
 * with the backward written from the forward OUTPUT y, as PyTorch's
 * threshold_backward / sigmoid_backward do.  In-place use is allowed
 * (y == x, dx == dy); other overlaps are not.
 *
 * Threading: OpenMP over elements, serial below a size threshold (act.c).
 * Not done here: other activations, fused conv+activation.
 */
#ifndef AESIM_ACT_H
#define AESIM_ACT_H

#include <stddef.h>

/* y[i] = max(x[i], 0) for i < n (NaN stays NaN). */
void relu_forward(float *y, const float *x, size_t n);

/* dx[i] = dy[i] * (y[i] > 0), y = relu_forward output (overwritten). */
void relu_backward(float *dx, const float *dy, const float *y, size_t n);

/* y[i] = 1 / (1 + exp(-x[i])), numerically stable for large |x|: for x < 0
 * it is computed as e/(1+e) with e = exp(x), so exp never overflows and
 * tiny outputs keep their relative precision. */
void sigmoid_forward(float *y, const float *x, size_t n);

/* dx[i] = dy[i] * y[i] * (1 - y[i]), y = sigmoid_forward output (overwritten). */
void sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);

#endif
