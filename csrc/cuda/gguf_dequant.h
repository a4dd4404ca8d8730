// CUDA dequantize entry point. Plain C++ (no CUDA headers) so the host compiler can build
// bindings.cpp; the stream arrives as the integer handle torch reports.
#pragma once

#include <cstdint>

#include "gguf_dequant_params.h"

namespace soprano::cuda {

// Enqueues on `stream` of the calling thread's current device; p.out must be 16-byte aligned.
void dequantize(const DequantParams& p, std::uintptr_t stream);

}  // namespace soprano::cuda
