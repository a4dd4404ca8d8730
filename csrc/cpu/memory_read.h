// A plain read of a buffer by the CPU kernels' threads: what memory (or the caches, for a buffer
// they hold) delivers to these cores, the floor a weight-streaming decode step is measured
// against (soprano.bench).
#pragma once

#include <cstdint>

namespace soprano::cpu {

// The 64-bit words of [p, p + bytes) summed (so the reads cannot be elided), read in one
// contiguous share per thread with the weight streams' software prefetch. bytes must be a
// multiple of 8.
uint64_t read_words(const uint8_t* p, int64_t bytes);

}  // namespace soprano::cpu
