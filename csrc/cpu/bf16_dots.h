// bf16 dot products on the CPU's tile unit (AMX-BF16): y[M, N] = x[M, K] @ w[N, K]^T with x
// rounded to bf16 and w in bf16, products summed in fp32. A quantized model's decoder runs its
// ConvNeXt matrices and head this way where the CPU has AMX: one tile instruction does 16 x 16 x 32
// multiply-adds, ~10x an AVX-512 core's fp32 FMAs, and bf16 rounding of the activations costs
// the audio less than the model's own 8-bit weights already do (bench/RESULTS.md, fidelity).
#pragma once

#include "cpu/linear_params.h"

namespace soprano::cpu {

// Whether this process can run linear_bf16_dots: AMX-BF16 and AVX512-BF16 on the CPU, and the
// kernel's leave to use tile data (asked for once, here).
bool bf16_dots_available();

// p.wtype BF16, p.K a multiple of 32 (checked); p.packed_from_rows, p.row_tiles
// and p.isa unused. Each y[m, n] is one chain of tile products over K in steps of 32 values,
// whatever M and the thread count: a row of x gets the same bits alone or in any batch, so a
// streamed decode equals the one-shot one.
void linear_bf16_dots(const LinearParams& p);

}  // namespace soprano::cpu
