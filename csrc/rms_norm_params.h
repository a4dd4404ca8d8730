// The RMSNorm api layer: checks the raw arguments that arrive from Python once, here, and fills
// the plain params struct that every backend's kernel reads (the flash-attention layout). A bad
// pointer or size reaching a kernel is a crash; caught here it is a Python ValueError.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace soprano {

enum class DType { F32, F16, BF16 };

inline std::size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    default: return "bfloat16";
  }
}

// Names follow torch's (str(torch.float16) minus "torch.") so the Python side passes them as-is.
inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::F32;
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  throw std::invalid_argument("rms_norm: dtype must be float32, float16 or bfloat16, got '" +
                              name + "'");
}

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

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("rms_norm: " + what);
}

inline RmsNormParams make_rms_norm_params(std::uintptr_t x, std::uintptr_t weight,
                                          std::uintptr_t out, int64_t rows, int64_t hidden,
                                          int64_t x_row_stride, int64_t out_row_stride,
                                          double eps, DType dtype) {
  require(rows >= 0, "rows must be >= 0, got " + std::to_string(rows));
  require(hidden > 0, "hidden must be > 0, got " + std::to_string(hidden));
  require(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0");
  if (rows > 0) {
    const auto elt = dtype_size(dtype);
    const std::pair<std::uintptr_t, const char*> ptrs[] = {
        {x, "x"}, {weight, "weight"}, {out, "out"}};
    for (const auto& [p, name] : ptrs) {
      require(p != 0, std::string(name) + " is a null pointer");
      require(p % elt == 0, std::string(name) + " is not aligned to its " + dtype_name(dtype) +
                                " element size");
    }
  }
  // x may repeat a row (stride 0, e.g. an expanded tensor); out rows must not overlap.
  require(x_row_stride >= 0, "x_row_stride must be >= 0, got " + std::to_string(x_row_stride));
  require(rows <= 1 || out_row_stride >= hidden,
          "out_row_stride (" + std::to_string(out_row_stride) + ") must be >= hidden (" +
              std::to_string(hidden) + ") so output rows do not overlap");
  return {reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(weight),
          reinterpret_cast<void*>(out), rows, hidden, x_row_stride, out_row_stride,
          static_cast<float>(eps), dtype};
}

}  // namespace soprano
