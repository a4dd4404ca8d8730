// The api layer of the attention ops (qk_norm_rope, attention_decode, attention_prefill): the
// plain params structs every backend's kernels read, and the checks that fill them from the raw
// arguments Python passes. Contracts are soprano/ops/reference.py's; layouts, in elements:
//   qkv [rows, (heads + 2 kv_heads) head_dim], row stride qkv_row_stride, last dim contiguous;
//   q / out [rows, heads, head_dim] contiguous; one layer's cache [num_slots, kv_heads, max_len,
//   head_dim] contiguous; cos / sin fp32 [max_positions, head_dim]; int64 index arrays.
// Index arrays (positions, slots, lengths, cu_seqlens) may live in GPU memory, so their values
// are not checked here: the CPU kernels check them, the CUDA kernels clamp what they read.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "common.h"

namespace soprano {

struct AttentionShape {
  int64_t heads, kv_heads, head_dim, num_slots, max_len;
};

struct QkNormRopeParams {
  const void* qkv;
  int64_t qkv_row_stride;
  const void* q_weight;  // [head_dim], dtype
  const void* k_weight;
  const float* cos;
  const float* sin;
  const int64_t* positions;  // [rows]
  const int64_t* slots;      // [rows]
  void* q_out;
  void* k_cache;
  void* v_cache;
  int64_t rows, max_positions;
  AttentionShape shape;
  float eps;
  DType dtype;
};

// Row b attends to positions 0..lengths[b]-1 of slot slots[b], never beyond span (<= max_len).
struct AttentionDecodeParams {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int64_t* slots;    // [batch]
  const int64_t* lengths;  // [batch]
  void* out;
  int64_t batch, span;
  AttentionShape shape;
  float scale;
  DType dtype;
};

// Prompt p is rows cu_seqlens[p]..cu_seqlens[p+1]-1 at positions 0..n_p-1 of slot slots[p];
// no prompt is longer than max_seqlen (<= max_len).
struct AttentionPrefillParams {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int64_t* cu_seqlens;  // [prompts + 1]
  const int64_t* slots;       // [prompts]
  void* out;
  int64_t tokens, prompts, max_seqlen;
  AttentionShape shape;
  float scale;
  DType dtype;
};

inline AttentionShape make_attention_shape(const char* op, int64_t heads, int64_t kv_heads,
                                           int64_t head_dim, int64_t num_slots,
                                           int64_t max_len) {
  const std::pair<int64_t, const char*> sizes[] = {{heads, "heads"}, {kv_heads, "kv_heads"},
                                                   {head_dim, "head_dim"},
                                                   {num_slots, "num_slots"},
                                                   {max_len, "max_len"}};
  for (const auto& [value, name] : sizes)
    require(value > 0, op, std::string(name) + " must be > 0, got " + std::to_string(value));
  require(heads % kv_heads == 0, op,
          "heads (" + std::to_string(heads) + ") must be a multiple of kv_heads (" +
              std::to_string(kv_heads) + ")");
  // Half-split RoPE pairs i with i + head_dim / 2; the kernels keep a head in registers.
  require(head_dim % 2 == 0 && head_dim <= 256, op,
          "head_dim must be even and <= 256, got " + std::to_string(head_dim));
  return {heads, kv_heads, head_dim, num_slots, max_len};
}

inline QkNormRopeParams make_qk_norm_rope_params(
    const char* op, std::uintptr_t qkv, int64_t qkv_row_stride, std::uintptr_t q_weight,
    std::uintptr_t k_weight, std::uintptr_t cos, std::uintptr_t sin, std::uintptr_t positions,
    std::uintptr_t slots, std::uintptr_t q_out, std::uintptr_t k_cache, std::uintptr_t v_cache,
    int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t num_slots,
    int64_t max_len, int64_t max_positions, double eps, DType dtype) {
  const AttentionShape s = make_attention_shape(op, heads, kv_heads, head_dim, num_slots,
                                                max_len);
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(max_positions > 0, op, "max_positions must be > 0");
  require(std::isfinite(eps) && eps >= 0, op, "eps must be finite and >= 0");
  const int64_t width = (heads + 2 * kv_heads) * head_dim;
  require(rows <= 1 || qkv_row_stride >= width, op,
          "qkv_row_stride (" + std::to_string(qkv_row_stride) + ") must be >= (heads + 2 " +
              "kv_heads) head_dim (" + std::to_string(width) + ")");
  QkNormRopeParams p{};
  p.qkv_row_stride = qkv_row_stride;
  p.rows = rows;
  p.max_positions = max_positions;
  p.shape = s;
  p.eps = static_cast<float>(eps);
  p.dtype = dtype;
  if (rows == 0) return p;  // no rows, no reads: an empty tensor's pointer may be null
  const auto elt = dtype_size(dtype);
  p.qkv = checked_ptr<const void>(qkv, op, "qkv", elt);
  p.q_weight = checked_ptr<const void>(q_weight, op, "q_weight", elt);
  p.k_weight = checked_ptr<const void>(k_weight, op, "k_weight", elt);
  p.cos = checked_ptr<const float>(cos, op, "cos");
  p.sin = checked_ptr<const float>(sin, op, "sin");
  p.positions = checked_ptr<const int64_t>(positions, op, "positions");
  p.slots = checked_ptr<const int64_t>(slots, op, "slots");
  p.q_out = checked_ptr<void>(q_out, op, "q_out", elt);
  p.k_cache = checked_ptr<void>(k_cache, op, "k_cache", elt);
  p.v_cache = checked_ptr<void>(v_cache, op, "v_cache", elt);
  return p;
}

inline AttentionDecodeParams make_attention_decode_params(
    const char* op, std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
    std::uintptr_t slots, std::uintptr_t lengths, std::uintptr_t out, int64_t batch,
    int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t num_slots, int64_t max_len,
    int64_t span, DType dtype) {
  const AttentionShape s = make_attention_shape(op, heads, kv_heads, head_dim, num_slots,
                                                max_len);
  require(batch >= 0, op, "batch must be >= 0, got " + std::to_string(batch));
  require(span > 0 && span <= max_len, op,
          "span must be in 1..max_len (" + std::to_string(max_len) + "), got " +
              std::to_string(span));
  AttentionDecodeParams p{};
  p.batch = batch;
  p.span = span;
  p.shape = s;
  p.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  p.dtype = dtype;
  if (batch == 0) return p;
  const auto elt = dtype_size(dtype);
  p.q = checked_ptr<const void>(q, op, "q", elt);
  p.k_cache = checked_ptr<const void>(k_cache, op, "k_cache", elt);
  p.v_cache = checked_ptr<const void>(v_cache, op, "v_cache", elt);
  p.slots = checked_ptr<const int64_t>(slots, op, "slots");
  p.lengths = checked_ptr<const int64_t>(lengths, op, "lengths");
  p.out = checked_ptr<void>(out, op, "out", elt);
  return p;
}

inline AttentionPrefillParams make_attention_prefill_params(
    const char* op, std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
    std::uintptr_t cu_seqlens, std::uintptr_t slots, std::uintptr_t out, int64_t tokens,
    int64_t prompts, int64_t max_seqlen, int64_t heads, int64_t kv_heads, int64_t head_dim,
    int64_t num_slots, int64_t max_len, DType dtype) {
  const AttentionShape s = make_attention_shape(op, heads, kv_heads, head_dim, num_slots,
                                                max_len);
  require(tokens >= 0 && prompts >= 0, op, "tokens and prompts must be >= 0");
  require(max_seqlen >= 0 && max_seqlen <= max_len, op,
          "max_seqlen must be in 0..max_len (" + std::to_string(max_len) + "), got " +
              std::to_string(max_seqlen));
  AttentionPrefillParams p{};
  p.tokens = tokens;
  p.prompts = prompts;
  p.max_seqlen = max_seqlen;
  p.shape = s;
  p.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  p.dtype = dtype;
  if (tokens == 0 || prompts == 0) return p;
  const auto elt = dtype_size(dtype);
  p.q = checked_ptr<const void>(q, op, "q", elt);
  p.k_cache = checked_ptr<const void>(k_cache, op, "k_cache", elt);
  p.v_cache = checked_ptr<const void>(v_cache, op, "v_cache", elt);
  p.cu_seqlens = checked_ptr<const int64_t>(cu_seqlens, op, "cu_seqlens");
  p.slots = checked_ptr<const int64_t>(slots, op, "slots");
  p.out = checked_ptr<void>(out, op, "out", elt);
  return p;
}

}  // namespace soprano
