/* What the int8 kernels (winograd_int8.c, winograd_f4.c, pointwise_int8.c, direct_int8.c) do with each output value
 * once the convolution and its bias are summed: the activation, then optionally a residual added (a Darknet
 * [shortcut] that follows the convolution, fused into it), then the stores: the float output and/or the uint8 codes
 * the next int8 layer reads (fused here, they save a float write, its read back and a pass).
 *
 *   y      max(y, slope * y) (leaky; slope 1: none, 0: relu);
 *   y      y + residual[at] when residual is not NULL (the same float addition as the [shortcut] layer's);
 *   out    out[at] = y when out is not NULL;
 *   codes  codes[at] = clamp(round(y * inv_scale) + zero, 0, 255), rounded half to even, when codes is not NULL:
 *          bit for bit what torch.quantize_per_tensor (fbgemm) stores for scale 1 / inv_scale, given
 *          inv_scale = 1.0f / (float)scale.
 * at = pixel * O + channel: every array is [pixels][O].
 */
#ifndef YOLODET_EPILOGUE_H
#define YOLODET_EPILOGUE_H

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

struct epilogue {
    float slope;
    const float *residual; /* float [P][O] or NULL */
    float *out;            /* float [P][O] or NULL */
    uint8_t *codes;        /* uint8 [P][O] or NULL */
    float inv_scale, zero; /* the codes' quantisation: 1 / scale (in float) and the zero point */
};

/* 8 consecutive channels at `at`. */
static inline void epilogue8(const struct epilogue *e, size_t at, __m256 y) {
    if (e->slope != 1.0f) y = _mm256_max_ps(y, _mm256_mul_ps(y, _mm256_set1_ps(e->slope)));
    if (e->residual != NULL) y = _mm256_add_ps(y, _mm256_loadu_ps(e->residual + at));
    if (e->out != NULL) _mm256_storeu_ps(e->out + at, y);
    if (e->codes != NULL) {
        __m256 q = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(e->inv_scale)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, _mm256_set1_ps(e->zero)), _mm256_setzero_ps()),
                          _mm256_set1_ps(255.0f)); /* NaN: 0 (max returns its second operand) */
        const __m256i i = _mm256_cvtps_epi32(q);
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(e->codes + at), _mm_packus_epi16(w, w));
    }
}

/* One channel at `at` (the tail of an O that is not a multiple of 8). */
static inline void epilogue1(const struct epilogue *e, size_t at, float y) {
    if (e->slope != 1.0f && y * e->slope > y) y *= e->slope;
    if (e->residual != NULL) y += e->residual[at];
    if (e->out != NULL) e->out[at] = y;
    if (e->codes != NULL) {
        const float q = nearbyintf(y * e->inv_scale) + e->zero;
        e->codes[at] = (uint8_t)(q > 0.0f ? (q < 255.0f ? q : 255.0f) : 0.0f);
    }
}

#endif
