// One Qwen3 decode step (or prefill) on CPU in a single native call. Op by op from Python a step of Soprano's
// 17 layers is ~350 small torch calls whose dispatch costs as much as streaming the weights;
// here the whole step (embedding, every layer, final norm, LM head) runs without returning to
// Python, so it costs the weight bytes over memory bandwidth. Numerics follow the op-by-op
// reference (soprano.ops): fp32 activations, weights read in their stored dtype.
// A prefill is the same call with one row per prompt token. Out of scope: sampling.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/linear.h"

namespace soprano::cpu {

struct Qwen3LayerWeights {
  const float* attn_norm;  // [hidden]
  const void* wqkv;        // [(heads + 2 kv_heads) head_dim, hidden], wtype
  const float* q_norm;     // [head_dim]
  const float* k_norm;     // [head_dim]
  const void* wo;          // [hidden, heads head_dim]
  const float* ffn_norm;   // [hidden]
  const void* w_gate_up;   // [2 intermediate, hidden]
  const void* w_down;      // [hidden, intermediate]
};

struct Qwen3Weights {
  int64_t hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions;
  float eps;
  WeightType wtype;
  const float* embed;       // [vocab, hidden]
  const float* final_norm;  // [hidden]
  const void* lm_head;      // [vocab, hidden], wtype
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
// hidden (after the final norm) and logits: [rows - first_output_row, hidden | vocab].
struct DecodeBatch {
  const int64_t* tokens;
  const int64_t* positions;
  const int64_t* slots;
  int64_t rows;
  int64_t first_output_row;
  float* hidden;
  float* logits;
};

class Qwen3Decoder {
 public:
  Qwen3Decoder(Qwen3Weights w, KVCacheView cache);
  void step(const DecodeBatch& batch);

 private:
  void check(const DecodeBatch& batch) const;
  void attention(int64_t layer, const DecodeBatch& batch);

  Qwen3Weights w_;
  KVCacheView cache_;
  // Scratch, grown to the largest batch seen; a step allocates nothing after the first.
  std::vector<float> x_, h_, qkv_, attn_, gate_up_, act_, tmp_, scores_;
};

}  // namespace soprano::cpu
