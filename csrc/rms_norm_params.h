// The RMSNorm api layer: checks the raw arguments that arrive from Python once, here, and fills
// the plain params struct that every backend's kernel reads (the flash-attention layout). A bad
// pointer or size reaching a kernel is a crash; caught here it is a Python ValueError.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "common.h"

namespace soprano {

// Strides are in elements. x, weight and out share one dtype.
struct RmsNormParams {
  const void* x;
  const void* weight;
  void* out;
  int64_t rows;
  int64_t hidden;
  int64_t x_row_stride;
  int64_t out_row_stride;
  float eps;
  DType dtype;
};

// `op` is the binding's name (rms_norm_cpu, rms_norm_cuda), which leads every error message.
inline RmsNormParams make_rms_norm_params(const char* op, std::uintptr_t x, std::uintptr_t weight,
                                          std::uintptr_t out, int64_t rows, int64_t hidden,
                                          int64_t x_row_stride, int64_t out_row_stride,
                                          double eps, DType dtype) {
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(hidden > 0, op, "hidden must be > 0, got " + std::to_string(hidden));
  require(std::isfinite(eps) && eps >= 0, op, "eps must be finite and >= 0");
  RmsNormParams p{nullptr, nullptr, nullptr, rows, hidden, x_row_stride, out_row_stride,
                  static_cast<float>(eps), dtype};
  // No rows, no reads: an empty tensor's pointer may be null.
  if (rows > 0) {
    const auto elt = dtype_size(dtype);
    p.x = checked_ptr<const void>(x, op, "x", elt);
    p.weight = checked_ptr<const void>(weight, op, "weight", elt);
    p.out = checked_ptr<void>(out, op, "out", elt);
  }
  // x may repeat a row (stride 0, e.g. an expanded tensor); out rows must not overlap.
  require(x_row_stride >= 0, op,
          "x_row_stride must be >= 0, got " + std::to_string(x_row_stride));
  require(rows <= 1 || out_row_stride >= hidden, op,
          "out_row_stride (" + std::to_string(out_row_stride) + ") must be >= hidden (" +
              std::to_string(hidden) + ") so output rows do not overlap");
  return p;
}

}  // namespace soprano
