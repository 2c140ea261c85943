/* Winograd F(4x4, 3x3) on uint8 input codes with 16-bit transformed operands, for AVX2 CPUs (no VNNI): the int8
 * fast mode's kernel for 3x3 stride-1 convolutions on maps of 26x26 and more (winograd_int8.h: F(2x2, 3x3) in 8
 * bits, for the others).
 *
 * Why 16 bits: vpmaddwd multiplies 16 int16 pairs per instruction, as many products per multiply instruction as
 * the 8-bit vpmaddubsw + vpmaddwd pair, and F(4x4) needs 36 products per 4x4 output tile where F(2x2) needs 16 per
 * 2x2 (1.78x fewer). Its transforms (entries up to 5 and 8) need the extra bits, which 16-bit operands have.
 *
 * What it computes, for one image (exactly; tests/test_winograd_int8.py holds it to a float64 version):
 *   x      uint8 [H][W][C] codes of the input, zero point z; d = x - z (0 outside the image, i.e. padding);
 *   tiles  each 4x4 output tile reads a 6x6 input patch d; V = B^T d B per channel (integers, |V| <= 100 * 255);
 *   V'     round(V / 2^s) per tile and position p over the channels, half to even, with the least s of 0..3 that
 *          brings every |V| / 2^s to at most WINO4_VMAX - 1/2 (so |V'| <= WINO4_VMAX);
 *   U      int16 [36][O][C] transformed weights (G g G^T quantised per (position, output channel); the caller keeps
 *          sum_c |U[p][o][c]| <= 2^31 / WINO4_VMAX - 1 so the int32 sums below are exact for every input);
 *   M      M[p][o] = (sum_c V'[p][c] U[p][o][c]) * scale[p][o] * 2^s   (int32 sums, then float);
 *   y      A^T M A + bias, then epilogue.h (leaky, a fused residual, the float output and/or uint8 codes),
 *          every array of it [H][W][O].
 * The caller passes scale = input scale * U's scale.
 */
#ifndef YOLODET_WINOGRAD_F4_H
#define YOLODET_WINOGRAD_F4_H

#include <stdint.h>

#include "epilogue.h"

#define WINO4_NR 16     /* output channels per packed weight block */
#define WINO4_VMAX 4096 /* bound of |V'| */

/* packed: int16 [36][ceil(O / 16)][ceil(C / 2)][16][2]: position, output block, channel pair, output, channel.
 * scale: float [36][O]; bias: float [O]; e: what is done with y. Returns 0, or -1 when out of memory. Runs on
 * nthreads OpenMP threads. */
int winograd_f4_conv(const uint8_t *x, int H, int W, int C, int z, const int16_t *packed, int O, const float *scale,
                     const float *bias, const struct epilogue *e, int nthreads);

#endif
