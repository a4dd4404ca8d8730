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
// the splits within each row's length. A row whose length fits one split is finished by that
// split's block (no partial record) and skipped by the merge kernel. Splits past the length are
// never written nor read, so the workspace needs no clearing.
//
// fp16/bf16 with head_dim 64 or 128 and at most 16 query heads per kv head (Soprano: 4 of 128)
// take the tensor-core split kernel (decode_mma_kernel); everything else the FMA one
// (decode_split_kernel). Both read the same grid, write the same records and share the merge.
#include <string>

#include "cuda/attention.h"
#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

// 64 positions per block: the Soprano batch (64 rows of 1024, one kv head) is 1024 blocks, ~8
// per SM of an H200, and a block reads its whole split (32 KB of bf16 K/V) in one unrolled
// pass: every thread issues all of its K and V loads before it uses any.
constexpr int kSplit = 64;
constexpr int kThreads = 128;
// A key is handled by `tpk` threads (a power of two <= 32), each holding at most 8 of its
// elements: head_dim <= 256 needs tpk <= 32 in every layout.
constexpr int kPerThread = 8;
// Splits the merge kernel weights per pass through shared memory.
constexpr int kMergeChunk = 256;
constexpr int kMaxHeadDim = 256;

// What split blockIdx.z of row b reads: `count` keys from element `cache_row` of its kv head's
// slot, or none (count 0) when the split starts at or past the row's length. The length is
// clamped to span and the slot to the cache, as both come from device memory.
struct DecodeSplit {
  int64_t length;
  int count;
  int64_t cache_row;
};

__device__ __forceinline__ DecodeSplit decode_split(const AttentionDecodeParams& p,
                                                    int64_t raw_length, int64_t raw_slot,
                                                    int64_t kvh) {
  const int64_t length = clamp_index(raw_length, 0, p.span);
  const int64_t start = static_cast<int64_t>(blockIdx.z) * kSplit;
  if (start >= length) return {length, 0, 0};
  const int count = static_cast<int>(length - start < kSplit ? length - start : kSplit);
  const int64_t slot = clamp_index(raw_slot, 0, p.shape.num_slots - 1);
  return {length, count,
          ((slot * p.shape.kv_heads + kvh) * p.shape.max_len + start) * p.shape.head_dim};
}

// Partial record of (row, head, split): acc[D], then max and sum.
__device__ __forceinline__ int64_t record(int64_t row_head, int64_t split, int64_t n_splits,
                                          int64_t D) {
  return (row_head * n_splits + split) * (D + 2);
}

// VEC elements per load (16 bytes, or 1 when head_dim or a pointer does not allow it); GT query
// heads per block, the first `ng` of them real. STAGE (16-byte vectors, the split's K and V in
// 48 KB): the block first copies its split's K and V, contiguous in the cache, into shared memory
// with cp.async (no registers held by loads in flight, so 3 blocks fit an SM), then reads them
// from there; otherwise each thread loads its keys straight into registers.
//
// One pass over the split: key group `group` (tpk threads) takes keys group + groups i and
// keeps, per query head, a running max, sum and accumulator in registers (online softmax, log2
// domain). The groups then combine once through shared memory. A row whose length fits one
// split (the only block of its row that does work) writes the normalized output itself and the
// merge kernel leaves that row alone; any other row writes its partial record.
template <typename T, int VEC, int GT, bool STAGE>
__global__ void __launch_bounds__(kThreads, STAGE && GT <= 4 ? 3 : 1)
    decode_split_kernel(const AttentionDecodeParams p, float* partials, int tpk,
                        int head_chunks, int n_splits) {
  using V = Vec<T, VEC>;
  constexpr int kChunks = kPerThread / VEC;
  // Keys per group per step: 8 for 16-bit, 4 for fp32 (the same bytes), halved for GT = 8.
  constexpr int kU = (sizeof(T) == 4 ? 4 : 8) / (GT >= 8 ? 2 : 1);
  const int64_t b = blockIdx.x;
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t G = NH / KVH;
  const int64_t kvh = blockIdx.y / head_chunks;
  const int64_t first = (blockIdx.y % head_chunks) * GT;  // within the kv head's group
  const int ng = static_cast<int>(G - first < GT ? G - first : GT);
  const int64_t head0 = kvh * G + first;
  const int C = static_cast<int>(D / VEC);  // vectors per head
  const int sub = threadIdx.x % tpk, group = threadIdx.x / tpk, groups = kThreads / tpk;

  // The length, the slot and q (all in bounds for row b) are read together, before the length
  // decides whether the block works: one memory round trip, not three, ahead of the K/V loads.
  const int64_t raw_length = p.lengths[b];
  const int64_t raw_slot = p.slots[b];

  // With STAGE the split's K then V ([kSplit][D] T each) come first; the reduction buffers
  // below reuse that space once every thread is done reading it.
  extern __shared__ __align__(16) float smem[];
  float* red_acc = smem;                        // [groups][GT][D]
  float* red_max = red_acc + groups * GT * D;   // [groups][GT]
  float* red_sum = red_max + groups * GT;       // [groups][GT]
  float* weight = red_sum + groups * GT;        // [groups][GT]: exp2(group max - top)
  float* top_s = weight + groups * GT;          // [GT]
  float* total_s = top_s + GT;                  // [GT]

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
  const DecodeSplit bounds = decode_split(p, raw_length, raw_slot, kvh);
  if (bounds.count == 0) return;  // the whole block, before any barrier
  const int64_t length = bounds.length;
  const int count = bounds.count;

  const int64_t cache_row = bounds.cache_row;
  const T* k_split = static_cast<const T*>(p.k_cache) + cache_row;
  const T* v_split = static_cast<const T*>(p.v_cache) + cache_row;
  if constexpr (STAGE) {
    // Keys 0..count-1 of the split are count * C whole vectors, contiguous in K and in V.
    T* k_stage = reinterpret_cast<T*>(smem);
    T* v_stage = k_stage + kSplit * D;
    for (int i = threadIdx.x; i < count * C; i += kThreads) {
      cp_async16(k_stage + i * VEC, k_split + i * VEC, true);
      cp_async16(v_stage + i * VEC, v_split + i * VEC, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    k_split = k_stage;
    v_split = v_stage;
  }

  // Every thread runs the same iterations (count is the block's), so the shuffles within a
  // key's tpk threads always have the whole warp; a key's tpk threads agree on its score.
  float m[GT], l[GT], acc[GT][kPerThread];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) acc[g][e] = 0.f;
  }
  // Key u of a step is n0 + u groups + group; its vector j, when in range, else zeros.
  auto fetch = [&](const T* base, int n, int j) {
    const int c = sub + j * tpk;
    return n < count && c < C ? *reinterpret_cast<const V*>(base + n * D + c * VEC)
                              : zero_vec<T, VEC>();
  };
  for (int n0 = 0; n0 < count; n0 += groups * kU) {
    // From global memory every load of the step is issued first; from shared memory (STAGE)
    // K and V are read where they are used, which keeps the registers for 3 blocks an SM.
    V k[STAGE ? 1 : kU][kChunks], v[STAGE ? 1 : kU][kChunks];
    if constexpr (!STAGE) {
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
          k[u][j] = fetch(k_split, n0 + u * groups + group, j);
          v[u][j] = fetch(v_split, n0 + u * groups + group, j);
        }
    }
    float s[kU][GT];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int ku = STAGE ? 0 : u;
      if constexpr (STAGE) {
#pragma unroll
        for (int j = 0; j < kChunks; ++j) k[0][j] = fetch(k_split, n0 + u * groups + group, j);
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < kChunks; ++j)
#pragma unroll
          for (int e = 0; e < VEC; ++e) dot += q[g][j * VEC + e] * to_float(k[ku][j].v[e]);
        s[u][g] = dot;
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u)
#pragma unroll
      for (int g = 0; g < GT; ++g)
        for (int offset = tpk / 2; offset > 0; offset >>= 1)
          s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], offset);
    // Online softmax: the step's max per head, the old state rescaled, then s becomes the
    // keys' weights (a key in range makes m_new finite; one out of range weighs exactly 0).
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float m_new = m[g];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (n0 + u * groups + group < count) m_new = fmaxf(m_new, s[u][g]);
      // m_new == m[g] covers a group with no key yet (both -inf): nothing to rescale.
      const float alpha = m_new == m[g] ? 1.f : exp2f(m[g] - m_new);
      l[g] *= alpha;
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) acc[g][e] *= alpha;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        s[u][g] = n0 + u * groups + group < count ? exp2f(s[u][g] - m_new) : 0.f;
        l[g] += s[u][g];
      }
      m[g] = m_new;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int vu = STAGE ? 0 : u;
      if constexpr (STAGE) {
#pragma unroll
        for (int j = 0; j < kChunks; ++j) v[0][j] = fetch(v_split, n0 + u * groups + group, j);
      }
#pragma unroll
      for (int g = 0; g < GT; ++g)
#pragma unroll
        for (int j = 0; j < kChunks; ++j)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[g][j * VEC + e] += s[u][g] * to_float(v[vu][j].v[e]);
    }
  }

  // Combine the key groups: group 0 holds key 0 (count >= 1), so every head's top is finite;
  // a group with no key (max -inf) weighs 0.
  __syncthreads();  // with STAGE, the staged K/V are read by all before the buffers reuse them
#pragma unroll
  for (int g = 0; g < GT; ++g) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int c = sub + j * tpk;
      if (c >= C) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        red_acc[(group * GT + g) * D + c * VEC + e] = acc[g][j * VEC + e];
    }
    if (sub == 0) {
      red_max[group * GT + g] = m[g];
      red_sum[group * GT + g] = l[g];
    }
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < ng) {
    const int g = threadIdx.x;
    float top = -INFINITY;
    for (int r = 0; r < groups; ++r) top = fmaxf(top, red_max[r * GT + g]);
    float total = 0.f;
    for (int r = 0; r < groups; ++r) {
      const float mr = red_max[r * GT + g];
      const float w = mr == -INFINITY ? 0.f : exp2f(mr - top);
      weight[r * GT + g] = w;
      total += red_sum[r * GT + g] * w;
    }
    top_s[g] = top;
    total_s[g] = total;  // >= 1: the top key weighs 1
  }
  __syncthreads();
  const bool single = length <= kSplit;  // this is the row's only split: finish the row here
  const int64_t split = blockIdx.z;
  T* out = static_cast<T*>(p.out);
  for (int i = threadIdx.x; i < ng * D; i += kThreads) {
    const int g = static_cast<int>(i / D), d = static_cast<int>(i % D);
    float total = 0.f;
    for (int r = 0; r < groups; ++r) total += red_acc[(r * GT + g) * D + d] * weight[r * GT + g];
    if (single)
      out[(b * NH + head0 + g) * D + d] = from_float<T>(total / total_s[g]);
    else
      partials[record(b * NH + head0 + g, split, n_splits, D) + d] = total;
  }
  if (!single && static_cast<int>(threadIdx.x) < ng) {
    const int64_t rec = record(b * NH + head0 + threadIdx.x, split, n_splits, D);
    partials[rec + D] = top_s[threadIdx.x];
    partials[rec + D + 1] = total_s[threadIdx.x];
  }
}

// ---- Tensor-core split kernel (fp16/bf16, head_dim 64 or 128, up to 16 query heads per kv
// head): the group's query heads are the rows of one m16n8k16 tile (rows past the group are
// zeros), so K and V are read once for the group and the dot products run on mma.sync with fp32
// accumulation, as Triton's tl.dot does. The block copies its split's K and V into shared
// memory (rows padded by 8 elements, keys past the split's count zero-filled); warp w scores
// keys 16 w..16 w + 15 and sums their values, and the 4 warps combine once. Grid, early exit,
// partial records and the one-split shortcut are the FMA kernel's.
constexpr int kMmaWarps = kThreads / 32;
static_assert(kMmaWarps * 16 == kSplit, "one 16-key tile per warp");

template <int D>
constexpr std::size_t mma_split_smem() {
  const std::size_t stage = 2ull * kSplit * (D + 8) * 2;  // K, V [kSplit][D + 8] 16-bit
  const std::size_t combine = (static_cast<std::size_t>(kMmaWarps) * 16 * (D + 4) +
                               2 * kMmaWarps * 16) * sizeof(float);
  return stage > combine ? stage : combine;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    decode_mma_kernel(const AttentionDecodeParams p, float* partials, int n_splits) {
  constexpr int KS = D + 8;
  constexpr int kKB = D / 16, kDT = D / 8, kRowVecs = D / 8;
  const int64_t b = blockIdx.x, kvh = blockIdx.y;
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads;
  const int ng = static_cast<int>(NH / KVH);  // <= 16, checked at launch
  const int64_t head0 = kvh * ng;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gid = lane / 4, tq = lane % 4;

  // Length, slot and q in one round trip (all in bounds for row b).
  const int64_t raw_length = p.lengths[b];
  const int64_t raw_slot = p.slots[b];
  uint32_t qf[kKB][4];
  {
    const T* q_row = static_cast<const T*>(p.q) + (b * NH + head0) * D;
    const uint32_t* q0 = reinterpret_cast<const uint32_t*>(q_row + gid * D);
    const uint32_t* q1 = reinterpret_cast<const uint32_t*>(q_row + (gid + 8) * D);
#pragma unroll
    for (int kb = 0; kb < kKB; ++kb) {
      qf[kb][0] = gid < ng ? q0[kb * 8 + tq] : 0u;
      qf[kb][1] = gid + 8 < ng ? q1[kb * 8 + tq] : 0u;
      qf[kb][2] = gid < ng ? q0[kb * 8 + 4 + tq] : 0u;
      qf[kb][3] = gid + 8 < ng ? q1[kb * 8 + 4 + tq] : 0u;
    }
  }
  const DecodeSplit bounds = decode_split(p, raw_length, raw_slot, kvh);
  if (bounds.count == 0) return;  // the whole block, before any barrier
  const int64_t length = bounds.length;
  const int count = bounds.count;
  const int64_t cache_row = bounds.cache_row;
  const T* K = static_cast<const T*>(p.k_cache) + cache_row;
  const T* Vc = static_cast<const T*>(p.v_cache) + cache_row;

  extern __shared__ __align__(16) unsigned char smem_mma[];
  T* k_s = reinterpret_cast<T*>(smem_mma);
  T* v_s = k_s + kSplit * KS;
  for (int i = threadIdx.x; i < kSplit * kRowVecs; i += kThreads) {
    const int r = i / kRowVecs, c = i % kRowVecs;
    const bool in = r < count;  // rows past count are zeros, never read from memory
    const int64_t off = static_cast<int64_t>(in ? r : 0) * D + c * 8;
    cp_async16(k_s + r * KS + c * 8, K + off, in);
    cp_async16(v_s + r * KS + c * 8, Vc + off, in);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int key0 = warp * 16;
  float sc[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
  for (int kb = 0; kb < kKB; ++kb) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const T* kr = k_s + (key0 + nt * 8 + gid) * KS + kb * 16 + tq * 2;
      mma16816<T>(sc[nt], qf[kb], *reinterpret_cast<const uint32_t*>(kr),
                  *reinterpret_cast<const uint32_t*>(kr + 8));
    }
  }
  const float s_scale = p.scale * kLog2e;
  float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int key = key0 + nt * 8 + tq * 2 + (i & 1);
      sc[nt][i] = key < count ? sc[nt][i] * s_scale : -INFINITY;
      row_max[i / 2] = fmaxf(row_max[i / 2], sc[nt][i]);
    }
  }
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 1));
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 2));
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // A warp whose keys are all past count has max -inf: its weights are 0, not NaN.
      const float m = row_max[i / 2];
      sc[nt][i] = m == -INFINITY ? 0.f : exp2f(sc[nt][i] - m);
      row_sum[i / 2] += sc[nt][i];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  const uint32_t pa[4] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[0][2], sc[0][3]),
                          pack2<T>(sc[1][0], sc[1][1]), pack2<T>(sc[1][2], sc[1][3])};
  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  const int mi = lane / 8, ri = lane % 8;
#pragma unroll
  for (int dp = 0; dp < kDT / 2; ++dp) {
    uint32_t vb[4];
    ldmatrix_x4_trans(vb, v_s + (key0 + (mi & 1) * 8 + ri) * KS + dp * 16 + (mi >> 1) * 8);
    mma16816<T>(o[2 * dp], pa, vb[0], vb[1]);
    mma16816<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
  }

  // Combine the warps: warp 0 holds key 0 (count >= 1), so every head's top is finite.
  __syncthreads();  // every warp is done with the staged K/V, which the combine reuses
  constexpr int OS = D + 4;
  float* o_s = reinterpret_cast<float*>(smem_mma);  // [warp][16][OS]
  float* max_s = o_s + kMmaWarps * 16 * OS;          // [warp][16]
  float* sum_s = max_s + kMmaWarps * 16;             // [warp][16]
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    float* o0 = o_s + (warp * 16 + gid) * OS + dt * 8 + tq * 2;
    o0[0] = o[dt][0];
    o0[1] = o[dt][1];
    o0[8 * OS] = o[dt][2];
    o0[8 * OS + 1] = o[dt][3];
  }
  if (tq == 0) {
    max_s[warp * 16 + gid] = row_max[0];
    max_s[warp * 16 + gid + 8] = row_max[1];
    sum_s[warp * 16 + gid] = row_sum[0];
    sum_s[warp * 16 + gid + 8] = row_sum[1];
  }
  __syncthreads();
  const bool single = length <= kSplit;  // this is the row's only split: finish the row here
  const int64_t split = blockIdx.z;
  T* out = static_cast<T*>(p.out);
  for (int idx = threadIdx.x; idx < ng * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    float top = max_s[r];
#pragma unroll
    for (int w = 1; w < kMmaWarps; ++w) top = fmaxf(top, max_s[w * 16 + r]);
    float total = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const float mw = max_s[w * 16 + r];
      const float weight = mw == -INFINITY ? 0.f : exp2f(mw - top);
      total += sum_s[w * 16 + r] * weight;
      acc += o_s[(w * 16 + r) * OS + d] * weight;
    }
    if (single)
      out[(b * NH + head0 + r) * D + d] = from_float<T>(acc / total);
    else
      partials[record(b * NH + head0 + r, split, n_splits, D) + d] = acc;
    if (!single && d == 0) {
      const int64_t rec = record(b * NH + head0 + r, split, n_splits, D);
      partials[rec + D] = top;
      partials[rec + D + 1] = total;
    }
  }
}

// One block per (row, head). A row of one split was finished by the split kernel; a row of
// length 0 gets zeros; otherwise every split within the length is weighted by exp2(max - top),
// the weights computed once per split in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    decode_merge_kernel(const AttentionDecodeParams p, const float* partials, int n_splits) {
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const int64_t NH = p.shape.heads, D = p.shape.head_dim;
  const int64_t length = clamp_index(p.lengths[b], 0, p.span);
  const int used = static_cast<int>((length + kSplit - 1) / kSplit);
  if (used == 1) return;  // the whole block: the split kernel wrote this row
  T* out = static_cast<T*>(p.out) + (b * NH + h) * D;
  if (used == 0) {
    for (int64_t d = threadIdx.x; d < D; d += kThreads) out[d] = from_float<T>(0.f);
    return;
  }
  const float* rec = partials + record(b * NH + h, 0, n_splits, D);
  const int64_t stride = D + 2;
  __shared__ float warp_top[kThreads / 32];
  __shared__ float w_s[kMergeChunk];
  __shared__ float l_s[kMergeChunk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float top = -INFINITY;
  for (int s = threadIdx.x; s < used; s += kThreads) top = fmaxf(top, rec[s * stride + D]);
  top = warp_max(top);
  if (lane == 0) warp_top[warp] = top;
  __syncthreads();
  top = warp_top[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) top = fmaxf(top, warp_top[w]);  // finite

  constexpr int kPerD = kMaxHeadDim / kThreads;
  float o[kPerD] = {};
  float total = 0.f;
  for (int c0 = 0; c0 < used; c0 += kMergeChunk) {
    const int cn = used - c0 < kMergeChunk ? used - c0 : kMergeChunk;
    __syncthreads();  // the previous chunk's weights are consumed
    for (int s = threadIdx.x; s < cn; s += kThreads) {
      w_s[s] = exp2f(rec[(c0 + s) * stride + D] - top);
      l_s[s] = rec[(c0 + s) * stride + D + 1];
    }
    __syncthreads();
    const float* chunk = rec + c0 * stride;
#pragma unroll 4
    for (int s = 0; s < cn; ++s) {
      const float w = w_s[s];
      total += l_s[s] * w;
#pragma unroll
      for (int i = 0; i < kPerD; ++i) {
        const int64_t d = threadIdx.x + i * kThreads;
        if (d < D) o[i] += chunk[s * stride + d] * w;
      }
    }
  }
  const float inv = 1.f / total;  // >= 1: the top split's top key weighs 1
#pragma unroll
  for (int i = 0; i < kPerD; ++i) {
    const int64_t d = threadIdx.x + i * kThreads;
    if (d < D) out[d] = from_float<T>(o[i] * inv);
  }
}

int64_t split_count(int64_t span) { return (span + kSplit - 1) / kSplit; }

// Bytes of a split's K and V staged in shared memory; STAGE needs them within the default 48 KB.
template <typename T>
constexpr int64_t stage_bytes(int64_t head_dim) {
  return 2 * kSplit * head_dim * static_cast<int64_t>(sizeof(T));
}
constexpr int64_t kDefaultSmem = 48 * 1024;

template <typename T, int VEC, int GT>
void launch_split(const AttentionDecodeParams& p, float* partials, int tpk, int head_chunks,
                  int n_splits, cudaStream_t stream) {
  const int groups = kThreads / tpk;
  const int64_t floats = groups * GT * p.shape.head_dim + 3 * groups * GT + 2 * GT;
  const int64_t reduce = floats * static_cast<int64_t>(sizeof(float));
  const int64_t staged = stage_bytes<T>(p.shape.head_dim);
  const bool stage = VEC * sizeof(T) == 16 && staged <= kDefaultSmem;
  const dim3 grid(static_cast<unsigned>(p.batch),
                  static_cast<unsigned>(p.shape.kv_heads * head_chunks),
                  static_cast<unsigned>(n_splits));
  if constexpr (VEC * sizeof(T) == 16) {
    if (stage) {
      const auto smem = static_cast<std::size_t>(staged > reduce ? staged : reduce);
      decode_split_kernel<T, VEC, GT, true>
          <<<grid, kThreads, smem, stream>>>(p, partials, tpk, head_chunks, n_splits);
      return;
    }
  }
  decode_split_kernel<T, VEC, GT, false><<<grid, kThreads, static_cast<std::size_t>(reduce),
                                           stream>>>(p, partials, tpk, head_chunks, n_splits);
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

template <typename T, int D>
void launch_mma(const AttentionDecodeParams& p, float* partials, int n_splits,
                cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(p.shape.kv_heads),
                  static_cast<unsigned>(n_splits));
  decode_mma_kernel<T, D><<<grid, kThreads, mma_split_smem<D>(), stream>>>(p, partials,
                                                                           n_splits);
}

template <typename T>
void launch(const AttentionDecodeParams& p, float* partials, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const auto n_splits = static_cast<int>(split_count(p.span));
  const bool vectorize = p.shape.head_dim % kVec == 0 && aligned16(p.q) &&
                         aligned16(p.k_cache) && aligned16(p.v_cache);
  const int64_t G = p.shape.heads / p.shape.kv_heads, D = p.shape.head_dim;
  bool tensor_cores = false;
  if constexpr (sizeof(T) == 2) {
    static_assert(mma_split_smem<128>() <= 48 * 1024, "default shared memory");
    tensor_cores = vectorize && G <= 16 && (D == 64 || D == 128);
    if (tensor_cores && D == 128) launch_mma<T, 128>(p, partials, n_splits, stream);
    if (tensor_cores && D == 64) launch_mma<T, 64>(p, partials, n_splits, stream);
  }
  if (!tensor_cores) {
    if (vectorize)
      launch_split<T, kVec>(p, partials, n_splits, stream);
    else
      launch_split<T, 1>(p, partials, n_splits, stream);
  }
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
