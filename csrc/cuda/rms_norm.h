// CUDA RMSNorm entry point. Plain C++ (no CUDA headers) so the host compiler can build
// bindings.cpp; the stream arrives as the integer handle torch reports.
#pragma once

#include <cstdint>

#include "rms_norm_params.h"

namespace soprano::cuda {

// Enqueues on `stream` (0 = legacy default) of the calling thread's current device.
void rms_norm(const RmsNormParams& p, std::uintptr_t stream);

}  // namespace soprano::cuda
