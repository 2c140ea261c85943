/* 1x1 convolution on uint8 codes for AVX2 CPUs (no VNNI): the int8 fast mode's kernel for pointwise layers, with the
 * activation and the dequantisation fused (oneDNN's int8 convolution in torch 2.14 has no leaky post-op: the fp32
 * pass after it costs a read and a write of every output).
 *
 * What it computes, for one image (exactly: int32 sums, tests/test_pointwise_int8.py):
 *   x      uint8 [P][C] codes (P pixels, C a multiple of 4), zero point z;
 *   W      int8 [O][C] weight codes; the caller bounds every quad of a channel's codes that shares a 16-bit lane
 *          (products_u8s8.h) by 128 in magnitude, so the 16-bit sums cannot overflow;
 *   y      (sum_c x[p][c] W[o][c] - corr[o]) * scale[o] + bias[o], with corr = z * sum_c W[o][c] and scale =
 *          input scale * W's scale (from the caller), then epilogue.h (leaky, a fused residual, the float output
 *          and/or uint8 codes), every array of it [P][O].
 */
#ifndef YOLODET_POINTWISE_INT8_H
#define YOLODET_POINTWISE_INT8_H

#include <stdint.h>

#include "epilogue.h"

#define POINTWISE_NR 16 /* output channels per packed weight block */

/* packed: int8 [ceil(O / 16)][C / 4][16][4]: output block, 4-channel group, output, channel. corr: int32 [O];
 * scale, bias: float [O]; e: what is done with y. Runs on nthreads OpenMP threads. */
void pointwise_int8_conv(const uint8_t *x, int P, int C, const int8_t *packed, int O, const int32_t *corr,
                         const float *scale, const float *bias, const struct epilogue *e, int nthreads);

#endif
