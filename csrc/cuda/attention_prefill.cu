// CUDA varlen causal flash attention over the cache (contract:
// soprano.ops.reference.attention_prefill): prompt p's token i attends to positions 0..i of
// its slot, online softmax in fp32, no score matrix in memory.
//
// The grid is (query tiles over max_seqlen, prompts, query heads); tiles past a prompt's length
// return at once. fp16/bf16 heads of dim 64 or 128 run on tensor cores through mma.sync
// m16n8k16 (fp32 accumulation, everything per row in registers): a block holds 16 queries and
// its 4 warps split the keys up to its last query's position, so even one long prompt makes
// many blocks and the longest causal tile costs a quarter of its keys per warp. Other fp16/bf16
// head dims that are a multiple of 16 take the WMMA 16x16x16 path (64 queries per block, keys 64
// at a time through shared memory); fp32, other head dims and devices without the shared memory
// take a plain FMA path.
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/attention.h"
#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

constexpr int kMaxHeadDim = 256;

// Prompt bounds from device memory, clamped to the token rows and to the cache length.
struct Prompt {
  int64_t start, n;
};

__device__ __forceinline__ Prompt prompt_bounds(const AttentionPrefillParams& p, int64_t prompt) {
  const int64_t start = clamp_index(p.cu_seqlens[prompt], 0, p.tokens);
  const int64_t end = clamp_index(p.cu_seqlens[prompt + 1], start, p.tokens);
  const int64_t n = end - start < p.shape.max_len ? end - start : p.shape.max_len;
  return {start, n};
}

// ---- FMA path: 16 queries per block, 4 per warp; a lane holds head elements lane + 32 j.
constexpr int kFmaRows = 16;
constexpr int kFmaKeys = 16;
constexpr int kFmaThreads = 128;
constexpr int kRowsPerWarp = kFmaRows / (kFmaThreads / 32);
constexpr int kPerLane = kMaxHeadDim / 32;

template <typename T>
__global__ void __launch_bounds__(kFmaThreads) prefill_fma_kernel(const AttentionPrefillParams p) {
  const int64_t prompt = blockIdx.y, h = blockIdx.z;
  const Prompt pr = prompt_bounds(p, prompt);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kFmaRows;
  if (m0 >= pr.n) return;  // the whole block, before any barrier
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t slot = clamp_index(p.slots[prompt], 0, p.shape.num_slots - 1);
  const int64_t cache = (slot * KVH + h / (NH / KVH)) * p.shape.max_len * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  __shared__ float k_tile[kFmaKeys * kMaxHeadDim];
  __shared__ float v_tile[kFmaKeys * kMaxHeadDim];

  const float q_scale = p.scale * kLog2e;
  float q[kRowsPerWarp][kPerLane], acc[kRowsPerWarp][kPerLane];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp];
  const T* Q = static_cast<const T*>(p.q);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = m0 + warp * kRowsPerWarp + r;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + 32 * j;
      q[r][j] = i < pr.n && d < D ? to_float(Q[((pr.start + i) * NH + h) * D + d]) * q_scale
                                  : 0.f;
      acc[r][j] = 0.f;
    }
    row_max[r] = -INFINITY;  // key 0 is every row's first, so this never meets another -inf
    row_sum[r] = 0.f;
  }

  const T* K = static_cast<const T*>(p.k_cache) + cache;
  const T* V = static_cast<const T*>(p.v_cache) + cache;
  const int64_t last = pr.n < m0 + kFmaRows ? pr.n : m0 + kFmaRows;  // keys 0..last-1
  for (int64_t n0 = 0; n0 < last; n0 += kFmaKeys) {
    __syncthreads();  // the previous tile is consumed
    for (int64_t idx = threadIdx.x; idx < kFmaKeys * D; idx += kFmaThreads) {
      const int64_t kn = n0 + idx / D;
      k_tile[idx] = kn < pr.n ? to_float(K[kn * D + idx % D]) : 0.f;
      v_tile[idx] = kn < pr.n ? to_float(V[kn * D + idx % D]) : 0.f;
    }
    __syncthreads();
    const int keys = static_cast<int>(last - n0 < kFmaKeys ? last - n0 : kFmaKeys);
    for (int key = 0; key < keys; ++key) {
      float s[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        s[r] = 0.f;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int d = lane + 32 * j;
          if (d < D) s[r] += q[r][j] * k_tile[key * D + d];
        }
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] = warp_sum(s[r]);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (n0 + key > m0 + warp * kRowsPerWarp + r) continue;  // causal (warp-uniform)
        const float m_new = fmaxf(row_max[r], s[r]);
        const float alpha = exp2f(row_max[r] - m_new);
        const float weight = exp2f(s[r] - m_new);
        row_sum[r] = row_sum[r] * alpha + weight;
        row_max[r] = m_new;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int d = lane + 32 * j;
          if (d < D) acc[r][j] = acc[r][j] * alpha + weight * v_tile[key * D + d];
        }
      }
    }
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = m0 + warp * kRowsPerWarp + r;
    if (i >= pr.n) continue;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < D) out[((pr.start + i) * NH + h) * D + d] = from_float<T>(acc[r][j] / row_sum[r]);
    }
  }
}

// ---- Tensor-core path: 64 queries per block, 16 per warp, 64 keys per tile.
constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = kBlockM / 16;
constexpr int kWmmaThreads = kWarps * 32;
constexpr int kVec = 8;  // 16-bit elements per 16-byte load

// Shared memory, every region a multiple of 128 bytes (head_dim % 16 == 0): Q, K, V tiles
// [64][D] T; per warp P [16][64] T, S [16][64] fp32, O [16][D] fp32 and 16 row factors.
std::size_t wmma_smem_bytes(int64_t D) {
  return static_cast<std::size_t>((kBlockM + 2 * kBlockN) * D * 2 + kBlockM * kBlockN * 2 +
                                  kBlockM * kBlockN * 4 + kBlockM * D * 4 + kBlockM * 4);
}

// Masked scores are -inf so their weight is exactly 0: the V rows behind them (zeros past the
// prompt, real values past the query) add nothing.
template <typename T>
__global__ void __launch_bounds__(kWmmaThreads)
    prefill_wmma_kernel(const AttentionPrefillParams p) {
  namespace wmma = nvcuda::wmma;
  using V = Vec<T, kVec>;
  const int64_t prompt = blockIdx.y, h = blockIdx.z;
  const Prompt pr = prompt_bounds(p, prompt);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  if (m0 >= pr.n) return;  // the whole block, before any barrier
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads;
  const int D = static_cast<int>(p.shape.head_dim);
  const int64_t slot = clamp_index(p.slots[prompt], 0, p.shape.num_slots - 1);
  const int64_t cache = (slot * KVH + h / (NH / KVH)) * p.shape.max_len * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = q_s + kBlockM * D;
  T* v_s = k_s + kBlockN * D;
  T* p_w = v_s + kBlockN * D + warp * 16 * kBlockN;
  float* s_w = reinterpret_cast<float*>(v_s + kBlockN * D + kBlockM * kBlockN) +
               warp * 16 * kBlockN;
  float* o_w = reinterpret_cast<float*>(v_s + kBlockN * D + kBlockM * kBlockN) +
               kBlockM * kBlockN + warp * 16 * D;
  float* factor_w = reinterpret_cast<float*>(v_s + kBlockN * D + kBlockM * kBlockN) +
                    kBlockM * kBlockN + kBlockM * D + warp * 16;

  const int vecs = D / kVec;  // per row
  const T* Q = static_cast<const T*>(p.q);
  for (int idx = threadIdx.x; idx < kBlockM * vecs; idx += kWmmaThreads) {
    const int r = idx / vecs, c = idx % vecs;
    const int64_t qi = m0 + r;
    *reinterpret_cast<V*>(q_s + r * D + c * kVec) =
        qi < pr.n ? *reinterpret_cast<const V*>(Q + ((pr.start + qi) * NH + h) * D + c * kVec)
                  : zero_vec<T, kVec>();
  }
  for (int idx = lane; idx < 16 * D; idx += 32) o_w[idx] = 0.f;

  // Lanes 2r and 2r + 1 keep row r's statistics, each over half of a tile's columns.
  const int row = lane / 2, half = lane % 2;
  const int64_t query = m0 + warp * 16 + row;
  const int64_t warp_first = m0 + warp * 16;
  const bool warp_active = warp_first < pr.n;
  const float s_scale = p.scale * kLog2e;
  float row_max = -INFINITY, row_sum = 0.f;

  const T* K = static_cast<const T*>(p.k_cache) + cache;
  const T* Vc = static_cast<const T*>(p.v_cache) + cache;
  const int64_t last = pr.n < m0 + kBlockM ? pr.n : m0 + kBlockM;  // keys 0..last-1
  for (int64_t n0 = 0; n0 < last; n0 += kBlockN) {
    __syncthreads();  // Q is loaded, the previous K/V tiles are consumed
    for (int idx = threadIdx.x; idx < kBlockN * vecs; idx += kWmmaThreads) {
      const int r = idx / vecs, c = idx % vecs;
      const int64_t kn = n0 + r;
      const bool in = kn < pr.n;
      *reinterpret_cast<V*>(k_s + r * D + c * kVec) =
          in ? *reinterpret_cast<const V*>(K + kn * D + c * kVec) : zero_vec<T, kVec>();
      *reinterpret_cast<V*>(v_s + r * D + c * kVec) =
          in ? *reinterpret_cast<const V*>(Vc + kn * D + c * kVec) : zero_vec<T, kVec>();
    }
    __syncthreads();
    // Warps whose rows are all past the prompt, or all before this tile, have nothing to add.
    if (!warp_active || n0 > warp_first + 15) continue;

    for (int nb = 0; nb < kBlockN / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.f);
      for (int kb = 0; kb < D / 16; ++kb) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;
        wmma::load_matrix_sync(q_frag, q_s + warp * 16 * D + kb * 16, D);
        wmma::load_matrix_sync(k_frag, k_s + nb * 16 * D + kb * 16, D);
        wmma::mma_sync(s_frag, q_frag, k_frag, s_frag);
      }
      wmma::store_matrix_sync(s_w + nb * 16, s_frag, kBlockN, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row `row`, columns half * 32 + t, visited from a lane-dependent start
    // so the 32 lanes hit 32 different banks.
    float tile_max = -INFINITY;
    for (int t = 0; t < 32; ++t) {
      const int col = half * 32 + (t + lane) % 32;
      const float s = n0 + col <= query ? s_w[row * kBlockN + col] * s_scale : -INFINITY;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(row_max, tile_max);  // finite: key 0 is in every row's first tile
    const float alpha = exp2f(row_max - m_new);
    float tile_sum = 0.f;
    for (int t = 0; t < 32; ++t) {
      const int col = half * 32 + (t + lane) % 32;
      const float weight =
          n0 + col <= query ? exp2f(s_w[row * kBlockN + col] * s_scale - m_new) : 0.f;
      p_w[row * kBlockN + col] = from_float<T>(weight);
      tile_sum += weight;
    }
    tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
    row_sum = row_sum * alpha + tile_sum;
    row_max = m_new;
    if (half == 0) factor_w[row] = alpha;
    __syncwarp();
    for (int idx = lane; idx < 16 * D; idx += 32) o_w[idx] *= factor_w[idx / D];
    __syncwarp();

    for (int db = 0; db < D / 16; ++db) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, o_w + db * 16, D, wmma::mem_row_major);
      for (int kb = 0; kb < kBlockN / 16; ++kb) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, p_w + kb * 16, kBlockN);
        wmma::load_matrix_sync(v_frag, v_s + kb * 16 * D + db * 16, D);
        wmma::mma_sync(o_frag, p_frag, v_frag, o_frag);
      }
      wmma::store_matrix_sync(o_w + db * 16, o_frag, D, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (!warp_active) return;  // no barrier follows

  if (half == 0) factor_w[row] = row_sum > 0.f ? 1.f / row_sum : 0.f;
  __syncwarp();
  T* out = static_cast<T*>(p.out);
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int r = idx / D;
    const int64_t qi = warp_first + r;
    if (qi < pr.n)
      out[((pr.start + qi) * NH + h) * D + idx % D] = from_float<T>(o_w[idx] * factor_w[r]);
  }
}

// ---- mma.sync path (sm_80+, fp16/bf16, head_dim 64 or 128): a block holds 16 queries of one
// head and its 4 warps split their keys, 16 at a time, warp w taking key tiles w, w + 4, ...; a
// warp keeps its rows' running max, sum and output in registers (m16n8k16 fragments, fp32),
// stages its K/V tiles in its own double-buffered shared memory with cp.async (the next tile's
// copy in flight during this tile's math), and the warps combine once at the end. Query tiles
// are taken longest first, so the long causal tiles start before the short ones.
constexpr int kMmaRows = 16;
constexpr int kMmaKeys = 16;
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;

// K/V rows in shared memory are padded by 8 elements (16 bytes): the 8 rows a fragment load
// touches then fall on distinct banks.
template <int D>
__host__ __device__ constexpr int mma_kv_stride() {
  return D + 8;
}

template <int D>
constexpr std::size_t mma_smem_bytes() {
  const std::size_t kv = static_cast<std::size_t>(kMmaWarps) * 2 * 2 * kMmaKeys *
                         mma_kv_stride<D>() * 2;  // [warp][buffer][K | V][key][stride] 16-bit
  const std::size_t combine = (static_cast<std::size_t>(kMmaWarps) * kMmaRows * (D + 4) +
                               2 * kMmaWarps * kMmaRows) * sizeof(float);
  return kv > combine ? kv : combine;
}

// Fragment layouts (PTX m16n8k16): lane = 4 gid + tq; A regs hold (row gid | gid + 8, cols
// 2 tq, 2 tq + 1 | + 8), B regs (k 2 tq, 2 tq + 1 | + 8, n gid), C regs (row gid | gid + 8,
// cols 2 tq, 2 tq + 1). The scores' C fragments of two 8-key tiles are the A fragment of P.
// Every tile a warp takes starts at a key <= its first query and below `last`, so each row
// has a key in it and its running max is finite from the first tile on; masked scores are
// -inf (weight exactly 0) and masked K/V rows are zero-filled, never read.
template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads)
    prefill_mma_kernel(const AttentionPrefillParams p) {
  constexpr int KS = mma_kv_stride<D>();
  constexpr int kKB = D / 16;                         // k steps of the scores
  constexpr int kDT = D / 8;                          // 8-wide tiles of the output
  constexpr int kRowVecs = D / 8;                     // 16-byte vectors per K/V row
  constexpr int kLoads = kMmaKeys * kRowVecs / 32;    // per lane per tile, each of K and V
  static_assert(D % 16 == 0 && kMmaKeys * kRowVecs % 32 == 0, "head_dim");
  const int64_t prompt = blockIdx.y, h = blockIdx.z;
  const Prompt pr = prompt_bounds(p, prompt);
  const int64_t m0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kMmaRows;
  if (m0 >= pr.n) return;  // the whole block, before any barrier
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads;
  const int64_t slot = clamp_index(p.slots[prompt], 0, p.shape.num_slots - 1);
  const int64_t cache = (slot * KVH + h / (NH / KVH)) * p.shape.max_len * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gid = lane / 4, tq = lane % 4;

  extern __shared__ __align__(128) unsigned char smem[];
  T* kv_w = reinterpret_cast<T*>(smem) + warp * 2 * 2 * kMmaKeys * KS;

  // Q fragments of rows m0 + gid and m0 + gid + 8 (zeros past the prompt), in registers.
  uint32_t qf[kKB][4];
  {
    const T* Q = static_cast<const T*>(p.q);
    const int64_t r0 = m0 + gid, r1 = m0 + gid + 8;
    const uint32_t* q0 = reinterpret_cast<const uint32_t*>(Q + ((pr.start + r0) * NH + h) * D);
    const uint32_t* q1 = reinterpret_cast<const uint32_t*>(Q + ((pr.start + r1) * NH + h) * D);
#pragma unroll
    for (int kb = 0; kb < kKB; ++kb) {
      qf[kb][0] = r0 < pr.n ? q0[kb * 8 + tq] : 0u;
      qf[kb][1] = r1 < pr.n ? q1[kb * 8 + tq] : 0u;
      qf[kb][2] = r0 < pr.n ? q0[kb * 8 + 4 + tq] : 0u;
      qf[kb][3] = r1 < pr.n ? q1[kb * 8 + 4 + tq] : 0u;
    }
  }

  const T* K = static_cast<const T*>(p.k_cache) + cache;
  const T* Vc = static_cast<const T*>(p.v_cache) + cache;
  const int64_t last = pr.n < m0 + kMmaRows ? pr.n : m0 + kMmaRows;  // keys 0..last-1
  const int64_t tiles = (last + kMmaKeys - 1) / kMmaKeys;
  auto load_tile = [&](int64_t tile, int buf) {
    T* ks = kv_w + buf * 2 * kMmaKeys * KS;
    T* vs = ks + kMmaKeys * KS;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = lane + 32 * i;
      const int r = idx / kRowVecs, c = idx % kRowVecs;
      const int64_t key = tile * kMmaKeys + r;
      const bool in = key < last;
      const int64_t off = (in ? key : 0) * D + c * 8;
      cp_async16(ks + r * KS + c * 8, K + off, in);
      cp_async16(vs + r * KS + c * 8, Vc + off, in);
    }
  };

  const float s_scale = p.scale * kLog2e;
  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const int64_t query0 = m0 + gid, query1 = m0 + gid + 8;

  int64_t tile = warp;
  if (tile < tiles) load_tile(tile, 0);
  cp_async_commit();
  for (int it = 0; tile < tiles; ++it, tile += kMmaWarps) {  // warp-uniform
    const int buf = it & 1;
    if (tile + kMmaWarps < tiles) load_tile(tile + kMmaWarps, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this tile's copies (the one group older than the newest) are done
    __syncwarp();
    const T* ks = kv_w + buf * 2 * kMmaKeys * KS;
    const T* vs = ks + kMmaKeys * KS;

    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kb = 0; kb < kKB; ++kb) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const T* kr = ks + (nt * 8 + gid) * KS + kb * 16 + tq * 2;
        mma16816<T>(s[nt], qf[kb], *reinterpret_cast<const uint32_t*>(kr),
                    *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }

    const int64_t key0 = tile * kMmaKeys;
    float m_new[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t key = key0 + nt * 8 + tq * 2 + (i & 1);
        const int64_t query = i < 2 ? query0 : query1;
        s[nt][i] = key <= query && key < last ? s[nt][i] * s_scale : -INFINITY;
        m_new[i / 2] = fmaxf(m_new[i / 2], s[nt][i]);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_new[r] = fmaxf(m_new[r], __shfl_xor_sync(0xffffffffu, m_new[r], 1));
      m_new[r] = fmaxf(m_new[r], __shfl_xor_sync(0xffffffffu, m_new[r], 2));
      alpha[r] = exp2f(row_max[r] - m_new[r]);  // m_new is finite (key0 is in every row)
      row_max[r] = m_new[r];
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[nt][i] = exp2f(s[nt][i] - m_new[i / 2]);
        row_sum[i / 2] += s[nt][i];
      }
    }
    const uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]),
                            pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }
    // V fragments: matrix i of lane 8i + ri is keys (i % 2) 8 + ri, columns 16 dp + (i / 2) 8.
    const int mi = lane / 8, ri = lane % 8;
#pragma unroll
    for (int dp = 0; dp < kDT / 2; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, vs + ((mi & 1) * 8 + ri) * KS + dp * 16 + (mi >> 1) * 8);
      mma16816<T>(o[2 * dp], pa, vb[0], vb[1]);
      mma16816<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
    }
    __syncwarp();  // this buffer is consumed before the next iteration's copy refills it
  }
  cp_async_wait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }

  // Combine the warps: a warp with no tile has max -inf and weighs 0; warp 0 holds key 0, so
  // every row's top is finite and its total >= 1.
  __syncthreads();  // every warp is done with its K/V buffers, which the combine reuses
  constexpr int OS = D + 4;
  float* o_s = reinterpret_cast<float*>(smem);             // [warp][16][OS]
  float* max_s = o_s + kMmaWarps * kMmaRows * OS;          // [warp][16]
  float* sum_s = max_s + kMmaWarps * kMmaRows;             // [warp][16]
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    float* o0 = o_s + (warp * kMmaRows + gid) * OS + dt * 8 + tq * 2;
    o0[0] = o[dt][0];
    o0[1] = o[dt][1];
    o0[8 * OS] = o[dt][2];
    o0[8 * OS + 1] = o[dt][3];
  }
  if (tq == 0) {
    max_s[warp * kMmaRows + gid] = row_max[0];
    max_s[warp * kMmaRows + gid + 8] = row_max[1];
    sum_s[warp * kMmaRows + gid] = row_sum[0];
    sum_s[warp * kMmaRows + gid + 8] = row_sum[1];
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out);
  for (int idx = threadIdx.x; idx < kMmaRows * D; idx += kMmaThreads) {
    const int r = idx / D, d = idx % D;
    const int64_t qi = m0 + r;
    if (qi >= pr.n) continue;
    float top = max_s[r];
#pragma unroll
    for (int w = 1; w < kMmaWarps; ++w) top = fmaxf(top, max_s[w * kMmaRows + r]);
    float total = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const float mw = max_s[w * kMmaRows + r];
      const float weight = mw == -INFINITY ? 0.f : exp2f(mw - top);
      total += sum_s[w * kMmaRows + r] * weight;
      acc += o_s[(w * kMmaRows + r) * OS + d] * weight;
    }
    out[((pr.start + qi) * NH + h) * D + d] = from_float<T>(acc / total);
  }
}

template <typename T>
void launch_fma(const AttentionPrefillParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.max_seqlen + kFmaRows - 1) / kFmaRows),
                  static_cast<unsigned>(p.prompts), static_cast<unsigned>(p.shape.heads));
  prefill_fma_kernel<T><<<grid, kFmaThreads, 0, stream>>>(p);
}

constexpr int kMaxDevices = 64;

// The shared memory a block of the current device may opt in to (A100 163 KB, H100 227 KB),
// asked once per device.
std::size_t smem_optin(int device) {
  static std::atomic<int> cached[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return static_cast<std::size_t>(known);
  }
  int bytes = 0;
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "attention_prefill", "cudaDeviceGetAttribute");
  if (device >= 0 && device < kMaxDevices && bytes > 0)
    cached[device].store(bytes, std::memory_order_relaxed);
  return static_cast<std::size_t>(bytes);
}

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per kernel and device: `done` is the
// kernel's bit mask of the devices already set (devices past 64 are set on every call).
template <typename Kernel>
void opt_in_smem(Kernel* kernel, std::atomic<unsigned long long>& done, int device,
                 std::size_t smem) {
  const unsigned long long bit =
      device >= 0 && device < kMaxDevices ? 1ull << device : 0ull;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "attention_prefill", "cudaFuncSetAttribute");
  done.fetch_or(bit, std::memory_order_release);
}

template <typename T, int D>
void launch_mma(const AttentionPrefillParams& p, int device, cudaStream_t stream) {
  static std::atomic<unsigned long long> done{0};
  constexpr std::size_t smem = mma_smem_bytes<D>();
  opt_in_smem(prefill_mma_kernel<T, D>, done, device, smem);
  const dim3 grid(static_cast<unsigned>((p.max_seqlen + kMmaRows - 1) / kMmaRows),
                  static_cast<unsigned>(p.prompts), static_cast<unsigned>(p.shape.heads));
  prefill_mma_kernel<T, D><<<grid, kMmaThreads, smem, stream>>>(p);
}

template <typename T>
void launch_wmma_or_fma(const AttentionPrefillParams& p, cudaStream_t stream) {
  const bool aligned = aligned16(p.q) && aligned16(p.k_cache) && aligned16(p.v_cache);
  int device = 0;
  check_cuda(cudaGetDevice(&device), "attention_prefill", "cudaGetDevice");
  const std::size_t optin = smem_optin(device);
  const int64_t D = p.shape.head_dim;
  if (aligned && D == 128 && mma_smem_bytes<128>() <= optin) {
    launch_mma<T, 128>(p, device, stream);
    return;
  }
  if (aligned && D == 64 && mma_smem_bytes<64>() <= optin) {
    launch_mma<T, 64>(p, device, stream);
    return;
  }
  const std::size_t smem = wmma_smem_bytes(D);
  const bool wmma = D % 16 == 0 && aligned && smem <= optin;
  if (!wmma) {
    launch_fma<T>(p, stream);
    return;
  }
  static std::atomic<unsigned long long> done{0};
  opt_in_smem(prefill_wmma_kernel<T>, done, device, smem);
  const dim3 grid(static_cast<unsigned>((p.max_seqlen + kBlockM - 1) / kBlockM),
                  static_cast<unsigned>(p.prompts), static_cast<unsigned>(p.shape.heads));
  prefill_wmma_kernel<T><<<grid, kWmmaThreads, smem, stream>>>(p);
}

}  // namespace

void attention_prefill(const AttentionPrefillParams& p, std::uintptr_t stream_handle) {
  constexpr const char* op = "attention_prefill_cuda";
  if (p.tokens == 0 || p.prompts == 0 || p.max_seqlen == 0) return;
  require(p.prompts <= 65535 && p.shape.heads <= 65535, op,
          "prompts and heads must fit the grid (<= 65535)");
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.dtype) {
    case DType::F32: launch_fma<float>(p, stream); break;
    case DType::F16: launch_wmma_or_fma<__half>(p, stream); break;
    case DType::BF16: launch_wmma_or_fma<__nv_bfloat16>(p, stream); break;
  }
  check_launch("attention_prefill");
}

}  // namespace soprano::cuda
