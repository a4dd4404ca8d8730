// GGUF's block layouts, decoded eight values at a time, for the CPU and CUDA dequant kernels
// alike (one copy of the bit layout, so the two backends cannot disagree on it). Written from
// the layouts gguf-py's quants.py decodes, which is also the reference the tests hold every
// backend to, bit for bit, in fp32.
//
// Why the arithmetic is spelt out: every product below is exact in fp32 (an fp16 scale has an
// 11-bit significand, the integers it is multiplied by come to at most 2^12 in magnitude, and no
// fp16 value times them leaves fp32's range), so a value rounds at most once, at the final add
// or subtract. Fusing that multiply-add into an FMA would therefore still be exact, but the
// kernels keep numpy's separate multiply and add anyway (fp-contract off for the CPU file,
// __fmul_rn/__fadd_rn on the GPU) so that matching the reference does not rest on that
// argument. The order of the products is the reference's too: (d * sc) * q, not d * (sc * q).
// Out of scope: the other ggml types (Q2_K, Q3_K, Q8_K, the IQ and TQ families).
#pragma once

#include <cstdint>
#include <cstring>

// Always inlined on the host too: the CPU file instantiates the decoders inside AVX2 functions,
// and only inlined code is compiled (and vectorised) for the caller's instruction set.
#ifdef __CUDACC__
#include <cuda_fp16.h>
#define SOPRANO_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define SOPRANO_HD inline __attribute__((always_inline))
#else
#define SOPRANO_HD inline
#endif

namespace soprano::gguf {

// ggml's type ids (gguf.GGMLQuantizationType values)
enum class QType : int {
  F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14,
  BF16 = 30
};

// Values per block and bytes per block.
template <QType T> struct Layout;
template <> struct Layout<QType::F16> { static constexpr int kBlock = 1, kBytes = 2; };
template <> struct Layout<QType::BF16> { static constexpr int kBlock = 1, kBytes = 2; };
template <> struct Layout<QType::Q8_0> { static constexpr int kBlock = 32, kBytes = 34; };
template <> struct Layout<QType::Q4_0> { static constexpr int kBlock = 32, kBytes = 18; };
template <> struct Layout<QType::Q4_1> { static constexpr int kBlock = 32, kBytes = 20; };
template <> struct Layout<QType::Q5_0> { static constexpr int kBlock = 32, kBytes = 22; };
template <> struct Layout<QType::Q5_1> { static constexpr int kBlock = 32, kBytes = 24; };
template <> struct Layout<QType::Q4_K> { static constexpr int kBlock = 256, kBytes = 144; };
template <> struct Layout<QType::Q5_K> { static constexpr int kBlock = 256, kBytes = 176; };
template <> struct Layout<QType::Q6_K> { static constexpr int kBlock = 256, kBytes = 210; };

// Rounded exactly once, never contracted with a neighbouring operation (see the top).
SOPRANO_HD float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SOPRANO_HD float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SOPRANO_HD float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// Blocks have odd sizes (18, 22, 210 bytes), so multi-byte fields are read byte by byte.
SOPRANO_HD uint32_t u16_at(const uint8_t* p) { return p[0] | static_cast<uint32_t>(p[1]) << 8; }

SOPRANO_HD uint32_t u32_at(const uint8_t* p) { return u16_at(p) | u16_at(p + 2) << 16; }

SOPRANO_HD float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// fp16 bits -> fp32, exact (NaN payloads are not preserved bit for bit on every path).
SOPRANO_HD float half_to_float(uint32_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | mant << 13);
  if (exp != 0) return bits_to_float(sign | (exp + 112) << 23 | mant << 13);
  // zero or subnormal: mant * 2^-24, exact in fp32
  const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
  uint32_t bits;
  std::memcpy(&bits, &mag, sizeof bits);
  return bits_to_float(bits | sign);
#endif
}

SOPRANO_HD float half_at(const uint8_t* p) { return half_to_float(u16_at(p)); }

// How the decoders read an fp16 field: this portable way by default; the CPU's AVX2 kernels
// pass one that uses F16C.
struct HalfAt {
  SOPRANO_HD static float at(const uint8_t* p) { return half_at(p); }
};

// F16 and BF16 hold one value per two bytes: decode1<T>(raw + 2 i) is value i.
template <QType T>
SOPRANO_HD float decode1(const uint8_t* p);

template <>
SOPRANO_HD float decode1<QType::F16>(const uint8_t* p) { return half_at(p); }

template <>
SOPRANO_HD float decode1<QType::BF16>(const uint8_t* p) { return bits_to_float(u16_at(p) << 16); }

// Eight values 8g .. 8g+7 of one block: value k is d * q[k], then plus m (Q4_1, Q5_1) or minus
// m (Q4_K, Q5_K), as the reference computes it (no zero added where a type has no m: -0.0 must
// stay -0.0). Each type's Group<T>::read fills it: group-wide offsets and shifts first, then
// loops over the eight lanes of plain integer work, which a compiler can vectorise.
struct Group8 {
  float d, m;
  int q[8];
};

template <QType T>
struct Group;

// 32 values: fp16 d, 32 int8.
template <>
struct Group<QType::Q8_0> {
  static constexpr int kMin = 0;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    x.d = Half::at(blk);
    const uint8_t* b = blk + 2 + 8 * g;
    for (int k = 0; k < 8; ++k) x.q[k] = static_cast<int8_t>(b[k]);
  }
};

// The 32-value formats' nibbles: byte i holds value i (low nibble) and value i + 16 (high); Q5's
// fifth bit of value i is bit i of a little-endian uint32 (qh, when given).
SOPRANO_HD void nibbles8(const uint8_t* qs, const uint8_t* qh, int g, int offset, int* q) {
  const uint8_t* b = qs + 8 * (g & 1);
  const int s = g < 2 ? 0 : 4;
  const uint32_t hi = qh ? u32_at(qh) >> (8 * g) : 0;
  for (int k = 0; k < 8; ++k) q[k] = (((b[k] >> s) & 15) | ((hi >> k) & 1) << 4) - offset;
}

// fp16 d, 16 bytes of nibbles; q - 8.
template <>
struct Group<QType::Q4_0> {
  static constexpr int kMin = 0;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    x.d = Half::at(blk);
    nibbles8(blk + 2, nullptr, g, 8, x.q);
  }
};

// fp16 d, fp16 m, nibbles.
template <>
struct Group<QType::Q4_1> {
  static constexpr int kMin = 1;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    x.d = Half::at(blk);
    x.m = Half::at(blk + 2);
    nibbles8(blk + 4, nullptr, g, 0, x.q);
  }
};

// fp16 d, 4 bytes of fifth bits, nibbles; q - 16.
template <>
struct Group<QType::Q5_0> {
  static constexpr int kMin = 0;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    x.d = Half::at(blk);
    nibbles8(blk + 6, blk + 2, g, 16, x.q);
  }
};

// fp16 d, fp16 m, 4 bytes of fifth bits, nibbles.
template <>
struct Group<QType::Q5_1> {
  static constexpr int kMin = 1;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    x.d = Half::at(blk);
    x.m = Half::at(blk + 2);
    nibbles8(blk + 8, blk + 4, g, 0, x.q);
  }
};

// Q4_K/Q5_K: 8 sub-blocks of 32 values, each with a 6-bit scale and a 6-bit min packed into 12
// bytes s[0..11]: sub-blocks 0-3 keep theirs in the low 6 bits of s[j] (scale) and s[j + 4]
// (min); sub-blocks 4-7 have the low 4 bits in s[j + 4] (scale low, min high nibble) and the top
// 2 in the spare high bits of s[j - 4] (scale) and s[j] (min).
// Layout: fp16 d, fp16 dmin, the 12 scale bytes, then (Q5_K) 32 bytes of fifth bits, bit j of
// byte l for value l of sub-block j, and 128 bytes of nibbles, byte 32c + l holding value l of
// sub-blocks 2c (low) and 2c + 1 (high). Value: (d * scale) * q - dmin * min.
// Sub-block j's scale and min from the 12 scale bytes s.
SOPRANO_HD void k_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
  mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
}

template <bool kFive>
struct GroupK {
  static constexpr int kMin = -1;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    const int j = g >> 2, l0 = 8 * (g & 3);
    int sc, mn;
    k_scale_min(blk + 4, j, sc, mn);
    x.d = mul(Half::at(blk), static_cast<float>(sc));
    x.m = mul(Half::at(blk + 2), static_cast<float>(mn));
    const uint8_t* qh = blk + 16 + l0;
    const uint8_t* ql = blk + (kFive ? 48 : 16) + 32 * (j >> 1) + l0;
    const int sl = 4 * (j & 1);
    for (int k = 0; k < 8; ++k) x.q[k] = (ql[k] >> sl & 15) | (kFive ? (qh[k] >> j & 1) << 4 : 0);
  }
};

template <>
struct Group<QType::Q4_K> : GroupK<false> {};
template <>
struct Group<QType::Q5_K> : GroupK<true> {};

// 256 values in two halves of 128: 64 bytes of low nibbles (byte l: value l low, l + 64 high),
// 32 bytes of high 2-bit pairs (byte l: values l, l + 32, l + 64, l + 96 from bit 0 up); then 16
// int8 scales, one per 16 values, and fp16 d last. (d * scale) * (q - 32).
template <>
struct Group<QType::Q6_K> {
  static constexpr int kMin = 0;
  template <class Half = HalfAt>
  SOPRANO_HD static void read(const uint8_t* blk, int g, Group8& x) {
    const int e = 8 * g, h = e >> 7, r = e & 127;
    const uint8_t* ql = blk + 64 * h + (r & 63);
    const uint8_t* qh = blk + 128 + 32 * h + (r & 31);
    const int sl = 4 * (r >> 6), sh = 2 * (r >> 5);
    const float scale = static_cast<float>(static_cast<int8_t>(blk[192 + (e >> 4)]));
    x.d = mul(Half::at(blk + 208), scale);
    for (int k = 0; k < 8; ++k) x.q[k] = ((ql[k] >> sl & 15) | (qh[k] >> sh & 3) << 4) - 32;
  }
};

template <QType T>
SOPRANO_HD void decode8(const uint8_t* blk, int g, float* out) {
  Group8 x;
  Group<T>::read(blk, g, x);
  for (int k = 0; k < 8; ++k) {
    const float dq = mul(x.d, static_cast<float>(x.q[k]));
    out[k] = Group<T>::kMin == 0 ? dq : Group<T>::kMin > 0 ? add(dq, x.m) : sub(dq, x.m);
  }
}

}  // namespace soprano::gguf
