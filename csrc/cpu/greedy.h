// Greedy decoding's choice on CPU: the repetition penalty and the argmax over a row of logits
// in one pass. With torch these were six ops on 8192 logits (two gathers, the penalty's four
// elementwise ops) and an argmax: ~60 us of dispatch a token, ~5% of a quantized step.
#pragma once

#include <cstdint>

namespace soprano::cpu {

struct GreedyParams {
  const float* logits;   // [num_slots, vocab], contiguous
  const bool* seen;      // [num_slots, vocab], contiguous
  const int64_t* slots;  // [rows]: the row of logits and seen each output reads
  int64_t rows, vocab, num_slots;
  float penalty;  // seen tokens: l * penalty where l < 0, else l / penalty
  int64_t* out;   // [rows]
};

// out[r] = argmax over v of the penalized logits of row slots[r]: the first maximum, or the
// first NaN (torch.argmax's choice).
void greedy_tokens(const GreedyParams& p);

}  // namespace soprano::cpu
