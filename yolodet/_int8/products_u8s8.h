/* The uint8 x int8 product block shared by the int8 kernels for AVX2 (no VNNI): winograd_int8.c's F(2x2) products,
 * pointwise_int8.c's 1x1 convolution and direct_int8.c's strided 3x3. vpmaddubsw multiplies uint8 by int8 and sums
 * each pair in 16 bits (saturating: the callers bound the weight codes so it cannot), vpmaddwd by ones sums pairs
 * of pairs into 32 bits. */
#ifndef YOLODET_PRODUCTS_U8S8_H
#define YOLODET_PRODUCTS_U8S8_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "epilogue.h"

#define U8S8_MR 4  /* rows per register block */
#define U8S8_NR 16 /* output channels per packed weight block */
/* The 1x1 and direct kernels run pixel-major while their weights fit this (a core's L2), else output-major. */
#define U8S8_L2_WEIGHTS ((size_t)256 * 1024)

/* acc[r][0..15] = sum over 4-channel groups k of rows[r][4k..4k+3] . w[k][0..15][0..3]. Two groups at a time: the
 * two vpmaddubsw pair sums of groups k and k + 1 are added in 16 bits (vpaddw) before vpmaddwd widens them, one
 * widening per 8 channels instead of per 4. Exact when every quad of a channel's codes that shares a 16-bit lane,
 * channels {8m, 8m+1, 8m+4, 8m+5} and {8m+2, 8m+3, 8m+6, 8m+7}, is at most 128 in magnitude (int8_rounding's
 * kernel_int8_weights): 255 x 128 = 32640 fits. accumulate: add to acc's sums instead of overwriting them (the
 * taps of a direct convolution). */
static inline void products_u8s8(const uint8_t *const rows[U8S8_MR], const int8_t *w, int cq,
                                 int32_t acc[U8S8_MR][U8S8_NR], int accumulate) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00;
    if (accumulate) {
        c00 = _mm256_loadu_si256((const __m256i *)acc[0]);
        c01 = _mm256_loadu_si256((const __m256i *)(acc[0] + 8));
        c10 = _mm256_loadu_si256((const __m256i *)acc[1]);
        c11 = _mm256_loadu_si256((const __m256i *)(acc[1] + 8));
        c20 = _mm256_loadu_si256((const __m256i *)acc[2]);
        c21 = _mm256_loadu_si256((const __m256i *)(acc[2] + 8));
        c30 = _mm256_loadu_si256((const __m256i *)acc[3]);
        c31 = _mm256_loadu_si256((const __m256i *)(acc[3] + 8));
    }
    const uint8_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    int k = 0;
    for (; k + 2 <= cq; k += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k * 64 + 32));
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + k * 64 + 64));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + k * 64 + 96));
        __m256i a, b;
        int32_t s, t;
#define ROW(R, A0, A1)                                                                                              \
    memcpy(&s, R + 4 * k, 4);                                                                                      \
    memcpy(&t, R + 4 * k + 4, 4);                                                                                  \
    a = _mm256_set1_epi32(s);                                                                                      \
    b = _mm256_set1_epi32(t);                                                                                      \
    A0 = _mm256_add_epi32(                                                                                         \
        A0, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a, w0), _mm256_maddubs_epi16(b, v0)), ones)); \
    A1 = _mm256_add_epi32(                                                                                         \
        A1, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a, w1), _mm256_maddubs_epi16(b, v1)), ones));
        ROW(r0, c00, c01)
        ROW(r1, c10, c11)
        ROW(r2, c20, c21)
        ROW(r3, c30, c31)
#undef ROW
    }
    for (; k < cq; k++) { /* an odd last group */
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k * 64 + 32));
        __m256i a;
        int32_t s;
#define ROW(R, A0, A1)                                                                                              \
    memcpy(&s, R + 4 * k, 4);                                                                                      \
    a = _mm256_set1_epi32(s);                                                                                      \
    A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));                               \
    A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));
        ROW(r0, c00, c01)
        ROW(r1, c10, c11)
        ROW(r2, c20, c21)
        ROW(r3, c30, c31)
#undef ROW
    }
    _mm256_storeu_si256((__m256i *)acc[0], c00);
    _mm256_storeu_si256((__m256i *)(acc[0] + 8), c01);
    _mm256_storeu_si256((__m256i *)acc[1], c10);
    _mm256_storeu_si256((__m256i *)(acc[1] + 8), c11);
    _mm256_storeu_si256((__m256i *)acc[2], c20);
    _mm256_storeu_si256((__m256i *)(acc[2] + 8), c21);
    _mm256_storeu_si256((__m256i *)acc[3], c30);
    _mm256_storeu_si256((__m256i *)(acc[3] + 8), c31);
}

/* What the sums of a product block become in the 1x1 and direct kernels (one scale per output channel): output o of
 * O is (acc - corr[o]) * scale[o] + bias[o], then the epilogue e. */
struct u8s8_store {
    int O;
    const int32_t *corr;
    const float *scale, *bias;
    const struct epilogue *e;
};

/* The first np rows of a product block (pixels p0 .. p0 + np - 1, outputs bo * 16 .. + 15) stored as st says, at
 * pixel * O + o. */
static inline void store_products(int32_t acc[U8S8_MR][U8S8_NR], int np, int p0, int bo, const struct u8s8_store *st) {
    const int O = st->O;
    const int32_t *corr = st->corr;
    const float *scale = st->scale, *bias = st->bias;
    const struct epilogue *e = st->e;
    for (int j0 = 0; j0 < U8S8_NR; j0 += 8) {
        const int o = bo * U8S8_NR + j0;
        if (o + 8 <= O) {
            const __m256i c = _mm256_loadu_si256((const __m256i *)(corr + o));
            const __m256 s = _mm256_loadu_ps(scale + o), b = _mm256_loadu_ps(bias + o);
            for (int r = 0; r < np; r++) {
                const __m256i a = _mm256_sub_epi32(_mm256_load_si256((const __m256i *)(acc[r] + j0)), c);
                epilogue8(e, (size_t)(p0 + r) * O + o, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), s), b));
            }
        } else { /* the tail of an O that is not a multiple of 8 */
            for (int r = 0; r < np; r++)
                for (int q = o; q < O; q++)
                    epilogue1(e, (size_t)(p0 + r) * O + q,
                              (float)(acc[r][q - bo * U8S8_NR] - corr[q]) * scale[q] + bias[q]);
        }
    }
}

#endif
