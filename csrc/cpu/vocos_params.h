// The CPU Vocos ops' api layer: raw arguments from Python checked once, here (a src row past
// the input is a ValueError, not a read out of bounds), into the params the kernels read.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace soprano::cpu {

// Output m's taps are input rows src[m] .. src[m] + k - 1 (rows packed from many sequences
// with their zero padding, as soprano.ops.reference.convnext_block describes).
struct GatherRows {
  const float* x;
  int64_t rows, width;
  const int64_t* src;
  int64_t M, k;
};

struct ConvNeXtParams {
  GatherRows in;  // width D
  const float* dw_weight;  // [D, k]
  const float* dw_bias;
  const float* norm_weight;
  const float* norm_bias;
  const void* w1;  // [3D, D], wtype
  const float* b1;
  const void* w2;  // [D, 3D], wtype
  const float* b2;
  const float* gamma;
  DType wtype;
  int64_t hidden;  // 3D
  float eps;
  float* y;  // [M, D]
};

struct EmbedNormParams {
  GatherRows in;  // width C
  const void* weight;  // [D, C, k], wtype
  DType wtype;
  const float* bias;
  const float* norm_weight;
  const float* norm_bias;
  int64_t D;
  float eps;
  float* y;  // [M, D]
};

inline GatherRows make_gather_rows(const char* op, std::uintptr_t x, int64_t rows, int64_t width,
                                   std::uintptr_t src, int64_t M, int64_t k) {
  require(rows >= 0 && width > 0 && M >= 0 && k > 0, op,
          "rows, M >= 0 and width, k > 0 needed, got rows " + std::to_string(rows) +
              ", width " + std::to_string(width) + ", M " + std::to_string(M) + ", k " +
              std::to_string(k));
  GatherRows g{M ? checked_ptr<const float>(x, op, "x") : nullptr, rows, width,
               M ? checked_ptr<const int64_t>(src, op, "src") : nullptr, M, k};
  for (int64_t m = 0; m < M; ++m)
    require(g.src[m] >= 0 && g.src[m] + k <= rows, op,
            "src[" + std::to_string(m) + "] = " + std::to_string(g.src[m]) + " needs rows " +
                std::to_string(g.src[m]) + ".." + std::to_string(g.src[m] + k - 1) +
                " of x, which has " + std::to_string(rows));
  return g;
}

}  // namespace soprano::cpu
