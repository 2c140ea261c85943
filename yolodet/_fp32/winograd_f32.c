/* fp32 Winograd F(4x4, 3x3) transforms for AVX2 + FMA: see winograd_f32.h. Eight channels per register; a scalar
 * loop for the channels past the last multiple of 8. Each tile's 36 vectors are transformed as columns, then rows
 * (B^T d B = (B^T d) B), in registers and a 36-vector stack buffer. */
#include "winograd_f32.h"
#include "winograd_f43_output.h"

#include <immintrin.h>
#include <omp.h>
#include <stddef.h>

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* t = B^T d: 4 d0 - 5 d2 + d4, -4 d1 - 4 d2 + d3 + d4, 4 d1 - 4 d2 - d3 + d4, -2 d1 - d2 + 2 d3 + d4,
 * 2 d1 - d2 - 2 d3 + d4, 4 d1 - 5 d3 + d5. */
static inline void bt6(const __m256 d[6], __m256 t[6]) {
    const __m256 four = _mm256_set1_ps(4.0f), two = _mm256_set1_ps(2.0f);
    const __m256 a = _mm256_fnmadd_ps(four, d[2], d[4]); /* d4 - 4 d2 */
    const __m256 b = _mm256_fnmadd_ps(four, d[1], d[3]); /* d3 - 4 d1 */
    const __m256 e = _mm256_sub_ps(d[4], d[2]);
    const __m256 f = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
    t[0] = _mm256_fmadd_ps(four, _mm256_sub_ps(d[0], d[2]), e);
    t[1] = _mm256_add_ps(a, b);
    t[2] = _mm256_sub_ps(a, b);
    t[3] = _mm256_add_ps(e, f);
    t[4] = _mm256_sub_ps(e, f);
    t[5] = _mm256_fmadd_ps(four, _mm256_sub_ps(d[1], d[3]), _mm256_sub_ps(d[5], d[3]));
}

static inline void bt6_scalar(const float d[6], float t[6]) {
    const float a = d[4] - 4.0f * d[2], b = d[3] - 4.0f * d[1], e = d[4] - d[2], f = 2.0f * (d[3] - d[1]);
    t[0] = 4.0f * (d[0] - d[2]) + e;
    t[1] = a + b;
    t[2] = a - b;
    t[3] = e + f;
    t[4] = e - f;
    t[5] = 4.0f * (d[1] - d[3]) + (d[5] - d[3]);
}

/* Tile t of the (N, th, tw) grid -> v [36][C]. */
static void input_tile(const float *x, int H, int W, int C, int th, int tw, int t, float *v) {
    const int n = t / (th * tw), ty = t / tw % th, tx = t % tw;
    const float *px[36];
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            const int y = 4 * ty - 1 + i, xx = 4 * tx - 1 + j;
            px[i * 6 + j] = y >= 0 && y < H && xx >= 0 && xx < W ? x + (((size_t)n * H + y) * W + xx) * C : NULL;
        }
    const __m256 zero = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 tt[36];
        for (int j = 0; j < 6; j++) { /* columns: tt[.][j] = B^T d[.][j] */
            __m256 d[6], r[6];
            for (int i = 0; i < 6; i++) d[i] = px[i * 6 + j] ? _mm256_loadu_ps(px[i * 6 + j] + c) : zero;
            bt6(d, r);
            for (int i = 0; i < 6; i++) tt[i * 6 + j] = r[i];
        }
        for (int i = 0; i < 6; i++) { /* rows: V[i][.] = tt[i][.] B */
            __m256 r[6];
            bt6(tt + i * 6, r);
            for (int j = 0; j < 6; j++) _mm256_storeu_ps(v + (size_t)(i * 6 + j) * C + c, r[j]);
        }
    }
    for (; c < C; c++) {
        float tt[36], d[6], r[6];
        for (int j = 0; j < 6; j++) {
            for (int i = 0; i < 6; i++) d[i] = px[i * 6 + j] ? px[i * 6 + j][c] : 0.0f;
            bt6_scalar(d, r);
            for (int i = 0; i < 6; i++) tt[i * 6 + j] = r[i];
        }
        for (int i = 0; i < 6; i++) {
            bt6_scalar(tt + i * 6, r);
            for (int j = 0; j < 6; j++) v[(size_t)(i * 6 + j) * C + c] = r[j];
        }
    }
}

/* m [36][O] of tile t -> its (up to) 4x4 outputs in y. */
static void output_tile(const float *m, int H, int W, int O, int th, int tw, int t, float slope, float *y) {
    const int n = t / (th * tw), oy = 4 * (t / tw % th), ox = 4 * (t % tw);
    const int ny = H - oy < 4 ? H - oy : 4, nx = W - ox < 4 ? W - ox : 4;
    float *row[4];
    for (int i = 0; i < ny; i++) row[i] = y + (((size_t)n * H + oy + i) * W + ox) * O;
    const __m256 sl = _mm256_set1_ps(slope);
    int o = 0;
    for (; o + 8 <= O; o += 8) {
        __m256 tt[4][6];
        for (int j = 0; j < 6; j++) { /* columns: tt[.][j] = A^T M[.][j] */
            __m256 mm[6], r[4];
            for (int k = 0; k < 6; k++) mm[k] = _mm256_loadu_ps(m + (size_t)(k * 6 + j) * O + o);
            at6(mm, r);
            for (int i = 0; i < 4; i++) tt[i][j] = r[i];
        }
        for (int i = 0; i < ny; i++) {
            __m256 r[4];
            at6(tt[i], r);
            for (int j = 0; j < nx; j++) {
                __m256 val = r[j];
                if (slope != 1.0f) val = _mm256_max_ps(val, _mm256_mul_ps(val, sl));
                _mm256_storeu_ps(row[i] + (size_t)j * O + o, val);
            }
        }
    }
    for (; o < O; o++) {
        float tt[4][6], mm[6], r[4];
        for (int j = 0; j < 6; j++) {
            for (int k = 0; k < 6; k++) mm[k] = m[(size_t)(k * 6 + j) * O + o];
            at6_scalar(mm, r);
            for (int i = 0; i < 4; i++) tt[i][j] = r[i];
        }
        for (int i = 0; i < ny; i++) {
            at6_scalar(tt[i], r);
            for (int j = 0; j < nx; j++) {
                float val = r[j];
                if (slope != 1.0f && val * slope > val) val *= slope;
                row[i][(size_t)j * O + o] = val;
            }
        }
    }
}

int winograd_f32_input(const float *x, int N, int H, int W, int C, float *v, int nthreads) {
    const int th = ceil_div(H, 4), tw = ceil_div(W, 4), T = N * th * tw;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int t = 0; t < T; t++) input_tile(x, H, W, C, th, tw, t, v + (size_t)t * 36 * C);
    return 0;
}

int winograd_f32_output(const float *m, int N, int H, int W, int O, float slope, float *y, int nthreads) {
    const int th = ceil_div(H, 4), tw = ceil_div(W, 4), T = N * th * tw;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int t = 0; t < T; t++) output_tile(m + (size_t)t * 36 * O, H, W, O, th, tw, t, slope, y);
    return 0;
}
