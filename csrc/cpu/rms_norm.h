// CPU RMSNorm entry point, kept apart so bindings.cpp needs no knowledge of the SIMD dispatch.
#pragma once

#include "rms_norm_params.h"

namespace soprano::cpu {

// float32 only: on CPU the model runs in fp32, and half types have no fast native arithmetic.
void rms_norm(const RmsNormParams& p);

}  // namespace soprano::cpu
