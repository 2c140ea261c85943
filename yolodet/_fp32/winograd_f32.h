/* The transforms of the fp32 Winograd F(4x4, 3x3) convolution (yolodet.inference.winograd), for AVX2 + FMA CPUs.
 * The products between them stay oneDNN's (one grouped 1x1 convolution); these replace the PyTorch passes around
 * it (padding, tile gather, a [36, 36] batched matrix product, the output's [16, 36] product, the crop and the
 * activation), each of which read and wrote the whole layer.
 *
 *   input:  x float [N][H][W][C] (NHWC) -> v float [T][36][C], T = N * ceil(H/4) * ceil(W/4) tiles in (image,
 *           row, column) order; tile (ty, tx) reads the 6x6 patch at rows 4 ty - 1 .., columns 4 tx - 1 .. (zero
 *           outside the image: padding 1) and stores V = B^T d B per channel, position p = 6 i + j.
 *   output: m float [T][36][O] (the products, bias included) -> y float [N][H][W][O]: A^T M A per channel, cropped
 *           to the image, then max(y, slope * y) (leaky; slope 0: relu, 1: none).
 * B and A are F(4, 3)'s with the points 0, 1, -1, 2, -2, inf, as in yolodet/inference/winograd.py. Both return 0;
 * they run on nthreads OpenMP threads, split over tiles.
 */
#ifndef YOLODET_WINOGRAD_F32_H
#define YOLODET_WINOGRAD_F32_H

int winograd_f32_input(const float *x, int N, int H, int W, int C, float *v, int nthreads);
int winograd_f32_output(const float *m, int N, int H, int W, int O, float slope, float *y, int nthreads);

#endif
