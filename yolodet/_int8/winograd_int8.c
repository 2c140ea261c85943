/* int8 Winograd F(2x2, 3x3) for AVX2: see winograd_int8.h for what it computes.
 *
 * Two passes, each split over OpenMP threads:
 *   1. input transform: every 2x2 output tile's 4x4 patch -> 16 x C int16 V (16 channels per AVX2 register; up to
 *      4 * 255 fits) in a per-thread scratch, the shift each position needs, then the uint8 codes Vq, stored
 *      [tile][position][C4] (C4 = C rounded up to 4);
 *   2. products and output transform, per block of MR tiles x 16 output channels: for each of the 16 positions an
 *      MR x 16 int32 product over C by vpmaddubsw (uint8 x int8, four products summed in 16 bits: exact, the
 *      caller bounds the weights) + vpmaddwd (into 32 bits; products_u8s8.h), then A^T M A, bias and leaky on those
 *      16 sums while they are still in L1, then the epilogue (epilogue.h: a fused residual, the float output and/or
 *      the next layer's uint8 codes). Block order: see winograd_int8_conv.
 */
#include "winograd_int8.h"
#include "block_order.h"
#include "epilogue.h"
#include "products_u8s8.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MR U8S8_MR /* tiles per register block */
_Static_assert(WINO_NR == U8S8_NR, "one packed weight block is one product block wide");

#define L2_BUDGET ((size_t)512 * 1024) /* bytes of weights or transformed input kept in a core's L2 (1 MB on Zen 4) */

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* 16 channels of the 16 patch values (int16) -> V = B^T d B (int16, at most 4 * 255 in magnitude) stored at
 * s[p * c4]; mag[p] ORs in each value's magnitude bits (v ^ (v >> 15): v for v >= 0, -v - 1 below). */
static inline void transform16(const __m256i d[16], int16_t *s, int c4, __m256i mag[16]) {
    __m256i t[16];
    for (int j = 0; j < 4; j++) { /* B^T d: rows */
        t[0 * 4 + j] = _mm256_sub_epi16(d[0 * 4 + j], d[2 * 4 + j]);
        t[1 * 4 + j] = _mm256_add_epi16(d[1 * 4 + j], d[2 * 4 + j]);
        t[2 * 4 + j] = _mm256_sub_epi16(d[2 * 4 + j], d[1 * 4 + j]);
        t[3 * 4 + j] = _mm256_sub_epi16(d[1 * 4 + j], d[3 * 4 + j]);
    }
    for (int i = 0; i < 4; i++) { /* (B^T d) B: columns */
        __m256i r[4];
        r[0] = _mm256_sub_epi16(t[i * 4 + 0], t[i * 4 + 2]);
        r[1] = _mm256_add_epi16(t[i * 4 + 1], t[i * 4 + 2]);
        r[2] = _mm256_sub_epi16(t[i * 4 + 2], t[i * 4 + 1]);
        r[3] = _mm256_sub_epi16(t[i * 4 + 1], t[i * 4 + 3]);
        for (int j = 0; j < 4; j++) {
            const int p = i * 4 + j;
            _mm256_storeu_si256((__m256i *)(s + (size_t)p * c4), r[j]);
            mag[p] = _mm256_or_si256(mag[p], _mm256_xor_si256(r[j], _mm256_srai_epi16(r[j], 15)));
        }
    }
}

/* The same for one channel (channels past the last multiple of 16). */
static inline void transform1(const int d[16], int16_t *s, int c4, int mag[16]) {
    int t[16];
    for (int j = 0; j < 4; j++) {
        t[0 * 4 + j] = d[0 * 4 + j] - d[2 * 4 + j];
        t[1 * 4 + j] = d[1 * 4 + j] + d[2 * 4 + j];
        t[2 * 4 + j] = d[2 * 4 + j] - d[1 * 4 + j];
        t[3 * 4 + j] = d[1 * 4 + j] - d[3 * 4 + j];
    }
    for (int i = 0; i < 4; i++) {
        int r[4] = {t[i * 4 + 0] - t[i * 4 + 2], t[i * 4 + 1] + t[i * 4 + 2], t[i * 4 + 2] - t[i * 4 + 1],
                    t[i * 4 + 1] - t[i * 4 + 3]};
        for (int j = 0; j < 4; j++) {
            const int p = i * 4 + j;
            s[(size_t)p * c4] = (int16_t)r[j];
            mag[p] |= r[j] < 0 ? -r[j] - 1 : r[j];
        }
    }
}

/* round(v / 2^sh) half to even (unbiased), branch-free: (v + bias + ((v >> sh) & odd)) >> sh with bias =
 * 2^(sh-1) - 1 and odd = 1 for sh > 0, both 0 for sh = 0. */
static inline __m256i round_shift16(__m256i v, __m128i sh, __m256i bias, __m256i odd) {
    const __m256i q = _mm256_add_epi16(_mm256_add_epi16(v, bias), _mm256_and_si256(_mm256_sra_epi16(v, sh), odd));
    return _mm256_sra_epi16(q, sh);
}

/* Tile (ty, tx) of x -> v [16][c4] uint8 codes and fac[16] = 2^shift / 4 per position (scratch: int16 [16][c4]). */
static void input_tile(const uint8_t *x, int H, int W, int C, int z, int ty, int tx, uint8_t *v, int c4,
                       int16_t *scratch, float *fac) {
    const uint8_t *px[16];
    int inside[16];
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            int y = 2 * ty - 1 + i, xx = 2 * tx - 1 + j;
            inside[i * 4 + j] = y >= 0 && y < H && xx >= 0 && xx < W;
            px[i * 4 + j] = inside[i * 4 + j] ? x + ((size_t)y * W + xx) * C : NULL;
        }
    }
    const __m256i zz = _mm256_set1_epi16((short)z);
    __m256i vmag[16];
    int mag[16];
    for (int p = 0; p < 16; p++) {
        vmag[p] = _mm256_setzero_si256();
        mag[p] = 0;
    }
    int c = 0;
    for (; c + 16 <= C; c += 16) { /* pass 1: V in int16 and the magnitude bits of each position */
        __m256i d[16];
        for (int k = 0; k < 16; k++)
            d[k] = inside[k] ? _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(px[k] + c))) : zz;
        transform16(d, scratch + c, c4, vmag);
    }
    const int c16 = c;
    for (; c < C; c++) {
        int d[16];
        for (int k = 0; k < 16; k++) d[k] = inside[k] ? px[k][c] : z;
        transform1(d, scratch + c, c4, mag);
    }
    /* The least shift whose codes fit: 0 where every V is in -128..127, 1 in -256..255 (255 saturates to 127.5
     * -> 127), else 2; (1, 1), a sum of four codes, always 2. Branch-free: the shifts vary from tile to tile. */
    int sh[16];
    const __m256i max0 = _mm256_set1_epi16(127), max1 = _mm256_set1_epi16(255);
    for (int p = 0; p < 16; p++) {
        const int over0 = (mag[p] > 127) | (_mm256_movemask_epi8(_mm256_cmpgt_epi16(vmag[p], max0)) != 0);
        const int over1 = (mag[p] > 255) | (_mm256_movemask_epi8(_mm256_cmpgt_epi16(vmag[p], max1)) != 0);
        sh[p] = over0 + over1;
    }
    sh[5] = 2;
    static const float factor[3] = {0.25f, 0.5f, 1.0f};
    for (int p = 0; p < 16; p++) fac[p] = factor[sh[p]];
    for (int p = 0; p < 16; p++) { /* pass 2: round(V / 2^shift) (+ 128) onto 0..255 */
        const int16_t *sp = scratch + (size_t)p * c4;
        uint8_t *vp = v + (size_t)p * c4;
        const int off = p == 5 ? 0 : 128, b = sh[p] ? (1 << (sh[p] - 1)) - 1 : 0;
        const __m128i n = _mm_cvtsi32_si128(sh[p]);
        const __m256i o = _mm256_set1_epi16((short)off), bias = _mm256_set1_epi16((short)b),
                      odd = _mm256_set1_epi16((short)(sh[p] != 0));
        for (c = 0; c < c16; c += 16) {
            const __m256i q = _mm256_add_epi16(
                round_shift16(_mm256_loadu_si256((const __m256i *)(sp + c)), n, bias, odd), o);
            _mm_storeu_si128((__m128i *)(vp + c),
                             _mm_packus_epi16(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
        }
        for (; c < C; c++) {
            const int q = ((sp[c] + b + ((sp[c] >> sh[p]) & (sh[p] != 0))) >> sh[p]) + off;
            vp[c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
        }
        if (c4 > C) memset(vp + C, 0, (size_t)(c4 - C)); /* padding channels (zero weights): keep them defined */
    }
}

/* 8 output channels of one tile: 16 int32 sums -> up to 2x2 outputs, through the epilogue. */
static inline void output8(int32_t acc[16][MR][WINO_NR], int r, int j0, const int32_t *corr, const float *scale,
                           const float *fac, int O, int o, __m256 b, const struct epilogue *e, int W, int oy,
                           int ox, int ny, int nx) {
    __m256 m[16];
    for (int p = 0; p < 16; p++) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(acc[p][r] + j0));
        a = _mm256_sub_epi32(a, _mm256_loadu_si256((const __m256i *)(corr + (size_t)p * O + o)));
        m[p] = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(scale + (size_t)p * O + o)),
                             _mm256_set1_ps(fac[p]));
    }
    __m256 s[8]; /* M A: s[i][0], s[i][1] */
    for (int i = 0; i < 4; i++) {
        s[i * 2 + 0] = _mm256_add_ps(_mm256_add_ps(m[i * 4 + 0], m[i * 4 + 1]), m[i * 4 + 2]);
        s[i * 2 + 1] = _mm256_sub_ps(_mm256_sub_ps(m[i * 4 + 1], m[i * 4 + 2]), m[i * 4 + 3]);
    }
    for (int i = 0; i < ny; i++) {
        for (int j = 0; j < nx; j++) {
            const __m256 y = i == 0 ? _mm256_add_ps(_mm256_add_ps(s[0 + j], s[2 + j]), s[4 + j])
                                    : _mm256_sub_ps(_mm256_sub_ps(s[2 + j], s[4 + j]), s[6 + j]);
            epilogue8(e, ((size_t)(oy + i) * W + ox + j) * O + o, _mm256_add_ps(y, b));
        }
    }
}

/* The same for fewer than 8 channels (the last block of an O that is not a multiple of 8). */
static void output_tail(int32_t acc[16][MR][WINO_NR], int r, int j0, int n, const int32_t *corr, const float *scale,
                        const float *fac, int O, int o, const float *bias, const struct epilogue *e, int W,
                        int oy, int ox, int ny, int nx) {
    for (int q = 0; q < n; q++) {
        float m[16], s[8];
        for (int p = 0; p < 16; p++)
            m[p] = (float)(acc[p][r][j0 + q] - corr[(size_t)p * O + o + q]) * scale[(size_t)p * O + o + q] * fac[p];
        for (int i = 0; i < 4; i++) {
            s[i * 2 + 0] = (m[i * 4 + 0] + m[i * 4 + 1]) + m[i * 4 + 2];
            s[i * 2 + 1] = (m[i * 4 + 1] - m[i * 4 + 2]) - m[i * 4 + 3];
        }
        for (int i = 0; i < ny; i++) {
            for (int j = 0; j < nx; j++) {
                const float y = i == 0 ? (s[0 + j] + s[2 + j]) + s[4 + j] : (s[2 + j] - s[4 + j]) - s[6 + j];
                epilogue1(e, ((size_t)(oy + i) * W + ox + j) * O + o + q, y + bias[o + q]);
            }
        }
    }
}

/* Everything one call shares: sizes, buffers, the caller's arrays. */
struct conv_args {
    int H, W, O, T, tw, cq, c4, ob;
    size_t tile_bytes;
    const uint8_t *v;
    const float *fac;
    const int8_t *packed;
    const int32_t *corr;
    const float *scale, *bias;
    const struct epilogue *e;
};

/* Tile block tb (MR tiles) x output block bo (16 channels): the 16 products over C, then the output transform. */
static void block(const void *args, int tb, int bo) {
    const struct conv_args *a = args;
    int32_t acc[16][MR][WINO_NR] __attribute__((aligned(32)));
    const uint8_t *rows[MR];
    const int t0 = tb * MR, nt = a->T - t0 < MR ? a->T - t0 : MR;
    for (int p = 0; p < 16; p++) {
        for (int r = 0; r < MR; r++) /* past the last tile: recompute the last one, never stored */
            rows[r] = a->v + (size_t)(t0 + (r < nt ? r : nt - 1)) * a->tile_bytes + (size_t)p * a->c4;
        products_u8s8(rows, a->packed + ((size_t)p * a->ob + bo) * a->cq * WINO_NR * 4, a->cq, acc[p], 0);
    }
    for (int r = 0; r < nt; r++) {
        const int t = t0 + r, oy = 2 * (t / a->tw), ox = 2 * (t % a->tw);
        const int ny = a->H - oy < 2 ? a->H - oy : 2, nx = a->W - ox < 2 ? a->W - ox : 2;
        const float *f = a->fac + (size_t)t * 16;
        for (int j0 = 0; j0 < WINO_NR; j0 += 8) {
            const int o = bo * WINO_NR + j0;
            if (o + 8 <= a->O)
                output8(acc, r, j0, a->corr, a->scale, f, a->O, o, _mm256_loadu_ps(a->bias + o), a->e, a->W, oy,
                        ox, ny, nx);
            else if (o < a->O)
                output_tail(acc, r, j0, a->O - o, a->corr, a->scale, f, a->O, o, a->bias, a->e, a->W, oy, ox, ny,
                            nx);
        }
    }
}

int winograd_int8_conv(const uint8_t *x, int H, int W, int C, int z, const int8_t *packed, int O,
                       const int32_t *corr, const float *scale, const float *bias, const struct epilogue *e,
                       int nthreads) {
    const int th = ceil_div(H, 2), tw = ceil_div(W, 2), T = th * tw;
    const int cq = ceil_div(C, 4), c4 = cq * 4, ob = ceil_div(O, WINO_NR);
    const size_t tile_bytes = (size_t)16 * c4;
    uint8_t *v = aligned_alloc(64, ((size_t)T * tile_bytes + 63) / 64 * 64);
    float *fac = malloc((size_t)T * 16 * sizeof(float));
    int16_t *scratch = malloc((size_t)nthreads * 16 * c4 * sizeof(int16_t));
    if (v == NULL || fac == NULL || scratch == NULL) {
        free(v);
        free(fac);
        free(scratch);
        return -1;
    }

#pragma omp parallel num_threads(nthreads)
    {
        int16_t *mine = scratch + (size_t)omp_get_thread_num() * 16 * c4;
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++)
            input_tile(x, H, W, C, z, t / tw, t % tw, v + (size_t)t * tile_bytes, c4, mine, fac + (size_t)t * 16);
    }

    const struct conv_args k = {H, W, O, T, tw, cq, c4, ob, tile_bytes, v, fac, packed, corr, scale, bias, e};
    const size_t weight_bytes = (size_t)16 * ob * cq * WINO_NR * 4;
#pragma omp parallel num_threads(nthreads)
    run_blocks(block, &k, ceil_div(T, MR), ob, weight_bytes, (size_t)MR * tile_bytes, L2_BUDGET, L2_BUDGET);
    free(v);
    free(fac);
    free(scratch);
    return 0;
}
