// Row passes around oneDNN's int8 matmul: one read and one write per row, whatever is fused.
//
// Built at first use by workers/quant/int8_kernels.py (g++ -O3 -march=native -fopenmp, the same
// builder as the attention kernel) and called through ctypes with raw pointers. Each row (one
// token) is loaded once into an fp32 buffer in L1 and every step runs there:
//
//   t = x                                  x: fp32 (the matmul's output) or bf16 (an input)
//   t = t * row_scale[r]                   the token's activation scale (dequantization)
//   t = t + bias                           the linear's bias
//   t = act(t)                             GELU (erf or tanh form) or ReLU
//   t = t + residual                       the sublayer's residual
//   t = LayerNorm(t) * w + b               BERT's post-sublayer norm
//   out = t                                written in fp32 or bf16 (round to nearest even)
//   q = round(t * inv_s / scale) + 128     the next linear's uint8 input with its per-token
//                                          scale = max|t * inv_s| / 127 (SmoothQuant's 1/s folded)
//
// Every step is optional, so the same pass quantizes a plain input (x, q) or finishes a linear
// (x, scale, bias, act, residual, norm, out) and quantizes its output for the next one.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>
#include <immintrin.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

enum { KIND_F32 = 0, KIND_BF16 = 1 };
enum { ACT_NONE = 0, ACT_GELU = 1, ACT_GELU_TANH = 2, ACT_RELU = 3 };

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch does (no NaN here)
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline v16 splat(float x) { return (v16){} + x; }
static inline v16 vmin(v16 a, v16 b) { return a < b ? a : b; }
static inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }

// exp(x), relative error ~2e-7 on [-87, 88]: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-6
// polynomial, 2^k by the exponent bits.
static inline v16 vexp(v16 x) {
    x = vmin(vmax(x, splat(-87.0f)), splat(88.0f));
    const v16 magic = splat(12582912.0f);                     // 1.5 * 2^23: rounds to an integer
    v16 k = (x * splat(1.44269504f) + magic) - magic;
    v16 r = x - k * splat(0.693145751953125f);                // ln2 in two parts (Cody-Waite)
    r = r - k * splat(1.428606765330187e-06f);
    v16 p = splat(1.0f / 720);
    p = p * r + splat(1.0f / 120);
    p = p * r + splat(1.0f / 24);
    p = p * r + splat(1.0f / 6);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    const v16i e = (__builtin_convertvector(k, v16i) + 127) << 23;
    return p * (v16)e;
}

// 1 / x: the 14-bit hardware estimate and one Newton step (~1e-7 relative) where AVX-512 has
// it, a division elsewhere.
static inline v16 vrcp(v16 x) {
#if defined(__AVX512F__)
    __m512 xm;
    memcpy(&xm, &x, 64);
    const __m512 r0 = _mm512_rcp14_ps(xm);
    v16 r;
    memcpy(&r, &r0, 64);
    return r * (splat(2.0f) - x * r);
#else
    return splat(1.0f) / x;
#endif
}

// erf(x) by Abramowitz & Stegun 7.1.28: 1 - 1 / (1 + a1 x + ... + a6 x^6)^16 for x >= 0
// (absolute error <= 3e-7), odd in x. No exp: 6 multiply-adds, 4 squarings, one reciprocal.
static inline v16 verf(v16 x) {
    const v16 a = vmin(vmax(x, -x), splat(6.0f));             // erf(6) = 1 in float32
    v16 p = splat(0.0000430638f);
    p = p * a + splat(0.0002765672f);
    p = p * a + splat(0.0001520143f);
    p = p * a + splat(0.0092705272f);
    p = p * a + splat(0.0422820123f);
    p = p * a + splat(0.0705230784f);
    p = p * a + splat(1.0f);
    p = p * p;
    p = p * p;
    p = p * p;
    p = p * p;                                                 // ^16: at most ~1e33 at a = 6
    const v16 y = splat(1.0f) - vrcp(p);
    return x < splat(0.0f) ? -y : y;
}

static inline v16 activate(v16 x, int act) {
    switch (act) {
        case ACT_GELU:
            return splat(0.5f) * x * (splat(1.0f) + verf(x * splat(0.70710678118654752f)));
        case ACT_GELU_TANH: {
            const v16 u = splat(0.7978845608028654f) * (x + splat(0.044715f) * x * x * x);
            const v16 th = splat(1.0f) - splat(2.0f) * vrcp(vexp(splat(2.0f) * u) + splat(1.0f));
            return splat(0.5f) * x * (splat(1.0f) + th);
        }
        case ACT_RELU:
            return vmax(x, splat(0.0f));
        default:
            return x;
    }
}

static inline void load_row(const void* src, int kind, int64_t n, float* t) {
    if (kind == KIND_BF16) {
        const uint16_t* s = (const uint16_t*)src;
        for (int64_t j = 0; j < n; j++) t[j] = bf16_to_f32(s[j]);
    } else {
        memcpy(t, src, n * sizeof(float));
    }
}

// 0 when done; 1 for an argument this kernel does not take.
extern "C" int int8_rows(int64_t rows, int64_t n, const void* x, int x_kind, const float* row_scale,
                         const float* bias, int act, const void* residual, int res_kind,
                         const float* ln_w, const float* ln_b, float eps, void* out, int out_kind,
                         const float* q_inv_s, uint8_t* q, float* q_scale, int nthreads) {
    if (n <= 0 || rows < 0 || act < 0 || act > ACT_RELU || (q_inv_s && (!q || !q_scale))) return 1;
    const int64_t npad = (n + 15) / 16 * 16;
#pragma omp parallel num_threads(nthreads)
    {
        float* t = (float*)aligned_alloc(64, npad * sizeof(float));
        memset(t + n, 0, (npad - n) * sizeof(float));   // padding stays 0: act(0) = 0 for every act
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            load_row((const char*)x + r * n * (x_kind == KIND_BF16 ? 2 : 4), x_kind, n, t);
            if (row_scale) {
                const float s = row_scale[r];
                for (int64_t j = 0; j < n; j++) t[j] *= s;
            }
            if (bias)
                for (int64_t j = 0; j < n; j++) t[j] += bias[j];
            if (act != ACT_NONE) {
                for (int64_t j = 0; j < npad; j += 16) {
                    v16 v;
                    memcpy(&v, t + j, 64);
                    v = activate(v, act);
                    memcpy(t + j, &v, 64);
                }
                if (npad != n) memset(t + n, 0, (npad - n) * sizeof(float));
            }
            if (residual) {
                if (res_kind == KIND_BF16) {
                    const uint16_t* s = (const uint16_t*)residual + r * n;
                    for (int64_t j = 0; j < n; j++) t[j] += bf16_to_f32(s[j]);
                } else {
                    const float* s = (const float*)residual + r * n;
                    for (int64_t j = 0; j < n; j++) t[j] += s[j];
                }
            }
            if (ln_w) {
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < n; j++) sum += t[j];
                const float mean = sum / n;
                float var = 0.0f;
#pragma omp simd reduction(+ : var)
                for (int64_t j = 0; j < n; j++) var += (t[j] - mean) * (t[j] - mean);
                const float inv = 1.0f / sqrtf(var / n + eps);
                for (int64_t j = 0; j < n; j++) t[j] = (t[j] - mean) * inv * ln_w[j] + (ln_b ? ln_b[j] : 0.0f);
            }
            if (out) {
                if (out_kind == KIND_BF16) {
                    uint16_t* o = (uint16_t*)out + r * n;
                    for (int64_t j = 0; j < n; j++) o[j] = f32_to_bf16(t[j]);
                } else {
                    memcpy((float*)out + r * n, t, n * sizeof(float));
                }
            }
            if (q_inv_s) {
                float amax = 0.0f;
#pragma omp simd reduction(max : amax)
                for (int64_t j = 0; j < n; j++) {
                    const float v = fabsf(t[j] * q_inv_s[j]);
                    amax = v > amax ? v : amax;
                }
                const float scale = amax / 127.0f > 1e-8f ? amax / 127.0f : 1e-8f;
                const float inv = 1.0f / scale;
                q_scale[r] = scale;
                uint8_t* o = q + r * n;
                const float magic = 12582912.0f;  // adding and subtracting 1.5 * 2^23 rounds half to even
                for (int64_t j = 0; j < n; j++) {
                    float v = (t[j] * q_inv_s[j] * inv + magic) - magic;
                    v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
                    o[j] = (uint8_t)((int32_t)v + 128);
                }
            }
        }
        free(t);
    }
    return 0;
}
