/*
 * global_avgpool.h - global average pooling, forward and backward, float32,
 * NCHW: each channel plane of H*W values becomes its mean.  PyTorch:
 * x.mean(dim=(2, 3)) (nn.AdaptiveAvgPool2d(1) flattened), as SimCLR pools
 * the encoder's last feature map before its contrastive loss (T. Chen et
 * al., ICML 2020, section 2.1: h = f(x) = ResNet's average-pool output).
 *
 * Used by the trainer's --contrastive-pool avg (train_views.h): NT-Xent on
 * the C channel means of the bottleneck instead of its C*H*W values.
 * Serial (the inputs are a batch of bottlenecks: N*C*HW is small); no
 * allocation, no state, no errors (the caller guarantees the sizes).
 */
#ifndef AESIM_GLOBAL_AVGPOOL_H
#define AESIM_GLOBAL_AVGPOOL_H

/* y[n][c] = (1/HW) sum_s x[n][c][s] for x[N][C][HW] (HW = H*W >= 1),
 * summed in double; y[N][C] is overwritten. */
void global_avgpool_forward(float *y, const float *x, int N, int C, int HW);

/* The backward: dx[n][c][s] = dy[n][c] / HW for every s; dx[N][C][HW] is
 * overwritten, dy[N][C] read. */
void global_avgpool_backward(float *dx, const float *dy, int N, int C, int HW);

#endif
