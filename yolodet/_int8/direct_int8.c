/* Direct 3x3 convolution on uint8 codes for AVX2: see direct_int8.h.
 *
 * Blocks of 4 output pixels x 16 output channels: for each of the 9 taps, the int32 products over C of the 4 input
 * pixels under that tap (products_u8s8.h, accumulated), then the dequantisation, bias and the epilogue. A tap that
 * falls outside the image reads a row of the zero point's code, so every tap sums C products and the zero-point
 * correction is one constant per output channel. Block order: pixel-major while the weights stay in L2 (each
 * thread a range of pixel blocks, every output block); else output-major (the threads split the output blocks; one
 * block's weights, 9 x 16 x C bytes, stay in L2 for every pixel; block_order.h with one chunk).
 */
#include "direct_int8.h"
#include "block_order.h"
#include "products_u8s8.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(DIRECT_NR == U8S8_NR, "one packed weight block is one product block wide");

struct conv_args {
    const uint8_t *x, *pad; /* pad: C bytes of the zero point's code */
    int H, W, C, cq, stride, Ho, Wo, ob;
    const int8_t *packed;
    struct u8s8_store st;
};

/* Output pixels pb * 4 .. + 3 x outputs bo * 16 .. + 15. */
static void block(const void *args, int pb, int bo) {
    const struct conv_args *a = args;
    int32_t acc[U8S8_MR][U8S8_NR] __attribute__((aligned(32)));
    const uint8_t *rows[U8S8_MR];
    const int P = a->Ho * a->Wo, p0 = pb * U8S8_MR, np = P - p0 < U8S8_MR ? P - p0 : U8S8_MR;
    int oy[U8S8_MR], ox[U8S8_MR];
    for (int r = 0; r < U8S8_MR; r++) { /* past the last pixel: recompute the last one, never stored */
        const int p = p0 + (r < np ? r : np - 1);
        oy[r] = p / a->Wo;
        ox[r] = p % a->Wo;
    }
    const size_t tap_bytes = (size_t)a->ob * a->cq * U8S8_NR * 4;
    for (int t = 0; t < 9; t++) {
        const int ky = t / 3, kx = t % 3;
        for (int r = 0; r < U8S8_MR; r++) {
            const int y = a->stride * oy[r] + ky - 1, xx = a->stride * ox[r] + kx - 1;
            rows[r] = y >= 0 && y < a->H && xx >= 0 && xx < a->W ? a->x + ((size_t)y * a->W + xx) * a->C : a->pad;
        }
        products_u8s8(rows, a->packed + t * tap_bytes + (size_t)bo * a->cq * U8S8_NR * 4, a->cq, acc, t > 0);
    }
    store_products(acc, np, p0, bo, &a->st);
}

int direct3x3_int8_conv(const uint8_t *x, int H, int W, int C, int z, int stride, const int8_t *packed, int O,
                        const int32_t *corr, const float *scale, const float *bias, const struct epilogue *e,
                        int nthreads) {
    const int cq = C / 4, ob = (O + U8S8_NR - 1) / U8S8_NR;
    const int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    uint8_t *pad = malloc((size_t)C);
    if (pad == NULL) return -1;
    memset(pad, z, (size_t)C);
    const struct conv_args a = {x, pad, H, W, C, cq, stride, Ho, Wo, ob, packed, {O, corr, scale, bias, e}};
    const int blocks = (Ho * Wo + U8S8_MR - 1) / U8S8_MR;
#pragma omp parallel num_threads(nthreads)
    run_blocks(block, &a, blocks, ob, (size_t)9 * ob * U8S8_NR * cq * 4, 1, U8S8_L2_WEIGHTS,
               (size_t)blocks); /* output-major over all pixel blocks at once (one chunk) */
    free(pad);
    return 0;
}
