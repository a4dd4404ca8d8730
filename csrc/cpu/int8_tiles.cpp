// AMX-INT8 dots over the x8 layouts' weights (int8_tiles.h). The tile product is C[16, N] +=
// A[16, 32] B[32, N] with B's rows in groups of four k. The x8 layouts already store a block of
// 8 weight rows nearly that way: chunks of [8 rows][4 bytes], each a group of four k (Q4_0's and
// the K-quants' bytes hold two values of k in their two nibbles; Q5_K's and Q6_K's high bits
// come from chunks of their own). A block of two groups (16 weight rows) becomes one B tile, or
// for the K-quants one per sub-block, by putting the groups' chunks side by side (and assembling
// the values). A is 16 rows of x's int8 values, read in place from its activation blocks; C is
// y's orientation: 16 rows of x by 16 weight rows.
//
// Scales differ per weight row and per row of x every 32 values (Q6_K: 16), so every such int32
// C tile is stored and scaled on the vector unit (the K-quants' sub-block scales as exact int32
// first). Even and odd tile products use their own tiles, so the tile unit's next products need
// not wait for the last ones to be stored.
#include "cpu/int8_tiles.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common.h"
#include "cpu/tile_config.h"
#include "gguf_dequant_params.h"

#ifdef SOPRANO_X86_DISPATCH
#include <immintrin.h>
#endif

namespace soprano::cpu {
namespace {

#ifdef SOPRANO_X86_DISPATCH
#define SOPRANO_AMX_INT8 \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

constexpr int64_t kTileRows = 16;  // rows of x per A and C tile; weight rows per B and C
constexpr int64_t kTileDots = kTileRows * 16;  // a C tile's int32
// Tiles 0 and 2-3: C, A and B of even blocks; 1 and 4-5: of odd blocks.

// A group's block: 8 fp16 d, then Q8_0's 8 chunks of [8 rows][4 int8] or Q4_0's 4 chunks of
// [8 rows][4 nibble bytes].
template <bool kQ4>
constexpr int64_t kBlockBytes = kQ4 ? 8 * 18 : 8 * 34;

// 32 bytes at p (the first group's 8 rows) and at p + gs (the second's), side by side.
SOPRANO_AMX_INT8 inline __m512i side_by_side(const uint8_t* p, int64_t gs) {
  const __m256i first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + gs));
  return _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
}

// The two groups' block (at g, g + gs) as one B tile: row i the first group's four values of k
// 4i.. 4i + 3, then the second's (64 bytes: 16 weight rows). Q4_0's nibble chunk c gives rows c
// (low nibbles) and c + 4 (high), its values 0..15 unsigned (the -8 comes off in the scaling).
template <bool kQ4>
SOPRANO_AMX_INT8 inline void pack_b(const uint8_t* g, int64_t gs, uint8_t* b) {
  for (int c = 0; c < (kQ4 ? 4 : 8); ++c) {
    const __m512i v = side_by_side(g + 16 + 32 * c, gs);
    if constexpr (kQ4) {
      const __m512i nibble = _mm512_set1_epi8(15);
      _mm512_store_si512(b + 64 * c, _mm512_and_si512(v, nibble));
      _mm512_store_si512(b + 64 * (c + 4), _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
    } else {
      _mm512_store_si512(b + 64 * c, v);
    }
  }
}

// The 16 lanes of fp16 values p[0..7] (the first group's rows) and p[gs..gs + 7] (the second's),
// as floats.
SOPRANO_AMX_INT8 inline __m512 row_halves(const uint8_t* p, int64_t gs) {
  const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + gs));
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(first), second, 1));
}

// A block's int32 dots, 16 rows of x by 16 weight rows, into out[m * 16 + j]: tile C from A (x's
// block at xq) and B (packed at b). A macro: GCC's tile intrinsics paste their tile numbers into
// the assembly as written, so they must be literal digits.
#define SOPRANO_BLOCK_TILES(C, A, B, xq, x_stride, b, out) \
  do {                                                    \
    _tile_zero(C);                                        \
    _tile_loadd(A, xq, x_stride);                         \
    _tile_loadd(B, b, 64);                                \
    _tile_dpbssd(C, A, B);                                \
    _tile_stored(C, out, 64);                             \
  } while (0)

// R rows of x's sums: quant_linear's Vnni512 arithmetic, dd = dw * dx[m], then acc[m] += dd *
// float(dots[m]) and, for Q4_0, off[m] += dd * 8 sum(x[m]) (its weights are the nibbles less 8).
template <bool kQ4, int R>
struct Sums {
  __m512 acc[R], off[kQ4 ? R : 1];

  SOPRANO_AMX_INT8 void zero() {
    for (int m = 0; m < R; ++m) acc[m] = off[kQ4 ? m : 0] = _mm512_setzero_ps();
  }

  SOPRANO_AMX_INT8 void scale_block(const uint8_t* g, int64_t gs, const BlockQ8* x, int64_t nb,
                                    const int32_t* dots) {
    const __m512 dw = row_halves(g, gs);
    for (int m = 0; m < R; ++m) {
      const BlockQ8& a = x[m * nb];
      const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots + 16 * m));
      acc[m] = _mm512_fmadd_ps(dd, dot, acc[m]);
      if constexpr (kQ4)
        off[m] = _mm512_fmadd_ps(dd, _mm512_set1_ps(8.f * static_cast<float>(a.sum)), off[m]);
    }
  }

  SOPRANO_AMX_INT8 void store(float* y, int64_t y_row_stride, int rows) const {
    for (int m = 0; m < rows; ++m)
      _mm512_storeu_ps(y + m * y_row_stride,
                       kQ4 ? _mm512_sub_ps(acc[m], off[kQ4 ? m : 0]) : acc[m]);
  }
};

// 16 rows of x (R of them kept) against the two groups, over all nb blocks. Block b's B tile is
// packed two blocks ahead and its dots scaled two blocks behind: a tile load of bytes just
// stored, or a vector load of dots just stored from a tile, waits for the store to complete
// (Intel Xeon, Q8_0 [3072, 1024] at 16 rows, one thread: 48 -> 35 ns a block).
template <bool kQ4, int R>
SOPRANO_AMX_INT8 void tile_rows(const uint8_t* g, int64_t gs, const BlockQ8* x, int64_t nb,
                                float* y, int64_t y_row_stride, int rows) {
  constexpr int64_t kAhead = 2, kBehind = 2, kRing = 4, kBytes = kBlockBytes<kQ4>;
  alignas(64) int32_t dots[kRing][kTileDots];
  alignas(64) uint8_t packed[kRing][8 * 64];
  Sums<kQ4, R> sums;
  sums.zero();
  const int64_t x_stride = nb * static_cast<int64_t>(sizeof(BlockQ8));
  for (int64_t b = 0; b < kAhead && b < nb; ++b) pack_b<kQ4>(g + b * kBytes, gs, packed[b]);
  for (int64_t b = 0; b < nb + kBehind; ++b) {
    if (b + kAhead < nb)
      pack_b<kQ4>(g + (b + kAhead) * kBytes, gs, packed[(b + kAhead) % kRing]);
    if (b < nb && b % 2 == 0)
      SOPRANO_BLOCK_TILES(0, 2, 3, x[b].q, x_stride, packed[b % kRing], dots[b % kRing]);
    else if (b < nb)
      SOPRANO_BLOCK_TILES(1, 4, 5, x[b].q, x_stride, packed[b % kRing], dots[b % kRing]);
    const int64_t done = b - kBehind;
    if (done >= 0) sums.scale_block(g + done * kBytes, gs, x + done, nb, dots[done % kRing]);
  }
  sums.store(y, y_row_stride, rows);
}

// Q4_Kx8 and Q5_Kx8 (gguf_dequant_params.h): per group and 256-value block, 8 fp16 d, 8 fp16
// dmin, the sub-blocks' scales and mins as bytes [sub-block][row], Q5_K's fifth bits as 8
// groups of [8 rows][4 bytes] (bit 2c of a byte for chunk c's low nibbles, 2c + 1 for its high
// ones), then the nibbles as 4 chunks of 8 groups of [8 rows][4 bytes] (chunk c's low nibbles
// are sub-block 2c, its high ones 2c + 1).
template <bool kFive>
constexpr int64_t kKBytes = 8 * (kFive ? 180 : 148);
template <bool kFive>
constexpr int64_t kKNibbles = kFive ? 416 : 160;
constexpr int64_t kQ5KHigh = 160;

// Bit `bit` of every byte of v, moved to bit 4.
SOPRANO_AMX_INT8 inline __m512i bit_to_4(__m512i v, int bit) {
  const __m512i moved = bit <= 4 ? _mm512_slli_epi16(v, 4 - bit) : _mm512_srli_epi16(v, bit - 4);
  return _mm512_and_si512(moved, _mm512_set1_epi8(0x10));
}

// Block b's 8 sub-blocks as B tiles of the two groups (at g, g + gs): tile s row i holds the
// four values 4i.. 4i + 3 of sub-block s for 16 weight rows.
template <bool kFive>
SOPRANO_AMX_INT8 inline void pack_b_k(const uint8_t* g, int64_t gs, uint8_t* b) {
  const __m512i nibble = _mm512_set1_epi8(15);
  for (int c = 0; c < 4; ++c)
    for (int i = 0; i < 8; ++i) {
      const __m512i v = side_by_side(g + kKNibbles<kFive> + 256 * c + 32 * i, gs);
      __m512i lo = _mm512_and_si512(v, nibble);
      __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      if constexpr (kFive) {
        const __m512i h = side_by_side(g + kQ5KHigh + 32 * i, gs);
        lo = _mm512_or_si512(lo, bit_to_4(h, 2 * c));
        hi = _mm512_or_si512(hi, bit_to_4(h, 2 * c + 1));
      }
      _mm512_store_si512(b + 512 * (2 * c) + 64 * i, lo);
      _mm512_store_si512(b + 512 * (2 * c + 1) + 64 * i, hi);
    }
}

// The 16 lanes of bytes p[0..7] (the first group's rows) and p[gs..gs + 7] (the second's).
SOPRANO_AMX_INT8 inline __m512i row_bytes(const uint8_t* p, int64_t gs) {
  const __m128i first = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i second = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + gs));
  return _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(first, second));
}

// The same bytes as signed.
SOPRANO_AMX_INT8 inline __m512i row_sbytes(const uint8_t* p, int64_t gs) {
  const __m128i first = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i second = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + gs));
  return _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(first, second));
}

// Row m of x's sub-block dots (kSubs C tiles at dots) times the 16 weight rows' sub-block
// scales, summed: exact int32.
template <int kSubs>
SOPRANO_AMX_INT8 inline __m512i scaled_dots(const int32_t* dots, int m, const __m512i* scale) {
  __m512i isum = _mm512_setzero_si512();
  for (int s = 0; s < kSubs; ++s) {
    const __m512i dot = _mm512_load_si512(dots + kTileDots * s + 16 * m);
    isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, scale[s]));
  }
  return isum;
}

// Q4_K's and Q5_K's sums for R rows of x, quant_linear's Vnni512 arithmetic: per block, isum[m]
// = the sub-blocks' integer dots times their scales and msum[m] = the mins times x's sub-block
// sums (both exact int32), then acc[m] += dw dx[m] isum[m] and off[m] += dmin dx[m] msum[m].
template <int R>
struct KSums {
  __m512 acc[R], off[R];

  SOPRANO_AMX_INT8 void zero() {
    for (int m = 0; m < R; ++m) acc[m] = off[m] = _mm512_setzero_ps();
  }

  SOPRANO_AMX_INT8 void scale_block(const uint8_t* g, int64_t gs, const BlockQ8K* x, int64_t nb,
                                    const int32_t* dots) {
    const __m512 dw = row_halves(g, gs), dmin = row_halves(g + 16, gs);
    // mins of sub-blocks 2k and 2k + 1 as the int16 halves of each lane, for dpwssd against
    // x's sub-block sums likewise (|sum of 32 int8| < 2^15): the same exact int32 as
    // multiplying each one
    __m512i scale[8], mins[4];
    for (int j = 0; j < 8; ++j) scale[j] = row_bytes(g + 32 + 8 * j, gs);
    for (int k = 0; k < 4; ++k)
      mins[k] = _mm512_or_si512(row_bytes(g + 96 + 16 * k, gs),
                                _mm512_slli_epi32(row_bytes(g + 104 + 16 * k, gs), 16));
    for (int m = 0; m < R; ++m) {
      const BlockQ8K& a = x[m * nb];
      const __m512i isum = scaled_dots<8>(dots, m, scale);
      __m512i msum = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        const int lo = a.bsums[4 * k] + a.bsums[4 * k + 1];
        const int hi = a.bsums[4 * k + 2] + a.bsums[4 * k + 3];
        const __m512i sums = _mm512_set1_epi32(static_cast<int>(
            static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
            static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
        msum = _mm512_dpwssd_epi32(msum, mins[k], sums);
      }
      acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(a.d)), _mm512_cvtepi32_ps(isum),
                               acc[m]);
      off[m] = _mm512_fmadd_ps(_mm512_mul_ps(dmin, _mm512_set1_ps(a.d)),
                               _mm512_cvtepi32_ps(msum), off[m]);
    }
  }

  SOPRANO_AMX_INT8 void store(float* y, int64_t y_row_stride, int rows) const {
    for (int m = 0; m < rows; ++m)
      _mm512_storeu_ps(y + m * y_row_stride, _mm512_sub_ps(acc[m], off[m]));
  }
};

// Q6_Kx8 (gguf_dequant_params.h): per group and 256-value block, 8 fp16 d, the 16 sub-blocks'
// int8 scales as [sub-block][row], the high bit pairs as 2 halves of 8 groups of [8 rows][4
// bytes], then the low nibbles as 4 chunks of 8 groups likewise. Value 128h + 32c + 4i + k of a
// row: low nibble from chunk 2h + (c & 1) (its high nibble where c >= 2), high bits 2c, 2c + 1
// of half h, group i; sub-block 8h + 2c + (i >= 4).
constexpr int64_t kQ6KBytes = 8 * 210, kQ6KHigh = 144, kQ6KLow = 656;

// Block b's 32-value quarters (h, c) as pairs of B tiles of the two groups, kQ6KQuarter bytes a
// quarter q: its first sub-block's rows (i < 4), 256 zero bytes, its second's (i >= 4). The
// first tile starts at the quarter, the second 256 bytes on, so each has four rows of zeros and
// each tile product of the quarter's 32 values of x is one sub-block's. The zeros are set once.
constexpr int64_t kQ6KQuarter = 768;

SOPRANO_AMX_INT8 inline void zero_q6k_gaps(uint8_t* b) {
  for (int q = 0; q < 8; ++q)
    for (int r = 0; r < 4; ++r) _mm512_store_si512(b + kQ6KQuarter * q + 256 + 64 * r,
                                                   _mm512_setzero_si512());
}

SOPRANO_AMX_INT8 inline void pack_b_q6k(const uint8_t* g, int64_t gs, uint8_t* b) {
  const __m512i nibble = _mm512_set1_epi8(15), two = _mm512_set1_epi8(0x30);
  for (int h = 0; h < 2; ++h)
    for (int c = 0; c < 4; ++c) {
      uint8_t* quarter = b + kQ6KQuarter * (4 * h + c);
      for (int i = 0; i < 8; ++i) {
        const __m512i ql = side_by_side(g + kQ6KLow + 256 * (2 * h + (c & 1)) + 32 * i, gs);
        const __m512i qh = side_by_side(g + kQ6KHigh + 256 * h + 32 * i, gs);
        const __m512i low = c < 2 ? ql : _mm512_srli_epi16(ql, 4);
        const __m512i high = 2 * c <= 4 ? _mm512_slli_epi16(qh, 4 - 2 * c)
                                        : _mm512_srli_epi16(qh, 2 * c - 4);
        const __m512i q = _mm512_or_si512(_mm512_and_si512(low, nibble),
                                          _mm512_and_si512(high, two));
        _mm512_store_si512(quarter + (i < 4 ? 0 : 256) + 64 * i, q);
      }
    }
}

// Q6_K's sums for R rows of x, quant_linear's Vnni512 arithmetic: per block, isum[m] = the
// sub-blocks' integer dots times their scales less 32 times the scales against x's sub-block
// sums (exact int32), then acc[m] += d dx[m] isum[m].
template <int R>
struct Q6KSums {
  __m512 acc[R];

  SOPRANO_AMX_INT8 void zero() {
    for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
  }

  SOPRANO_AMX_INT8 void scale_block(const uint8_t* g, int64_t gs, const BlockQ8K* x, int64_t nb,
                                    const int32_t* dots) {
    const __m512 dw = row_halves(g, gs);
    // scales of sub-blocks 2k and 2k + 1 as the int16 halves of each lane, for dpwssd against
    // x's sub-block sums (int16 pairs in memory): the same exact int32 as multiplying each one
    __m512i scale[16], pairs[8];
    for (int s = 0; s < 16; ++s) scale[s] = row_sbytes(g + 16 + 8 * s, gs);
    for (int k = 0; k < 8; ++k)
      pairs[k] = _mm512_or_si512(_mm512_and_si512(scale[2 * k], _mm512_set1_epi32(0xffff)),
                                 _mm512_slli_epi32(scale[2 * k + 1], 16));
    for (int m = 0; m < R; ++m) {
      const BlockQ8K& a = x[m * nb];
      __m512i offset = _mm512_setzero_si512();
      for (int k = 0; k < 8; ++k) {
        int32_t two_sums;
        std::memcpy(&two_sums, a.bsums + 2 * k, sizeof two_sums);
        offset = _mm512_dpwssd_epi32(offset, pairs[k], _mm512_set1_epi32(two_sums));
      }
      const __m512i isum =
          _mm512_sub_epi32(scaled_dots<16>(dots, m, scale), _mm512_slli_epi32(offset, 5));
      acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(a.d)), _mm512_cvtepi32_ps(isum),
                               acc[m]);
    }
  }

  SOPRANO_AMX_INT8 void store(float* y, int64_t y_row_stride, int rows) const {
    for (int m = 0; m < rows; ++m) _mm512_storeu_ps(y + m * y_row_stride, acc[m]);
  }
};

// The K-quants' blocks on the tiles: each block's B tiles packed into kPacked bytes (`prepare`
// sets what packing leaves alone), its kTiles products of a tile of x, and the Sums that scale
// them.
template <bool kFive>
struct KTiles {  // Q4_Kx8 or Q5_Kx8: a tile product a 32-value sub-block
  static constexpr int64_t kBytes = kKBytes<kFive>, kTiles = 8, kPacked = 8 * 512;
  template <int R>
  using Sums = KSums<R>;
  static void prepare(uint8_t*) {}
  SOPRANO_AMX_INT8 static void pack(const uint8_t* g, int64_t gs, uint8_t* b) {
    pack_b_k<kFive>(g, gs, b);
  }
  SOPRANO_AMX_INT8 static void products(const int8_t* xq, int64_t x_stride, const uint8_t* bt,
                                        int32_t* out) {
    for (int j = 0; j < 8; j += 2) {
      SOPRANO_BLOCK_TILES(0, 2, 3, xq + 32 * j, x_stride, bt + 512 * j, out + kTileDots * j);
      SOPRANO_BLOCK_TILES(1, 4, 5, xq + 32 * (j + 1), x_stride, bt + 512 * (j + 1),
                          out + kTileDots * (j + 1));
    }
  }
};

struct Q6KTiles {  // two tile products a 32-value quarter, sharing its A tile
  static constexpr int64_t kBytes = kQ6KBytes, kTiles = 16, kPacked = 8 * kQ6KQuarter;
  template <int R>
  using Sums = Q6KSums<R>;
  SOPRANO_AMX_INT8 static void prepare(uint8_t* b) { zero_q6k_gaps(b); }
  SOPRANO_AMX_INT8 static void pack(const uint8_t* g, int64_t gs, uint8_t* b) {
    pack_b_q6k(g, gs, b);
  }
  SOPRANO_AMX_INT8 static void products(const int8_t* xq, int64_t x_stride, const uint8_t* bt,
                                        int32_t* out) {
    for (int q = 0; q < 8; ++q) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_loadd(2, xq + 32 * q, x_stride);
      _tile_loadd(3, bt + kQ6KQuarter * q, 64);
      _tile_loadd(5, bt + kQ6KQuarter * q + 256, 64);
      _tile_dpbssd(0, 2, 3);
      _tile_dpbssd(1, 2, 5);
      _tile_stored(0, out + kTileDots * (2 * q), 64);
      _tile_stored(1, out + kTileDots * (2 * q + 1), 64);
    }
  }
};

// 16 rows of x (R of them kept) against the two groups of a K-quant x8 matrix (Q: its KTiles or
// Q6KTiles), over all nb blocks: a block's products packed a block ahead and scaled a block
// behind.
template <class Q, int R>
SOPRANO_AMX_INT8 void tile_rows_k(const uint8_t* g, int64_t gs, const BlockQ8K* x, int64_t nb,
                                  float* y, int64_t y_row_stride, int rows) {
  alignas(64) int32_t dots[2][Q::kTiles * kTileDots];
  alignas(64) uint8_t packed[2][Q::kPacked];
  Q::prepare(packed[0]);
  Q::prepare(packed[1]);
  typename Q::template Sums<R> sums;
  sums.zero();
  const int64_t x_stride = nb * static_cast<int64_t>(sizeof(BlockQ8K));
  Q::pack(g, gs, packed[0]);
  for (int64_t b = 0; b < nb + 1; ++b) {
    if (b + 1 < nb) Q::pack(g + (b + 1) * Q::kBytes, gs, packed[(b + 1) % 2]);
    if (b < nb) Q::products(x[b].q, x_stride, packed[b % 2], dots[b % 2]);
    if (b >= 1) sums.scale_block(g + (b - 1) * Q::kBytes, gs, x + b - 1, nb, dots[(b - 1) % 2]);
  }
  sums.store(y, y_row_stride, rows);
}

#undef SOPRANO_BLOCK_TILES

// Rows [0, M) of x a tile of 16 at a time: run(R, m0, rows) with R (an integral_constant) the
// smallest of 4, 8 and 16 that holds the tile's rows, so short tiles scale fewer rows.
template <class Run>
void by_tiles(int64_t M, Run run) {
  for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, M - m0));
    if (rows <= 4)
      run(std::integral_constant<int, 4>{}, m0, rows);
    else if (rows <= 8)
      run(std::integral_constant<int, 8>{}, m0, rows);
    else
      run(std::integral_constant<int, 16>{}, m0, rows);
  }
}
#endif

}  // namespace

bool int8_tiles_available() {
#ifdef SOPRANO_X86_DISPATCH
  static const bool ok = [] {
    const CpuFeatures& f = cpu_features();
    return f.amx_tile && f.amx_int8 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni &&
           has_avx2_fma_f16c() && tile_data_permitted();
  }();
  return ok;
#else
  return false;
#endif
}

#ifdef SOPRANO_X86_DISPATCH
SOPRANO_AMX_INT8 void configure_int8_tiles() {
  TileConfig c;
  for (int t = 0; t < 6; ++t) {
    const bool b = t == 3 || t == 5;  // B: 32 values of k in groups of four, for 16 weight rows
    c.rows[t] = b ? 8 : kTileRows;
    c.colsb[t] = t < 2 || b ? 64 : 32;  // C: 16 int32; A: one block of 32 int8
  }
  load_tile_config(c);
}

SOPRANO_AMX_INT8 void release_int8_tiles() { _tile_release(); }

void x8_tile_dots(bool q4_0, const uint8_t* g, int64_t gs, const BlockQ8* x, int64_t M,
                  int64_t nb, float* y, int64_t y_row_stride) {
  by_tiles(M, [&](auto r, int64_t m0, int rows) {
    constexpr int R = decltype(r)::value;
    const auto run = q4_0 ? tile_rows<true, R> : tile_rows<false, R>;
    run(g, gs, x + m0 * nb, nb, y + m0 * y_row_stride, y_row_stride, rows);
  });
}

void kx8_tile_dots(int layout, const uint8_t* g, int64_t gs, const BlockQ8K* x, int64_t M,
                   int64_t nb, float* y, int64_t y_row_stride) {
  by_tiles(M, [&](auto r, int64_t m0, int rows) {
    constexpr int R = decltype(r)::value;
    const auto run = layout == kQ6_Kx8   ? tile_rows_k<Q6KTiles, R>
                     : layout == kQ5_Kx8 ? tile_rows_k<KTiles<true>, R>
                                         : tile_rows_k<KTiles<false>, R>;
    run(g, gs, x + m0 * nb, nb, y + m0 * y_row_stride, y_row_stride, rows);
  });
}
#else
void configure_int8_tiles() {}
void release_int8_tiles() {}
void x8_tile_dots(bool, const uint8_t*, int64_t, const BlockQ8*, int64_t, int64_t, float*,
                  int64_t) {}
void kx8_tile_dots(int, const uint8_t*, int64_t, const BlockQ8K*, int64_t, int64_t, float*,
                   int64_t) {}
#endif

}  // namespace soprano::cpu
