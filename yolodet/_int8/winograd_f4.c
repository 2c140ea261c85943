/* Winograd F(4x4, 3x3) on uint8 codes with 16-bit transformed operands, for AVX2: see winograd_f4.h.
 *
 * Two passes, each split over OpenMP threads:
 *   1. input transform: every 4x4 output tile's 6x6 patch -> 36 x C int16 V (16 channels per AVX2 register),
 *      written in place as V' (shifted where a position needs it), stored [tile][position][C2] (C2 = C rounded up
 *      to 2), and each position's factor 2^s;
 *   2. products and output transform, per block of MR tiles x 16 output channels: for each of the 36 positions an
 *      MR x 16 int32 product over C by vpmaddwd (pairs of channels summed into 32 bits), then A^T M A, bias and
 *      leaky on those 36 sums while they are still in L1, then the epilogue (epilogue.h). The block order
 *      is block_order.h's (weights in L2, or L2-sized chunks of tiles).
 */
#include "winograd_f4.h"
#include "block_order.h"
#include "epilogue.h"
#include "winograd_f43_output.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MR 6 /* tiles per register block: 12 accumulators, 2 weight vectors and a broadcast fill the 16 registers */
#define W_BUDGET ((size_t)512 * 1024) /* weights up to this size stay in a core's L2 */
#define V_BUDGET ((size_t)1024 * 1024) /* else: tiles in chunks of this much V', the weights read once a chunk */

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* t = B^T d on six 16-channel vectors (F(4, 3) with the points 0, 1, -1, 2, -2, inf):
 *   4 d0 - 5 d2 + d4, -4 d1 - 4 d2 + d3 + d4, 4 d1 - 4 d2 - d3 + d4, -2 d1 - d2 + 2 d3 + d4, 2 d1 - d2 - 2 d3 + d4,
 *   4 d1 - 5 d3 + d5. Every partial sum stays within the final bound (10 x the inputs' bound): exact in int16. */
static inline void bt6(const __m256i d[6], __m256i t[6]) {
    const __m256i a = _mm256_sub_epi16(d[4], _mm256_slli_epi16(d[2], 2));
    const __m256i b = _mm256_sub_epi16(d[3], _mm256_slli_epi16(d[1], 2));
    const __m256i e = _mm256_sub_epi16(d[4], d[2]);
    const __m256i f = _mm256_slli_epi16(_mm256_sub_epi16(d[3], d[1]), 1);
    t[0] = _mm256_add_epi16(_mm256_slli_epi16(_mm256_sub_epi16(d[0], d[2]), 2), e);
    t[1] = _mm256_add_epi16(a, b);
    t[2] = _mm256_sub_epi16(a, b);
    t[3] = _mm256_add_epi16(e, f);
    t[4] = _mm256_sub_epi16(e, f);
    t[5] = _mm256_add_epi16(_mm256_slli_epi16(_mm256_sub_epi16(d[1], d[3]), 2), _mm256_sub_epi16(d[5], d[3]));
}

static inline void bt6_scalar(const int d[6], int t[6]) {
    t[0] = 4 * d[0] - 5 * d[2] + d[4];
    t[1] = -4 * d[1] - 4 * d[2] + d[3] + d[4];
    t[2] = 4 * d[1] - 4 * d[2] - d[3] + d[4];
    t[3] = -2 * d[1] - d[2] + 2 * d[3] + d[4];
    t[4] = 2 * d[1] - d[2] - 2 * d[3] + d[4];
    t[5] = 4 * d[1] - 5 * d[3] + d[5];
}

/* round(v / 2^sh) half to even, branch-free (winograd_int8.c's round_shift16). */
static inline __m256i round_shift16(__m256i v, __m128i sh, __m256i bias, __m256i odd) {
    const __m256i q = _mm256_add_epi16(_mm256_add_epi16(v, bias), _mm256_and_si256(_mm256_sra_epi16(v, sh), odd));
    return _mm256_sra_epi16(q, sh);
}

/* Tile (ty, tx) of x -> v [36][c2] int16 V' and fac[36] = 2^s per position. */
static void input_tile(const uint8_t *x, int H, int W, int C, int z, int ty, int tx, int16_t *v, int c2,
                       float *fac) {
    const uint8_t *px[36];
    int inside[36];
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j < 6; j++) {
            const int y = 4 * ty - 1 + i, xx = 4 * tx - 1 + j;
            inside[i * 6 + j] = y >= 0 && y < H && xx >= 0 && xx < W;
            px[i * 6 + j] = inside[i * 6 + j] ? x + ((size_t)y * W + xx) * C : NULL;
        }
    }
    const __m256i zz = _mm256_set1_epi16((short)z), zero = _mm256_setzero_si256();
    __m256i vmag[36];
    int mag[36];
    for (int p = 0; p < 36; p++) {
        vmag[p] = zero;
        mag[p] = 0;
    }
    int c = 0;
    for (; c + 16 <= C; c += 16) { /* V = B^T d B in int16, and the magnitude bits of each position */
        __m256i t[36];
        for (int j = 0; j < 6; j++) { /* columns: t[.][j] = B^T d[.][j] */
            __m256i d[6], r[6];
            for (int i = 0; i < 6; i++) {
                const int k = i * 6 + j;
                d[i] = inside[k] ? _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(px[k] + c))),
                                                    zz)
                                 : zero;
            }
            bt6(d, r);
            for (int i = 0; i < 6; i++) t[i * 6 + j] = r[i];
        }
        for (int i = 0; i < 6; i++) { /* rows: V[i][.] = t[i][.] B */
            __m256i r[6];
            bt6(t + i * 6, r);
            for (int j = 0; j < 6; j++) {
                const int p = i * 6 + j;
                _mm256_storeu_si256((__m256i *)(v + (size_t)p * c2 + c), r[j]);
                vmag[p] = _mm256_or_si256(vmag[p], _mm256_xor_si256(r[j], _mm256_srai_epi16(r[j], 15)));
            }
        }
    }
    const int c16 = c;
    for (; c < C; c++) { /* channels past the last multiple of 16 */
        int d[36], t[36], col[6], r[6];
        for (int k = 0; k < 36; k++) d[k] = inside[k] ? px[k][c] - z : 0;
        for (int j = 0; j < 6; j++) {
            for (int i = 0; i < 6; i++) col[i] = d[i * 6 + j];
            bt6_scalar(col, r);
            for (int i = 0; i < 6; i++) t[i * 6 + j] = r[i];
        }
        for (int i = 0; i < 6; i++) {
            bt6_scalar(t + i * 6, r);
            for (int j = 0; j < 6; j++) {
                v[(size_t)(i * 6 + j) * c2 + c] = (int16_t)r[j];
                mag[i * 6 + j] |= r[j] < 0 ? -r[j] - 1 : r[j];
            }
        }
    }
    if (c2 > C)
        for (int p = 0; p < 36; p++) v[(size_t)p * c2 + C] = 0; /* the padding channel (zero weights) */
    /* The least shift that brings every |V| to at most 4095 * 2^s (+ 1 for negative V): |V'| <= 4096. The OR of
     * the magnitudes is at most 2^k - 1 exactly when every magnitude is. */
    const __m256i lim0 = _mm256_set1_epi16(4095), lim1 = _mm256_set1_epi16(8191), lim2 = _mm256_set1_epi16(16383);
    for (int p = 0; p < 36; p++) {
        const int sh = ((mag[p] > 4095) | (_mm256_movemask_epi8(_mm256_cmpgt_epi16(vmag[p], lim0)) != 0)) +
                       ((mag[p] > 8191) | (_mm256_movemask_epi8(_mm256_cmpgt_epi16(vmag[p], lim1)) != 0)) +
                       ((mag[p] > 16383) | (_mm256_movemask_epi8(_mm256_cmpgt_epi16(vmag[p], lim2)) != 0));
        fac[p] = (float)(1 << sh);
        if (sh == 0) continue;
        int16_t *vp = v + (size_t)p * c2;
        const int b = (1 << (sh - 1)) - 1;
        const __m128i n = _mm_cvtsi32_si128(sh);
        const __m256i bias = _mm256_set1_epi16((short)b), odd = _mm256_set1_epi16(1);
        for (c = 0; c < c16; c += 16)
            _mm256_storeu_si256((__m256i *)(vp + c),
                                round_shift16(_mm256_loadu_si256((const __m256i *)(vp + c)), n, bias, odd));
        for (; c < C; c++) vp[c] = (int16_t)((vp[c] + b + ((vp[c] >> sh) & 1)) >> sh);
    }
}

/* acc[r][0..15] = sum over channel pairs k of rows[r][2k..2k+1] . w[k][0..15][0..1]. */
static inline void products(const int16_t *const rows[MR], const int16_t *w, int cp, int32_t acc[MR][WINO4_NR]) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const int16_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4], *r5 = rows[5];
    for (int k = 0; k < cp; k++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k * 32));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k * 32 + 16));
        __m256i a;
        int32_t s;
#define ROW(R, A0, A1)                                                                                              \
    memcpy(&s, R + 2 * k, 4);                                                                                      \
    a = _mm256_set1_epi32(s);                                                                                      \
    A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(a, w0));                                                           \
    A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(a, w1));
        ROW(r0, c00, c01)
        ROW(r1, c10, c11)
        ROW(r2, c20, c21)
        ROW(r3, c30, c31)
        ROW(r4, c40, c41)
        ROW(r5, c50, c51)
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
    _mm256_storeu_si256((__m256i *)acc[4], c40);
    _mm256_storeu_si256((__m256i *)(acc[4] + 8), c41);
    _mm256_storeu_si256((__m256i *)acc[5], c50);
    _mm256_storeu_si256((__m256i *)(acc[5] + 8), c51);
}

/* 8 output channels of one tile: 36 int32 sums -> up to 4x4 outputs, through the epilogue. */
static inline void output8(int32_t acc[36][MR][WINO4_NR], int r, int j0, const float *scale, const float *fac, int O,
                           int o, __m256 b, const struct epilogue *e, int W, int oy, int ox, int ny, int nx) {
    __m256 t[4][6]; /* A^T M: t[i][j] */
    for (int j = 0; j < 6; j++) {
        __m256 m[6], q[4];
        for (int k = 0; k < 6; k++) {
            const int p = k * 6 + j;
            const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc[p][r] + j0)));
            m[k] = _mm256_mul_ps(_mm256_mul_ps(a, _mm256_loadu_ps(scale + (size_t)p * O + o)),
                                 _mm256_set1_ps(fac[p]));
        }
        at6(m, q);
        for (int i = 0; i < 4; i++) t[i][j] = q[i];
    }
    for (int i = 0; i < ny; i++) {
        __m256 y[4];
        at6(t[i], y);
        for (int j = 0; j < nx; j++) epilogue8(e, ((size_t)(oy + i) * W + ox + j) * O + o, _mm256_add_ps(y[j], b));
    }
}

/* The same for fewer than 8 channels (the last block of an O that is not a multiple of 8). */
static void output_tail(int32_t acc[36][MR][WINO4_NR], int r, int j0, int n, const float *scale, const float *fac,
                        int O, int o, const float *bias, const struct epilogue *e, int W, int oy, int ox, int ny,
                        int nx) {
    for (int q = 0; q < n; q++) {
        float t[4][6], m[6], col[4];
        for (int j = 0; j < 6; j++) {
            for (int k = 0; k < 6; k++) {
                const int p = k * 6 + j;
                m[k] = (float)acc[p][r][j0 + q] * scale[(size_t)p * O + o + q] * fac[p];
            }
            at6_scalar(m, col);
            for (int i = 0; i < 4; i++) t[i][j] = col[i];
        }
        for (int i = 0; i < ny; i++) {
            float y[4];
            at6_scalar(t[i], y);
            for (int j = 0; j < nx; j++) epilogue1(e, ((size_t)(oy + i) * W + ox + j) * O + o + q, y[j] + bias[o + q]);
        }
    }
}

struct conv_args {
    int H, W, O, T, tw, cp, c2, ob;
    size_t tile_elems;
    const int16_t *v;
    const float *fac;
    const int16_t *packed;
    const float *scale, *bias;
    const struct epilogue *e;
};

/* Tile block tb (MR tiles) x output block bo (16 channels): the 36 products over C, then the output transform. */
static void block(const void *args, int tb, int bo) {
    const struct conv_args *a = args;
    int32_t acc[36][MR][WINO4_NR] __attribute__((aligned(32)));
    const int16_t *rows[MR];
    const int t0 = tb * MR, nt = a->T - t0 < MR ? a->T - t0 : MR;
    for (int p = 0; p < 36; p++) {
        for (int r = 0; r < MR; r++) /* past the last tile: recompute the last one, never stored */
            rows[r] = a->v + (size_t)(t0 + (r < nt ? r : nt - 1)) * a->tile_elems + (size_t)p * a->c2;
        products(rows, a->packed + ((size_t)p * a->ob + bo) * a->cp * WINO4_NR * 2, a->cp, acc[p]);
    }
    for (int r = 0; r < nt; r++) {
        const int t = t0 + r, oy = 4 * (t / a->tw), ox = 4 * (t % a->tw);
        const int ny = a->H - oy < 4 ? a->H - oy : 4, nx = a->W - ox < 4 ? a->W - ox : 4;
        const float *f = a->fac + (size_t)t * 36;
        for (int j0 = 0; j0 < WINO4_NR; j0 += 8) {
            const int o = bo * WINO4_NR + j0;
            if (o + 8 <= a->O)
                output8(acc, r, j0, a->scale, f, a->O, o, _mm256_loadu_ps(a->bias + o), a->e, a->W, oy, ox, ny,
                        nx);
            else if (o < a->O)
                output_tail(acc, r, j0, a->O - o, a->scale, f, a->O, o, a->bias, a->e, a->W, oy, ox, ny, nx);
        }
    }
}

int winograd_f4_conv(const uint8_t *x, int H, int W, int C, int z, const int16_t *packed, int O, const float *scale,
                     const float *bias, const struct epilogue *e, int nthreads) {
    const int th = ceil_div(H, 4), tw = ceil_div(W, 4), T = th * tw;
    const int cp = ceil_div(C, 2), c2 = cp * 2, ob = ceil_div(O, WINO4_NR);
    const size_t tile_elems = (size_t)36 * c2;
    int16_t *v = aligned_alloc(64, ((size_t)T * tile_elems * sizeof(int16_t) + 63) / 64 * 64);
    float *fac = malloc((size_t)T * 36 * sizeof(float));
    if (v == NULL || fac == NULL) {
        free(v);
        free(fac);
        return -1;
    }
    const struct conv_args k = {H, W, O, T, tw, cp, c2, ob, tile_elems, v, fac, packed, scale, bias, e};
    const size_t weight_bytes = (size_t)36 * ob * cp * WINO4_NR * 2 * sizeof(int16_t);
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++)
            input_tile(x, H, W, C, z, t / tw, t % tw, v + (size_t)t * tile_elems, c2, fac + (size_t)t * 36);
        run_blocks(block, &k, ceil_div(T, MR), ob, weight_bytes, (size_t)MR * tile_elems * sizeof(int16_t), W_BUDGET,
                   V_BUDGET);
    }
    free(v);
    free(fac);
    return 0;
}
