/*
 * act.h - element-wise activations ReLU and sigmoid, forward and backward,
 * float32, any layout (n contiguous elements).
 *
 * Semantics follow PyTorch: torch.relu (NaN propagates) and torch.sigmoid,
 * with the backward written from the forward OUTPUT y, as PyTorch's
 * threshold_backward / sigmoid_backward do.  In-place use is allowed
 * (y == x, dx == dy); other overlaps are not.
 *
 * Two implementations, bitwise identical (tests/test_act.c checks it):
 * portable C, and AVX-512F (16 floats per step), used when the running CPU
 * has AVX-512F.  ReLU and the backward passes only select or use IEEE
 * float operations in the same order.  Sigmoid's exp is the C library's
 * expf in the portable code; the AVX-512 code evaluates the same algorithm
 * as glibc's x86-64 expf (Arm optimized-routines expf, as in glibc >= 2.28
 * sysdeps/ieee754/flt-32/e_expf.c, its FMA build: the same table,
 * polynomial and fused multiply-adds, in double precision), and calls expf
 * itself for |x| >= 88 and NaN; with glibc 2.36 on x86-64 the two
 * sigmoid_forward paths agree on all 2^32 float inputs (checked once by
 * hand, issue 6; the tests sweep ~1M of them).  With another libm they may
 * differ by an ulp.
 * The plain functions pick automatically; the *_kernel variants let tests
 * and benchmarks choose.
 *
 * Threading: OpenMP over elements, serial below a size threshold (act.c).
 * Not done here: other activations, fused conv+activation.
 */
#ifndef AESIM_ACT_H
#define AESIM_ACT_H

#include <stddef.h>

typedef enum ActKernel {
    ACT_KERNEL_AUTO = 0,   /* AVX-512 if the running CPU has AVX-512F, else scalar */
    ACT_KERNEL_SCALAR = 1, /* portable C */
    ACT_KERNEL_AVX512 = 2  /* AVX-512F (GCC/Clang on x86 only) */
} ActKernel;

/* The implementation the *_kernel functions run for choice k on this CPU and
 * build: ACT_KERNEL_SCALAR or ACT_KERNEL_AVX512 (AUTO resolved; AVX512
 * without AVX-512F falls back to SCALAR).  Pure CPU query, no state. */
ActKernel act_kernel_resolve(ActKernel k);

/* y[i] = max(x[i], 0) for i < n (NaN stays NaN; -0 gives +0). */
void relu_forward(float *y, const float *x, size_t n);

/* dx[i] = dy[i] * (y[i] > 0), y = relu_forward output (overwritten):
 * dy[i] where y[i] > 0, else +0. */
void relu_backward(float *dx, const float *dy, const float *y, size_t n);

/* y[i] = 1 / (1 + exp(-x[i])), numerically stable for large |x|: for x < 0
 * it is computed as e/(1+e) with e = exp(x), so exp never overflows and
 * tiny outputs keep their relative precision.  Like expf, may set errno to
 * ERANGE for x < -103 (subnormal or zero output). */
void sigmoid_forward(float *y, const float *x, size_t n);

/* dx[i] = dy[i] * y[i] * (1 - y[i]), y = sigmoid_forward output (overwritten),
 * computed as (dy[i] * (1 - y[i])) * y[i] in float. */
void sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);

/* The four functions above run with implementation k (resolved by
 * act_kernel_resolve).  For tests and benchmarks. */
void relu_forward_kernel(float *y, const float *x, size_t n, ActKernel k);
void relu_backward_kernel(float *dx, const float *dy, const float *y, size_t n, ActKernel k);
void sigmoid_forward_kernel(float *y, const float *x, size_t n, ActKernel k);
void sigmoid_backward_kernel(float *dx, const float *dy, const float *y, size_t n, ActKernel k);

#endif
