// One Qwen3 decode step (or prefill) on CPU in a single native call. Op by op from Python a step
// of Soprano's 17 layers is ~350 small torch calls whose dispatch costs as much as streaming the
// weights; here the whole step (embedding, every layer, final norm, LM head) runs without
// returning to Python, so it costs the weight bytes over memory bandwidth. Numerics follow the
// op-by-op reference (soprano.ops): fp32 activations, weights read in their stored dtype.
// A prefill is the same call with one row per prompt token. Out of scope: sampling.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/qwen3_step_params.h"

namespace soprano::cpu {

// Trusts its arguments: make_qwen3_weights, make_kv_cache_view and make_decode_batch check them.
class Qwen3StepCpu {
 public:
  Qwen3StepCpu(Qwen3Weights w, KVCacheView cache);
  void step(const DecodeBatch& batch);

  const Qwen3Weights& weights() const { return w_; }
  const KVCacheView& cache() const { return cache_; }

 private:
  // q/k norm + rotary, k and v into the cache, then each row attends to its slot's first
  // `lengths_` positions (at most span).
  void attention(int64_t layer, const DecodeBatch& batch, int64_t span);

  Qwen3Weights w_;
  KVCacheView cache_;
  // Scratch, grown to the largest batch seen; a step allocates nothing after the first.
  std::vector<float> x_, h_, qkv_, q_, attn_, gate_up_, act_, tmp_, out_hidden_, out_logits_;
  std::vector<int64_t> lengths_;
};

}  // namespace soprano::cpu
