/* int8 Winograd F(2x2, 3x3) for AVX2: see winograd_int8.h for what it computes.
 *
 * Two passes, each split over OpenMP threads:
 *   1. input transform: every 2x2 output tile's 4x4 patch -> 16 x C uint8 (Vq), 16 channels per AVX2 register in
 *      int16 (codes up to 4 * 255 fit), stored [tile][position][C4] (C4 = C rounded up to 4);
 *   2. products and output transform, per block of MR tiles x 16 output channels: for each of the 16 positions an
 *      MR x 16 int32 product over C by vpmaddubsw (uint8 x int8, pairs summed in 16 bits: exact, the caller bounds
 *      the weights) + vpmaddwd (pairs of pairs into 32 bits), then A^T M A, bias and leaky on those 16 sums while
 *      they are still in L1, written straight to the float output.
 */
#include "winograd_int8.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define MR 4 /* tiles per register block */

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* 16 channels of the 16 patch values (int16) -> the 16 Winograd-domain codes, stored at v[p * c4]. */
static inline void transform16(const __m256i d[16], uint8_t *v, int c4) {
    __m256i t[16], q;
    const __m256i two = _mm256_set1_epi16(2), mid = _mm256_set1_epi16(128);
    for (int j = 0; j < 4; j++) { /* B^T d: rows */
        t[0 * 4 + j] = _mm256_sub_epi16(d[0 * 4 + j], d[2 * 4 + j]);
        t[1 * 4 + j] = _mm256_add_epi16(d[1 * 4 + j], d[2 * 4 + j]);
        t[2 * 4 + j] = _mm256_sub_epi16(d[2 * 4 + j], d[1 * 4 + j]);
        t[3 * 4 + j] = _mm256_sub_epi16(d[1 * 4 + j], d[3 * 4 + j]);
    }
    for (int i = 0; i < 4; i++) { /* (B^T d) B: columns; then round(V / 4) (+ 128) onto 0..255 */
        __m256i r[4];
        r[0] = _mm256_sub_epi16(t[i * 4 + 0], t[i * 4 + 2]);
        r[1] = _mm256_add_epi16(t[i * 4 + 1], t[i * 4 + 2]);
        r[2] = _mm256_sub_epi16(t[i * 4 + 2], t[i * 4 + 1]);
        r[3] = _mm256_sub_epi16(t[i * 4 + 1], t[i * 4 + 3]);
        for (int j = 0; j < 4; j++) {
            q = _mm256_srai_epi16(_mm256_add_epi16(r[j], two), 2);
            if (!(i == 1 && j == 1)) q = _mm256_add_epi16(q, mid);
            __m128i packed = _mm_packus_epi16(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storeu_si128((__m128i *)(v + (size_t)(i * 4 + j) * c4), packed);
        }
    }
}

/* The same for one channel (channels past the last multiple of 16). */
static inline void transform1(const int d[16], uint8_t *v, int c4) {
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
            int q = ((r[j] + 2) >> 2) + (i == 1 && j == 1 ? 0 : 128);
            v[(size_t)(i * 4 + j) * c4] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
        }
    }
}

/* Tile (ty, tx) of x -> v [16][c4]. */
static void input_tile(const uint8_t *x, int H, int W, int C, int z, int ty, int tx, uint8_t *v, int c4) {
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
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        __m256i d[16];
        for (int k = 0; k < 16; k++)
            d[k] = inside[k] ? _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(px[k] + c))) : zz;
        transform16(d, v + c, c4);
    }
    for (; c < C; c++) {
        int d[16];
        for (int k = 0; k < 16; k++) d[k] = inside[k] ? px[k][c] : z;
        transform1(d, v + c, c4);
    }
    for (int p = 0; p < 16; p++) /* the padding channels multiply zero weights; keep them defined */
        memset(v + (size_t)p * c4 + C, 0, (size_t)(c4 - C));
}

/* acc[r][0..15] = sum over 4-channel groups k of rows[r][4k..4k+3] . w[k][0..15][0..3]. */
static inline void products(const uint8_t *const rows[MR], const int8_t *w, int cq, int32_t acc[MR][WINO_NR]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00;
    const uint8_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    for (int k = 0; k < cq; k++) {
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

/* 8 output channels of one tile: 16 int32 sums -> up to 2x2 float outputs. */
static inline void output8(int32_t acc[16][MR][WINO_NR], int r, int j0, const int32_t *corr, const float *scale,
                           int O, int o, __m256 b, float slope, float *out, int W, int oy, int ox, int ny, int nx) {
    __m256 m[16];
    for (int p = 0; p < 16; p++) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(acc[p][r] + j0));
        a = _mm256_sub_epi32(a, _mm256_loadu_si256((const __m256i *)(corr + (size_t)p * O + o)));
        m[p] = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(scale + (size_t)p * O + o));
    }
    __m256 s[8]; /* M A: s[i][0], s[i][1] */
    for (int i = 0; i < 4; i++) {
        s[i * 2 + 0] = _mm256_add_ps(_mm256_add_ps(m[i * 4 + 0], m[i * 4 + 1]), m[i * 4 + 2]);
        s[i * 2 + 1] = _mm256_sub_ps(_mm256_sub_ps(m[i * 4 + 1], m[i * 4 + 2]), m[i * 4 + 3]);
    }
    const __m256 sl = _mm256_set1_ps(slope);
    for (int i = 0; i < ny; i++) {
        for (int j = 0; j < nx; j++) {
            __m256 y = i == 0 ? _mm256_add_ps(_mm256_add_ps(s[0 + j], s[2 + j]), s[4 + j])
                              : _mm256_sub_ps(_mm256_sub_ps(s[2 + j], s[4 + j]), s[6 + j]);
            y = _mm256_add_ps(y, b);
            if (slope != 1.0f) y = _mm256_max_ps(y, _mm256_mul_ps(y, sl));
            _mm256_storeu_ps(out + ((size_t)(oy + i) * W + ox + j) * O + o, y);
        }
    }
}

/* The same for fewer than 8 channels (the last block of an O that is not a multiple of 8). */
static void output_tail(int32_t acc[16][MR][WINO_NR], int r, int j0, int n, const int32_t *corr, const float *scale,
                        int O, int o, const float *bias, float slope, float *out, int W, int oy, int ox, int ny,
                        int nx) {
    for (int q = 0; q < n; q++) {
        float m[16], s[8];
        for (int p = 0; p < 16; p++)
            m[p] = (float)(acc[p][r][j0 + q] - corr[(size_t)p * O + o + q]) * scale[(size_t)p * O + o + q];
        for (int i = 0; i < 4; i++) {
            s[i * 2 + 0] = (m[i * 4 + 0] + m[i * 4 + 1]) + m[i * 4 + 2];
            s[i * 2 + 1] = (m[i * 4 + 1] - m[i * 4 + 2]) - m[i * 4 + 3];
        }
        for (int i = 0; i < ny; i++) {
            for (int j = 0; j < nx; j++) {
                float y = i == 0 ? (s[0 + j] + s[2 + j]) + s[4 + j] : (s[2 + j] - s[4 + j]) - s[6 + j];
                y += bias[o + q];
                if (slope != 1.0f && y * slope > y) y *= slope;
                out[((size_t)(oy + i) * W + ox + j) * O + o + q] = y;
            }
        }
    }
}

int winograd_int8_conv(const uint8_t *x, int H, int W, int C, int z, const int8_t *packed, int O,
                       const int32_t *corr, const float *scale, const float *bias, float slope, float *out,
                       int nthreads) {
    const int th = ceil_div(H, 2), tw = ceil_div(W, 2), T = th * tw;
    const int cq = ceil_div(C, 4), c4 = cq * 4, ob = ceil_div(O, WINO_NR);
    const size_t tile_bytes = (size_t)16 * c4;
    uint8_t *v = aligned_alloc(64, ((size_t)T * tile_bytes + 63) / 64 * 64);
    if (v == NULL) return -1;

#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int t = 0; t < T; t++) input_tile(x, H, W, C, z, t / tw, t % tw, v + (size_t)t * tile_bytes, c4);

    const int blocks = ceil_div(T, MR);
#pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
    for (int tb = 0; tb < blocks; tb++) {
        for (int bo = 0; bo < ob; bo++) {
            int32_t acc[16][MR][WINO_NR] __attribute__((aligned(32)));
            const uint8_t *rows[MR];
            const int t0 = tb * MR, nt = T - t0 < MR ? T - t0 : MR;
            for (int p = 0; p < 16; p++) {
                for (int r = 0; r < MR; r++) /* past the last tile: recompute the last one, never stored */
                    rows[r] = v + (size_t)(t0 + (r < nt ? r : nt - 1)) * tile_bytes + (size_t)p * c4;
                products(rows, packed + ((size_t)p * ob + bo) * cq * WINO_NR * 4, cq, acc[p]);
            }
            for (int r = 0; r < nt; r++) {
                const int t = t0 + r, oy = 2 * (t / tw), ox = 2 * (t % tw);
                const int ny = H - oy < 2 ? H - oy : 2, nx = W - ox < 2 ? W - ox : 2;
                for (int j0 = 0; j0 < WINO_NR; j0 += 8) {
                    const int o = bo * WINO_NR + j0;
                    if (o + 8 <= O)
                        output8(acc, r, j0, corr, scale, O, o, _mm256_loadu_ps(bias + o), slope, out, W, oy, ox,
                                ny, nx);
                    else if (o < O)
                        output_tail(acc, r, j0, O - o, corr, scale, O, o, bias, slope, out, W, oy, ox, ny, nx);
                }
            }
        }
    }
    free(v);
    return 0;
}
