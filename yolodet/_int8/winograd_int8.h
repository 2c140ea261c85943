/* int8 Winograd F(2x2, 3x3) convolution for AVX2 CPUs (no VNNI): the kernel behind yolodet's int8 fast mode on
 * 3x3 stride-1 convolutions, where oneDNN's direct int8 kernel is no faster than fp32 Winograd.
 *
 * What it computes, for one image (exactly; tests/test_winograd_int8.py holds it to a float64 version):
 *   x      uint8 [H][W][C] codes of the input (zero point z; outside the image the input is 0, i.e. code z);
 *   tiles  each 2x2 output tile reads a 4x4 input patch d; V = B^T d B per channel, in integer codes;
 *   Vq     V re-quantised to 8 bits per tile and position p, over the channels: round(V / 2^s) + 128 with the
 *          least s of 0, 1, 2 whose codes fit (-128..127, or -256..255 for s = 1: 255 saturates), except at
 *          position (1, 1) (a sum of four codes, the same zero point z as the input): round(V / 4); rounding half
 *          to even, saturated to 0..255;
 *   U      int8 [16][O][C] transformed weights (G g G^T quantised per (position, output channel); the caller
 *          bounds the codes as products_u8s8.h needs);
 *   M      M[p][o] = (sum_c Vq[p][c] U[p][o][c] - corr[p][o]) * scale[p][o] * 2^s / 4   (int32 sums, then float);
 *   y      A^T M A + bias, then epilogue.h (leaky, a fused residual, the float output and/or uint8 codes),
 *          every array of it [H][W][O].
 * The caller passes corr = zero point of position p * sum_c U[p][o][c] and scale = 4 * input scale * U's scale.
 */
#ifndef YOLODET_WINOGRAD_INT8_H
#define YOLODET_WINOGRAD_INT8_H

#include <stdint.h>

#include "epilogue.h"

#define WINO_NR 16 /* output channels per packed weight block */

/* packed: int8 [16][ceil(O / 16)][ceil(C / 4)][16][4]: position, output block, 4-channel group, output, channel.
 * corr: int32 [16][O]; scale: float [16][O]; bias: float [O]; e: what is done with y. Returns 0, or -1 when out of
 * memory. Runs on nthreads OpenMP threads. */
int winograd_int8_conv(const uint8_t *x, int H, int W, int C, int z, const int8_t *packed, int O,
                       const int32_t *corr, const float *scale, const float *bias, const struct epilogue *e,
                       int nthreads);

#endif
