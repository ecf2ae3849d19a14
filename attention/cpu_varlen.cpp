// Packed variable-length attention for CPUs, small head dims (D a multiple of 16, up to 256).
//
// Built at first use by attention/cpu_varlen.py (g++ -O3 -march=native -fopenmp) and called
// through ctypes with raw pointers: no torch headers, so it compiles in about a second.
// It links the libgomp torch already loaded, so its threads are torch's OpenMP team.
//
// One work item is one (sequence, key/value head): K is converted once into a transposed fp32
// tile (D x Lp) and V into fp32 rows (L x D), then every query head of the group and every
// query row is served from them. Scores, softmax and the weighted sum are fp32 whatever the
// input dtype (bf16 or fp32); the output is rounded once. Query rows go four at a time so each
// loaded key vector feeds four FMAs. GCC vector extensions keep it portable: AVX-512 where
// -march=native has it, AVX2 pairs otherwise.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <immintrin.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

static const int R = 4;  // query rows per register block

static inline float load_f(const float* p) { return *p; }
static inline float load_f(const uint16_t* p) {
    uint32_t u = (uint32_t)(*p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline v16 splat(float x) { return (v16){} + x; }

typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
static inline void store16(float* p, v16 x) { memcpy(p, &x, 64); }
static inline void store16(uint16_t* p, v16 x) {  // round to nearest even, as torch does (no NaN here)
    v16u u;
    memcpy(&u, &x, 64);
    u += 0x7fffu + ((u >> 16) & 1u);
    const v16h h = __builtin_convertvector(u >> 16, v16h);
    memcpy(p, &h, 32);
}

#if defined(__AVX512F__)
#include <immintrin.h>
// exp(x) for x <= 0 (scores minus their row maximum); exactly 0 below -87 (and for -inf).
static inline v16 exp_neg(v16 xv) {
    __m512 x = (__m512)xv;
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return (v16)_mm512_maskz_scalef_ps(live, p, n);
}
static inline float hmax(v16 x) { return _mm512_reduce_max_ps((__m512)x); }
static inline float hsum(v16 x) { return _mm512_reduce_add_ps((__m512)x); }
#else
// exp(x) for x <= 0 (scores minus their row maximum); 0 below -87 (and for -inf).
static inline v16 exp_neg(v16 x) {
    const v16 lo = splat(-87.0f);
    v16i dead = x < lo;
    x = x < lo ? lo : x;
    v16 t = x * 1.44269504088896341f;                      // x / ln 2
    v16 n = (t + 12582912.0f) - 12582912.0f;               // round to nearest
    v16 r = x - n * 0.693359375f;                          // ln 2, split in two parts
    r = r - n * -2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;  // 2^n
    v16 scale;
    memcpy(&scale, &e, 64);
    v16 out = p * scale;
    return dead ? splat(0.0f) : out;
}

static inline float hmax(v16 x) {
    float m = x[0];
    for (int i = 1; i < 16; i++) m = x[i] > m ? x[i] : m;
    return m;
}
static inline float hsum(v16 x) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += x[i];
    return s;
}

#endif

struct Args {
    const void* q; const void* k; const void* v; void* out;
    int64_t qs_t, qs_h, ks_t, ks_h, vs_t, vs_h, os_t, os_h;  // element strides (token, head)
    const int32_t* cu; const int32_t* order; int nseq;
    int H, Hkv, D;
    float scale;
    int left, right;  // window in positions, -1 = unbounded; causal is right = 0
    // Optional additive score bias shared by all sequences as the top-left corner of one fp32
    // table (MPNet's relative positions): bias[h * bias_h + i * bias_r + j], or null.
    const float* bias;
    int64_t bias_h, bias_r;
};

static const int RF = 8;  // query rows per register block in the fp32 path

// Keys [lo, hi) query row i of an L-token sequence may see (window; causal is right = 0).
static inline void row_keys(const Args& a, int i, int L, int* lo, int* hi) {
    *lo = a.left >= 0 && i - a.left > 0 ? i - a.left : 0;
    *hi = a.right >= 0 && i + a.right + 1 < L ? i + a.right + 1 : L;
}

// Keys [jlo, jhi) any of rows [i0, i0 + nr) may see, and that range widened to multiples of
// `align` as [c0, c1) (c1 <= the padded length, a multiple of 32).
static inline void block_keys(const Args& a, int i0, int nr, int L, int align, int* jhi, int* c0,
                              int* c1) {
    int lo, hi, unused;
    row_keys(a, i0, L, &lo, &unused);
    row_keys(a, i0 + nr - 1, L, &unused, &hi);
    *jhi = hi;
    *c0 = lo & ~(align - 1);
    *c1 = (hi + align - 1) & ~(align - 1);
}

// S[r][j..j+16*NC) = sum_d Q[r][d] * kT[d][j..], for the RF rows of a block.
template <int NC>
static inline void qk_block(const float* Q, const float* kT, int Lp, int D, int j, float* S) {
    v16 acc[RF][NC];
#pragma GCC unroll 8
    for (int r = 0; r < RF; r++)
#pragma GCC unroll 2
        for (int u = 0; u < NC; u++) acc[r][u] = (v16){};
    for (int d = 0; d < D; d++) {
        v16 x[NC];
#pragma GCC unroll 2
        for (int u = 0; u < NC; u++) x[u] = *(const v16*)(kT + (int64_t)d * Lp + j + 16 * u);
#pragma GCC unroll 8
        for (int r = 0; r < RF; r++) {
            const float qv = Q[r * D + d];
#pragma GCC unroll 2
            for (int u = 0; u < NC; u++) acc[r][u] += x[u] * qv;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RF; r++)
#pragma GCC unroll 2
        for (int u = 0; u < NC; u++) *(v16*)(S + (int64_t)r * Lp + j + 16 * u) = acc[r][u];
}

// out rows [0, nr) of a block, columns [16c, 16(c+W)): sum_j P[r][j] * V[j] / sum_r.
// W is a compile-time width so the RF x W accumulators stay in registers.
template <typename T, int W>
static inline void pv_block(const float* S, int Lp, const float* V, int D, int c, int j0, int j1,
                            const float* inv, int nr, T* orow, int64_t os_t) {
    v16 acc[RF][W];
#pragma GCC unroll 8
    for (int r = 0; r < RF; r++)
#pragma GCC unroll 2
        for (int u = 0; u < W; u++) acc[r][u] = (v16){};
    for (int j = j0; j < j1; j++) {
        v16 x[W];
#pragma GCC unroll 2
        for (int u = 0; u < W; u++) x[u] = *(const v16*)(V + (int64_t)j * D + c * 16 + u * 16);
#pragma GCC unroll 8
        for (int r = 0; r < RF; r++) {
            const float pv = S[(int64_t)r * Lp + j];
#pragma GCC unroll 2
            for (int u = 0; u < W; u++) acc[r][u] += x[u] * pv;
        }
    }
    for (int r = 0; r < nr; r++)
        for (int u = 0; u < W; u++) store16(orow + r * os_t + c * 16 + u * 16, acc[r][u] * inv[r]);
}

template <typename T>
static void attend_item(const Args& a, int s, int g, float* kT, float* V, float* Q, float* S) {
    const int start = a.cu[s], L = a.cu[s + 1] - start, D = a.D;
    if (L <= 0) return;
    const int Lp = (L + 31) & ~31;
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    const T* q = (const T*)a.q;
    T* out = (T*)a.out;
    // K transposed to (D, Lp) with zero padding; V as (L, D), both fp32.
    for (int j = 0; j < L; j++) {
        const T* vr = v + (int64_t)(start + j) * a.vs_t + (int64_t)g * a.vs_h;
        for (int d = 0; d < D; d++) V[(int64_t)j * D + d] = load_f(vr + d);
    }
    for (int d = 0; d < D; d++) {
        float* dst = kT + (int64_t)d * Lp;
        const T* kc = k + (int64_t)start * a.ks_t + (int64_t)g * a.ks_h + d;
        for (int j = 0; j < L; j++) dst[j] = load_f(kc + (int64_t)j * a.ks_t);
        for (int j = L; j < Lp; j++) dst[j] = 0.0f;
    }

    const int rep = a.H / a.Hkv;
    const int nd = D / 16;
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int i0 = 0; i0 < L; i0 += RF) {
            const int nr = L - i0 < RF ? L - i0 : RF;
            // Query rows, pre-scaled; missing rows of the last block are zero.
            for (int r = 0; r < RF; r++) {
                const T* qr = q + (int64_t)(start + i0 + r) * a.qs_t + (int64_t)h * a.qs_h;
                for (int d = 0; d < D; d++) Q[r * D + d] = r < nr ? load_f(qr + d) * a.scale : 0.0f;
            }
            int jhi, c0, c1;  // keys any row of the block may see, in whole 16-key chunks
            block_keys(a, i0, nr, L, 16, &jhi, &c0, &c1);
            // Scores: S[r][j] = sum_d Q[r][d] * kT[d][j], two 16-key chunks at a time.
            int j = c0;
            for (; j + 32 <= c1; j += 32) qk_block<2>(Q, kT, Lp, D, j, S);
            if (j < c1) qk_block<1>(Q, kT, Lp, D, j, S);
            // Mask and softmax per row (probabilities stay unnormalised; 1/sum at the end).
            float inv[RF];
            for (int r = 0; r < RF; r++) {
                float* Sr = S + (int64_t)r * Lp;
                int lo, hi;
                row_keys(a, i0 + r, L, &lo, &hi);
                if (r >= nr) { lo = c0; hi = c0; }
                if (a.bias) {
                    const float* b = a.bias + (int64_t)h * a.bias_h + (int64_t)(i0 + r) * a.bias_r;
                    for (int jj = lo; jj < hi; jj++) Sr[jj] += b[jj];
                }
                for (int jj = c0; jj < lo; jj++) Sr[jj] = -__builtin_inff();
                for (int jj = hi > lo ? hi : lo; jj < c1; jj++) Sr[jj] = -__builtin_inff();
                v16 m = splat(-__builtin_inff());
                for (int jj = c0; jj < c1; jj += 16) {
                    const v16 x = *(const v16*)(Sr + jj);
                    m = x > m ? x : m;
                }
                const float mx = r < nr ? hmax(m) : 0.0f;
                v16 sum = {};
                for (int jj = c0; jj < c1; jj += 16) {
                    const v16 p = exp_neg(*(const v16*)(Sr + jj) - mx);
                    *(v16*)(Sr + jj) = p;
                    sum += p;
                }
                const float tot = hsum(sum);
                inv[r] = tot > 0.0f ? 1.0f / tot : 0.0f;
            }
            // out[r] = sum_j P[r][j] * V[j], up to 64 output columns (4 vectors) at a time.
            const int jend = jhi < c1 ? jhi : c1;
            T* orow = out + (int64_t)(start + i0) * a.os_t + (int64_t)h * a.os_h;
            int c = 0;
            for (; c + 2 <= nd; c += 2) pv_block<T, 2>(S, Lp, V, D, c, c0, jend, inv, nr, orow, a.os_t);
            if (c < nd) pv_block<T, 1>(S, Lp, V, D, c, c0, jend, inv, nr, orow, a.os_t);
        }
    }
}


#if defined(__AVX512BF16__) && defined(__AVX512F__) && !defined(NO_DPBF16)
#include <immintrin.h>
#define HAVE_DPBF16 1
// bf16 inputs on CPUs with AVX512-BF16: dot products of bf16 pairs (vdpbf16ps) accumulate in
// fp32, so nothing is converted. K becomes 32-bit words (d, d+1) transposed to (D/2, Lp), V pairs
// of rows interleaved to (Lp/2, D) words (j, j+1); softmax is fp32, probabilities are rounded to
// bf16 for P.V as torch's bf16 attention does.
static inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

// out rows [0, nr), columns [16c, 16(c+W)) = sum over key pairs of P2[r] . vP, times 1/sum.
template <int W>
static inline void pv_block_dp(const uint32_t* P2, int Lp, const uint32_t* vP, int D, int c,
                               int p0, int p1, const float* inv, int nr, uint16_t* orow,
                               int64_t os_t) {
    __m512 acc[R][W];
    for (int r = 0; r < R; r++)
        for (int u = 0; u < W; u++) acc[r][u] = _mm512_setzero_ps();
    const int h = Lp / 2;
    for (int jp = p0; jp < p1; jp++) {
        const uint32_t* Vr = vP + (int64_t)jp * D + c * 16;
        const __m512bh w0 = as_bh(_mm512_set1_epi32((int)P2[jp]));
        const __m512bh w1 = as_bh(_mm512_set1_epi32((int)P2[h + jp]));
        const __m512bh w2 = as_bh(_mm512_set1_epi32((int)P2[2 * h + jp]));
        const __m512bh w3 = as_bh(_mm512_set1_epi32((int)P2[3 * h + jp]));
#pragma GCC unroll 4
        for (int u = 0; u < W; u++) {
            const __m512bh x = as_bh(_mm512_load_si512(Vr + u * 16));
            acc[0][u] = _mm512_dpbf16_ps(acc[0][u], w0, x);
            acc[1][u] = _mm512_dpbf16_ps(acc[1][u], w1, x);
            acc[2][u] = _mm512_dpbf16_ps(acc[2][u], w2, x);
            acc[3][u] = _mm512_dpbf16_ps(acc[3][u], w3, x);
        }
    }
    for (int r = 0; r < nr; r++) {
        const __m512 sc = _mm512_set1_ps(inv[r]);
#pragma GCC unroll 4
        for (int u = 0; u < W; u++)
            _mm256_storeu_si256((__m256i*)(orow + r * os_t + c * 16 + u * 16),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][u], sc)));
    }
}

// K as 32-bit words (d, d+1) transposed to (D/2, Lp) and V rows paired to (Lp/2, D) words
// (j, j+1), both zero-padded to Lp keys: the operand layouts of vdpbf16ps and of AMX tiles.
// 16 x 16 32-bit words: rows r[i] become columns (in place).
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Now r[4b + c] holds, in each 128-bit lane l, words c of rows 4b..4b+3 from lane l.
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);        // lanes 0,2 of each
        t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xdd);    // lanes 1,3
        t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);         // column lane 0
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);     // lane 2
        r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88); // lane 1
        r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xdd); // lane 3
    }
}

static void pack_kv_pairs(const Args& a, int start, int L, int Lp, int g, uint32_t* kP,
                          uint32_t* vP) {
    const int D = a.D, D2 = a.D / 2;
    const uint16_t* k = (const uint16_t*)a.k + (int64_t)start * a.ks_t + (int64_t)g * a.ks_h;
    const uint16_t* v = (const uint16_t*)a.v + (int64_t)start * a.vs_t + (int64_t)g * a.vs_h;
    if (D2 % 16 == 0) {
        // K: 16 keys x 16 words at a time, transposed in registers; missing keys are zero.
        for (int j = 0; j < Lp; j += 16)
            for (int w = 0; w < D2; w += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = j + i < L ? _mm512_loadu_si512(k + (int64_t)(j + i) * a.ks_t + 2 * w)
                                     : _mm512_setzero_si512();
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_store_si512(kP + (int64_t)(w + i) * Lp + j, r[i]);
            }
    } else {
        for (int dp = 0; dp < D2; dp++) {
            uint32_t* dst = kP + (int64_t)dp * Lp;
            for (int j = 0; j < L; j++) memcpy(dst + j, k + (int64_t)j * a.ks_t + 2 * dp, 4);
            for (int j = L; j < Lp; j++) dst[j] = 0;
        }
    }
    // V: rows 2jp and 2jp + 1 interleaved 16 columns at a time (a missing row is zero).
    for (int jp = 0; jp < Lp / 2; jp++) {
        const int j0 = 2 * jp, j1 = 2 * jp + 1;
        uint32_t* dst = vP + (int64_t)jp * D;
        for (int d = 0; d < D; d += 16) {
            const __m256i z = _mm256_setzero_si256();
            const __m256i lo = j0 < L ? _mm256_loadu_si256((const __m256i*)(v + (int64_t)j0 * a.vs_t + d)) : z;
            const __m256i hi = j1 < L ? _mm256_loadu_si256((const __m256i*)(v + (int64_t)j1 * a.vs_t + d)) : z;
            const __m512i w = _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                              _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
            _mm512_store_si512(dst + d, w);
        }
    }
}

// 2^t for t <= 0, good to ~4e-5 relative (the probabilities are then rounded to bf16, 4e-3):
// t = n + f with |f| <= 1/2, 2^f by its degree-4 Taylor polynomial, times 2^n. Exactly 0 below
// -125 (and for masked -inf scores): no denormals, which cost a microcode assist each on Intel.
static inline __m512 exp2_bf16(__m512 t) {
    const __mmask16 live = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-125.0f), _CMP_GE_OQ);
    t = _mm512_max_ps(t, _mm512_set1_ps(-125.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(9.6181291e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(live, p, n);
}

// Rows [0, rows) of S (raw scores, Lp per row) to bf16 probabilities in P (Lp per row) over the
// 32-aligned key range [c0, c1), masked per row (window/causal, padding, rows >= nr), with
// 1/sum per row in inv. Softmax in fp32; P unnormalised (divided at the output). Each pass runs
// over all rows before the next, with the horizontal reductions outside the loops, so the rows
// overlap in the pipeline.
static void softmax_rows(float* S, int Lp, int rows, int nr, int i0, int L, int c0, int c1,
                         const Args& a, int h, uint16_t* P, float* inv) {
    const bool banded = a.left >= 0 || a.right >= 0;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const float log2e = 1.44269504088896341f;
    __m512 vec[16];
    for (int r = 0; r < rows; r++) {
        float* Sr = S + (int64_t)r * Lp;
        if (a.bias && r < nr) {  // scores to base-2 exponents here, bias included
            int lo, hi;
            row_keys(a, i0 + r, L, &lo, &hi);
            const float* b = a.bias + (int64_t)h * a.bias_h + (int64_t)(i0 + r) * a.bias_r;
            for (int jj = lo; jj < hi; jj++) Sr[jj] = (Sr[jj] * a.scale + b[jj]) * log2e;
        }
        if (banded || r >= nr) {
            int lo, hi;
            row_keys(a, i0 + r, L, &lo, &hi);
            if (r >= nr) { lo = c0; hi = c0; }
            for (int jj = c0; jj < lo; jj++) Sr[jj] = -__builtin_inff();
            for (int jj = hi > lo ? hi : lo; jj < c1; jj++) Sr[jj] = -__builtin_inff();
        } else {
            for (int jj = L & ~15; jj < c1; jj += 16) {  // padding keys [L, c1)
                const int keep = L - jj;
                const __mmask16 pad = keep <= 0 ? (__mmask16)0xffff : (__mmask16)(0xffffu << keep);
                _mm512_mask_store_ps(Sr + jj, pad, ninf);
            }
        }
        __m512 m = ninf;
        for (int jj = c0; jj < c1; jj += 16) m = _mm512_max_ps(m, _mm512_load_ps(Sr + jj));
        vec[r] = m;
    }
    const float c = a.bias ? 1.0f : a.scale * log2e;  // scores to base-2 exponents
    float mx[16];
    for (int r = 0; r < rows; r++) mx[r] = r < nr ? _mm512_reduce_max_ps(vec[r]) * c : 0.0f;
    const __m512 cv = _mm512_set1_ps(c);
    for (int r = 0; r < rows; r++) {
        const float* Sr = S + (int64_t)r * Lp;
        uint16_t* Pr = P + (int64_t)r * Lp;
        const __m512 m = _mm512_set1_ps(mx[r]);
        __m512 sum = _mm512_setzero_ps();
        for (int jj = c0; jj < c1; jj += 32) {
            const __m512 p0 = exp2_bf16(_mm512_fmsub_ps(_mm512_load_ps(Sr + jj), cv, m));
            const __m512 p1 = exp2_bf16(_mm512_fmsub_ps(_mm512_load_ps(Sr + jj + 16), cv, m));
            sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
            _mm512_store_si512(Pr + jj, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
        }
        vec[r] = sum;
    }
    for (int r = 0; r < rows; r++) {
        const float tot = _mm512_reduce_add_ps(vec[r]);
        inv[r] = r < nr && tot > 0.0f ? 1.0f / tot : 0.0f;
    }
}

static void attend_item_dp(const Args& a, int s, int g, uint32_t* kP, uint32_t* vP, float* S,
                           uint32_t* P2, uint32_t* Q2) {
    const int start = a.cu[s], L = a.cu[s + 1] - start, D = a.D, D2 = a.D / 2;
    if (L <= 0) return;
    const int Lp = (L + 31) & ~31;
    const uint16_t* q = (const uint16_t*)a.q;
    uint16_t* out = (uint16_t*)a.out;
    pack_kv_pairs(a, start, L, Lp, g, kP, vP);
    const int rep = a.H / a.Hkv;
    const int nd = D / 16;
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int i0 = 0; i0 < L; i0 += R) {
            const int nr = L - i0 < R ? L - i0 : R;
            for (int r = 0; r < R; r++) {
                const uint16_t* qr = q + (int64_t)(start + i0 + r) * a.qs_t + (int64_t)h * a.qs_h;
                if (r < nr) memcpy(Q2 + r * D2, qr, (size_t)D * 2);
                else memset(Q2 + r * D2, 0, (size_t)D * 2);
            }
            int jhi, c0, c1;
            block_keys(a, i0, nr, L, 32, &jhi, &c0, &c1);
            for (int j = c0; j < c1; j += 32) {
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (int dp = 0; dp < D2; dp++) {
                    const __m512bh x = as_bh(_mm512_load_si512(kP + (int64_t)dp * Lp + j));
                    const __m512bh y = as_bh(_mm512_load_si512(kP + (int64_t)dp * Lp + j + 16));
                    const __m512bh q0 = as_bh(_mm512_set1_epi32((int)Q2[dp]));
                    const __m512bh q1 = as_bh(_mm512_set1_epi32((int)Q2[D2 + dp]));
                    const __m512bh q2 = as_bh(_mm512_set1_epi32((int)Q2[2 * D2 + dp]));
                    const __m512bh q3 = as_bh(_mm512_set1_epi32((int)Q2[3 * D2 + dp]));
                    a0 = _mm512_dpbf16_ps(a0, q0, x); b0 = _mm512_dpbf16_ps(b0, q0, y);
                    a1 = _mm512_dpbf16_ps(a1, q1, x); b1 = _mm512_dpbf16_ps(b1, q1, y);
                    a2 = _mm512_dpbf16_ps(a2, q2, x); b2 = _mm512_dpbf16_ps(b2, q2, y);
                    a3 = _mm512_dpbf16_ps(a3, q3, x); b3 = _mm512_dpbf16_ps(b3, q3, y);
                }
                _mm512_store_ps(S + j, a0);
                _mm512_store_ps(S + j + 16, b0);
                _mm512_store_ps(S + Lp + j, a1);
                _mm512_store_ps(S + Lp + j + 16, b1);
                _mm512_store_ps(S + 2 * Lp + j, a2);
                _mm512_store_ps(S + 2 * Lp + j + 16, b2);
                _mm512_store_ps(S + 3 * Lp + j, a3);
                _mm512_store_ps(S + 3 * Lp + j + 16, b3);
            }
            float inv[R];
            softmax_rows(S, Lp, R, nr, i0, L, c0, c1, a, h, (uint16_t*)P2, inv);
            const int jend = jhi < c1 ? jhi : c1;
            const int p0 = c0 / 2, p1 = (jend + 1) / 2;
            uint16_t* orow = out + (int64_t)(start + i0) * a.os_t + (int64_t)h * a.os_h;
            int c = 0;
            for (; c + 4 <= nd; c += 4) pv_block_dp<4>(P2, Lp, vP, D, c, p0, p1, inv, nr, orow, a.os_t);
            switch (nd - c) {
                case 3: pv_block_dp<3>(P2, Lp, vP, D, c, p0, p1, inv, nr, orow, a.os_t); break;
                case 2: pv_block_dp<2>(P2, Lp, vP, D, c, p0, p1, inv, nr, orow, a.os_t); break;
                case 1: pv_block_dp<1>(P2, Lp, vP, D, c, p0, p1, inv, nr, orow, a.os_t); break;
            }
        }
    }
}
#endif


#if defined(HAVE_DPBF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && !defined(NO_AMX)
#define HAVE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
// bf16 on CPUs with AMX: 16 query rows at a time, tile dot products for Q.K^T (16 x 16 scores
// per instruction and 32 dims) and for P.V, the same K/V pair layouts as vdpbf16ps, softmax in
// fp32 on AVX-512. Tiles: 0-3 accumulators, 4-7 operands; configured per thread per call and
// released after, so oneDNN's own AMX kernels (which configure their tiles each time) are unaffected.
struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static void tiles_on() {
    TileConfig c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) { c.colsb[t] = 64; c.rows[t] = 16; }
    _tile_loadconfig(&c);
}

// Scores for keys [c0, c1) of 16 query rows, NK = D/32 steps of 32 dims. With NK <= 2 the Q
// tiles stay loaded; with more they are reloaded per 32-key block.
template <int NK>
static inline void qk_amx(const uint16_t* Qb, int64_t qstride, const uint32_t* kP, int Lp, int c0,
                          int c1, float* S) {
    if (NK <= 2) {
        _tile_loadd(4, Qb, qstride);
        if (NK == 2) _tile_loadd(5, Qb + 32, qstride);
    }
    for (int j = c0; j < c1; j += 32) {
        _tile_zero(0);
        _tile_zero(1);
#pragma GCC unroll 4
        for (int ks = 0; ks < NK; ks++) {
            const uint32_t* Kb = kP + (int64_t)16 * ks * Lp + j;
            _tile_loadd(6, Kb, Lp * 4);
            _tile_loadd(7, Kb + 16, Lp * 4);
            if (ks % 2 == 0) {
                if (NK > 2) _tile_loadd(4, Qb + 32 * ks, qstride);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
            } else {
                if (NK > 2) _tile_loadd(5, Qb + 32 * ks, qstride);
                _tile_dpbf16ps(0, 5, 6);
                _tile_dpbf16ps(1, 5, 7);
            }
        }
        _tile_stored(0, S + j, Lp * 4);
        _tile_stored(1, S + j + 16, Lp * 4);
    }
}

// O (16 x 16W fp32, row stride D) = P (16 x [c0, c1) bf16) . V pairs, columns from col.
template <int W>
static inline void pv_amx(const uint16_t* P, int Lp, const uint32_t* vP, int D, int col, int c0,
                          int c1, float* O) {
    _tile_zero(0);
    if (W > 1) _tile_zero(1);
    if (W > 2) _tile_zero(2);
    if (W > 3) _tile_zero(3);
    for (int j = c0; j < c1; j += 32) {
        const uint32_t* Vb = vP + (int64_t)(j / 2) * D + col;
        _tile_loadd(4, P + j, Lp * 2);
        _tile_loadd(6, Vb, D * 4);
        _tile_dpbf16ps(0, 4, 6);
        if (W > 1) { _tile_loadd(7, Vb + 16, D * 4); _tile_dpbf16ps(1, 4, 7); }
        if (W > 2) { _tile_loadd(6, Vb + 32, D * 4); _tile_dpbf16ps(2, 4, 6); }
        if (W > 3) { _tile_loadd(7, Vb + 48, D * 4); _tile_dpbf16ps(3, 4, 7); }
    }
    _tile_stored(0, O + col, D * 4);
    if (W > 1) _tile_stored(1, O + col + 16, D * 4);
    if (W > 2) _tile_stored(2, O + col + 32, D * 4);
    if (W > 3) _tile_stored(3, O + col + 48, D * 4);
}

static const int RA = 16;  // query rows per AMX block

static void attend_item_amx(const Args& a, int s, int g, uint32_t* kP, uint32_t* vP, float* S,
                            uint16_t* P, uint16_t* Qs, float* O) {
    const int start = a.cu[s], L = a.cu[s + 1] - start, D = a.D;
    if (L <= 0) return;
    const int Lp = (L + 31) & ~31;
    const uint16_t* q = (const uint16_t*)a.q;
    uint16_t* out = (uint16_t*)a.out;
    pack_kv_pairs(a, start, L, Lp, g, kP, vP);
    const int rep = a.H / a.Hkv;
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int i0 = 0; i0 < L; i0 += RA) {
            const int nr = L - i0 < RA ? L - i0 : RA;
            int jhi, c0, c1;
            block_keys(a, i0, nr, L, 32, &jhi, &c0, &c1);
            // Q rows straight from the input when all 16 exist, else a zero-padded copy.
            const uint16_t* Qb = q + (int64_t)(start + i0) * a.qs_t + (int64_t)h * a.qs_h;
            int64_t qstride = a.qs_t * 2;
            if (nr < RA) {
                for (int r = 0; r < RA; r++) {
                    if (r < nr) memcpy(Qs + r * D, Qb + r * a.qs_t, (size_t)D * 2);
                    else memset(Qs + r * D, 0, (size_t)D * 2);
                }
                Qb = Qs;
                qstride = D * 2;
            }
            switch (D / 32) {
                case 1: qk_amx<1>(Qb, qstride, kP, Lp, c0, c1, S); break;
                case 2: qk_amx<2>(Qb, qstride, kP, Lp, c0, c1, S); break;
                case 3: qk_amx<3>(Qb, qstride, kP, Lp, c0, c1, S); break;
                default: qk_amx<4>(Qb, qstride, kP, Lp, c0, c1, S); break;
            }
            float inv[RA];
            softmax_rows(S, Lp, RA, nr, i0, L, c0, c1, a, h, P, inv);
            for (int col = 0; col < D; col += 64) {
                const int w = (D - col) / 16 < 4 ? (D - col) / 16 : 4;
                switch (w) {
                    case 4: pv_amx<4>(P, Lp, vP, D, col, c0, c1, O); break;
                    case 3: pv_amx<3>(P, Lp, vP, D, col, c0, c1, O); break;
                    case 2: pv_amx<2>(P, Lp, vP, D, col, c0, c1, O); break;
                    default: pv_amx<1>(P, Lp, vP, D, col, c0, c1, O); break;
                }
            }
            for (int r = 0; r < nr; r++) {
                const __m512 sc = _mm512_set1_ps(inv[r]);
                uint16_t* orow = out + (int64_t)(start + i0 + r) * a.os_t + (int64_t)h * a.os_h;
                for (int d = 0; d < D; d += 16)
                    _mm256_storeu_si256((__m256i*)(orow + d),
                                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(O + r * D + d), sc)));
            }
        }
    }
}
#endif

// Paths for bf16 inputs (fp32 inputs always take the FMA path).
enum { PATH_FMA = 0, PATH_DPBF16 = 1, PATH_AMX = 2 };

template <typename T>
static void run(const Args& a, int nthreads, int path) {
    int maxlen = 0;
    for (int s = 0; s < a.nseq; s++) {
        const int n = a.cu[s + 1] - a.cu[s];
        if (n > maxlen) maxlen = n;
    }
    const int Lp = (maxlen + 31) & ~31;
    const int64_t nitems = (int64_t)a.nseq * a.Hkv;
    const int rows = 16;  // >= R, RF, RA
#pragma omp parallel num_threads(nthreads)
    {
        // Denormals flushed to zero in the kernel (each would cost an assist), restored after.
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);
        const size_t kv = (size_t)a.D * Lp * sizeof(float);
        float* kT = (float*)aligned_alloc(64, kv);
        float* V = (float*)aligned_alloc(64, kv);
        float* Q = (float*)aligned_alloc(64, (size_t)rows * a.D * sizeof(float));
        float* S = (float*)aligned_alloc(64, (size_t)rows * Lp * sizeof(float));
        float* P = (float*)aligned_alloc(64, (size_t)rows * Lp * sizeof(float));
        float* O = (float*)aligned_alloc(64, (size_t)rows * a.D * sizeof(float));
#ifdef HAVE_AMX
        if (path == PATH_AMX) tiles_on();
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < nitems; it++) {
            // Longest sequences first (order is by length, descending), so the tail is short.
            const int s = a.order[it / a.Hkv], g = (int)(it % a.Hkv);
#ifdef HAVE_AMX
            if (sizeof(T) == 2 && path == PATH_AMX) {
                attend_item_amx(a, s, g, (uint32_t*)kT, (uint32_t*)V, S, (uint16_t*)P,
                                (uint16_t*)Q, O);
                continue;
            }
#endif
#ifdef HAVE_DPBF16
            if (sizeof(T) == 2 && path == PATH_DPBF16) {
                attend_item_dp(a, s, g, (uint32_t*)kT, (uint32_t*)V, S, (uint32_t*)P, (uint32_t*)Q);
                continue;
            }
#endif
            attend_item<T>(a, s, g, kT, V, Q, S);
        }
#ifdef HAVE_AMX
        if (path == PATH_AMX) _tile_release();
#endif
        free(kT); free(V); free(Q); free(S); free(P); free(O);
        _mm_setcsr(csr);
    }
}

// Which bf16 paths this build can run here: bit 0 vdpbf16ps, bit 1 AMX (compiled in, and the
// kernel granted the tile state: Linux asks each process to request it).
extern "C" int bf16_paths() {
    int paths = 0;
#ifdef HAVE_DPBF16
    paths |= 1;
#endif
#ifdef HAVE_AMX
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    static const int granted =
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;  // once per process
    if (granted) paths |= 2;
#endif
    return paths;
}

// 0 when done; 1 for a shape no path takes; 2 for a bf16 path this build lacks.
extern "C" int varlen_attention(int is_bf16, const void* q, const void* k, const void* v, void* out,
                                const int64_t* strides, const int32_t* cu, const int32_t* order,
                                int nseq, int H, int Hkv, int D, float scale, int left, int right,
                                int nthreads, int path, const float* bias, int64_t bias_h,
                                int64_t bias_r) {
    if (D % 16 || D > 256 || H % Hkv) return 1;
    if (is_bf16 && path != PATH_FMA && !(bf16_paths() & path)) return 2;
    if (is_bf16 && path == PATH_AMX && (D % 32 || D > 128)) return 1;
    Args a = {q, k, v, out, strides[0], strides[1], strides[2], strides[3], strides[4], strides[5],
              strides[6], strides[7], cu, order, nseq, H, Hkv, D, scale, left, right,
              bias, bias_h, bias_r};
    if (is_bf16) run<uint16_t>(a, nthreads, path);
    else run<float>(a, nthreads, PATH_FMA);
    return 0;
}

// MACs per second of vdpbf16ps over 512-bit fp32 FMA on this core (0 without AVX512-BF16):
// some CPUs run vdpbf16ps at half the FMA rate, where the bf16 path is slower than fp32.
extern "C" double dpbf16_speedup() {
#ifdef HAVE_DPBF16
    const long n = 200000;
    __m512 acc[12];
    const __m512bh x = as_bh(_mm512_set1_epi32(0x3f803f80));
    const __m512 f = _mm512_set1_ps(1e-9f), one = _mm512_set1_ps(1.0f);
    double best[2] = {1e30, 1e30};
    for (int rep = 0; rep < 3; rep++)
        for (int kind = 0; kind < 2; kind++) {
            for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_ps();
            const double t0 = omp_get_wtime();
            for (long it = 0; it < n; it++) {
#pragma GCC unroll 12
                for (int i = 0; i < 12; i++)
                    acc[i] = kind ? _mm512_fmadd_ps(acc[i], f, one) : _mm512_dpbf16_ps(acc[i], x, x);
            }
            const double dt = omp_get_wtime() - t0;
            float sink = 0.0f;
            for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(acc[i]);
            if (sink == 12345.0f) return -1.0;  // keeps the loops
            if (dt < best[kind]) best[kind] = dt;
        }
    return 2.0 * best[1] / best[0];  // a vdpbf16ps does 32 MACs, an FMA 16
#else
    return 0.0;
#endif
}
