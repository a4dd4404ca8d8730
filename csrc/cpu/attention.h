// CPU fp32 kernels of the attention ops (contracts: soprano/ops/reference.py): Qwen3's per-head
// q/k RMSNorm + RoPE + cache write, one-query decode attention over each row's cache slot, and
// causal varlen prefill attention over cached keys. The cpu backend's op-by-op path and the fused
// step (qwen3_step.cpp) both run them. Each reads index arrays (positions, slots, lengths,
// cu_seqlens) that make_*_params cannot see into, and checks their values before writing
// anything: a bad one would be a read or write outside the cache.
#pragma once

#include "attention_params.h"

namespace soprano::cpu {

void qk_norm_rope(const QkNormRopeParams& p);
void attention_decode(const AttentionDecodeParams& p);
void attention_prefill(const AttentionPrefillParams& p);

}  // namespace soprano::cpu
