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

// linear() over weights in any format `decode` reads (p.wtype unused): below
// p.packed_from_rows rows of x (0: 8) each weight row is decoded to fp32 once
// and dotted with every row of x, exact fp32 math whose result for a row does not depend on its
// batch; from there on (CPUs with AVX2) the packed-panel GEMM.
void linear_decoded(const LinearParams& p, RowDecoder decode);

#ifdef SOPRANO_X86_DISPATCH
// The few-rows row-tiled kernel (p.row_tiles) over plain GGUF Q8_0 rows (p.w; K a multiple of
// 32, p.wtype unused), each block decoded in registers where it is FMA'd: the bits of
// linear_decoded over decoded rows. Needs AVX2, FMA and F16C.
void linear_q8_0_rows(const LinearParams& p);
#endif

}  // namespace soprano::cpu
