// AMX-BF16 linear (bf16_dots.h). The tile product is C[16, 16] += A[16, 32] B[32, 16] with B's
// rows in pairs of k; here A is 16 weight rows read straight from w (rows of w are contiguous in
// k, as a tile's rows must be) and B is 16 rows of x, packed once per call into pairs of k, so C
// is y transposed: a task's 16 x 16 results are written out transposed, then get the epilogue.
// Tasks are 32 weight rows (two A tiles) against 32 rows of x (two B tiles): four C tiles, the
// most the eight tile registers hold with two A and two B. Rows of x past M, and of w past N
// (the head's 2050), are zeros.
#include "cpu/bf16_dots.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/epilogue.h"
#include "cpu/tile_config.h"
#include "cpu/threads.h"

#ifdef SOPRANO_X86_DISPATCH
#include <immintrin.h>
#endif

namespace soprano::cpu {
namespace {

constexpr const char* kOp = "linear_bf16_dots";

#ifdef SOPRANO_X86_DISPATCH
#define SOPRANO_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

constexpr int64_t kTileRows = 16;   // rows of every tile: weight rows of A, k pairs of B
constexpr int64_t kTileK = 32;      // bf16 values of k in a tile's 64-byte row
constexpr int64_t kTileDwords = kTileRows * kTileRows;  // a packed B tile: [16 pairs][16 rows]
constexpr int64_t kTaskRows = 2 * kTileRows;            // weight rows per task: two A tiles
// Below this many multiply-adds a parallel region costs more than the work.
constexpr int64_t kMinParallelMacs = 1 << 20;

// Every tile 16 rows of 64 bytes: C tiles 0-3, A tiles 4-5, B tiles 6-7.
SOPRANO_AMX void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = kTileRows;
  }
  load_tile_config(c);
}

// Group g's (rows 16 g .. 16 g + 15 of x) B tile for k block kb: dword [r][m] is the bf16 pair
// x[16 g + m][32 kb + 2 r], x[16 g + m][32 kb + 2 r + 1] (the even k in the low half).
SOPRANO_AMX void pack_tile(const LinearParams& p, int64_t g, int64_t kb, uint32_t* tile) {
  const __m512i column = _mm512_mullo_epi32(_mm512_set1_epi32(kTileRows),
                                            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                             5, 4, 3, 2, 1, 0));
  for (int64_t m = 0; m < kTileRows; ++m) {
    const int64_t row = g * kTileRows + m;
    __m512i pairs = _mm512_setzero_si512();
    if (row < p.M) {
      const float* x = p.x + row * p.x_row_stride + kb * kTileK;
      pairs = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
    }
    _mm512_i32scatter_epi32(tile + m, column, pairs, 4);
  }
}

// C tiles of weight rows [n0, n0 + 16 A) against the x groups g, g + 1 (B of them) over all of
// K, stored to out [32][32] (row: weight row, column: row of x). Meanwhile rows [0, next_rows)
// of ``next`` (weights a later task reads) are prefetched into L2, one line of each per k block.
template <int A, int B>
SOPRANO_AMX void tile_products(const uint16_t* w, int64_t K, const uint32_t* xp, int64_t kblocks,
                               const uint16_t* next, int64_t next_rows, float* out) {
  constexpr int64_t kOutStride = kTaskRows * sizeof(float);
  const int64_t w_stride = K * sizeof(uint16_t);
  _tile_zero(0);
  if constexpr (B == 2) _tile_zero(1);
  if constexpr (A == 2) _tile_zero(2);
  if constexpr (A == 2 && B == 2) _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    for (int64_t r = 0; r < next_rows; ++r) __builtin_prefetch(next + r * K + kb * kTileK, 0, 2);
    _tile_loadd(4, w + kb * kTileK, w_stride);
    _tile_loadd(6, xp + kb * kTileDwords, 64);
    if constexpr (B == 2) _tile_loadd(7, xp + (kblocks + kb) * kTileDwords, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (B == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (A == 2) {
      _tile_loadd(5, w + kTileRows * K + kb * kTileK, w_stride);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (B == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, out, kOutStride);
  if constexpr (B == 2) _tile_stored(1, out + kTileRows, kOutStride);
  if constexpr (A == 2) _tile_stored(2, out + kTileRows * kTaskRows, kOutStride);
  if constexpr (A == 2 && B == 2) _tile_stored(3, out + kTileRows * kTaskRows + kTileRows,
                                               kOutStride);
}

using TileProducts = void (*)(const uint16_t*, int64_t, const uint32_t*, int64_t,
                             const uint16_t*, int64_t, float*);
constexpr TileProducts kTileProducts[2][2] = {{tile_products<1, 1>, tile_products<1, 2>},
                                              {tile_products<2, 1>, tile_products<2, 2>}};

// Weight rows [n0, n1) (at most 32) against every row of x, with the epilogue. A task's first
// pass over its weights waited on them at every k block (a tile load waits for the product before
// it that reads the same tile register), so each task prefetches the next task's weights, spread
// over its passes. A streamed decoder pass of 64 rows: 0.093-0.098 -> 0.083-0.086 ms a frame, the
// whole decode 0.081-0.084 (Q8_0 decoder, Intel Xeon, 2026-12-02). With one pass (16 rows or
// fewer, bound by the weights' stream) it was 5% slower, so there is none there.
SOPRANO_AMX void task(const LinearParams& p, const uint32_t* xp, int64_t groups, int64_t n0,
                      int64_t n1) {
  alignas(64) float out[kTaskRows * kTaskRows];
  const int64_t kblocks = p.K / kTileK;
  const auto* w = static_cast<const uint16_t*>(p.w) + n0 * p.K;
  const uint16_t* next = w + (n1 - n0) * p.K;
  const int64_t next_rows = groups > 1 ? std::min(kTaskRows, p.N - n1) : 0;
  const int64_t passes = (groups + 1) / 2;
  const int a = static_cast<int>((n1 - n0 + kTileRows - 1) / kTileRows);
  if ((n1 - n0) % kTileRows != 0) {  // the last rows of w: a tile of them padded with zeros
    thread_local std::vector<uint16_t> padded;
    padded.assign(a * kTileRows * p.K, 0);
    std::copy(w, w + (n1 - n0) * p.K, padded.begin());
    w = padded.data();
  }
  for (int64_t g = 0; g < groups; g += 2) {
    const int b = static_cast<int>(std::min<int64_t>(2, groups - g));
    const int64_t r0 = next_rows * (g / 2) / passes, r1 = next_rows * (g / 2 + 1) / passes;
    kTileProducts[a - 1][b - 1](w, p.K, xp + g * kblocks * kTileDwords, kblocks,
                                next + r0 * p.K, r1 - r0, out);
    const int64_t m1 = std::min(p.M, (g + b) * kTileRows);
    for (int64_t m = g * kTileRows; m < m1; ++m) {
      float* y = p.y + m * p.y_row_stride;
      const float* column = out + (m - g * kTileRows);
      for (int64_t n = n0; n < n1; ++n) y[n] = column[(n - n0) * kTaskRows];
      apply_epilogue_row(p, m, n0, n1);
    }
  }
}

// A thread's share of a call, inside its parallel region: pack x, then the tasks with the
// thread's tiles configured.
SOPRANO_AMX void run_share(const LinearParams& p, uint32_t* xp, int64_t groups) {
  const int64_t kblocks = p.K / kTileK, tasks = (p.N + kTaskRows - 1) / kTaskRows;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < groups * kblocks; ++t)
    pack_tile(p, t / kblocks, t % kblocks, xp + t * kTileDwords);
  configure_tiles();
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tasks; ++t)
    task(p, xp, groups, t * kTaskRows, std::min(p.N, (t + 1) * kTaskRows));
  _tile_release();
}
#endif

}  // namespace

bool bf16_dots_available() {
#ifdef SOPRANO_X86_DISPATCH
  static const bool ok = [] {
    const CpuFeatures& f = cpu_features();
    return f.amx_tile && f.amx_bf16 && f.avx512_bf16 && f.avx512bw && f.avx512vl &&
           has_avx2_fma_f16c() && tile_data_permitted();
  }();
  return ok;
#else
  return false;
#endif
}

void linear_bf16_dots(const LinearParams& p) {
  require(bf16_dots_available(), kOp, "needs AMX-BF16 and AVX512-BF16, which this CPU lacks");
  require(p.wtype == DType::BF16, kOp, "w must be bfloat16");
  require(p.K % 32 == 0, kOp, "K must be a multiple of 32, got " + std::to_string(p.K));
#ifdef SOPRANO_X86_DISPATCH
  if (p.M == 0) return;
  const int64_t groups = (p.M + kTileRows - 1) / kTileRows;
  thread_local std::vector<uint32_t> packed;
  packed.resize(groups * (p.K / kTileK) * kTileDwords);
  uint32_t* xp = packed.data();
#pragma omp parallel if (p.M * p.N * p.K >= kMinParallelMacs) num_threads(num_threads())
  run_share(p, xp, groups);
#endif
}

}  // namespace soprano::cpu
