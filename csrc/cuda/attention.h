// CUDA entry points of the attention ops (contracts: soprano/ops/reference.py; params and their
// checks: attention_params.h). Plain C++ (no CUDA headers) so the host compiler can build
// bindings.cpp; streams arrive as the integer handles torch reports. Each call enqueues on
// `stream` of the calling thread's current device, allocates nothing and never synchronizes,
// so all three can be captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention_params.h"

namespace soprano::cuda {

// Rows whose position or slot falls outside the cache (or the rotary table) write nothing to
// the cache; their q rows are rotated at the clamped position.
void qk_norm_rope(const QkNormRopeParams& p, std::uintptr_t stream);

// Bytes of scratch attention_decode needs for these sizes (its split-K partials); depends on
// span, not on the lengths, so one buffer serves every replay of a captured graph.
int64_t attention_decode_workspace(int64_t batch, int64_t heads, int64_t head_dim, int64_t span);

// Lengths are clamped to [0, span] and slots to the cache; a length of 0 gives zeros.
void attention_decode(const AttentionDecodeParams& p, void* workspace,
                      std::size_t workspace_bytes, std::uintptr_t stream);

// Prompt bounds are clamped to the token rows and the cache; rows of a prompt longer than
// max_seqlen are not written.
void attention_prefill(const AttentionPrefillParams& p, std::uintptr_t stream);

}  // namespace soprano::cuda
