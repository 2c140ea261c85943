/* 1x1 convolution on uint8 codes for AVX2: see pointwise_int8.h.
 *
 * Blocks of 4 pixels x 16 output channels: their int32 products over C (products_u8s8.h), then the dequantisation,
 * bias and the epilogue (epilogue.h: leaky, a fused residual, the float output and/or uint8 codes). Block order:
 * pixel-major while the weights stay in L2 (each thread a range of pixel blocks, every output block); else
 * output-major (the threads split the output blocks; one block's weights, 16 x C bytes, stay in L1 for every
 * pixel).
 */
#include "pointwise_int8.h"
#include "block_order.h"
#include "products_u8s8.h"

#include <immintrin.h>
#include <omp.h>

_Static_assert(POINTWISE_NR == U8S8_NR, "one packed weight block is one product block wide");

struct conv_args {
    const uint8_t *x;
    int P, C;
    const int8_t *packed;
    struct u8s8_store st;
};

/* Pixels pb * 4 .. + 3 x outputs bo * 16 .. + 15. */
static void block(const void *args, int pb, int bo) {
    const struct conv_args *a = args;
    int32_t acc[U8S8_MR][U8S8_NR] __attribute__((aligned(32)));
    const uint8_t *rows[U8S8_MR];
    const int p0 = pb * U8S8_MR, np = a->P - p0 < U8S8_MR ? a->P - p0 : U8S8_MR;
    for (int r = 0; r < U8S8_MR; r++) /* past the last pixel: recompute the last one, never stored */
        rows[r] = a->x + (size_t)(p0 + (r < np ? r : np - 1)) * a->C;
    products_u8s8(rows, a->packed + (size_t)bo * a->C * U8S8_NR, a->C / 4, acc, 0);
    store_products(acc, np, p0, bo, &a->st);
}

void pointwise_int8_conv(const uint8_t *x, int P, int C, const int8_t *packed, int O, const int32_t *corr,
                         const float *scale, const float *bias, const struct epilogue *e, int nthreads) {
    const int blocks = (P + U8S8_MR - 1) / U8S8_MR, ob = (O + U8S8_NR - 1) / U8S8_NR;
    const struct conv_args a = {x, P, C, packed, {O, corr, scale, bias, e}};
#pragma omp parallel num_threads(nthreads)
    run_blocks(block, &a, blocks, ob, (size_t)ob * U8S8_NR * C, 1, U8S8_L2_WEIGHTS,
               (size_t)blocks); /* output-major over all pixel blocks at once (one chunk) */
}
