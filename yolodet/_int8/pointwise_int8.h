/* 1x1 convolution on uint8 codes for AVX2 CPUs (no VNNI): the int8 fast mode's kernel for pointwise layers, with the
 * activation and the dequantisation fused (oneDNN's int8 convolution in torch 2.14 has no leaky post-op: the fp32
 * pass after it costs a read and a write of every output).
 *
 * What it computes, for one image (exactly: int32 sums, tests/test_pointwise_int8.py):
 *   x      uint8 [P][C] codes (P pixels, C a multiple of 4), zero point z;
 *   W      int8 [O][C] weight codes; the caller bounds every pair of a channel's codes (|w1| + |w2| <= 128) so the
 *          16-bit pair sums of vpmaddubsw cannot saturate;
 *   y      (sum_c x[p][c] W[o][c] - corr[o]) * scale[o] + bias[o], then max(y, slope * y) (leaky; slope 1: none),
 *          float [P][O], with corr = z * sum_c W[o][c] and scale = input scale * W's scale (from the caller).
 */
#ifndef YOLODET_POINTWISE_INT8_H
#define YOLODET_POINTWISE_INT8_H

#include <stdint.h>

#define POINTWISE_NR 16 /* output channels per packed weight block */

/* packed: int8 [ceil(O / 16)][C / 4][16][4]: output block, 4-channel group, output, channel. corr: int32 [O];
 * scale, bias: float [O]; out: float [P][O]. Runs on nthreads OpenMP threads. */
void pointwise_int8_conv(const uint8_t *x, int P, int C, const int8_t *packed, int O, const int32_t *corr,
                         const float *scale, const float *bias, float slope, float *out, int nthreads);

#endif
