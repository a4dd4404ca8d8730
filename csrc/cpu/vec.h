// Small fp32 vector kernels shared by the CPU ops (dot products for RMSNorm and attention,
// axpy for attention, SiLU(gate) * up for the MLP), AVX2+FMA where the CPU has it, portable
// scalar code otherwise, picked once at runtime.
#pragma once

#include <cstdint>

namespace soprano::cpu {

struct VecKernels {
  // sum a[i] b[i] in fp32 with eight (scalar) or two x8 (AVX2) partial sums
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a x
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
};

const VecKernels& vec();

}  // namespace soprano::cpu
