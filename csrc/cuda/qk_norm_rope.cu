// CUDA qk_norm_rope: Qwen3's per-head RMSNorm of q and k, half-split RoPE and the KV-cache write
// in one pass over the fused qkv rows (contract: soprano.ops.reference.qk_norm_rope). Unfused
// this is ~10 launches per layer; here one warp reads each head of a row once and writes it
// once: q heads to q_out, k heads (normed, rotated) and v heads (copied) to the cache.
#include <string>

#include "cuda/attention.h"
#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
// Lane l holds elements l + 32 j of each half of the head: head_dim <= 256 is 4 per half.
constexpr int kPerLane = 4;

template <typename T>
__global__ void qk_norm_rope_kernel(const QkNormRopeParams p) {
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t L = p.shape.max_len;
  const int64_t heads_per_row = NH + 2 * KVH;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (warp >= p.rows * heads_per_row) return;  // the whole warp: shuffles below stay full
  const int lane = threadIdx.x % 32;
  const int64_t row = warp / heads_per_row;
  const int64_t head = warp % heads_per_row;
  const int half = static_cast<int>(D / 2);

  const int64_t pos = p.positions[row];
  const int64_t slot = p.slots[row];
  const bool in_cache = pos >= 0 && pos < L && pos < p.max_positions && slot >= 0 &&
                        slot < p.shape.num_slots;
  if (head >= NH && !in_cache) return;  // padding rows (or a caller's bug) leave the cache be

  const T* src = static_cast<const T*>(p.qkv) + row * p.qkv_row_stride + head * D;
  T lo[kPerLane], hi[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    lo[j] = i < half ? src[i] : from_float<T>(0.f);
    hi[j] = i < half ? src[half + i] : from_float<T>(0.f);
  }

  if (head >= NH + KVH) {  // v: a bit-exact copy
    T* dst = static_cast<T*>(p.v_cache) + ((slot * KVH + head - NH - KVH) * L + pos) * D;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < half) {
        dst[i] = lo[j];
        dst[half + i] = hi[j];
      }
    }
    return;
  }

  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const float a = to_float(lo[j]), b = to_float(hi[j]);
    ss += a * a + b * b;
  }
  const float rstd = rsqrtf(warp_sum(ss) / static_cast<float>(D) + p.eps);

  const bool is_q = head < NH;
  const T* w = static_cast<const T*>(is_q ? p.q_weight : p.k_weight);
  const int64_t table = clamp_index(pos, 0, p.max_positions - 1) * D;
  T* dst = is_q ? static_cast<T*>(p.q_out) + (row * NH + head) * D
                : static_cast<T*>(p.k_cache) + ((slot * KVH + head - NH) * L + pos) * D;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i >= half) continue;
    // The reference's RMSNorm rounds the normed value, then its product with the weight.
    const float ya = to_float(
        from_float<T>(to_float(w[i]) * to_float(from_float<T>(to_float(lo[j]) * rstd))));
    const float yb = to_float(from_float<T>(
        to_float(w[half + i]) * to_float(from_float<T>(to_float(hi[j]) * rstd))));
    const float out_lo = ya * p.cos[table + i] - yb * p.sin[table + i];
    const float out_hi = yb * p.cos[table + half + i] + ya * p.sin[table + half + i];
    dst[i] = from_float<T>(out_lo);
    dst[half + i] = from_float<T>(out_hi);
  }
}

template <typename T>
void launch(const QkNormRopeParams& p, unsigned blocks, cudaStream_t stream) {
  qk_norm_rope_kernel<T><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p);
}

}  // namespace

void qk_norm_rope(const QkNormRopeParams& p, std::uintptr_t stream_handle) {
  constexpr const char* op = "qk_norm_rope_cuda";
  const int64_t warps = p.rows * (p.shape.heads + 2 * p.shape.kv_heads);
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  require(blocks <= 0x7fffffff, op,
          "rows x heads must fit the grid, got " + std::to_string(warps) + " heads");
  if (blocks == 0) return;
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const auto grid = static_cast<unsigned>(blocks);
  switch (p.dtype) {
    case DType::F32: launch<float>(p, grid, stream); break;
    case DType::F16: launch<__half>(p, grid, stream); break;
    case DType::BF16: launch<__nv_bfloat16>(p, grid, stream); break;
  }
  check_launch("qk_norm_rope");
}

}  // namespace soprano::cuda
