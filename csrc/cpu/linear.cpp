// GEMV/GEMM for CPU weights in bf16, fp16 or fp32. Each thread owns a block of output features
// (rows of w), so each weight byte is read from DRAM once per call whatever M is.
// Few activation rows (a decode step) are memory-bound: w is converted to fp32 in registers
// (bf16: a 16-bit shift; fp16: F16C) right where it is FMA'd against each row of x.
// Many rows (a prefill, a decoder window) are compute-bound: x is packed once per call into
// panels of 16 rows (transposed, so a tile reads it sequentially), a task's rows of w are
// converted into an fp32 buffer, and for each block of 48 rows of x (kept in L2) a register tile
// broadcasts each weight against the rows of x: 6 x 16 with AVX2 (12 FMAs per 8 loads, no
// conversion or horizontal sum in the inner loop), 24 x 16 to 8 x 48 with AVX-512. On Zen 3 the
// AVX2 tile alone runs at ~97 GFLOP/s per core (~65 reading x strided instead of packed); a
// prefill's matmuls (M=42) at ~120 GFLOP/s on 2 cores, vs ~89 with the few-rows kernel.
// AVX-512 or AVX2+FMA(+F16C) at runtime, whichever is the best the CPU has, portable scalar
// code otherwise; weight streams are prefetched ahead (prefetch.h).
#include "cpu/linear.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <type_traits>
#include <vector>

#include "common.h"
#include "gguf_blocks.h"
#include "cpu/bf16_dots.h"
#include "cpu/epilogue.h"
#include "cpu/prefetch.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: renormalize
    exp = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <DType W>
using Elem = std::conditional_t<W == DType::F32, float, uint16_t>;

template <DType W>
inline float to_float(Elem<W> v) {
  if constexpr (W == DType::F32)
    return v;
  else if constexpr (W == DType::BF16)
    return bf16_to_float(v);
  else
    return f16_to_float(v);
}

using RowsKernel = void (*)(const LinearParams& p, int64_t n0, int64_t n1);

template <DType W>
void rows_scalar(const LinearParams& p, int64_t n0, int64_t n1) {
  const auto* w = static_cast<const Elem<W>*>(p.w);
  for (int64_t n = n0; n < n1; ++n) {
    const Elem<W>* wr = w + n * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* xr = p.x + m * p.x_row_stride;
      float acc[8] = {};
      int64_t k = 0;
      for (; k + 8 <= p.K; k += 8)
        for (int j = 0; j < 8; ++j) acc[j] += to_float<W>(wr[k + j]) * xr[k + j];
      float s = 0.f;
      for (; k < p.K; ++k) s += to_float<W>(wr[k]) * xr[k];
      for (float a : acc) s += a;
      p.y[m * p.y_row_stride + n] = s;
    }
  }
}

// Whether the AVX-512 few-rows kernel takes its 6 x 4 tile for M rows of x (rows_tiled_avx512):
// where the 4 x 6 one would compute ~10% more rows than it keeps, or 25% for Q8_0 blocks, whose
// decode each tile of x rows repeats (8 blocks at 16 rows: 5.64 ms in 6 x 4, 5.21 in 4 x 6).
bool short_tile512(int64_t M, bool q8_0) {
  const int64_t by4 = (M + 3) / 4 * 4, by6 = (M + 5) / 6 * 6;
  return q8_0 ? 5 * by4 < 4 * by6 : 11 * by4 < 10 * by6;
}

#ifdef SOPRANO_X86_DISPATCH
#define SOPRANO_YMM __attribute__((target("avx2,fma,f16c")))
#define SOPRANO_ZMM __attribute__((target("avx512f,avx2,fma,f16c")))

// What the few-rows kernels need of a vector width, so one body serves AVX2 and AVX-512.
struct Ymm {
  using F = __m256;
  static constexpr int64_t kLanes = 8;
  template <DType W>
  SOPRANO_YMM static inline F load(const Elem<W>* w) {
    if constexpr (W == DType::F32) {
      return _mm256_loadu_ps(w);
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
      if constexpr (W == DType::BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      else
        return _mm256_cvtph_ps(h);
    }
  }
  // Values off..off+7 of a Q8_0 block (an fp16 scale d, then 32 int8 q) as d q in fp32.
  SOPRANO_YMM static inline F q8_0(const uint8_t* blk, int64_t off) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + off));
    uint16_t d;
    std::memcpy(&d, blk, sizeof d);
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(static_cast<int16_t>(d))),
                         _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
  }
  SOPRANO_YMM static inline F loadx(const float* x) { return _mm256_loadu_ps(x); }
  SOPRANO_YMM static inline F zero() { return _mm256_setzero_ps(); }
  SOPRANO_YMM static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
  SOPRANO_YMM static inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  SOPRANO_YMM static inline float hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct Zmm {
  using F = __m512;
  static constexpr int64_t kLanes = 16;
  template <DType W>
  SOPRANO_ZMM static inline F load(const Elem<W>* w) {
    if constexpr (W == DType::F32) {
      return _mm512_loadu_ps(w);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      if constexpr (W == DType::BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else
        return _mm512_cvtph_ps(h);
    }
  }
  SOPRANO_ZMM static inline F q8_0(const uint8_t* blk, int64_t off) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + off));
    uint16_t d;
    std::memcpy(&d, blk, sizeof d);
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_set1_epi16(static_cast<int16_t>(d))),
                         _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
  }
  SOPRANO_ZMM static inline F loadx(const float* x) { return _mm512_loadu_ps(x); }
  SOPRANO_ZMM static inline F zero() { return _mm512_setzero_ps(); }
  SOPRANO_ZMM static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
  SOPRANO_ZMM static inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  SOPRANO_ZMM static inline float hsum(F a) { return _mm512_reduce_add_ps(a); }
};

// GCC warns that these bodies' vector arguments would be passed differently without their
// targets; they exist only inlined into rows_<isa> (flatten), so that never happens.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// One weight row at a time, front to back, against two activation rows: a thread's reads are
// one sequential stream, prefetched 4 KB ahead (prefetch.h). Four rows interleaved (the kernel
// before this one) streamed the backbone's 1 KB rows at ~15 GB/s (AMD EPYC, 2 threads), this
// at ~22 with the hardware prefetchers alone.
// Each activation row's sums run in the same order whatever M is, so a row's result does not
// depend on the batch it is in. 8 accumulators, 4 weight vectors and 2 activation vectors fill
// 14 of AVX2's 16 registers.
template <class V, DType W>
inline __attribute__((always_inline)) void rows_body(const LinearParams& p, int64_t n0,
                                                     int64_t n1) {
  using F = typename V::F;
  constexpr int64_t L = V::kLanes;
  const int64_t K = p.K, KL = K / L * L, K4L = K / (4 * L) * (4 * L);
  const auto* w = static_cast<const Elem<W>*>(p.w);
  for (int64_t n = n0; n < n1; ++n) {
    const Elem<W>* wr = w + n * K;
    for (int64_t m = 0; m < p.M; m += 2) {
      const bool two = m + 1 < p.M;
      const float* xa = p.x + m * p.x_row_stride;
      const float* xb = two ? xa + p.x_row_stride : xa;
      F a[4], b[4];
      for (int u = 0; u < 4; ++u) a[u] = b[u] = V::zero();
      int64_t k = 0;
      for (; k < K4L; k += 4 * L) {
        prefetch_ahead(wr + k, 4 * L * sizeof(Elem<W>));
        F wv[4];
        for (int u = 0; u < 4; ++u) wv[u] = V::template load<W>(wr + k + L * u);
        for (int u = 0; u < 4; ++u) a[u] = V::fma(wv[u], V::loadx(xa + k + L * u), a[u]);
        if (two)
          for (int u = 0; u < 4; ++u) b[u] = V::fma(wv[u], V::loadx(xb + k + L * u), b[u]);
      }
      for (; k < KL; k += L) {
        const F wv = V::template load<W>(wr + k);
        a[0] = V::fma(wv, V::loadx(xa + k), a[0]);
        if (two) b[0] = V::fma(wv, V::loadx(xb + k), b[0]);
      }
      float sa = V::hsum(V::add(V::add(a[0], a[1]), V::add(a[2], a[3])));
      float sb = V::hsum(V::add(V::add(b[0], b[1]), V::add(b[2], b[3])));
      for (; k < K; ++k) {
        const float wf = to_float<W>(wr[k]);
        sa += wf * xa[k];
        sb += wf * xb[k];
      }
      p.y[m * p.y_row_stride + n] = sa;
      if (two) p.y[(m + 1) * p.y_row_stride + n] = sb;
    }
  }
}

// How rows_tiled_body reads weight rows: where row n starts, L values from k as fp32, one value
// (past the last whole vector) and the address of value k (for prefetches).
template <DType W>
struct FloatRows {
  using Ptr = const Elem<W>*;
  static constexpr int64_t kValuesPerLine = 64 / sizeof(Elem<W>);
  static Ptr row(const void* w, int64_t n, int64_t K) { return static_cast<Ptr>(w) + n * K; }
  template <class V>
  static inline __attribute__((always_inline)) typename V::F load(Ptr r, int64_t k) {
    return V::template load<W>(r + k);
  }
  static float at(Ptr r, int64_t k) { return to_float<W>(r[k]); }
  static const void* addr(Ptr r, int64_t k) { return r + k; }
};

// Plain GGUF Q8_0 rows (K a multiple of 32), decoded in registers where they are FMA'd: a
// value is d q in fp32, as the GGUF decoder (decode_row) computes it, so the sums are those of
// linear_decoded over decoded rows. A few-rows pass reads 1.06 bytes a weight instead of
// decoding 4 bytes of fp32 to a buffer and reading them back (the Q8_0 decoder's row decoding
// was 17% of the 32-session Q8_0 server's CPU, its GEMM 28%).
struct Q8_0Rows {
  using Ptr = const uint8_t*;
  static constexpr int64_t kBlock = 32, kBytes = 34, kValuesPerLine = 64;
  static Ptr row(const void* w, int64_t n, int64_t K) {
    return static_cast<Ptr>(w) + n * (K / kBlock) * kBytes;
  }
  template <class V>
  static inline __attribute__((always_inline)) typename V::F load(Ptr r, int64_t k) {
    return V::q8_0(r + (k / kBlock) * kBytes, k % kBlock);
  }
  static float at(Ptr r, int64_t k) {
    const uint8_t* blk = r + (k / kBlock) * kBytes;
    return gguf::half_at(blk) * static_cast<float>(static_cast<int8_t>(blk[2 + k % kBlock]));
  }
  static const void* addr(Ptr r, int64_t k) { return r + (k / kBlock) * kBytes + k % kBlock; }
};

// J weight rows against R rows of x per pass over K (3 x 4 with AVX2: twelve accumulators, so
// each vector load feeds 12/7 FMAs where rows_body's feed one or fewer). The decoder's GEMMs of
// 4-31 rows (K 768 / 2304, weights in L2 after the first x rows) are bound by those loads, not
// by DRAM. Each (weight row, x row) sum runs over k in one order whatever M, N and the tile
// are. Edge tiles repeat a valid row and store only what is real.
template <class V, class Rows, int J, int R>
inline __attribute__((always_inline)) void rows_tiled_body(const LinearParams& p, int64_t n0,
                                                           int64_t n1) {
  using F = typename V::F;
  constexpr int64_t L = V::kLanes;
  const int64_t K = p.K, KL = K / L * L;
  for (int64_t n = n0; n < n1; n += J) {
    const int js = static_cast<int>(std::min<int64_t>(J, n1 - n));
    typename Rows::Ptr wr[J];
    for (int j = 0; j < J; ++j) wr[j] = Rows::row(p.w, n + std::min(j, js - 1), K);
    for (int64_t m = 0; m < p.M; m += R) {
      const int rs = static_cast<int>(std::min<int64_t>(R, p.M - m));
      const float* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = p.x + (m + std::min(r, rs - 1)) * p.x_row_stride;
      F acc[J][R];
      for (int j = 0; j < J; ++j)
        for (int r = 0; r < R; ++r) acc[j][r] = V::zero();
      for (int64_t k = 0; k < KL; k += L) {
        F wv[J];
        // One prefetch per 64-byte line: this kernel is bound by its load slots.
        if (k % Rows::kValuesPerLine == 0)
          for (int j = 0; j < J; ++j) prefetch_ahead(Rows::addr(wr[j], k), 1);
        for (int j = 0; j < J; ++j) wv[j] = Rows::template load<V>(wr[j], k);
        for (int r = 0; r < R; ++r) {
          const F xv = V::loadx(xr[r] + k);
          for (int j = 0; j < J; ++j) acc[j][r] = V::fma(wv[j], xv, acc[j][r]);
        }
      }
      for (int j = 0; j < js; ++j)
        for (int r = 0; r < rs; ++r) {
          float s = V::hsum(acc[j][r]);
          for (int64_t k = KL; k < K; ++k) s += Rows::at(wr[j], k) * xr[r][k];
          p.y[(m + r) * p.y_row_stride + n + j] = s;
        }
    }
  }
}
#pragma GCC diagnostic pop

template <DType W>
SOPRANO_YMM __attribute__((flatten)) void rows_avx2(const LinearParams& p, int64_t n0,
                                                    int64_t n1) {
  rows_body<Ymm, W>(p, n0, n1);
}

template <DType W>
SOPRANO_ZMM __attribute__((flatten)) void rows_avx512(const LinearParams& p, int64_t n0,
                                                      int64_t n1) {
  rows_body<Zmm, W>(p, n0, n1);
}

template <class Rows>
SOPRANO_YMM __attribute__((flatten)) void rows_tiled_avx2(const LinearParams& p, int64_t n0,
                                                          int64_t n1) {
  rows_tiled_body<Ymm, Rows, 3, 4>(p, n0, n1);
}

// Two tiles of 24 accumulators (of AVX-512's 32 registers): 4 x 6 loads 10 vectors per k for
// its 24 FMAs, 6 x 4 loads 10 too but converts 6 weight vectors, ~5-15% slower a row; it wins
// where 4 x 6 would compute rows only to drop them. 8 blocks of the decoder (Intel Xeon, fp16,
// ms, 6 x 4 / 4 x 6): 4 rows 1.65 / 1.84, 8 rows 2.53 / 3.03, 12 rows 3.48 / 3.03, 16 rows
// 4.36 / 4.27, 20 rows 5.44 / 5.83, 24 rows 6.43 / 6.12.
template <class Rows>
SOPRANO_ZMM __attribute__((flatten)) void rows_tiled_avx512(const LinearParams& p, int64_t n0,
                                                            int64_t n1) {
  if (short_tile512(p.M, std::is_same_v<Rows, Q8_0Rows>))
    return rows_tiled_body<Zmm, Rows, 6, 4>(p, n0, n1);
  rows_tiled_body<Zmm, Rows, 4, 6>(p, n0, n1);
}

template <DType W>
__attribute__((target("avx2,fma,f16c"))) void convert_row(const Elem<W>* w, int64_t K,
                                                           float* out) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) _mm256_storeu_ps(out + k, Ymm::load<W>(w + k));
  for (; k < K; ++k) out[k] = to_float<W>(w[k]);
}

// Activation rows are packed in panels of kPanel rows: xp[(panel * K + k) * kPanel + i] is
// x[panel * kPanel + i][k] (zero past M), so a tile streams its rows of x sequentially.
constexpr int64_t kPanel = 16;

// J weight rows (fp32, row-major in wbuf) x 8V rows of x from one panel.
template <int J, int V>
__attribute__((target("avx2,fma"))) void tile(const float* wbuf, int64_t K, const float* panel,
                                              int64_t m0, int64_t rows, float* y, int64_t ldy,
                                              int64_t n0) {
  // Every loop over the J x V accumulators is fully unrolled, the epilogue's too: otherwise GCC
  // keeps them in memory and stores all of them on every k.
  __m256 acc[J][V];
#pragma GCC unroll 6
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[j][v] = _mm256_setzero_ps();
  const float* xk = panel;
  for (int64_t k = 0; k < K; ++k, xk += kPanel) {
    __m256 xv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_ps(xk + 8 * v);
#pragma GCC unroll 6
    for (int j = 0; j < J; ++j) {
      const __m256 wb = _mm256_broadcast_ss(wbuf + j * K + k);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[j][v] = _mm256_fmadd_ps(wb, xv[v], acc[j][v]);
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const int64_t first = (m0 + 8 * v) * ldy + n0 + j;
      const int64_t n = std::min<int64_t>(8, rows - 8 * v);
      float out[8];
      _mm256_storeu_ps(out, acc[j][v]);
      for (int64_t i = 0; i < n; ++i) y[first + i * ldy] = out[i];
    }
}

template <int J>
__attribute__((target("avx2,fma"))) void tiles_over_m(const float* wbuf, int64_t K,
                                                      const float* xp, int64_t M, float* y,
                                                      int64_t ldy, int64_t n0) {
  for (int64_t m = 0; m < M; m += kPanel) {
    const float* panel = xp + m * K;
    const int64_t rows = std::min(kPanel, M - m);
    if (rows > 8)
      tile<J, 2>(wbuf, K, panel, m, rows, y, ldy, n0);
    else
      tile<J, 1>(wbuf, K, panel, m, rows, y, ldy, n0);
  }
}

// The AVX-512 tile: J weight rows x V whole panels (one zmm of 16 rows each), J V = 24 of the
// 32 zmm registers accumulating, so each k costs V loads of x and J broadcasts for 24 FMAs.
// Twice the AVX2 tile's width per FMA on CPUs with two 512-bit FMA units. A pass of fewer
// panels takes more weight rows (kTiles512): 6 x 1 alone left six FMA chains to hide a
// 4-cycle latency on two ports. Each output is still one FMA chain over k in order, so it gives
// tile()'s bits exactly, whatever the tile. The first jn of the J rows are real; the rest are
// computed from whatever wbuf holds there and dropped.
// `ahead`: the first `ahead_lines` cache lines there are asked into L2, one a k (see
// rows_many).
template <int J, int V>
__attribute__((target("avx512f"))) void tile512(const float* wbuf, int64_t K, const float* xp,
                                                 int64_t M, int64_t jn, float* y, int64_t ldy,
                                                 int64_t n0, const char* ahead,
                                                 int64_t ahead_lines) {
  __m512 acc[J][V];
#pragma GCC unroll 24
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  const int64_t panel_stride = kPanel * K;
  for (int64_t k = 0; k < K; ++k) {
    if (k < ahead_lines) _mm_prefetch(ahead + 64 * k, _MM_HINT_T1);
    __m512 xv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) xv[v] = _mm512_loadu_ps(xp + v * panel_stride + k * kPanel);
#pragma GCC unroll 24
    for (int j = 0; j < J; ++j) {
      const __m512 wb = _mm512_set1_ps(wbuf[j * K + k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[j][v] = _mm512_fmadd_ps(wb, xv[v], acc[j][v]);
    }
  }
#pragma GCC unroll 24
  for (int j = 0; j < J; ++j) {
    if (j >= jn) break;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const int64_t first = kPanel * v;
      const int64_t n = std::min<int64_t>(kPanel, M - first);
      float out[kPanel];
      _mm512_storeu_ps(out, acc[j][v]);
      for (int64_t i = 0; i < n; ++i) y[(first + i) * ldy + n0 + j] = out[i];
    }
  }
}

using Tile512 = void (*)(const float* wbuf, int64_t K, const float* xp, int64_t M, int64_t jn,
                         float* y, int64_t ldy, int64_t n0, const char* ahead,
                         int64_t ahead_lines);
struct Tile512Shape {
  int64_t J;
  Tile512 run;
};
// Indexed by the panels of x in the pass, less one (kRowsPerPass: at most three).
constexpr Tile512Shape kTiles512[] = {
    {24, tile512<24, 1>}, {12, tile512<12, 2>}, {8, tile512<8, 3>}};
// Weight rows every shape's J divides, so a task's decoded rows pad to a whole number of tiles.
constexpr int64_t kTile512Rows = 24;

template <DType W>
__attribute__((target("avx2,fma,f16c"))) void decode_row(const void* w, int64_t n, int64_t K,
                                                          float* out) {
  convert_row<W>(static_cast<const Elem<W>*>(w) + n * K, K, out);
}

using TilesOverM = void (*)(const float* wbuf, int64_t K, const float* xp, int64_t M, float* y,
                           int64_t ldy, int64_t n0);

// Indexed by the weight rows in the group, 1..6.
constexpr TilesOverM kTilesAvx2[] = {nullptr,         tiles_over_m<1>, tiles_over_m<2>,
                                     tiles_over_m<3>, tiles_over_m<4>, tiles_over_m<5>,
                                     tiles_over_m<6>};

// Rows of x per pass over a task's weight rows: 3 panels, the 8 x 48 tile. A block of x
// (48 x K floats, <= 442 KB at the decoder's K = 2304) and the task's decoded weight rows stay
// in L2 while every group of weight rows meets them; streaming all of x per group instead (x
// beyond L2 from ~200 rows) cost a third of the GEMM's speed at 800 rows. Passes of 64 rows in
// the 6 x 64 tile were ~11% slower at 128 and 512 rows (8 fp16 decoder blocks, Intel Xeon,
// 2026-12-01: 33.0 / 129 ms against 29.6 / 115), passes of 32 in 12 x 32 as fast as 48.
constexpr int64_t kRowsPerPass = 3 * kPanel;
static_assert(kRowsPerPass / kPanel <= std::size(kTiles512), "a tile shape for every pass");
// Up to this many passes over x, the next task's weight rows are prefetched (rows_many).
constexpr int64_t kFetchedPasses = 2;

// Rows [n0, n1) of w (at most kRowBlock) against all of x, given x packed into panels (xp):
// with AVX-512, each pass of x in tiles of kTiles512's shape for its panels; with AVX2, in
// groups of 6 weight rows. `row_bytes` > 0 (w's rows contiguous, that long): in the first pass
// the AVX-512 tiles ask for the next task's rows while they compute, so decoding them reads
// from L2 rather than memory. Decoding had been a third of a 16-bit prefill (bf16, 20 rows),
// each task's weight read waiting for memory with the FMA units idle; with many passes over x
// (a decoder's hundreds of rows) the read is a small share, and is left to the hardware.
void rows_many(const LinearParams& p, RowDecoder decode, int64_t row_bytes, bool w512,
               const float* xp, int64_t n0, int64_t n1) {
  thread_local std::vector<float> wbuf;
  const int64_t rows_w = n1 - n0;
  wbuf.resize((rows_w + kTile512Rows - 1) / kTile512Rows * kTile512Rows * p.K);
  for (int64_t n = n0; n < n1; ++n) decode(p.w, n, p.K, wbuf.data() + (n - n0) * p.K);
  const char* next = static_cast<const char*>(p.w) + n1 * row_bytes;
  const bool fetch = row_bytes > 0 && p.M <= kFetchedPasses * kRowsPerPass;
  const int64_t next_lines = fetch ? (std::min(p.N, n1 + rows_w) - n1) * row_bytes / 64 : 0;
  for (int64_t m = 0; m < p.M; m += kRowsPerPass) {
    const int64_t rows_x = std::min(kRowsPerPass, p.M - m);
    const float* x = xp + m * p.K;
    float* y = p.y + m * p.y_row_stride;
    if (w512) {
      const Tile512Shape& t = kTiles512[(rows_x + kPanel - 1) / kPanel - 1];
      for (int64_t n = n0; n < n1; n += t.J) {
        // Each tile takes its own K-line share of the next task's lines (the first pass only).
        const int64_t share = m == 0 ? (n - n0) / t.J * p.K : next_lines;
        t.run(wbuf.data() + (n - n0) * p.K, p.K, x, rows_x, std::min(t.J, n1 - n), y,
              p.y_row_stride, n, next + 64 * share, std::max<int64_t>(0, next_lines - share));
      }
    } else {
      constexpr int64_t J = 6;  // kTilesAvx2's tallest group
      for (int64_t n = n0; n < n1; n += J) {
        const int rows = static_cast<int>(std::min(J, n1 - n));
        kTilesAvx2[rows](wbuf.data() + (n - n0) * p.K, p.K, x, rows_x, y, p.y_row_stride, n);
      }
    }
  }
}

#endif

bool has_avx512() {
#ifdef SOPRANO_X86_DISPATCH
  return cpu_features().avx512f && has_avx2_fma_f16c();
#else
  return false;
#endif
}

// Whether the kernels take AVX-512 for this isa.
bool wide(LinearIsa isa) {
  static const bool avx512 = has_avx512();
  return isa == LinearIsa::kAvx512 || (isa == LinearIsa::kAuto && avx512);
}

template <DType W>
RowsKernel pick(bool tiles, bool wide) {
#ifdef SOPRANO_X86_DISPATCH
  if (wide) return tiles ? rows_tiled_avx512<FloatRows<W>> : rows_avx512<W>;
  if (has_avx2_fma_f16c()) return tiles ? rows_tiled_avx2<FloatRows<W>> : rows_avx2<W>;
#endif
  return rows_scalar<W>;
}

// Rows per task: a multiple of every few-rows tile's weight rows (3, 4 and 6), of the
// epilogue's 8-wide vectors (tasks of 12 left 4 columns of scalar erf a row: decoder passes
// ~8% slower) and the packed GEMM's tallest tile (kTile512Rows). A static schedule hands each
// thread one contiguous run of tasks, so the task's size sets how evenly rows split: tasks of
// 48 gave a 512-row matrix's 11 to two threads as 288 and 224 rows, tasks of 24 give 264, 248.
constexpr int64_t kRowBlock = 24;
// Below this many weights a parallel region costs more than the work.
constexpr int64_t kMinParallelWeights = 1 << 16;
// From this many activation rows on, the broadcast tile beats converting w per use (the
// default of linear_decoded, whose rows are decoded to fp32 anyway).
constexpr int64_t kManyRows = 8;
// linear()'s default for 16-bit and fp32 weights: one weight row at a time below kManyRows rows
// of x (a decode step's one sequential stream), register tiles of the few-rows kernel from
// there, and the packed GEMM from kPackedFromRows on. The packed GEMM converts every weight to
// fp32 once a call, a fixed cost that the tiles, converting in registers, do not pay: the bf16
// backbone's prefill (lean, Intel Xeon, 2 threads, 2026-12-02, ms, packed / tiles) 8 tokens
// 22.1 / 11.3, 16 23.0 / 18.0, 24 26.4 / 22.7, 32 30.3 / 31.8, 64 52.4 / 53.0; with the AVX2
// kernels 16 27.5 / 19.3, 24 33.5 / 29.2, 32 35.6 / 37.1.
constexpr int64_t kPackedFromRows = 28;

// Tasks of kRowBlock weight rows, each through kernel k and then the epilogue.
void run_row_blocks(const LinearParams& p, RowsKernel k) {
  const int64_t blocks = (p.N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if (p.N * p.K >= kMinParallelWeights) \
    num_threads(num_threads())
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * kRowBlock, n1 = std::min(p.N, n0 + kRowBlock);
    k(p, n0, n1);
    apply_epilogue(p, n0, n1);
  }
}

#ifdef SOPRANO_X86_DISPATCH
void linear_many_rows(const LinearParams& p, RowDecoder decode, int64_t row_bytes) {
  const int64_t panels = (p.M + kPanel - 1) / kPanel;
  thread_local std::vector<float> packed;
  packed.resize(panels * kPanel * p.K);
  float* xp = packed.data();
  const bool w512 = wide(p.isa);
  const int64_t blocks = (p.N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel if (p.N * p.K >= kMinParallelWeights) \
    num_threads(num_threads())
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < panels * kPanel; ++m) {
      float* dst = xp + (m / kPanel) * kPanel * p.K + m % kPanel;
      if (m < p.M) {
        const float* src = p.x + m * p.x_row_stride;
        for (int64_t k = 0; k < p.K; ++k) dst[k * kPanel] = src[k];
      } else {
        for (int64_t k = 0; k < p.K; ++k) dst[k * kPanel] = 0.f;
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kRowBlock, n1 = std::min(p.N, n0 + kRowBlock);
      rows_many(p, decode, row_bytes, w512, xp, n0, n1);
      apply_epilogue(p, n0, n1);
    }
  }
}
#endif

}  // namespace

LinearIsa parse_linear_isa(const std::string& name, const char* op) {
  if (name == "auto") return LinearIsa::kAuto;
  if (name == "avx2" || name == "avx512") {
#ifndef SOPRANO_X86_DISPATCH
    fail(op, "isa '" + name + "' needs an x86 build");
#else
    const bool ok = name == "avx2" ? has_avx2_fma_f16c() : has_avx512();
    require(ok, op, "this CPU cannot run isa '" + name + "'");
    return name == "avx2" ? LinearIsa::kAvx2 : LinearIsa::kAvx512;
#endif
  }
  fail(op, "isa must be auto, avx2 or avx512, got '" + name + "'");
}

void linear(const LinearParams& p) {
  if (p.bf16_dots) return linear_bf16_dots(p);
#ifdef SOPRANO_X86_DISPATCH
  static const bool avx2 = has_avx2_fma_f16c();
  // Indexed by DType.
  static const RowDecoder decoders[] = {decode_row<DType::F32>, decode_row<DType::F16>,
                                        decode_row<DType::BF16>};
  if (avx2 && p.M >= (p.packed_from_rows > 0 ? p.packed_from_rows : kPackedFromRows))
    return linear_many_rows(p, decoders[static_cast<int>(p.wtype)],
                            p.K * static_cast<int64_t>(dtype_size(p.wtype)));
#endif
  const bool tiles = p.row_tiles || (p.packed_from_rows == 0 && p.M >= kManyRows);
  // Indexed by width, row tiles, then DType.
  static const RowsKernel kernels[2][2][3] = {
      {{pick<DType::F32>(false, false), pick<DType::F16>(false, false),
        pick<DType::BF16>(false, false)},
       {pick<DType::F32>(true, false), pick<DType::F16>(true, false),
        pick<DType::BF16>(true, false)}},
      {{pick<DType::F32>(false, true), pick<DType::F16>(false, true),
        pick<DType::BF16>(false, true)},
       {pick<DType::F32>(true, true), pick<DType::F16>(true, true),
        pick<DType::BF16>(true, true)}}};
  run_row_blocks(p, kernels[wide(p.isa)][tiles][static_cast<int>(p.wtype)]);
}

#ifdef SOPRANO_X86_DISPATCH
void linear_q8_0_rows(const LinearParams& p) {
  require(has_avx2_fma_f16c(), "linear_q8_0_rows", "needs AVX2, FMA and F16C");
  run_row_blocks(p, wide(p.isa) ? rows_tiled_avx512<Q8_0Rows> : rows_tiled_avx2<Q8_0Rows>);
}
#endif

void linear_decoded(const LinearParams& p, RowDecoder decode) {
#ifdef SOPRANO_X86_DISPATCH
  static const bool avx2 = has_avx2_fma_f16c();
  if (avx2 && p.M >= (p.packed_from_rows > 0 ? p.packed_from_rows : kManyRows))
    return linear_many_rows(p, decode, 0);
#endif
  static const RowsKernel dots[2][2] = {
      {pick<DType::F32>(false, false), pick<DType::F32>(true, false)},
      {pick<DType::F32>(false, true), pick<DType::F32>(true, true)}};
  const bool w512 = wide(p.isa);
  const RowsKernel k = dots[w512][p.row_tiles];
  // Weight rows decoded per tile of the kernel (3 with AVX2, 4 or 6 with AVX-512) as a small
  // fp32 matrix.
  const int64_t decoded = !w512 ? 3 : short_tile512(p.M, false) ? 6 : 4;
  const int64_t blocks = (p.N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if (p.N * p.K >= kMinParallelWeights) \
    num_threads(num_threads())
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * kRowBlock, n1 = std::min(p.N, n0 + kRowBlock);
    thread_local std::vector<float> rows;
    rows.resize(decoded * p.K);
    LinearParams part = p;
    part.w = rows.data();
    for (int64_t n = n0; n < n1; n += decoded) {
      part.N = std::min(decoded, n1 - n);
      for (int64_t j = 0; j < part.N; ++j) decode(p.w, n + j, p.K, rows.data() + j * p.K);
      part.y = p.y + n;
      k(part, 0, part.N);
    }
    apply_epilogue(p, n0, n1);
  }
}

}  // namespace soprano::cpu
