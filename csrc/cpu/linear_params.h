// The CPU linear api layer: checks the raw arguments that arrive from Python once, here, and
// fills the plain params struct the kernel reads. A bad pointer or size reaching the kernel is a
// crash; caught here it is a Python ValueError.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace soprano::cpu {

// What happens to y[m, n] = acc after the dot products, while a block of y is still in cache:
// kNone: acc; kBias: acc + bias[n]; kBiasGelu: erf-GELU(acc + bias[n]); kBiasScaleResidual:
// residual[m, n] + scale[n] (acc + bias[n]) (a ConvNeXt block's gamma residual).
enum class Epilogue { kNone, kBias, kBiasGelu, kBiasScaleResidual };

// The widest vectors the kernels may use: kAuto takes AVX-512 where the CPU has it. The packed
// GEMM gives the same bits at either width (each output is one fp32 FMA chain over k); the
// few-rows kernels sum in 8 or 16 lanes, so their last bits differ. Tests pin each width.
enum class LinearIsa { kAuto, kAvx2, kAvx512 };

// Strides are in elements; rows of w are contiguous (stride K); w's element type is wtype's.
struct LinearParams {
  const float* x;
  const void* w;
  float* y;
  int64_t M, N, K;
  int64_t x_row_stride;
  int64_t y_row_stride;
  DType wtype;
  Epilogue epilogue = Epilogue::kNone;
  const float* bias = nullptr;      // [N]
  const float* scale = nullptr;     // [N]
  const float* residual = nullptr;  // [M, N], row stride residual_row_stride
  int64_t residual_row_stride = 0;
  // From this many rows of x on, the packed-panel kernel; below, the few-rows one (0: the
  // default, measured on the backbone's matrices). Where the two cross depends on the shapes.
  int64_t packed_from_rows = 0;
  // Few rows: tiles of 3 weight rows x 4 rows of x (4 x 6 with AVX-512; the decoder's 4-31-row
  // GEMMs, bound by loads) rather than one weight row at a time (the backbone's step: one
  // sequential stream).
  bool row_tiles = false;
  LinearIsa isa = LinearIsa::kAuto;
  // x rounded to bf16 and dotted with bf16 w on the tile unit (bf16_dots.h), where the CPU has
  // AMX-BF16: a quantized model's decoder, whose audio already carries 8-bit weight noise.
  bool bf16_dots = false;
};

// "auto", "avx2" or "avx512" as a LinearIsa, refused where this CPU cannot run it.
LinearIsa parse_linear_isa(const std::string& name, const char* op);

// The sizes and strides of y[M, N] = x[M, K] @ w^T, as every CPU matmul binding checks them.
inline void check_matmul_sizes(const char* op, int64_t M, int64_t N, int64_t K,
                               int64_t x_row_stride, int64_t y_row_stride) {
  require(M >= 0, op, "M must be >= 0, got " + std::to_string(M));
  require(N > 0, op, "N must be > 0, got " + std::to_string(N));
  require(K > 0, op, "K must be > 0, got " + std::to_string(K));
  // A single row's stride is never used, so torch may report anything for it.
  require(M <= 1 || x_row_stride >= K, op,
          "x_row_stride (" + std::to_string(x_row_stride) + ") must be >= K (" +
              std::to_string(K) + ")");
  require(M <= 1 || y_row_stride >= N, op,
          "y_row_stride (" + std::to_string(y_row_stride) + ") must be >= N (" +
              std::to_string(N) + ")");
}

inline LinearParams make_linear_params(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y,
                                       int64_t M, int64_t N, int64_t K, int64_t x_row_stride,
                                       int64_t y_row_stride, DType wtype) {
  constexpr const char* op = "linear_cpu";
  check_matmul_sizes(op, M, N, K, x_row_stride, y_row_stride);
  return {checked_ptr<const float>(x, op, "x"),
          checked_ptr<const void>(w, op, "w", dtype_size(wtype)),
          checked_ptr<float>(y, op, "y"),
          M, N, K, x_row_stride, y_row_stride, wtype};
}

}  // namespace soprano::cpu
