/* The output transform of Winograd F(4x4, 3x3) in float, with the points 0, 1, -1, 2, -2, inf (Lavin & Gray):
 * shared by the fp32 path's transforms (yolodet/_fp32/winograd_f32.c) and the int8 F(4x4) kernel
 * (yolodet/_int8/winograd_f4.c), which both apply it once to columns and once to rows (A^T M A). */
#ifndef YOLODET_WINOGRAD_F43_OUTPUT_H
#define YOLODET_WINOGRAD_F43_OUTPUT_H

#include <immintrin.h>

/* r = A^T m on six vectors: m0 + m1 + m2 + m3 + m4, m1 - m2 + 2 (m3 - m4), m1 + m2 + 4 (m3 + m4),
 * m1 - m2 + 8 (m3 - m4) + m5. */
static inline void at6(const __m256 m[6], __m256 r[4]) {
    const __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
    const __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
    r[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
    r[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
    r[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
    r[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
}

static inline void at6_scalar(const float m[6], float r[4]) {
    const float s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    r[0] = m[0] + s12 + s34;
    r[1] = d12 + 2.0f * d34;
    r[2] = s12 + 4.0f * s34;
    r[3] = d12 + 8.0f * d34 + m[5];
}

#endif
