/* Direct 3x3 convolution on uint8 codes for AVX2 CPUs (no VNNI), padding 1, any stride: the int8 fast mode's kernel
 * for the strided 3x3 layers (darknet53's downsampling convolutions), which Winograd does not cover.
 *
 * What it computes, for one image (exactly: int32 sums, tests/test_direct_int8.py):
 *   x      uint8 [H][W][C] codes (C a multiple of 4), zero point z (outside the image the input is 0, i.e.
 *          code z);
 *   W      int8 [9][O][C] weight codes, tap-major (ky, kx); the caller bounds them as products_u8s8.h needs;
 *   y      (sum_{tap, c} x[s oy + ky - 1][s ox + kx - 1][c] W[tap][o][c] - corr[o]) * scale[o] + bias[o], with
 *          corr = z * sum_{tap, c} W[tap][o][c] and scale = input scale * W's scale (from the caller), then
 *          epilogue.h (leaky, a fused residual, the float output and/or uint8 codes), every array of it
 *          [Ho][Wo][O], Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1.
 */
#ifndef YOLODET_DIRECT_INT8_H
#define YOLODET_DIRECT_INT8_H

#include <stdint.h>

#include "epilogue.h"

#define DIRECT_NR 16 /* output channels per packed weight block */

/* packed: int8 [9][ceil(O / 16)][C / 4][16][4]: tap, output block, 4-channel group, output, channel. corr:
 * int32 [O]; scale, bias: float [O]; e: what is done with y. Returns 0, or -1 when out of memory. Runs on nthreads
 * OpenMP threads. */
int direct3x3_int8_conv(const uint8_t *x, int H, int W, int C, int z, int stride, const int8_t *packed, int O,
                        const int32_t *corr, const float *scale, const float *bias, const struct epilogue *e,
                        int nthreads);

#endif
