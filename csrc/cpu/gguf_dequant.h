// CPU dequantize entry point, kept apart so bindings.cpp needs no knowledge of the SIMD dispatch.
#pragma once

#include "gguf_dequant_params.h"

namespace soprano::cpu {

// Every value of p.raw into p.out (fp32, bf16 or fp16), OpenMP over chunks of blocks.
// `portable`: the kernels a CPU without AVX2 and F16C runs, whatever this one has (for tests).
void dequantize(const DequantParams& p, bool portable = false);

// n values (whole blocks) of raw to fp32 on the calling thread, for kernels that decode a few
// weight rows at a time (quant_linear's prefill GEMM).
void dequantize_f32(gguf::QType qtype, const uint8_t* raw, int64_t n, float* out);

}  // namespace soprano::cpu
