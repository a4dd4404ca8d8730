// The api layer of the whole-step CPU decoder (qwen3_step.h): the plain structs the step reads,
// and the functions that check the raw arguments from Python and fill them. A bad pointer, size
// or token reaching the step is a crash or a write outside the cache; caught here it is a Python
// ValueError, raised before anything is written.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/quant_linear.h"
#include "gguf_dequant_params.h"

namespace soprano::cpu {

// Rows of a matmul weight in one type: floats of a DType, or GGUF blocks that quant_linear
// multiplies. `type` is the ggml type id (F32 0, F16 1, BF16 30, Q8_0 8, Q4_K 12, ...).
struct MatrixPart {
  const void* data;
  int type;
  int64_t rows;
};

// A matmul weight [N, K]: parts stacked by rows, each multiplied on its own into its columns of
// y. One part, unless the model mixes types inside a stacked matrix as llama.cpp's _M files do
// (Q4_K_M: q and k in Q4_K, v in Q6_K in a third of the layers, all in one q|k|v).
struct Matrix {
  std::vector<MatrixPart> parts;
};

struct Qwen3LayerWeights {
  const float* attn_norm;  // [hidden]
  Matrix wqkv;             // [(heads + 2 kv_heads) head_dim, hidden]
  const float* q_norm;     // [head_dim]
  const float* k_norm;     // [head_dim]
  Matrix wo;               // [hidden, heads head_dim]
  const float* ffn_norm;   // [hidden]
  Matrix w_gate_up;        // [2 intermediate, hidden]
  Matrix w_down;           // [hidden, intermediate]
};

struct Qwen3Weights {
  int64_t hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions;
  float eps;
  const float* embed;       // [vocab, hidden]
  const float* final_norm;  // [hidden]
  Matrix lm_head;           // [vocab, hidden]
  const float* cos;         // [max_positions, head_dim], half-split rotary layout
  const float* sin;
  std::vector<Qwen3LayerWeights> layers;
};

// Keys and values, fp32 [layers, slots, kv_heads, max_len, head_dim] each.
struct KVCacheView {
  float* k;
  float* v;
  int64_t slots, max_len;
};

// Row r feeds tokens[r] at positions[r] into cache slot slots[r] and attends to that slot's
// positions 0..positions[r]. Every row's k and v are written before any row attends, so rows of
// one slot at consecutive positions are a causal prefill. Rows from first_output_row on write
// hidden (after the final norm) and logits: [rows - first_output_row, hidden | vocab], or, when
// slot_rows > 0, each a row of [slot_rows, hidden | vocab]: its slot's (an engine keeps its rows
// by slot, so a step's need not be copied there after).
struct DecodeBatch {
  const int64_t* tokens;
  const int64_t* positions;
  const int64_t* slots;
  int64_t rows;
  int64_t first_output_row;
  float* hidden;
  float* logits;
  int64_t slot_rows;
};

// Per layer: attn_norm, wqkv, q_norm, k_norm, wo, ffn_norm, w_gate_up, w_down.
using Qwen3LayerPtrs = std::array<std::uintptr_t, 8>;
// Each matrix's (ggml type, rows) parts, stored one after another from its pointer: lm_head,
// then per layer wqkv, wo, w_gate_up, w_down.
using MatrixParts = std::vector<std::vector<std::pair<int, int64_t>>>;

inline constexpr const char* kQwen3Op = "Qwen3StepCpu";
inline constexpr const char* kQwen3StepOp = "Qwen3StepCpu.step";

inline void require_positive(int64_t value, const char* op, const char* name) {
  require(value > 0, op, std::string(name) + " must be > 0, got " + std::to_string(value));
}

inline Qwen3Weights make_qwen3_weights(int64_t hidden, int64_t heads, int64_t kv_heads,
                                       int64_t head_dim, int64_t intermediate, int64_t vocab,
                                       int64_t max_positions, double eps,
                                       const MatrixParts& parts, std::uintptr_t embed,
                                       std::uintptr_t final_norm,
                                       std::uintptr_t lm_head, std::uintptr_t cos,
                                       std::uintptr_t sin,
                                       const std::vector<Qwen3LayerPtrs>& layers) {
  const char* op = kQwen3Op;
  const std::pair<int64_t, const char*> sizes[] = {
      {hidden, "hidden"}, {heads, "heads"}, {kv_heads, "kv_heads"},
      {head_dim, "head_dim"}, {intermediate, "intermediate"}, {vocab, "vocab"},
      {max_positions, "max_positions"}};
  for (const auto& [value, name] : sizes) require_positive(value, op, name);
  // Half-split rotary pairs element i with i + head_dim / 2; each kv head serves a whole group.
  // The attention kernels keep a head on the stack (make_attention_shape's bound).
  require(head_dim % 2 == 0 && head_dim <= 256, op,
          "head_dim must be even and <= 256, got " + std::to_string(head_dim));
  require(heads % kv_heads == 0, op,
          "heads (" + std::to_string(heads) + ") must be a multiple of kv_heads (" +
              std::to_string(kv_heads) + ")");
  require(std::isfinite(eps) && eps >= 0, op, "eps must be finite and >= 0");
  require(!layers.empty(), op, "layers must not be empty");
  require(parts.size() == 1 + 4 * layers.size(), op,
          "parts must hold the parts of every matrix (" + std::to_string(1 + 4 * layers.size()) +
              "), got " + std::to_string(parts.size()));
  std::size_t next = 0;
  // Each part's type must be one a kernel multiplies, its rows whole blocks of it, and the
  // parts' rows the matrix's.
  auto mat = [&](std::uintptr_t p, const std::string& name, int64_t N, int64_t K) -> Matrix {
    const auto& runs = parts[next++];
    if (runs.empty()) fail(op, name + ": no parts");
    const char* base = checked_ptr<const char>(p, op, name.c_str());
    Matrix m;
    int64_t rows = 0;
    for (const auto& [type, n] : runs) {
      const QTypeInfo t = layout_info(type);
      const bool is_float = type == 0 || type == 1 || type == 30;
      if (!is_float && !quant_linear_takes(type))
        fail(op, name + ": ggml type " + std::to_string(type) +
                     " is not F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K (or their x8 "
                     "layouts)");
      if (!is_float && K % t.block != 0)
        fail(op, name + ": rows of " + std::to_string(K) + " values are not whole " + t.name +
                     " blocks");
      if (n <= 0 || n % layout_rows(type) != 0)
        fail(op, name + ": a part of " + std::to_string(n) + " rows" +
                     (n > 0 ? std::string(", not whole groups of ") +
                                  std::to_string(layout_rows(type)) + " for " + t.name
                            : std::string()));
      const int64_t align = type == 0 ? 4 : is_float ? 2 : 1;
      if (reinterpret_cast<std::uintptr_t>(base) % align != 0)
        fail(op, name + (rows ? " part at row " + std::to_string(rows) : std::string()) +
                     " is not aligned to its " + std::to_string(align) + "-byte element size");
      m.parts.push_back({base, type, n});
      base += n * (type == 0 ? 4 * K : K / t.block * t.bytes);
      rows += n;
    }
    if (rows != N)
      fail(op, name + ": parts of " + std::to_string(rows) + " rows, the matrix has " +
                   std::to_string(N));
    return m;
  };
  Qwen3Weights w{hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions,
                 static_cast<float>(eps),
                 checked_ptr<const float>(embed, op, "embed"),
                 checked_ptr<const float>(final_norm, op, "final_norm"),
                 mat(lm_head, "lm_head", vocab, hidden),
                 checked_ptr<const float>(cos, op, "cos"),
                 checked_ptr<const float>(sin, op, "sin"),
                 {}};
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Qwen3LayerPtrs& l = layers[i];
    const std::string at = "layers[" + std::to_string(i) + "].";
    auto vec = [&](std::uintptr_t p, const char* name) {
      return checked_ptr<const float>(p, op, (at + name).c_str());
    };
    Matrix wqkv = mat(l[1], at + "wqkv", (heads + 2 * kv_heads) * head_dim, hidden);
    Matrix wo = mat(l[4], at + "wo", hidden, heads * head_dim);
    Matrix gate_up = mat(l[6], at + "w_gate_up", 2 * intermediate, hidden);
    Matrix down = mat(l[7], at + "w_down", hidden, intermediate);
    w.layers.push_back({vec(l[0], "attn_norm"), std::move(wqkv), vec(l[2], "q_norm"),
                        vec(l[3], "k_norm"), std::move(wo), vec(l[5], "ffn_norm"),
                        std::move(gate_up), std::move(down)});
  }
  return w;
}

inline KVCacheView make_kv_cache_view(std::uintptr_t k_cache, std::uintptr_t v_cache,
                                      int64_t slots, int64_t max_len) {
  require_positive(slots, kQwen3Op, "slots");
  require_positive(max_len, kQwen3Op, "max_len");
  return {checked_ptr<float>(k_cache, kQwen3Op, "k_cache"),
          checked_ptr<float>(v_cache, kQwen3Op, "v_cache"), slots, max_len};
}

// Reads the rows' tokens, positions and slots: each must index the embedding, the rotary table
// and the cache, and no two rows may write the same cache entry.
inline DecodeBatch make_decode_batch(const Qwen3Weights& w, const KVCacheView& cache,
                                     std::uintptr_t tokens, std::uintptr_t positions,
                                     std::uintptr_t slots, int64_t rows,
                                     int64_t first_output_row, std::uintptr_t hidden,
                                     std::uintptr_t logits, int64_t slot_rows) {
  const char* op = kQwen3StepOp;
  require_positive(rows, op, "rows");
  require(first_output_row >= 0 && first_output_row < rows, op,
          "first_output_row must be in [0, rows = " + std::to_string(rows) + "), got " +
              std::to_string(first_output_row));
  const DecodeBatch b{checked_ptr<const int64_t>(tokens, op, "tokens"),
                      checked_ptr<const int64_t>(positions, op, "positions"),
                      checked_ptr<const int64_t>(slots, op, "slots"),
                      rows,
                      first_output_row,
                      checked_ptr<float>(hidden, op, "hidden"),
                      checked_ptr<float>(logits, op, "logits"),
                      slot_rows};
  require(slot_rows >= 0, op, "slot_rows must be >= 0, got " + std::to_string(slot_rows));
  const int64_t max_pos = std::min(cache.max_len, w.max_positions);
  for (int64_t r = 0; r < rows; ++r) {
    auto in_range = [&](const char* what, int64_t value, int64_t limit) {
      if (value < 0 || value >= limit)
        fail(op, "row " + std::to_string(r) + ": " + what + " " + std::to_string(value) +
                     " outside [0, " + std::to_string(limit) + ")");
    };
    in_range("token", b.tokens[r], w.vocab);
    in_range("position", b.positions[r], max_pos);
    in_range("slot", b.slots[r], cache.slots);
    if (slot_rows > 0 && r >= first_output_row) in_range("output slot", b.slots[r], slot_rows);
    for (int64_t q = 0; q < r; ++q) {
      if (b.slots[q] == b.slots[r] && b.positions[q] == b.positions[r])
        fail(op, "rows " + std::to_string(q) + " and " + std::to_string(r) +
                     " both write position " + std::to_string(b.positions[r]) +
                     " of cache slot " + std::to_string(b.slots[r]));
      if (slot_rows > 0 && q >= first_output_row && b.slots[q] == b.slots[r])
        fail(op, "rows " + std::to_string(q) + " and " + std::to_string(r) +
                     " both write the outputs of slot " + std::to_string(b.slots[r]));
    }
  }
  return b;
}

}  // namespace soprano::cpu
