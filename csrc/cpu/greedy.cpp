// See greedy.h. Penalized values are computed as torch does (fp32 multiply or true division
// by the penalty rounded to fp32), so the chosen token is torch's bit for bit.
#include "cpu/greedy.h"

#include <cmath>
#include <string>

#include "common.h"

namespace soprano::cpu {

void greedy_tokens(const GreedyParams& p) {
  require(p.vocab > 0, "greedy_tokens", "vocab must be > 0, got " + std::to_string(p.vocab));
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t slot = p.slots[r];
    require(slot >= 0 && slot < p.num_slots, "greedy_tokens",
            "row " + std::to_string(r) + ": slot " + std::to_string(slot) + " is outside 0.." +
                std::to_string(p.num_slots - 1));
    const float* l = p.logits + slot * p.vocab;
    const bool* seen = p.seen + slot * p.vocab;
    int64_t best_at = 0;
    float best = 0.f;
    for (int64_t v = 0; v < p.vocab; ++v) {
      float s = l[v];
      if (seen[v]) s = s < 0.f ? s * p.penalty : s / p.penalty;
      if (std::isnan(s)) {
        best_at = v;
        break;
      }
      if (v == 0 || s > best) {
        best = s;
        best_at = v;
      }
    }
    p.out[r] = best_at;
  }
}

}  // namespace soprano::cpu
