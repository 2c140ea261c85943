/* 1x1 convolution on uint8 codes for AVX2: see pointwise_int8.h.
 *
 * Blocks of 4 pixels x 16 output channels: their int32 products over C (products_u8s8.h), then the dequantisation,
 * bias and the epilogue (epilogue.h: leaky, a fused residual, the float output and/or uint8 codes). Block order:
 * pixel-major while the weights stay in L2 (each thread a range of pixel blocks, every output block); else
 * output-major (the threads split the output blocks; one block's weights, 16 x C bytes, stay in L1 for every
 * pixel).
 */
#include "pointwise_int8.h"
#include "products_u8s8.h"

#include <immintrin.h>
#include <omp.h>

_Static_assert(POINTWISE_NR == U8S8_NR, "one packed weight block is one product block wide");

#define L2_WEIGHTS ((size_t)256 * 1024)

/* Pixels pb * 4 .. + 3 x outputs bo * 16 .. + 15. */
static void block(const uint8_t *x, int P, int C, const int8_t *packed, int O, const int32_t *corr, const float *scale,
                  const float *bias, const struct epilogue *e, int pb, int bo) {
    int32_t acc[U8S8_MR][U8S8_NR] __attribute__((aligned(32)));
    const uint8_t *rows[U8S8_MR];
    const int p0 = pb * U8S8_MR, np = P - p0 < U8S8_MR ? P - p0 : U8S8_MR;
    for (int r = 0; r < U8S8_MR; r++) /* past the last pixel: recompute the last one, never stored */
        rows[r] = x + (size_t)(p0 + (r < np ? r : np - 1)) * C;
    products_u8s8(rows, packed + (size_t)bo * C * U8S8_NR, C / 4, acc, 0);
    for (int j0 = 0; j0 < U8S8_NR; j0 += 8) {
        const int o = bo * U8S8_NR + j0;
        if (o + 8 <= O) {
            const __m256i c = _mm256_loadu_si256((const __m256i *)(corr + o));
            const __m256 s = _mm256_loadu_ps(scale + o), b = _mm256_loadu_ps(bias + o);
            for (int r = 0; r < np; r++) {
                const __m256i a = _mm256_sub_epi32(_mm256_load_si256((const __m256i *)(acc[r] + j0)), c);
                epilogue8(e, (size_t)(p0 + r) * O + o, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), s), b));
            }
        } else {
            for (int r = 0; r < np; r++)
                for (int q = o; q < O; q++) {
                    epilogue1(e, (size_t)(p0 + r) * O + q,
                              (float)(acc[r][q - bo * U8S8_NR] - corr[q]) * scale[q] + bias[q]);
                }
        }
    }
}

void pointwise_int8_conv(const uint8_t *x, int P, int C, const int8_t *packed, int O, const int32_t *corr,
                         const float *scale, const float *bias, const struct epilogue *e, int nthreads) {
    const int blocks = (P + U8S8_MR - 1) / U8S8_MR, ob = (O + U8S8_NR - 1) / U8S8_NR;
    if ((size_t)ob * U8S8_NR * C <= L2_WEIGHTS) {
#pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
        for (int pb = 0; pb < blocks; pb++)
            for (int bo = 0; bo < ob; bo++) block(x, P, C, packed, O, corr, scale, bias, e, pb, bo);
    } else {
#pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
        for (int bo = 0; bo < ob; bo++)
            for (int pb = 0; pb < blocks; pb++) block(x, P, C, packed, O, corr, scale, bias, e, pb, bo);
    }
}
