// CUDA flash-decoding (contract: soprano.ops.reference.attention_decode): one query per row
// against its own cache slot, split over the keys so a batch of long rows fills the GPU.
//
// The split kernel's grid is (rows, kv heads x head chunks, splits of kSplit positions over
// span): its shape depends only on span, so a CUDA graph captured with span = the whole cache
// replays at any length, while a block whose split starts at or past its row's length (read
// from device memory) returns at once, so the work follows each row's real length. A block
// holds up to 8 query heads of one kv head, so each key and value is read from memory once for
// the group (GQA without repeating K/V; a group of more than 8, which no Qwen3 model has, is
// split into chunks of 8 that each read it). It writes its split's partial softmax (max, sum and
// unnormalized output, fp32, log2 domain) to the caller's workspace; the merge kernel combines
// the splits within each row's length. Splits past the length are never written nor read, so
// the workspace needs no clearing.
#include <string>

#include "cuda/attention.h"
#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

// 64 positions per block: the Soprano batch (64 rows of 1024, one kv head) is 1024 blocks, ~8
// per SM of an H200 with 6 resident at a time (80 registers a thread), so every SM keeps
// several blocks' loads in flight; rows a few hundred long still make several blocks each, and
// a block's 32 KB of bf16 K/V amortizes its q load and its partial record.
constexpr int kSplit = 64;
constexpr int kThreads = 128;
// A key is handled by `tpk` threads (a power of two <= 32), each holding at most 8 of its
// elements: head_dim <= 256 needs tpk <= 32 in every layout.
constexpr int kPerThread = 8;
// Keys a thread loads before using any, so several loads are in flight per thread.
constexpr int kUnroll = 4;

// Partial record of (row, head, split): acc[D], then max and sum.
__device__ __forceinline__ int64_t record(int64_t row_head, int64_t split, int64_t n_splits,
                                          int64_t D) {
  return (row_head * n_splits + split) * (D + 2);
}

// VEC elements per load (16 bytes, or 1 when head_dim or a pointer does not allow it); GT query
// heads per block, the first `ng` of them real.
template <typename T, int VEC, int GT>
__global__ void __launch_bounds__(kThreads, GT <= 4 ? 6 : 4)
    decode_split_kernel(const AttentionDecodeParams p, float* partials, int tpk,
                        int head_chunks, int n_splits) {
  using V = Vec<T, VEC>;
  constexpr int kChunks = kPerThread / VEC;
  const int64_t b = blockIdx.x;
  const int64_t length = clamp_index(p.lengths[b], 0, p.span);
  const int64_t start = static_cast<int64_t>(blockIdx.z) * kSplit;
  if (start >= length) return;  // the whole block, before any barrier
  const int count = static_cast<int>(length - start < kSplit ? length - start : kSplit);
  const int64_t slot = clamp_index(p.slots[b], 0, p.shape.num_slots - 1);

  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t G = NH / KVH;
  const int64_t kvh = blockIdx.y / head_chunks;
  const int64_t first = (blockIdx.y % head_chunks) * GT;  // within the kv head's group
  const int ng = static_cast<int>(G - first < GT ? G - first : GT);
  const int64_t head0 = kvh * G + first;
  const int C = static_cast<int>(D / VEC);  // vectors per head
  const int sub = threadIdx.x % tpk, group = threadIdx.x / tpk, groups = kThreads / tpk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  extern __shared__ float smem[];
  float* scores = smem;                   // [GT][kSplit], then exp2(score - max)
  float* row_max = scores + GT * kSplit;  // [GT]
  float* row_sum = row_max + GT;          // [GT]
  float* reduce = row_sum + GT;           // [groups][GT][D]

  // Thread (group, sub) holds vectors c = sub + j tpk, j < kChunks, of q, K, V and acc.
  const float q_scale = p.scale * kLog2e;
  float q[GT][kPerThread];
  const T* q_row = static_cast<const T*>(p.q) + (b * NH + head0) * D;
#pragma unroll
  for (int g = 0; g < GT; ++g) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int c = sub + j * tpk;
      const V v = g < ng && c < C ? *reinterpret_cast<const V*>(q_row + g * D + c * VEC)
                                  : zero_vec<T, VEC>();
#pragma unroll
      for (int e = 0; e < VEC; ++e) q[g][j * VEC + e] = to_float(v.v[e]) * q_scale;
    }
  }

  const int64_t cache_row = ((slot * KVH + kvh) * p.shape.max_len + start) * D;
  const T* k_split = static_cast<const T*>(p.k_cache) + cache_row;
  const T* v_split = static_cast<const T*>(p.v_cache) + cache_row;

  // Scores. Every thread runs the same iterations (count is the block's), so the shuffles
  // within a key's tpk threads always have the whole warp.
  for (int n0 = 0; n0 < count; n0 += groups * kUnroll) {
    V k[kUnroll][kChunks];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int n = n0 + u * groups + group;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        const int c = sub + j * tpk;
        k[u][j] = n < count && c < C ? *reinterpret_cast<const V*>(k_split + n * D + c * VEC)
                                     : zero_vec<T, VEC>();
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float s[GT];
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        s[g] = 0.f;
#pragma unroll
        for (int j = 0; j < kChunks; ++j)
#pragma unroll
          for (int e = 0; e < VEC; ++e) s[g] += q[g][j * VEC + e] * to_float(k[u][j].v[e]);
      }
#pragma unroll
      for (int g = 0; g < GT; ++g)
        for (int offset = tpk / 2; offset > 0; offset >>= 1)
          s[g] += __shfl_xor_sync(0xffffffffu, s[g], offset);
      const int n = n0 + u * groups + group;
      if (sub == 0 && n < count) {
#pragma unroll
        for (int g = 0; g < GT; ++g) scores[g * kSplit + n] = s[g];
      }
    }
  }
  __syncthreads();

  // Softmax statistics of the split, one warp per head.
  for (int g = warp; g < ng; g += kThreads / 32) {
    float m = -INFINITY;
    for (int n = lane; n < count; n += 32) m = fmaxf(m, scores[g * kSplit + n]);
    m = warp_max(m);
    float l = 0.f;
    for (int n = lane; n < count; n += 32) {
      const float e = exp2f(scores[g * kSplit + n] - m);
      scores[g * kSplit + n] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      row_max[g] = m;
      row_sum[g] = l;
    }
  }
  __syncthreads();

  float acc[GT][kPerThread] = {};
  for (int n0 = 0; n0 < count; n0 += groups * kUnroll) {
    V v[kUnroll][kChunks];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int n = n0 + u * groups + group;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        const int c = sub + j * tpk;
        v[u][j] = n < count && c < C ? *reinterpret_cast<const V*>(v_split + n * D + c * VEC)
                                     : zero_vec<T, VEC>();
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int n = n0 + u * groups + group;
      if (n >= count) continue;
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        if (g >= ng) continue;
        const float w = scores[g * kSplit + n];
#pragma unroll
        for (int j = 0; j < kChunks; ++j)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[g][j * VEC + e] += w * to_float(v[u][j].v[e]);
      }
    }
  }

  // Sum the key groups' accumulators through shared memory and write the split's record.
#pragma unroll
  for (int g = 0; g < GT; ++g) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int c = sub + j * tpk;
      if (c >= C) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        reduce[(group * GT + g) * D + c * VEC + e] = acc[g][j * VEC + e];
    }
  }
  __syncthreads();
  const int64_t split = blockIdx.z;
  for (int i = threadIdx.x; i < ng * D; i += kThreads) {
    const int g = static_cast<int>(i / D), d = static_cast<int>(i % D);
    float total = 0.f;
    for (int r = 0; r < groups; ++r) total += reduce[(r * GT + g) * D + d];
    partials[record(b * NH + head0 + g, split, n_splits, D) + d] = total;
  }
  if (static_cast<int>(threadIdx.x) < ng) {
    const int64_t rec = record(b * NH + head0 + threadIdx.x, split, n_splits, D);
    partials[rec + D] = row_max[threadIdx.x];
    partials[rec + D + 1] = row_sum[threadIdx.x];
  }
}

// One block per (row, head): weights every split within the length by exp2(max - top).
template <typename T>
__global__ void decode_merge_kernel(const AttentionDecodeParams p, const float* partials,
                                    int n_splits) {
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const int64_t NH = p.shape.heads, D = p.shape.head_dim;
  const int64_t length = clamp_index(p.lengths[b], 0, p.span);
  const int used = static_cast<int>((length + kSplit - 1) / kSplit);
  const float* rec = partials + record(b * NH + h, 0, n_splits, D);
  const int64_t stride = D + 2;
  float top = -INFINITY;
  for (int s = 0; s < used; ++s) top = fmaxf(top, rec[s * stride + D]);
  float total = 0.f;
  for (int s = 0; s < used; ++s)
    total += rec[s * stride + D + 1] * exp2f(rec[s * stride + D] - top);
  const float inv = total > 0.f ? 1.f / total : 0.f;  // length 0: no splits, zeros
  T* out = static_cast<T*>(p.out) + (b * NH + h) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < used; ++s) o += rec[s * stride + d] * exp2f(rec[s * stride + D] - top);
    out[d] = from_float<T>(o * inv);
  }
}

int64_t split_count(int64_t span) { return (span + kSplit - 1) / kSplit; }

template <typename T, int VEC, int GT>
void launch_split(const AttentionDecodeParams& p, float* partials, int tpk, int head_chunks,
                  int n_splits, cudaStream_t stream) {
  const int groups = kThreads / tpk;
  const auto floats = GT * kSplit + 2 * GT + groups * GT * p.shape.head_dim;
  const auto smem = static_cast<std::size_t>(floats) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(p.batch),
                  static_cast<unsigned>(p.shape.kv_heads * head_chunks),
                  static_cast<unsigned>(n_splits));
  decode_split_kernel<T, VEC, GT><<<grid, kThreads, smem, stream>>>(p, partials, tpk,
                                                                    head_chunks, n_splits);
}

template <typename T, int VEC>
void launch_split(const AttentionDecodeParams& p, float* partials, int n_splits,
                  cudaStream_t stream) {
  // Threads per key: the smallest power of two that covers the head with kPerThread each.
  const int64_t per_key = (p.shape.head_dim / VEC + kPerThread / VEC - 1) / (kPerThread / VEC);
  int tpk = 1;
  while (tpk < per_key) tpk *= 2;
  const int64_t G = p.shape.heads / p.shape.kv_heads;
  const int gt = G == 1 ? 1 : G == 2 ? 2 : G <= 4 ? 4 : 8;
  const auto head_chunks = static_cast<int>((G + gt - 1) / gt);
  switch (gt) {
    case 1: launch_split<T, VEC, 1>(p, partials, tpk, head_chunks, n_splits, stream); break;
    case 2: launch_split<T, VEC, 2>(p, partials, tpk, head_chunks, n_splits, stream); break;
    case 4: launch_split<T, VEC, 4>(p, partials, tpk, head_chunks, n_splits, stream); break;
    default: launch_split<T, VEC, 8>(p, partials, tpk, head_chunks, n_splits, stream); break;
  }
}

template <typename T>
void launch(const AttentionDecodeParams& p, float* partials, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const auto n_splits = static_cast<int>(split_count(p.span));
  const bool vectorize = p.shape.head_dim % kVec == 0 && aligned16(p.q) &&
                         aligned16(p.k_cache) && aligned16(p.v_cache);
  if (vectorize)
    launch_split<T, kVec>(p, partials, n_splits, stream);
  else
    launch_split<T, 1>(p, partials, n_splits, stream);
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(p.shape.heads));
  decode_merge_kernel<T><<<grid, kThreads, 0, stream>>>(p, partials, n_splits);
}

}  // namespace

int64_t attention_decode_workspace(int64_t batch, int64_t heads, int64_t head_dim,
                                   int64_t span) {
  require(batch >= 0 && heads > 0 && head_dim > 0 && span > 0, "attention_decode_cuda_workspace",
          "batch must be >= 0 and heads, head_dim, span > 0");
  return batch * heads * split_count(span) * (head_dim + 2) *
         static_cast<int64_t>(sizeof(float));
}

void attention_decode(const AttentionDecodeParams& p, void* workspace,
                      std::size_t workspace_bytes, std::uintptr_t stream_handle) {
  constexpr const char* op = "attention_decode_cuda";
  if (p.batch == 0) return;
  const int64_t G = p.shape.heads / p.shape.kv_heads;
  const int64_t chunks = (G + 7) / 8;
  require(p.batch <= 0x7fffffff && p.shape.heads <= 65535 &&
              p.shape.kv_heads * chunks <= 65535 && split_count(p.span) <= 65535,
          op, "batch, heads and span / " + std::to_string(kSplit) + " must fit the grid");
  const int64_t needed = attention_decode_workspace(p.batch, p.shape.heads, p.shape.head_dim,
                                                    p.span);
  if (static_cast<int64_t>(workspace_bytes) < needed)
    fail(op, "workspace has " + std::to_string(workspace_bytes) + " bytes, needs " +
                 std::to_string(needed) + " (attention_decode_cuda_workspace)");
  if (workspace == nullptr || reinterpret_cast<std::uintptr_t>(workspace) % sizeof(float) != 0)
    fail(op, "workspace must be a non-null, 4-byte aligned device pointer");
  auto* partials = static_cast<float*>(workspace);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.dtype) {
    case DType::F32: launch<float>(p, partials, stream); break;
    case DType::F16: launch<__half>(p, partials, stream); break;
    case DType::BF16: launch<__nv_bfloat16>(p, partials, stream); break;
  }
  check_launch("attention_decode");
}

}  // namespace soprano::cuda
