// CPU dequantize of GGUF blocks (layouts and arithmetic: gguf_blocks.h), bit-exact against
// gguf-py in fp32. This file is built with -ffp-contract=off (CMakeLists.txt), so the compiler
// keeps each multiply and add separately rounded, as numpy computes them.
// One wheel must run on any x86-64 CPU, so the kernels are compiled twice: portable, and inside
// AVX2+F16C functions picked at runtime, which share the integer stage (gguf_blocks.h's
// Group<T>::read, vectorised by GCC there) and do the float stage, fp16 and bf16 in intrinsics.
// One Zen 4 core, Gvalues/s to fp32 (to bf16): AVX2 12-16 (5-8) for F16, BF16, Q8_0; 6-7 (3.5-4)
// for Q4_0, Q4_1; 2.9-3.3 (2.2-2.5) for the K-quants; 2 (1.6) for Q5_0, Q5_1. Portable: 0.8-1.9
// (0.5-0.8), BF16 aside.
#include "cpu/gguf_dequant.h"

#include <algorithm>
#include <cstring>

#include "common.h"
#include "gguf_blocks.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

using gguf::Layout;
using gguf::QType;

// fp32 -> fp16 bits, round to nearest even, for CPUs without F16C.
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = x >> 16 & 0x8000u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (a >= 0x38800000u) {  // a normal half: rebias the exponent, round off 13 bits
    const uint32_t r = a - 0x38000000u;
    return static_cast<uint16_t>(sign | (r + 0xfffu + (r >> 13 & 1)) >> 13);
  }
  // Subnormal (or zero): adding 0.5 leaves fp32 an ulp of 2^-24, the subnormal half's unit, so
  // the hardware add does the rounding; the bits above 0.5's are the half's (0x400 when it
  // rounds up to the smallest normal, which is that normal's encoding).
  const float t = gguf::bits_to_float(a) + 0.5f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  return static_cast<uint16_t>(sign | (bits - 0x3f000000u));
}

// fp32 -> bf16 bits, round to nearest even as torch does (NaN stays a NaN).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1)) >> 16;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? bits >> 16 | 0x40 : rounded);
}

template <DType O>
struct OutType { using type = uint16_t; };
template <>
struct OutType<DType::F32> { using type = float; };
template <DType O>
using Out = typename OutType<O>::type;

// Eight decoded values in and out, by instruction set. Portable: plain loops.
struct Portable {
  template <DType O>
  SOPRANO_HD static Out<O> store1(float v) {
    if constexpr (O == DType::F32)
      return v;
    else if constexpr (O == DType::BF16)
      return float_to_bf16(v);
    else
      return float_to_half(v);
  }

  template <QType T>
  SOPRANO_HD static void load8(const uint8_t* p, float* v) {
    for (int k = 0; k < 8; ++k) v[k] = gguf::decode1<T>(p + 2 * k);
  }

  template <QType T>
  SOPRANO_HD static void decode8(const uint8_t* blk, int g, float* v) {
    gguf::decode8<T>(blk, g, v);
  }

  template <DType O>
  SOPRANO_HD static void store8(const float* v, Out<O>* out) {
    for (int k = 0; k < 8; ++k) out[k] = store1<O>(v[k]);
  }
};

#ifdef SOPRANO_X86_DISPATCH
#define SOPRANO_AVX2 __attribute__((target("avx2,f16c")))

// The float stage and the stores in AVX2 (+F16C): GCC vectorises neither reliably once they are
// inlined into the loops over blocks. The integer stage (Group<T>::read) stays shared.
// range_avx2 (flatten) inlines these, so they are not always_inline: that would force them into
// range's own default-target body too, where their instructions are not allowed.
struct Avx2 {
  struct Half {  // F16C: one instruction, where gguf::half_at's portable bit work branches
    SOPRANO_AVX2 static inline float at(const uint8_t* p) { return _cvtsh_ss(gguf::u16_at(p)); }
  };

  template <QType T>
  SOPRANO_AVX2 static inline void load8(const uint8_t* p, float* v) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (T == QType::F16)
      _mm256_storeu_ps(v, _mm256_cvtph_ps(h));
    else
      _mm256_storeu_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }

  // gguf::decode8's arithmetic, in its order: d * q, then + m or - m.
  template <QType T>
  SOPRANO_AVX2 static inline void decode8(const uint8_t* blk, int g, float* v) {
    if constexpr (T == QType::Q8_0) {  // the bytes are the values: widen them in a vector
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * g));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      _mm256_storeu_ps(v, _mm256_mul_ps(_mm256_set1_ps(Half::at(blk)), q));
    } else {
      gguf::Group8 x;
      gguf::Group<T>::template read<Half>(blk, g, x);
      const __m256 q = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<__m256i*>(x.q)));
      __m256 y = _mm256_mul_ps(_mm256_set1_ps(x.d), q);
      if constexpr (gguf::Group<T>::kMin > 0) y = _mm256_add_ps(y, _mm256_set1_ps(x.m));
      if constexpr (gguf::Group<T>::kMin < 0) y = _mm256_sub_ps(y, _mm256_set1_ps(x.m));
      _mm256_storeu_ps(v, y);
    }
  }

  template <DType O>
  SOPRANO_AVX2 static inline void store8(const float* v, Out<O>* out) {
    const __m256 x = _mm256_loadu_ps(v);
    if constexpr (O == DType::F32) {
      _mm256_storeu_ps(out, x);
    } else if constexpr (O == DType::F16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                       _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    } else {  // float_to_bf16, eight at a time
      const __m256i bits = _mm256_castps_si256(x);
      const __m256i high = _mm256_srli_epi32(bits, 16);
      const __m256i lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb), 16);
      const __m256i nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
      const __m256i r = _mm256_blendv_epi8(rounded, nan,
                                           _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
      // 32-bit lanes (all < 2^16) -> 16-bit; packus works within 128-bit halves
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
    }
  }
};
#endif

// Values v0 .. v1 of p (v0 a multiple of the block; v1 too, or n).
template <QType T, DType O, class Isa>
inline void range(const DequantParams& p, int64_t v0, int64_t v1) {
  auto* out = static_cast<Out<O>*>(p.out);
  float v[8];
  if constexpr (Layout<T>::kBlock == 1) {  // F16, BF16: eight values at a time, then the tail
    int64_t i = v0;
    for (; i + 8 <= v1; i += 8) {
      Isa::template load8<T>(p.raw + 2 * i, v);
      Isa::template store8<O>(v, out + i);
    }
    for (; i < v1; ++i) out[i] = Portable::store1<O>(gguf::decode1<T>(p.raw + 2 * i));
  } else {
    constexpr int kBlock = Layout<T>::kBlock;
    for (int64_t b = v0 / kBlock; b < v1 / kBlock; ++b) {
      const uint8_t* blk = p.raw + b * Layout<T>::kBytes;
      // Unrolled, GCC vectorises some groups' integer stage and not others, whose eight scalar
      // stores then stall the vector load behind them (Q4_1 to fp16: 1.4 vs 5.6 Gvalues/s).
#pragma GCC unroll 1
      for (int g = 0; g < kBlock / 8; ++g) {
        Isa::template decode8<T>(blk, g, v);
        Isa::template store8<O>(v, out + b * kBlock + 8 * g);
      }
    }
  }
}

using RangeKernel = void (*)(const DequantParams& p, int64_t v0, int64_t v1);

template <QType T, DType O>
void range_portable(const DequantParams& p, int64_t v0, int64_t v1) {
  range<T, O, Portable>(p, v0, v1);
}

#ifdef SOPRANO_X86_DISPATCH
template <QType T, DType O>
__attribute__((target("avx2,f16c"), flatten)) void range_avx2(const DequantParams& p,
                                                               int64_t v0, int64_t v1) {
  range<T, O, Avx2>(p, v0, v1);
}
#endif

template <QType T, DType O>
RangeKernel pick(bool portable) {
#ifdef SOPRANO_X86_DISPATCH
  if (!portable && cpu_features().avx2 && cpu_features().f16c) return range_avx2<T, O>;
#endif
  return range_portable<T, O>;
}

template <QType T>
RangeKernel pick(DType o, bool portable) {
  switch (o) {
    case DType::F32: return pick<T, DType::F32>(portable);
    case DType::BF16: return pick<T, DType::BF16>(portable);
    default: return pick<T, DType::F16>(portable);
  }
}

RangeKernel pick(QType t, DType o, bool portable) {
  switch (t) {
    case QType::F16: return pick<QType::F16>(o, portable);
    case QType::BF16: return pick<QType::BF16>(o, portable);
    case QType::Q8_0: return pick<QType::Q8_0>(o, portable);
    case QType::Q4_0: return pick<QType::Q4_0>(o, portable);
    case QType::Q4_1: return pick<QType::Q4_1>(o, portable);
    case QType::Q5_0: return pick<QType::Q5_0>(o, portable);
    case QType::Q5_1: return pick<QType::Q5_1>(o, portable);
    case QType::Q4_K: return pick<QType::Q4_K>(o, portable);
    case QType::Q5_K: return pick<QType::Q5_K>(o, portable);
    default: return pick<QType::Q6_K>(o, portable);
  }
}

// Values per OpenMP chunk: a multiple of every block (256), ~64 KB of fp32 output, so threads
// split even one 512 x 512 matrix; below two chunks a parallel region costs more than it saves.
constexpr int64_t kChunk = 1 << 14;

}  // namespace

void dequantize(const DequantParams& p, bool portable) {
  const RangeKernel kernel = pick(p.qtype, p.out_dtype, portable);
  const int64_t chunks = (p.n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1) \
    num_threads(num_threads())
  for (int64_t c = 0; c < chunks; ++c) kernel(p, c * kChunk, std::min(p.n, (c + 1) * kChunk));
}

void dequantize_f32(QType qtype, const uint8_t* raw, int64_t n, float* out) {
  pick(qtype, DType::F32, false)({raw, qtype, n, out, DType::F32}, 0, n);
}

}  // namespace soprano::cpu
