// CUDA varlen causal flash attention over the cache (contract:
// soprano.ops.reference.attention_prefill): prompt p's token i attends to positions 0..i of
// its slot, online softmax in fp32, no score matrix in memory.
//
// The grid is (query tiles over max_seqlen, prompts, query heads); tiles past a prompt's length
// return at once. fp16/bf16 heads whose dim is a multiple of 16 run on tensor cores (WMMA
// 16x16x16, fp32 accumulation): a block holds 64 queries (16 per warp) and walks the keys 64 at
// a time through shared memory, up to its last query's position. fp32, other head dims and
// devices without the shared memory take a plain FMA path.
#include <mma.h>

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

template <typename T>
void launch_fma(const AttentionPrefillParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.max_seqlen + kFmaRows - 1) / kFmaRows),
                  static_cast<unsigned>(p.prompts), static_cast<unsigned>(p.shape.heads));
  prefill_fma_kernel<T><<<grid, kFmaThreads, 0, stream>>>(p);
}

// The shared memory a block of the current device may opt in to (A100 163 KB, H100 227 KB).
std::size_t smem_optin() {
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "attention_prefill", "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "attention_prefill", "cudaDeviceGetAttribute");
  return static_cast<std::size_t>(bytes);
}

template <typename T>
void launch_wmma_or_fma(const AttentionPrefillParams& p, cudaStream_t stream) {
  const std::size_t smem = wmma_smem_bytes(p.shape.head_dim);
  const bool wmma = p.shape.head_dim % 16 == 0 && aligned16(p.q) && aligned16(p.k_cache) &&
                    aligned16(p.v_cache) && smem <= smem_optin();
  if (!wmma) {
    launch_fma<T>(p, stream);
    return;
  }
  check_cuda(cudaFuncSetAttribute(prefill_wmma_kernel<T>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "attention_prefill", "cudaFuncSetAttribute");
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
