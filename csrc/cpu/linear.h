// CPU linear layer: y[M, N] = x[M, K] @ w[N, K]^T with fp32 activations and accumulation and
// weights in bf16, fp16 or fp32. A decode step streams every weight once, so on a CPU the step
// time is the weight bytes over memory bandwidth: 16-bit weights halve it, and torch has no fast
// fp32 x bf16 matmul.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace soprano::cpu {

enum class WeightType { BF16 = 0, F16 = 1, F32 = 2 };

inline WeightType parse_weight_type(const std::string& name, const char* who) {
  if (name == "bfloat16") return WeightType::BF16;
  if (name == "float16") return WeightType::F16;
  if (name == "float32") return WeightType::F32;
  throw std::invalid_argument(std::string(who) +
                              ": weight dtype must be bfloat16, float16 or float32, got '" +
                              name + "'");
}

// Strides are in elements; rows of w are contiguous (stride K); w's element type is wtype's.
struct LinearParams {
  const float* x;
  const void* w;
  float* y;
  int64_t M, N, K;
  int64_t x_row_stride;
  int64_t y_row_stride;
  WeightType wtype;
};

void linear(const LinearParams& p);

// The api layer of the 16-bit binding: a bad pointer or size reaching the kernel is a crash,
// caught here it is a Python ValueError.
inline LinearParams make_linear_params(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y,
                                       int64_t M, int64_t N, int64_t K, int64_t x_row_stride,
                                       int64_t y_row_stride, const std::string& wdtype) {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("linear_w16: " + what);
  };
  require(wdtype == "bfloat16" || wdtype == "float16",
          "weight dtype must be bfloat16 or float16, got '" + wdtype + "'");
  require(M >= 0 && N > 0 && K > 0, "sizes must be M >= 0, N > 0, K > 0, got M=" +
                                        std::to_string(M) + " N=" + std::to_string(N) +
                                        " K=" + std::to_string(K));
  require(x != 0 && w != 0 && y != 0, "null pointer");
  require(x % 4 == 0 && y % 4 == 0 && w % 2 == 0, "pointers not aligned to their element size");
  require(M <= 1 || (x_row_stride >= K && y_row_stride >= N),
          "row strides must be >= K for x and >= N for y");
  return {reinterpret_cast<const float*>(x), reinterpret_cast<const void*>(w),
          reinterpret_cast<float*>(y), M, N, K, x_row_stride, y_row_stride,
          parse_weight_type(wdtype, "linear_w16")};
}

}  // namespace soprano::cpu
