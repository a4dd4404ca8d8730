// See quant_linear.h. Block layouts are gguf_blocks.h's (one copy for every kernel).
//
// The activation side, per row of x: Q8_0 and Q4_0 weights meet blocks of 32 int8 with an fp32
// scale (d = amax / 127, q = round-half-even(x * 127 / amax)) and their sum; the K-quants meet
// blocks of 256 with an fp32 scale and the sums of each 16 values, which turn every block's
// offset (Q4_0's -8, Q6_K's -32, Q4_K/Q5_K's mins) into one small integer dot instead of work
// per weight. Weights enter the integer dots unsigned (nibbles, 6-bit values, or |q| with q's
// sign moved onto x for Q8_0), as maddubs/dpbusd need; no int16 pair sum can saturate (at most
// 2 * 128 * 127).
// Each thread owns a block of output features, so each weight byte is read once per call.
#include "cpu/quant_linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/act_blocks.h"
#include "cpu/epilogue.h"
#include "cpu/gguf_dequant.h"
#include "cpu/int8_tiles.h"
#include "cpu/linear.h"
#include "cpu/linear_params.h"
#include "cpu/prefetch.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

using gguf::Layout;
using gguf::QType;

// d and q of n values (a multiple of 32); returns d. q = x * (127 / amax) rounded to nearest,
// ties to even.
float quantize_values_portable(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float id = 127.f / amax;
  // amax 0, or below ~3.7e-37 (127 / amax overflows): the block is zero at int8 resolution
  if (amax == 0.f || std::isinf(id)) {
    std::fill(q, q + n, int8_t{0});
    return amax / 127.f;
  }
  for (int i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * id));
  return amax / 127.f;
}

#ifdef SOPRANO_X86_DISPATCH
// The same bits, 32 values a pass: cvtps2dq rounds as nearbyint does (MXCSR's default, ties to
// even), max_ps(v, m) keeps m for a NaN v as std::max does. The scalar loop (a libm call a
// value) had been ~4% of a Q4_0 step and of the Q8_0 server, run by one thread while the
// other waited.
__attribute__((target("avx2"))) float quantize_values_avx2(const float* x, int n, int8_t* q) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8)
    m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float amax = _mm_cvtss_f32(h);
  if (amax == 0.f || std::isinf(127.f / amax)) {
    std::fill(q, q + n, int8_t{0});
    return amax / 127.f;
  }
  const __m256 id = _mm256_set1_ps(127.f / amax);
  // packs interleave the 128-bit halves; this puts the 32 bytes back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int i = 0; i < n; i += 32) {
    __m256i v[4];
    for (int u = 0; u < 4; ++u)
      v[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * u), id));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                             _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  return amax / 127.f;
}

// The sum of 32 int8: their bytes offset by 128 (unsigned), summed against zero in 8-byte
// groups (sad), less the 32 offsets.
__attribute__((target("avx2"))) int32_t sum32_avx2(const int8_t* q) {
  const __m256i u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)),
                                     _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i s = _mm256_sad_epu8(u, _mm256_setzero_si256());
  const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return static_cast<int32_t>(_mm_cvtsi128_si64(_mm_add_epi64(h, _mm_unpackhi_epi64(h, h)))) -
         32 * 128;
}
#endif

float quantize_values(const float* x, int n, int8_t* q) {
#ifdef SOPRANO_X86_DISPATCH
  static const bool avx2 = has_avx2_fma_f16c();
  if (avx2) return quantize_values_avx2(x, n, q);
#endif
  return quantize_values_portable(x, n, q);
}

void quantize_row(const float* x, int64_t K, BlockQ8* out) {
  for (int64_t b = 0; b < K / 32; ++b) {
    BlockQ8& o = out[b];
    o.d = quantize_values(x + 32 * b, 32, o.q);
#ifdef SOPRANO_X86_DISPATCH
    static const bool avx2 = has_avx2_fma_f16c();
    if (avx2) {
      o.sum = sum32_avx2(o.q);
      continue;
    }
#endif
    o.sum = 0;
    for (int8_t v : o.q) o.sum += v;
  }
}

void quantize_row(const float* x, int64_t K, BlockQ8K* out) {
  for (int64_t b = 0; b < K / 256; ++b) {
    BlockQ8K& o = out[b];
    o.d = quantize_values(x + 256 * b, 256, o.q);
    for (int i = 0; i < 16; ++i) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += o.q[16 * i + j];
      o.bsums[i] = static_cast<int16_t>(s);
    }
  }
}

// The activation block each weight type meets.
template <QType T>
using Act = std::conditional_t<Layout<T>::kBlock == 32, BlockQ8, BlockQ8K>;

// Portable dots: one weight row (nb blocks) against one quantized row of x.
template <QType T>
float dot_portable(const uint8_t* w, const Act<T>* x, int64_t nb);

template <>
float dot_portable<QType::Q8_0>(const uint8_t* w, const BlockQ8* x, int64_t nb) {
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 34) {
    int s = 0;
    for (int i = 0; i < 32; ++i) s += static_cast<int8_t>(w[2 + i]) * x[b].q[i];
    acc += gguf::half_at(w) * x[b].d * static_cast<float>(s);
  }
  return acc;
}

template <>
float dot_portable<QType::Q4_0>(const uint8_t* w, const BlockQ8* x, int64_t nb) {
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 18) {
    int s = 0;
    for (int i = 0; i < 16; ++i)
      s += (w[2 + i] & 15) * x[b].q[i] + (w[2 + i] >> 4) * x[b].q[i + 16];
    acc += gguf::half_at(w) * x[b].d * static_cast<float>(s - 8 * x[b].sum);
  }
  return acc;
}

// Q4_K and Q5_K: value l of sub-block j from nibble byte 32 (j / 2) + l, fifth bit j of qh[l].
template <bool kFive>
float dot_portable_k(const uint8_t* w, const BlockQ8K* x, int64_t nb) {
  constexpr int kBytes = kFive ? 176 : 144;
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += kBytes) {
    const uint8_t* qh = w + 16;
    const uint8_t* qs = w + (kFive ? 48 : 16);
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      gguf::k_scale_min(w + 4, j, sc, mn);
      int s = 0;
      for (int l = 0; l < 32; ++l) {
        const int nibble = qs[32 * (j / 2) + l] >> 4 * (j & 1) & 15;
        const int q = nibble | (kFive ? (qh[l] >> j & 1) << 4 : 0);
        s += q * x[b].q[32 * j + l];
      }
      sumi += sc * s;
      summ += mn * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
    }
    acc += gguf::half_at(w) * x[b].d * static_cast<float>(sumi) -
           gguf::half_at(w + 2) * x[b].d * static_cast<float>(summ);
  }
  return acc;
}

template <>
float dot_portable<QType::Q4_K>(const uint8_t* w, const BlockQ8K* x, int64_t nb) {
  return dot_portable_k<false>(w, x, nb);
}

template <>
float dot_portable<QType::Q5_K>(const uint8_t* w, const BlockQ8K* x, int64_t nb) {
  return dot_portable_k<true>(w, x, nb);
}

// Q6_K: element e = 128 h + 32 c + l takes its low nibble from ql[64 h + 32 (c & 1) + l] (high
// nibble for c >= 2) and its top two bits from bits 2c of qh[32 h + l]; scale e / 16.
template <>
float dot_portable<QType::Q6_K>(const uint8_t* w, const BlockQ8K* x, int64_t nb) {
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 210) {
    int sumi = 0;
    for (int i = 0; i < 16; ++i) {
      int s = 0;
      for (int e = 16 * i; e < 16 * i + 16; ++e) {
        const int h = e >> 7, c = (e >> 5) & 3, l = e & 31;
        const int lo = w[64 * h + 32 * (c & 1) + l] >> 4 * (c >> 1) & 15;
        const int hi = w[128 + 32 * h + l] >> 2 * c & 3;
        s += (lo | hi << 4) * x[b].q[e];
      }
      sumi += static_cast<int8_t>(w[192 + i]) * (s - 32 * x[b].bsums[i]);
    }
    acc += gguf::half_at(w + 208) * x[b].d * static_cast<float>(sumi);
  }
  return acc;
}

// Rows of x a weight row is dotted against at once, at most: four accumulators and the unpacked
// weight vectors fit the registers.
constexpr int kRows = 4;

#ifdef SOPRANO_X86_DISPATCH
#define SOPRANO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SOPRANO_VNNI __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))
#define SOPRANO_VNNI512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

// Every intrinsic the x86 dots use, so one template serves every instruction set; the integer
// dot is the only thing Vnni changes, and Vnni512 (below) the width of every vector.
struct Avx2 {
  using F = __m256;
  using V = __m256i;
  static constexpr int kWidth = 8;  // weight rows per vector: one x8 group
  SOPRANO_AVX2 static inline __m256i load(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  }
  // The *_w functions read an x8 group's weight bytes at p (gs: the next group's distance, which
  // only wider vectors use).
  SOPRANO_AVX2 static inline __m256i load_w(const uint8_t* p, int64_t) { return load(p); }
  static inline void prefetch_w(const uint8_t* p, int64_t, int64_t bytes) {
    prefetch_ahead(p, bytes);
  }
  // 16 bytes of nibbles -> 32 bytes: low nibbles first, then high (Q4_0's value order).
  SOPRANO_AVX2 static inline __m256i nibbles16(const uint8_t* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(15));
  }
  // The bits `mask` << shift of every byte, moved to mask << up (which must fit a byte): one
  // 16-bit shift by the difference, then the mask at its new place. A bit that crosses into the
  // neighbouring byte lands outside that byte's mask, so the bytes stay apart.
  SOPRANO_AVX2 static inline __m256i bits(__m256i v, int shift, int mask, int up) {
    const __m256i moved = up > shift   ? _mm256_slli_epi16(v, up - shift)
                          : up < shift ? _mm256_srli_epi16(v, shift - up)
                                       : v;
    return _mm256_and_si256(moved, _mm256_set1_epi8(static_cast<char>(mask << up)));
  }
  SOPRANO_AVX2 static inline __m256i or_(__m256i a, __m256i b) { return _mm256_or_si256(a, b); }
  SOPRANO_AVX2 static inline __m256i abs8(__m256i a) { return _mm256_sign_epi8(a, a); }
  SOPRANO_AVX2 static inline __m256i sign8(__m256i x, __m256i s) {
    return _mm256_sign_epi8(x, s);
  }
  // Unsigned a times signed b, four neighbours summed -> 8 int32.
  SOPRANO_AVX2 static inline __m256i dot(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
  }
  // acc + dot(a, b)
  SOPRANO_AVX2 static inline __m256i dot_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, dot(a, b));
  }
  // The same with int16 scales: lanes 0-3 (values 0-15) times `scale`'s low half, 4-7 its high.
  SOPRANO_AVX2 static inline __m256i dot_by(__m256i a, __m256i b, __m256i scale) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), scale);
  }
  // Word `lo` of each 128-bit half of v in the low half's lanes, word `hi` in the high half's.
  SOPRANO_AVX2 static inline __m256i words(__m256i v, int lo, int hi) {
    const auto pick = [](int i) {
      return _mm_set1_epi16(static_cast<int16_t>(2 * i | (2 * i + 1) << 8));
    };
    return _mm256_shuffle_epi8(v, _mm256_set_m128i(pick(hi), pick(lo)));
  }
  // Q4_K/Q5_K's eight 6-bit scales as int16 in both 128-bit halves, and the eight mins as int16,
  // from whole words (gguf::k_scale_min's layout, four at once).
  SOPRANO_AVX2 static inline __m256i k_scales(const uint8_t* s, __m128i& mins) {
    uint32_t u[3];
    std::memcpy(u, s, sizeof u);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, mn_lo = u[1] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 6) & 0x03030303u) << 4;
    const uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 6) & 0x03030303u) << 4;
    mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(mn_hi),
                                           static_cast<int>(mn_lo)));
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(
        _mm_set_epi32(0, 0, static_cast<int>(sc_hi), static_cast<int>(sc_lo))));
  }
  // sum_j min[j] * (the sum of x over sub-block j, from its two 16-value sums)
  SOPRANO_AVX2 static inline int k_min_sum(__m128i mins, const int16_t* bsums) {
    const auto* b = reinterpret_cast<const __m128i*>(bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(b), _mm_loadu_si128(b + 1));
    return hsum32(_mm_madd_epi16(mins, pairs));
  }
  SOPRANO_AVX2 static inline int hsum32(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
    return _mm_cvtsi128_si32(v);
  }
  // Q6_K's sixteen int8 scales as int16.
  SOPRANO_AVX2 static inline __m256i q6_scales(const uint8_t* s) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  }
  // sum_i scale[i] * bsums[i]
  SOPRANO_AVX2 static inline int q6_scaled_sum(__m256i sc, const int16_t* bsums) {
    const __m256i prod = _mm256_madd_epi16(sc, load(bsums));
    return hsum32(_mm_add_epi32(_mm256_castsi256_si128(prod), _mm256_extracti128_si256(prod, 1)));
  }
  // Both 128-bit halves of v set to v's half `h`.
  SOPRANO_AVX2 static inline __m256i half_of(__m256i v, int h) {
    return h ? _mm256_permute2x128_si256(v, v, 0x11) : _mm256_permute2x128_si256(v, v, 0x00);
  }
  SOPRANO_AVX2 static inline __m256i add32(__m256i a, __m256i b) {
    return _mm256_add_epi32(a, b);
  }
  SOPRANO_AVX2 static inline __m256i zero() { return _mm256_setzero_si256(); }
  SOPRANO_AVX2 static inline __m256 fzero() { return _mm256_setzero_ps(); }
  SOPRANO_AVX2 static inline __m256 fma(float a, __m256i b, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(a), _mm256_cvtepi32_ps(b), acc);
  }
  SOPRANO_AVX2 static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  SOPRANO_AVX2 static inline float half(const uint8_t* p) { return _cvtsh_ss(gguf::u16_at(p)); }
  // What Q4_0x8's lanes (one weight row each) need: 8 fp16 scales as floats, four int8 of x in
  // every lane, and lane-wise scaling.
  SOPRANO_AVX2 static inline __m256 halves_w(const uint8_t* p, int64_t) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  SOPRANO_AVX2 static inline __m256i bcast4(const int8_t* p) {
    int32_t four;
    std::memcpy(&four, p, sizeof four);
    return _mm256_set1_epi32(four);
  }
  SOPRANO_AVX2 static inline __m256 times(__m256 v, float s) {
    return _mm256_mul_ps(v, _mm256_set1_ps(s));
  }
  // acc + d * float(i), lane by lane
  SOPRANO_AVX2 static inline __m256 fma_lanes(__m256 d, __m256i i, __m256 acc) {
    return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc);
  }
  // acc + d * c
  SOPRANO_AVX2 static inline __m256 fma_const(__m256 d, float c, __m256 acc) {
    return _mm256_fmadd_ps(d, _mm256_set1_ps(c), acc);
  }
  SOPRANO_AVX2 static inline void store_diff(float* out, __m256 a, __m256 b) {
    _mm256_storeu_ps(out, _mm256_sub_ps(a, b));
  }
  // Q4_Kx8's byte scales of 8 rows as int32 lanes, and int32 lane products.
  SOPRANO_AVX2 static inline __m256i bytes_w(const uint8_t* p, int64_t) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  SOPRANO_AVX2 static inline __m256i sbytes_w(const uint8_t* p, int64_t) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  SOPRANO_AVX2 static inline __m256i mullo32(__m256i a, __m256i b) {
    return _mm256_mullo_epi32(a, b);
  }
  SOPRANO_AVX2 static inline __m256i mul32(__m256i a, int s) {
    return _mm256_mullo_epi32(a, _mm256_set1_epi32(s));
  }
  // 16 int8 at p, two x8 rows of byte scales (sub-block 2k's 8 rows, then 2k+1's), as each
  // row's int16 pair (its 2k, its 2k+1) in one int32 lane: what dot16_acc multiplies.
  SOPRANO_AVX2 static inline __m128i pairs8(const uint8_t* p) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm_unpacklo_epi8(v, _mm_srli_si128(v, 8));
  }
  SOPRANO_AVX2 static inline __m256i sbyte_pairs_w(const uint8_t* p, int64_t) {
    return _mm256_cvtepi8_epi16(pairs8(p));
  }
  // acc + each int32 lane's two int16 products summed (b an int16 pair in every lane)
  SOPRANO_AVX2 static inline __m256i dot16_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }
  SOPRANO_AVX2 static inline __m256i sub_times32(__m256i a, __m256i b) {
    return _mm256_sub_epi32(a, _mm256_slli_epi32(b, 5));
  }
};

// The scaled dots (K-quants) stay maddubs + madd: dpbusd would need an int32 multiply after.
struct Vnni : Avx2 {
  SOPRANO_VNNI static inline __m256i dot(__m256i a, __m256i b) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
  }
  SOPRANO_VNNI static inline __m256i dot_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpbusd_epi32(acc, a, b);
  }
  SOPRANO_VNNI static inline __m256i dot16_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpwssd_epi32(acc, a, b);
  }
};

// Two x8 groups (16 weight rows) per zmm register, the low half one group's lanes as Vnni has
// them and the high half the next group's: every lane does Vnni's arithmetic, so the results are
// Vnni's bits, with half the instructions per weight row. AVX-512 has no byte sign instruction:
// sign8 negates x where s < 0 (where s is 0 it keeps x, which then meets |s| = 0).
struct Vnni512 {
  using F = __m512;
  using V = __m512i;
  static constexpr int kWidth = 16;
  static inline void prefetch_w(const uint8_t* p, int64_t gs, int64_t bytes) {
    prefetch_ahead(p, bytes);
    prefetch_ahead(p + gs, bytes);
  }
  SOPRANO_VNNI512 static inline __m512i load_w(const uint8_t* p, int64_t gs) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + gs));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  SOPRANO_VNNI512 static inline __m512 halves_w(const uint8_t* p, int64_t gs) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + gs));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
  }
  SOPRANO_VNNI512 static inline __m128i eight_and_eight(const uint8_t* p, int64_t gs) {
    return _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)),
                              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + gs)));
  }
  SOPRANO_VNNI512 static inline __m512i bytes_w(const uint8_t* p, int64_t gs) {
    return _mm512_cvtepu8_epi32(eight_and_eight(p, gs));
  }
  SOPRANO_VNNI512 static inline __m512i sbytes_w(const uint8_t* p, int64_t gs) {
    return _mm512_cvtepi8_epi32(eight_and_eight(p, gs));
  }
  SOPRANO_VNNI512 static inline __m512i bits(__m512i v, int shift, int mask, int up) {
    const __m512i moved = up > shift   ? _mm512_slli_epi16(v, up - shift)
                          : up < shift ? _mm512_srli_epi16(v, shift - up)
                                       : v;
    return _mm512_and_si512(moved, _mm512_set1_epi8(static_cast<char>(mask << up)));
  }
  SOPRANO_VNNI512 static inline __m512i or_(__m512i a, __m512i b) { return _mm512_or_si512(a, b); }
  SOPRANO_VNNI512 static inline __m512i abs8(__m512i a) { return _mm512_abs_epi8(a); }
  SOPRANO_VNNI512 static inline __m512i sign8(__m512i x, __m512i s) {
    return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(s), _mm512_setzero_si512(), x);
  }
  SOPRANO_VNNI512 static inline __m512i dot_acc(__m512i acc, __m512i a, __m512i b) {
    return _mm512_dpbusd_epi32(acc, a, b);
  }
  SOPRANO_VNNI512 static inline __m512i add32(__m512i a, __m512i b) {
    return _mm512_add_epi32(a, b);
  }
  SOPRANO_VNNI512 static inline __m512i mullo32(__m512i a, __m512i b) {
    return _mm512_mullo_epi32(a, b);
  }
  SOPRANO_VNNI512 static inline __m512i mul32(__m512i a, int s) {
    return _mm512_mullo_epi32(a, _mm512_set1_epi32(s));
  }
  SOPRANO_VNNI512 static inline __m512i sbyte_pairs_w(const uint8_t* p, int64_t gs) {
    const __m256i both = _mm256_set_m128i(Avx2::pairs8(p + gs), Avx2::pairs8(p));
    return _mm512_cvtepi8_epi16(both);
  }
  SOPRANO_VNNI512 static inline __m512i dot16_acc(__m512i acc, __m512i a, __m512i b) {
    return _mm512_dpwssd_epi32(acc, a, b);
  }
  SOPRANO_VNNI512 static inline __m512i sub_times32(__m512i a, __m512i b) {
    return _mm512_sub_epi32(a, _mm512_slli_epi32(b, 5));
  }
  SOPRANO_VNNI512 static inline __m512i zero() { return _mm512_setzero_si512(); }
  SOPRANO_VNNI512 static inline __m512 fzero() { return _mm512_setzero_ps(); }
  SOPRANO_VNNI512 static inline __m512i bcast4(const int8_t* p) {
    int32_t four;
    std::memcpy(&four, p, sizeof four);
    return _mm512_set1_epi32(four);
  }
  SOPRANO_VNNI512 static inline __m512 times(__m512 v, float s) {
    return _mm512_mul_ps(v, _mm512_set1_ps(s));
  }
  SOPRANO_VNNI512 static inline __m512 fma_lanes(__m512 d, __m512i i, __m512 acc) {
    return _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc);
  }
  SOPRANO_VNNI512 static inline __m512 fma_const(__m512 d, float c, __m512 acc) {
    return _mm512_fmadd_ps(d, _mm512_set1_ps(c), acc);
  }
  SOPRANO_VNNI512 static inline void store_diff(float* out, __m512 a, __m512 b) {
    _mm512_storeu_ps(out, _mm512_sub_ps(a, b));
  }
};

// The dot kernels hold vectors without a target of their own: they exist only inlined into
// dots_avx2, dots_vnni and dots_vnni512 (flatten), so GCC's note that their ABI would differ if
// they were called never applies.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// One weight row (nb blocks) against R rows of x (row r at x + r * nb), into out[0..R): each
// weight block is unpacked once for all R rows (a batched step's rows share its decode). A row's
// sums run in the same order whatever R is, so its result does not depend on its batch.
template <QType T, class I, int R>
inline __attribute__((always_inline)) void dot_x86(const uint8_t* w, const Act<T>* x,
                                                   int64_t nb, float* out) {
  __m256 acc[R];
  float offset[R];  // the blocks' scaled constant terms, subtracted at the end
  for (int r = 0; r < R; ++r) {
    acc[r] = I::fzero();
    offset[r] = 0.f;
  }
  for (int64_t b = 0; b < nb; ++b, w += Layout<T>::kBytes) {
    if constexpr (T == QType::Q8_0) {
      const __m256i q = I::load(w + 2), aq = I::abs8(q);
      const float d = I::half(w);
      for (int r = 0; r < R; ++r) {
        const Act<T>& a = x[r * nb + b];
        acc[r] = I::fma(d * a.d, I::dot(aq, I::sign8(I::load(a.q), q)), acc[r]);
      }
    } else if constexpr (T == QType::Q4_0) {
      const __m256i q = I::nibbles16(w + 2);
      const float d = I::half(w);
      for (int r = 0; r < R; ++r) {
        const Act<T>& a = x[r * nb + b];
        const float da = d * a.d;
        acc[r] = I::fma(da, I::dot(q, I::load(a.q)), acc[r]);
        offset[r] += da * static_cast<float>(8 * a.sum);
      }
    } else if constexpr (T == QType::Q4_K || T == QType::Q5_K) {
      constexpr bool kFive = T == QType::Q5_K;
      __m128i mins;
      const __m256i sc = I::k_scales(w + 4, mins);
      const float d = I::half(w), dmin = I::half(w + 2);
      const uint8_t* qs = w + (kFive ? 48 : 16);
      __m256i qh;
      if constexpr (kFive) qh = I::load(w + 16);
      __m256i sumi[R];
      for (int r = 0; r < R; ++r) {
        const Act<T>& a = x[r * nb + b];
        offset[r] += dmin * a.d * static_cast<float>(I::k_min_sum(mins, a.bsums));
        sumi[r] = I::zero();
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i q = I::load(qs + 32 * c);
        __m256i lo = I::bits(q, 0, 15, 0), hi = I::bits(q, 4, 15, 0);
        if constexpr (kFive) {
          lo = I::or_(lo, I::bits(qh, 2 * c, 1, 4));
          hi = I::or_(hi, I::bits(qh, 2 * c + 1, 1, 4));
        }
        const __m256i s_lo = I::words(sc, 2 * c, 2 * c), s_hi = I::words(sc, 2 * c + 1, 2 * c + 1);
        for (int r = 0; r < R; ++r) {
          const int8_t* xq = x[r * nb + b].q + 64 * c;
          sumi[r] = I::add32(sumi[r], I::dot_by(lo, I::load(xq), s_lo));
          sumi[r] = I::add32(sumi[r], I::dot_by(hi, I::load(xq + 32), s_hi));
        }
      }
      for (int r = 0; r < R; ++r) acc[r] = I::fma(d * x[r * nb + b].d, sumi[r], acc[r]);
    } else {  // Q6_K
      const __m256i sc = I::q6_scales(w + 192);
      const float d = I::half(w + 208);
      __m256i sumi[R];
      for (int r = 0; r < R; ++r) {
        const Act<T>& a = x[r * nb + b];
        offset[r] += d * a.d * static_cast<float>(32 * I::q6_scaled_sum(sc, a.bsums));
        sumi[r] = I::zero();
      }
      for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = I::load(w + 64 * h), ql1 = I::load(w + 64 * h + 32);
        const __m256i qh = I::load(w + 128 + 32 * h);
        const __m256i sch = I::half_of(sc, h);  // scales 8h .. 8h + 7
        const __m256i q[4] = {I::or_(I::bits(ql0, 0, 15, 0), I::bits(qh, 0, 3, 4)),
                              I::or_(I::bits(ql1, 0, 15, 0), I::bits(qh, 2, 3, 4)),
                              I::or_(I::bits(ql0, 4, 15, 0), I::bits(qh, 4, 3, 4)),
                              I::or_(I::bits(ql1, 4, 15, 0), I::bits(qh, 6, 3, 4))};
        for (int c = 0; c < 4; ++c) {
          const __m256i s = I::words(sch, 2 * c, 2 * c + 1);
          for (int r = 0; r < R; ++r)
            sumi[r] = I::add32(sumi[r],
                               I::dot_by(q[c], I::load(x[r * nb + b].q + 128 * h + 32 * c), s));
        }
      }
      for (int r = 0; r < R; ++r) acc[r] = I::fma(d * x[r * nb + b].d, sumi[r], acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = I::hsum(acc[r]) - offset[r];
}
#pragma GCC diagnostic pop

#endif

// Q4_0x8 (gguf_dequant_params.h): 8 weight rows, one per lane (16, two groups gs bytes apart,
// with Vnni512), against R rows of x, into out[r * I::kWidth + lane]. The integer dot of a block
// for all 8 rows is 8 dots of a 32-byte weight vector (four values of each row) with four values
// of x broadcast; the -8 offset comes off through x's block sums, as for Q4_0. Each row's sums
// run in the same order whatever R is.
constexpr int64_t kX8Bytes = 8 * 18, kX8Q8Bytes = 8 * 34, kX8Q6Bytes = 8 * 210;
// Q4_Kx8's and Q5_Kx8's bytes per 8 rows and block, and where their nibbles start.
template <bool kFive>
constexpr int64_t kX8KBytes = 8 * (kFive ? 180 : 148);
template <bool kFive>
constexpr int64_t kX8KNibbles = kFive ? 416 : 160;

#ifdef SOPRANO_X86_DISPATCH
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <class I, int R>
inline __attribute__((always_inline)) void dot8_x86(const uint8_t* g, int64_t gs,
                                                    const BlockQ8* x, int64_t nb, float* out) {
  using F = typename I::F;
  using V = typename I::V;
  F acc[R], off[R];
  for (int r = 0; r < R; ++r) acc[r] = off[r] = I::fzero();
  for (int64_t b = 0; b < nb; ++b, g += kX8Bytes) {
    I::prefetch_w(g, gs, kX8Bytes);
    const F dw = I::halves_w(g, gs);
    V q[8];
    for (int c = 0; c < 4; ++c) {
      const V v = I::load_w(g + 16 + 32 * c, gs);
      q[c] = I::bits(v, 0, 15, 0);
      q[c + 4] = I::bits(v, 4, 15, 0);
    }
    for (int r = 0; r < R; ++r) {
      const BlockQ8& a = x[r * nb + b];
      V s = I::zero();
      for (int i = 0; i < 8; ++i) s = I::dot_acc(s, q[i], I::bcast4(a.q + 4 * i));
      const F dd = I::times(dw, a.d);
      acc[r] = I::fma_lanes(dd, s, acc[r]);
      off[r] = I::fma_const(dd, 8.f * static_cast<float>(a.sum), off[r]);
    }
  }
  for (int r = 0; r < R; ++r) I::store_diff(out + I::kWidth * r, acc[r], off[r]);
}

// Q8_0x8: signed weights, so each product is |w| times x with w's sign (as dot_x86's Q8_0).
template <class I, int R>
inline __attribute__((always_inline)) void dot8q8_x86(const uint8_t* g, int64_t gs,
                                                      const BlockQ8* x, int64_t nb, float* out) {
  using F = typename I::F;
  using V = typename I::V;
  F acc[R];
  for (int r = 0; r < R; ++r) acc[r] = I::fzero();
  for (int64_t b = 0; b < nb; ++b, g += kX8Q8Bytes) {
    I::prefetch_w(g, gs, kX8Q8Bytes);
    const F dw = I::halves_w(g, gs);
    V q[8], aq[8];
    for (int i = 0; i < 8; ++i) {
      q[i] = I::load_w(g + 16 + 32 * i, gs);
      aq[i] = I::abs8(q[i]);
    }
    for (int r = 0; r < R; ++r) {
      const BlockQ8& a = x[r * nb + b];
      V s = I::zero();
      for (int i = 0; i < 8; ++i) s = I::dot_acc(s, aq[i], I::sign8(I::bcast4(a.q + 4 * i), q[i]));
      acc[r] = I::fma_lanes(I::times(dw, a.d), s, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) I::store_diff(out + I::kWidth * r, acc[r], I::fzero());
}

// Q6_Kx8 (gguf_dequant_params.h): per 32 values (a quarter c of a half h) the 6-bit values of
// all 8 rows in lanes, dotted against x in two 16-value sub-blocks, each times its rows' int8
// scales; the -32 offset comes off through x's 16-value sums.
template <class I, int R>
inline __attribute__((always_inline)) void dot8q6_x86(const uint8_t* g, int64_t gs,
                                                      const BlockQ8K* x, int64_t nb, float* out) {
  using F = typename I::F;
  using V = typename I::V;
  F acc[R];
  for (int r = 0; r < R; ++r) acc[r] = I::fzero();
  for (int64_t b = 0; b < nb; ++b, g += kX8Q6Bytes) {
    I::prefetch_w(g, gs, kX8Q6Bytes);
    V isum[R], off[R];
    for (int r = 0; r < R; ++r) isum[r] = off[r] = I::zero();
    for (int k = 0; k < 8; ++k) {  // the offset, 32 sum_sub scale * bsum, two subs at a time
      const V sc = I::sbyte_pairs_w(g + 16 + 16 * k, gs);
      for (int r = 0; r < R; ++r)
        off[r] = I::dot16_acc(off[r], sc, I::bcast4(reinterpret_cast<const int8_t*>(
                                              x[r * nb + b].bsums + 2 * k)));
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        V lo[R], hi[R];
        for (int r = 0; r < R; ++r) lo[r] = hi[r] = I::zero();
        for (int i = 0; i < 8; ++i) {
          const V ql = I::load_w(g + 656 + 256 * (2 * h + (c & 1)) + 32 * i, gs);
          const V qh = I::load_w(g + 144 + 256 * h + 32 * i, gs);
          const V q = I::or_(I::bits(ql, 4 * (c >> 1), 15, 0), I::bits(qh, 2 * c, 3, 4));
          for (int r = 0; r < R; ++r) {
            const V xv = I::bcast4(x[r * nb + b].q + 128 * h + 32 * c + 4 * i);
            if (i < 4)
              lo[r] = I::dot_acc(lo[r], q, xv);
            else
              hi[r] = I::dot_acc(hi[r], q, xv);
          }
        }
        const int sub = 8 * h + 2 * c;
        const V sl = I::sbytes_w(g + 16 + 8 * sub, gs), sh = I::sbytes_w(g + 24 + 8 * sub, gs);
        for (int r = 0; r < R; ++r)
          isum[r] = I::add32(isum[r], I::add32(I::mullo32(lo[r], sl), I::mullo32(hi[r], sh)));
      }
    const F dw = I::halves_w(g, gs);
    for (int r = 0; r < R; ++r)
      acc[r] = I::fma_lanes(I::times(dw, x[r * nb + b].d), I::sub_times32(isum[r], off[r]),
                            acc[r]);
  }
  for (int r = 0; r < R; ++r) I::store_diff(out + I::kWidth * r, acc[r], I::fzero());
}

// Q4_Kx8 / Q5_Kx8 (gguf_dequant_params.h): per block, the sub-blocks' integer dots of all 8
// rows in lanes, times each row's scale (int32 lanes), and the mins against x's sub-block sums.
template <class I, int R, bool kFive>
inline __attribute__((always_inline)) void dot8k_x86(const uint8_t* g, int64_t gs,
                                                     const BlockQ8K* x, int64_t nb, float* out) {
  using F = typename I::F;
  using V = typename I::V;
  F acc[R], off[R];
  for (int r = 0; r < R; ++r) acc[r] = off[r] = I::fzero();
  for (int64_t b = 0; b < nb; ++b, g += kX8KBytes<kFive>) {
    I::prefetch_w(g, gs, kX8KBytes<kFive>);
    const F dw = I::halves_w(g, gs), dmin = I::halves_w(g + 16, gs);
    V isum[R], msum[R];
    for (int r = 0; r < R; ++r) isum[r] = msum[r] = I::zero();
    // The mins (6 bits, so their bytes read as signed are the same) against x's 32-value sums,
    // two sub-blocks a dpwssd; unpacked once for all rows of x.
    V mins[4];
    for (int k = 0; k < 4; ++k) mins[k] = I::sbyte_pairs_w(g + 96 + 16 * k, gs);
    for (int r = 0; r < R; ++r) {
      int16_t sums[8];
      const int16_t* bs = x[r * nb + b].bsums;
      for (int j = 0; j < 8; ++j) sums[j] = static_cast<int16_t>(bs[2 * j] + bs[2 * j + 1]);
      for (int k = 0; k < 4; ++k)
        msum[r] = I::dot16_acc(msum[r], mins[k],
                               I::bcast4(reinterpret_cast<const int8_t*>(sums + 2 * k)));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      V lo[R], hi[R];
      for (int r = 0; r < R; ++r) lo[r] = hi[r] = I::zero();
      for (int i = 0; i < 8; ++i) {
        const V v = I::load_w(g + kX8KNibbles<kFive> + 256 * c + 32 * i, gs);
        V ql = I::bits(v, 0, 15, 0), qh = I::bits(v, 4, 15, 0);
        if constexpr (kFive) {
          const V h = I::load_w(g + 160 + 32 * i, gs);
          ql = I::or_(ql, I::bits(h, 2 * c, 1, 4));
          qh = I::or_(qh, I::bits(h, 2 * c + 1, 1, 4));
        }
        for (int r = 0; r < R; ++r) {
          const int8_t* xq = x[r * nb + b].q + 64 * c + 4 * i;
          lo[r] = I::dot_acc(lo[r], ql, I::bcast4(xq));
          hi[r] = I::dot_acc(hi[r], qh, I::bcast4(xq + 32));
        }
      }
      const V sl = I::bytes_w(g + 32 + 16 * c, gs), sh = I::bytes_w(g + 40 + 16 * c, gs);
      for (int r = 0; r < R; ++r)
        isum[r] = I::add32(isum[r], I::add32(I::mullo32(lo[r], sl), I::mullo32(hi[r], sh)));
    }
    for (int r = 0; r < R; ++r) {
      const float dx = x[r * nb + b].d;
      acc[r] = I::fma_lanes(I::times(dw, dx), isum[r], acc[r]);
      off[r] = I::fma_lanes(I::times(dmin, dx), msum[r], off[r]);
    }
  }
  for (int r = 0; r < R; ++r) I::store_diff(out + I::kWidth * r, acc[r], off[r]);
}
#pragma GCC diagnostic pop

#endif

// Row n of an x8 layout back in its ggml blocks (nb of them, into out): the row decoders then
// use dequantize_f32's vector kernels, bit for bit what the file's blocks give.
void plain_row(int layout, const uint8_t* w, int64_t n, int64_t nb, uint8_t* out) {
  const QTypeInfo x8 = layout_info(layout);
  const int64_t group_bytes = 8 * x8.bytes;
  const uint8_t* g = w + (n / 8) * nb * group_bytes;
  const int j = static_cast<int>(n % 8);
  auto take4 = [&](uint8_t* dst, const uint8_t* src) { std::memcpy(dst, src + 4 * j, 4); };
  for (int64_t b = 0; b < nb; ++b, g += group_bytes) {
    if (layout == kQ6_Kx8) {  // ql[128], qh[64], scales[16], d
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < 8; ++i) take4(out + 32 * k + 4 * i, g + 656 + 256 * k + 32 * i);
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 8; ++i) take4(out + 128 + 32 * h + 4 * i, g + 144 + 256 * h + 32 * i);
      for (int sub = 0; sub < 16; ++sub) out[192 + sub] = g[16 + 8 * sub + j];
      std::memcpy(out + 208, g + 2 * j, 2);
      out += 210;
      continue;
    }
    if (layout == kQ8_0x8 || layout == kQ4_0x8) {
      std::memcpy(out, g + 2 * j, 2);
      const int groups = layout == kQ8_0x8 ? 8 : 4;
      for (int i = 0; i < groups; ++i) take4(out + 2 + 4 * i, g + 16 + 32 * i);
      out += layout == kQ8_0x8 ? 34 : 18;
      continue;
    }
    const bool five = layout == kQ5_Kx8;
    std::memcpy(out, g + 2 * j, 2);
    std::memcpy(out + 2, g + 16 + 2 * j, 2);
    uint8_t sc[8], mn[8];
    for (int k = 0; k < 8; ++k) {
      sc[k] = g[32 + 8 * k + j];
      mn[k] = g[96 + 8 * k + j];
    }
    for (int k = 0; k < 4; ++k) {  // gguf::k_scale_min's packing
      out[4 + k] = static_cast<uint8_t>(sc[k] | (sc[k + 4] >> 4) << 6);
      out[8 + k] = static_cast<uint8_t>(mn[k] | (mn[k + 4] >> 4) << 6);
      out[12 + k] = static_cast<uint8_t>((sc[k + 4] & 15) | (mn[k + 4] & 15) << 4);
    }
    if (five)
      for (int i = 0; i < 8; ++i) take4(out + 16 + 4 * i, g + 160 + 32 * i);
    uint8_t* qs = out + (five ? 48 : 16);
    const uint8_t* nibbles = g + (five ? 416 : 160);
    for (int c = 0; c < 4; ++c)
      for (int i = 0; i < 8; ++i) take4(qs + 32 * c + 4 * i, nibbles + 256 * c + 32 * i);
    out += five ? 176 : 144;
  }
}

// The ggml type an x8 layout regroups.
template <int X8>
constexpr QType kPlainOf = X8 == kQ8_0x8   ? QType::Q8_0
                           : X8 == kQ4_0x8 ? QType::Q4_0
                           : X8 == kQ4_Kx8 ? QType::Q4_K
                           : X8 == kQ5_Kx8 ? QType::Q5_K
                                           : QType::Q6_K;

// Row n of an x8 layout's matrix of K columns as floats (the packed GEMM's and fp32 rows'
// reader).
template <int X8>
void decode_row_x8(const void* w, int64_t n, int64_t K, float* out) {
  constexpr QType kPlain = kPlainOf<X8>;
  const int64_t nb = K / Layout<kPlain>::kBlock;
  thread_local std::vector<uint8_t> row;
  row.resize(nb * Layout<kPlain>::kBytes);
  plain_row(X8, static_cast<const uint8_t*>(w), n, nb, row.data());
  dequantize_f32(kPlain, row.data(), K, out);
}

template <QType T>
void dots_portable(const uint8_t* w, int64_t, const Act<T>* x, int64_t nb, int rows, float* out) {
  for (int r = 0; r < rows; ++r) out[r] = dot_portable<T>(w, x + r * nb, nb);
}

// The portable dots of an x8 layout: each of the group's 8 rows regrouped into its ggml blocks
// (plain_row, the layout's one reader), then the plain portable dot.
template <int X8, QType T = kPlainOf<X8>>
void dots8_portable(const uint8_t* g, int64_t, const Act<T>* x, int64_t nb, int rows,
                    float* out) {
  thread_local std::vector<uint8_t> row;
  row.resize(nb * Layout<T>::kBytes);
  float one[kRows];
  for (int j = 0; j < 8; ++j) {
    plain_row(X8, g, j, nb, row.data());
    dots_portable<T>(row.data(), 0, x, nb, rows, one);
    for (int r = 0; r < rows; ++r) out[8 * r + j] = one[r];
  }
}

bool has_vnni() {
  return has_avx2_fma_f16c() && cpu_features().avx512vl && cpu_features().avx512_vnni;
}

bool has_vnni512() {
  return has_vnni() && cpu_features().avx512f && cpu_features().avx512bw;
}

// The isas whose integer dots are VNNI's (a group of 8 or 1 rows; kAvx512 and kAmx add wider
// kernels of the same bits), and whose fp32 kernels use 512-bit vectors.
bool vnni_isa(QuantIsa isa) {
  return isa == QuantIsa::kAvx512Vnni || isa == QuantIsa::kAvx512 || isa == QuantIsa::kAmx;
}

QuantIsa resolve(QuantIsa isa) {
  if (isa != QuantIsa::kAuto) return isa;
#ifdef SOPRANO_X86_DISPATCH
  if (has_vnni512()) return QuantIsa::kAvx512;
  if (has_vnni()) return QuantIsa::kAvx512Vnni;
  if (has_avx2_fma_f16c()) return QuantIsa::kAvx2;
#endif
  return QuantIsa::kPortable;
}

// Rows per task: one group of the widest dots (two x8 groups). As in linear.cpp, a thread gets
// one contiguous run of tasks, so small tasks split the rows evenly: tasks of 48 split the
// 512-row o and down matrices 288 / 224 between two threads (Q8_0 step, Intel Xeon: 2.08-2.11
// ms with tasks of 48, 1.97-2.02 with 16). The threshold of a parallel region is linear.cpp's.
constexpr int64_t kRowBlock = 16;
constexpr int64_t kMinParallelWeights = 1 << 16;
// From this many rows of x on, dequantize + packed fp32 GEMM beats the int8 dots (a prefill).
// A K-quant row is slow to dequantize, so the int8 dots keep it longer. Measured on this
// project's AMD EPYC (2 threads, AVX-512 VNNI), a [4608, 512] matrix: at 8 rows int8 took 364 us
// (Q8_0) and 440 (Q4_K) against the GEMM's 582 and 1153; at 16, 738 and 902 against 687 and
// 1317; at 32, 1108 and 1796 against 1147 and 2001.
template <QType T>
constexpr int64_t kManyRows = Layout<T>::kBlock == 256 ? 32 : 16;

// Dots of G weight rows (one row, or 8 or 16 interleaved: one or two x8 groups, gs bytes
// apart) against up to kRows rows of x, into out[r * G + j].
template <class A, int G>
using GroupDots = void (*)(const uint8_t* w, int64_t gs, const A* x, int64_t nb, int rows,
                           float* out);

// The dot families: the activation block they meet, their group of weight rows, their x86
// kernel for R rows of x and their portable one.
template <QType T>
struct PlainDots {
  using A = Act<T>;
  static constexpr int kGroup = 1;
#ifdef SOPRANO_X86_DISPATCH
  template <class I, int R>
  static inline __attribute__((always_inline)) void dot(const uint8_t* w, int64_t, const A* x,
                                                        int64_t nb, float* out) {
    dot_x86<T, I, R>(w, x, nb, out);
  }
#endif
  static constexpr GroupDots<A, 1> kPortable = dots_portable<T>;
};

template <int X8>  // kQ8_0x8 ... kQ6_Kx8
struct X8Dots {
  using A = Act<kPlainOf<X8>>;
  static constexpr int kGroup = 8;
#ifdef SOPRANO_X86_DISPATCH
  template <class I, int R>
  static inline __attribute__((always_inline)) void dot(const uint8_t* g, int64_t gs, const A* x,
                                                        int64_t nb, float* out) {
    if constexpr (X8 == kQ8_0x8)
      dot8q8_x86<I, R>(g, gs, x, nb, out);
    else if constexpr (X8 == kQ4_0x8)
      dot8_x86<I, R>(g, gs, x, nb, out);
    else if constexpr (X8 == kQ6_Kx8)
      dot8q6_x86<I, R>(g, gs, x, nb, out);
    else
      dot8k_x86<I, R, X8 == kQ5_Kx8>(g, gs, x, nb, out);
  }
#endif
  static constexpr GroupDots<A, 8> kPortable = dots8_portable<X8>;
};

#ifdef SOPRANO_X86_DISPATCH
// A family's kernel for 1-4 rows of x, inlined whole into each instruction set's entry point.
template <class D, class I>
inline __attribute__((always_inline)) void dots_by_rows(const uint8_t* w, int64_t gs,
                                                        const typename D::A* x, int64_t nb,
                                                        int rows, float* out) {
  switch (rows) {
    case 4: return D::template dot<I, 4>(w, gs, x, nb, out);
    case 3: return D::template dot<I, 3>(w, gs, x, nb, out);
    case 2: return D::template dot<I, 2>(w, gs, x, nb, out);
    default: return D::template dot<I, 1>(w, gs, x, nb, out);
  }
}

template <class D>
SOPRANO_AVX2 __attribute__((flatten)) void dots_avx2(const uint8_t* w, int64_t gs,
                                                     const typename D::A* x, int64_t nb,
                                                     int rows, float* out) {
  dots_by_rows<D, Avx2>(w, gs, x, nb, rows, out);
}

template <class D>
SOPRANO_VNNI __attribute__((flatten)) void dots_vnni(const uint8_t* w, int64_t gs,
                                                     const typename D::A* x, int64_t nb,
                                                     int rows, float* out) {
  dots_by_rows<D, Vnni>(w, gs, x, nb, rows, out);
}

// Two x8 groups at once (X8Dots only): 16 rows, out[r * 16 + j].
template <class D>
SOPRANO_VNNI512 __attribute__((flatten)) void dots_vnni512(const uint8_t* w, int64_t gs,
                                                           const typename D::A* x, int64_t nb,
                                                           int rows, float* out) {
  dots_by_rows<D, Vnni512>(w, gs, x, nb, rows, out);
}
#endif

template <class D>
GroupDots<typename D::A, D::kGroup> pick(QuantIsa isa) {
#ifdef SOPRANO_X86_DISPATCH
  // kAvx512's 16-row dots are linear_x8's own choice; a group of 8 or 1 takes VNNI's.
  if (vnni_isa(isa)) return dots_vnni<D>;
  if (isa == QuantIsa::kAvx2) return dots_avx2<D>;
#endif
  return D::kPortable;
}

// x quantized per block into xs (nb blocks a row), then tasks of kRowBlock weight rows, each
// task(n0, n1) followed by its epilogue, in one parallel region. Several rows of x are quantized
// in the region too: quantized by the calling thread alone, a prefill's 42 rows kept the other
// one waiting at every matmul. A decode step's one row is not worth the region's extra barrier.
// `tiles`: each thread's tile registers are set up around its tasks.
template <class A, class Task>
void int8_tasks(const QuantLinearParams& q, A* xs, int64_t nb, bool tiles, Task task) {
  const LinearParams& p = q.lin;
  const int64_t blocks = (p.N + kRowBlock - 1) / kRowBlock;
  const bool rows_in_region = p.M > 1;
  if (!rows_in_region) quantize_row(p.x, p.K, xs);
#pragma omp parallel if (p.N * p.K >= kMinParallelWeights) num_threads(num_threads())
  {
    if (rows_in_region) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < p.M; ++m)
        quantize_row(p.x + m * p.x_row_stride, p.K, xs + m * nb);
    }
    if (tiles) configure_int8_tiles();
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t n0 = blk * kRowBlock, n1 = std::min(p.N, n0 + kRowBlock);
      task(n0, n1);
      apply_epilogue(p, n0, n1);
    }
    if (tiles) release_int8_tiles();
  }
}

// G weight rows' dots (one group, at wg) against rows [m0, m1) of x, kRows at a time, into y's
// columns n.. n + G.
template <class A, int G>
void group_rows(const LinearParams& p, GroupDots<A, G> dots, const uint8_t* wg, int64_t gs,
                const A* xs, int64_t nb, int64_t n, int64_t m0, int64_t m1) {
  float out[kRows * G];
  for (int64_t m = m0; m < m1; m += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, m1 - m));
    dots(wg, gs, xs + m * nb, nb, rows, out);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < G; ++j) p.y[(m + r) * p.y_row_stride + n + j] = out[r * G + j];
  }
}

template <class A, int G>
void linear_int8(const QuantLinearParams& q, int64_t block, int64_t block_bytes,
                 GroupDots<A, G> dots) {
  const LinearParams& p = q.lin;
  // x8 groups lie gs bytes apart, so G rows start (n / G) G-row strides in.
  const int64_t nb = p.K / block, group_bytes = G * nb * block_bytes, gs = 8 * nb * block_bytes;
  const auto* w = static_cast<const uint8_t*>(p.w);
  thread_local std::vector<A> xq;
  xq.resize(p.M * nb);
  A* xs = xq.data();
  static_assert(kRowBlock % G == 0, "a task holds whole groups");
  int8_tasks(q, xs, nb, false, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += G)
      group_rows<A, G>(p, dots, w + (n / G) * group_bytes, gs, xs, nb, n, 0, p.M);
  });
}

#ifdef SOPRANO_X86_DISPATCH
// From this many rows of x on, the x8 layouts take the tile unit where the CPU has AMX-INT8.
// [3072, 1024] and [1024, 3072] matrices on the Intel Xeon against the 512-bit dots: Q8_0 0.87x
// at 4 rows, 1.07-1.23x at 5, 1.31x at 8, 1.6-2.1x at 16-42; Q4_0, whose vector dots need no
// sign flips, 0.8-1.0x at 8 rows and 1.0-1.45x at 16-42; Q4_K 0.9-1.0x at 8, 1.0-1.07x at 12,
// 1.2-1.45x at 16-32; Q5_K, whose fifth bits cost the vectors more, 1.1-1.27x at 8 and
// 1.5-1.9x at 16-42; Q6_K, two tile products a 32 values (its scales are per 16), 0.87-1.0x at
// 8 and 1.2-1.6x at 16-42.
template <int X8>
constexpr int64_t kTilesFromRows = X8 == kQ8_0x8 ? 5 : X8 == kQ5_Kx8 ? 8 : 16;

// An x8 layout on the tile unit (int8_tiles.h): tasks of 16 weight rows (two groups) against
// every row of x, whose blocks are padded to whole tiles of 16 rows. Fewer than kTilesFromRows
// rows past the last whole tile take the 512-bit dots (the same bits), which cost less than a
// tile pass for them; a call with fewer than 16 rows keeps them on the tiles.
template <int X8>
void linear_x8_tiles(const QuantLinearParams& q) {
  using A = typename X8Dots<X8>::A;
  const LinearParams& p = q.lin;
  const int64_t nb = p.K / Layout<kPlainOf<X8>>::kBlock, gs = 8 * nb * layout_info(X8).bytes;
  const int64_t tiled = p.M > kRowBlock && p.M % kRowBlock < kTilesFromRows<X8>
                            ? p.M / kRowBlock * kRowBlock
                            : p.M;
  const auto* w = static_cast<const uint8_t*>(p.w);
  thread_local std::vector<A> xq;
  xq.resize((p.M + kRowBlock - 1) / kRowBlock * kRowBlock * nb);
  const A* xs = xq.data();
  int8_tasks(q, xq.data(), nb, true, [&](int64_t n0, int64_t) {
    const uint8_t* wg = w + n0 / 8 * gs;
    if constexpr (Layout<kPlainOf<X8>>::kBlock == 256)
      kx8_tile_dots(X8, wg, gs, xs, tiled, nb, p.y + n0, p.y_row_stride);
    else
      x8_tile_dots(X8 == kQ4_0x8, wg, gs, xs, tiled, nb, p.y + n0, p.y_row_stride);
    group_rows<A, 16>(p, dots_vnni512<X8Dots<X8>>, wg, gs, xs, nb, n0, tiled, p.M);
  });
}
#endif

template <QType T>
void decode_row(const void* w, int64_t n, int64_t K, float* out) {
  const int64_t row_bytes = K / Layout<T>::kBlock * Layout<T>::kBytes;
  dequantize_f32(T, static_cast<const uint8_t*>(w) + n * row_bytes, K, out);
}

// The fp32 paths (fp32_rows, or from `many` rows of x the packed GEMM) over rows `decode`
// reads; false when the int8 dots are to run instead.
bool linear_fp32(const QuantLinearParams& q, int64_t many, RowDecoder decode) {
  LinearParams lin = q.lin;
  if (lin.packed_from_rows <= 0) lin.packed_from_rows = many;
  // A pinned isa pins the fp32 kernels' vector width too (tests run both).
  if (q.isa == QuantIsa::kAvx2) lin.isa = LinearIsa::kAvx2;
  if (vnni_isa(q.isa)) lin.isa = LinearIsa::kAvx512;
  const bool packed = q.isa == QuantIsa::kAuto && has_avx2_fma_f16c() &&
                      lin.M >= lin.packed_from_rows;
  if (!q.fp32_rows && !packed) return false;
#ifdef SOPRANO_X86_DISPATCH
  if (q.qtype == QType::Q8_0 && lin.row_tiles && lin.M < lin.packed_from_rows &&
      q.isa != QuantIsa::kPortable && has_avx2_fma_f16c()) {
    linear_q8_0_rows(lin);
    return true;
  }
#endif
  linear_decoded(lin, decode);
  return true;
}

// The x8 layouts' int8 dots beat the packed fp32 GEMM at every row count measured (16 to 61
// rows: a prefill, a batch of 16), so only fp32_rows (or a caller's packed_from_rows) leaves
// them.
constexpr int64_t kX8NeverPacked = std::numeric_limits<int64_t>::max();

template <QType T>
void linear_typed(const QuantLinearParams& q) {
  if (linear_fp32(q, kManyRows<T>, decode_row<T>)) return;
  linear_int8<Act<T>, 1>(q, Layout<T>::kBlock, Layout<T>::kBytes,
                         pick<PlainDots<T>>(resolve(q.isa)));
}

template <int X8>
void linear_x8(const QuantLinearParams& q) {
  if (linear_fp32(q, kX8NeverPacked, decode_row_x8<X8>)) return;
  using A = typename X8Dots<X8>::A;
  constexpr int64_t block = Layout<kPlainOf<X8>>::kBlock;
  const QuantIsa isa = resolve(q.isa);
#ifdef SOPRANO_X86_DISPATCH
  // Left to itself (auto), a decode step's single row keeps the 8-row vectors: streaming two
  // groups at once was slower there (Intel Xeon, 2026-12-01: Q8_0 / Q4_K steps 2.00 / 1.40 ->
  // 2.14 / 1.50 ms); from 4 rows on, 16 rows per vector win (a [4608, 512] matrix, 4 / 16 / 61
  // rows: 1.06-1.38x, 1.15-1.32x, 1.16-1.36x across Q8_0, Q4_0, Q4_K, Q6_K).
  constexpr int64_t kWideFromRows = 4;
  const bool vnni512 = (isa == QuantIsa::kAvx512 || isa == QuantIsa::kAmx) && q.lin.N % 16 == 0;
  {  // the tile unit
    const bool tiles = vnni512 && (q.isa == QuantIsa::kAmx ||
                                   (q.isa == QuantIsa::kAuto && q.lin.M >= kTilesFromRows<X8> &&
                                    int8_tiles_available()));
    if (tiles) return linear_x8_tiles<X8>(q);
  }
  const bool wide = vnni512 && (q.isa != QuantIsa::kAuto || q.lin.M >= kWideFromRows);
  if (wide)
    return linear_int8<A, 16>(q, block, layout_info(X8).bytes, dots_vnni512<X8Dots<X8>>);
#endif
  linear_int8<A, 8>(q, block, layout_info(X8).bytes, pick<X8Dots<X8>>(isa));
}

}  // namespace

bool quant_linear_takes(int qtype) {
  if (layout_rows(qtype) == 8) return true;
  switch (static_cast<QType>(qtype)) {
    case QType::Q8_0: case QType::Q4_0: case QType::Q4_K: case QType::Q5_K: case QType::Q6_K:
      return true;
    default:
      return false;
  }
}

void quantize_rows(const float* x, int64_t M, int64_t K, int block, float* d, int8_t* q,
                   bool portable) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < K / block; ++b) {
      const float* xb = x + m * K + b * block;
      int8_t* qb = q + m * K + b * block;
      d[m * (K / block) + b] = portable ? quantize_values_portable(xb, block, qb)
                                        : quantize_values(xb, block, qb);
    }
}

QuantIsa parse_quant_isa(const std::string& name, const char* op) {
  if (name == "auto") return QuantIsa::kAuto;
  if (name == "portable") return QuantIsa::kPortable;
  if (name == "avx2" || name == "avx512vnni" || name == "avx512" || name == "amx") {
    const bool ok = name == "avx2"         ? has_avx2_fma_f16c()
                    : name == "avx512vnni" ? has_vnni()
                    : name == "avx512"     ? has_vnni512()
                                           : int8_tiles_available();
#ifndef SOPRANO_X86_DISPATCH
    fail(op, "isa '" + name + "' needs an x86 build");
#endif
    require(ok, op, "this CPU cannot run isa '" + name + "'");
    return name == "avx2"         ? QuantIsa::kAvx2
           : name == "avx512vnni" ? QuantIsa::kAvx512Vnni
           : name == "avx512"     ? QuantIsa::kAvx512
                                  : QuantIsa::kAmx;
  }
  fail(op, "isa must be auto, portable, avx2, avx512vnni, avx512 or amx, got '" + name + "'");
}

const char* quant_isa_name(QuantIsa isa) {
  switch (resolve(isa)) {
    case QuantIsa::kAmx: return "amx";
    case QuantIsa::kAvx512: return "avx512";
    case QuantIsa::kAvx512Vnni: return "avx512vnni";
    case QuantIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

QuantLinearParams make_quant_linear_params(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y,
                                           int64_t M, int64_t N, int64_t K,
                                           int64_t x_row_stride, int64_t y_row_stride, int qtype,
                                           const std::string& isa, bool fp32_rows) {
  constexpr const char* op = "quant_linear_cpu";
  require(quant_linear_takes(qtype), op,
          "ggml type " + std::to_string(qtype) +
              " is not one quant_linear multiplies (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, or their x8 "
              "layouts)");
  check_matmul_sizes(op, M, N, K, x_row_stride, y_row_stride);
  const QTypeInfo t = layout_info(qtype);
  require(K % t.block == 0, op,
          std::string(t.name) + " rows hold whole blocks of " + std::to_string(t.block) +
              " values; K = " + std::to_string(K) + " is not a multiple");
  require(N % layout_rows(qtype) == 0, op,
          std::string(t.name) + " interleaves groups of " + std::to_string(layout_rows(qtype)) +
              " rows; N = " + std::to_string(N) + " is not a multiple");
  QuantLinearParams p{{checked_ptr<const float>(x, op, "x"), checked_ptr<const uint8_t>(w, op, "w"),
                       checked_ptr<float>(y, op, "y"), M, N, K, x_row_stride, y_row_stride,
                       DType::F32},
                      static_cast<QType>(qtype), parse_quant_isa(isa, op), fp32_rows};
  p.lin.row_tiles = fp32_rows;
  return p;
}

void quant_linear(const QuantLinearParams& p) {
  if (p.lin.M == 0) return;
  switch (static_cast<int>(p.qtype)) {
    case kQ8_0x8: return linear_x8<kQ8_0x8>(p);
    case kQ4_0x8: return linear_x8<kQ4_0x8>(p);
    case kQ4_Kx8: return linear_x8<kQ4_Kx8>(p);
    case kQ5_Kx8: return linear_x8<kQ5_Kx8>(p);
    case kQ6_Kx8: return linear_x8<kQ6_Kx8>(p);
  }
  switch (p.qtype) {
    case QType::Q8_0: return linear_typed<QType::Q8_0>(p);
    case QType::Q4_0: return linear_typed<QType::Q4_0>(p);
    case QType::Q4_K: return linear_typed<QType::Q4_K>(p);
    case QType::Q5_K: return linear_typed<QType::Q5_K>(p);
    default: return linear_typed<QType::Q6_K>(p);
  }
}

}  // namespace soprano::cpu
