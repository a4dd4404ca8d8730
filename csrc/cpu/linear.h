// CPU linear layer: y[M, N] = x[M, K] @ w[N, K]^T with fp32 activations and accumulation and
// weights in bf16, fp16 or fp32. A decode step streams every weight once, so on a CPU the step
// time is the weight bytes over memory bandwidth: 16-bit weights halve it, and torch has no fast
// fp32 x bf16 matmul.
#pragma once

#include "cpu/linear_params.h"

namespace soprano::cpu {

void linear(const LinearParams& p);

}  // namespace soprano::cpu
