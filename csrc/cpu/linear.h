// CPU linear layer: y[M, N] = x[M, K] @ w[N, K]^T with fp32 activations and accumulation and
// weights in bf16, fp16 or fp32. A decode step streams every weight once, so on a CPU the step
// time is the weight bytes over memory bandwidth: 16-bit weights halve it, and torch has no fast
// fp32 x bf16 matmul.
#pragma once

#include <cstdint>

#include "cpu/linear_params.h"

namespace soprano::cpu {

void linear(const LinearParams& p);

// Row n of a weight matrix (K values) decoded to fp32 into out.
using RowDecoder = void (*)(const void* w, int64_t n, int64_t K, float* out);

// linear()'s packed-panel GEMM (for many rows of x; p.wtype unused) over weights in any format
// `decode` reads. False, computing nothing, on a CPU without its AVX2 kernels.
bool linear_packed(const LinearParams& p, RowDecoder decode);

}  // namespace soprano::cpu
