// CPU RMSNorm in fp32. One wheel must run on any x86-64 (and non-x86) CPU, so the AVX2+FMA row
// kernel is compiled with a function-level target attribute and picked at runtime; the portable
// scalar one is the fallback. The sum of squares is vec.h's dot product of a row with itself.
#include "cpu/rms_norm.h"

#include <cmath>
#include <string>

#include "common.h"
#include "cpu/vec.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

using ScaleKernel = void (*)(const float* x, const float* w, float* y, int64_t n, float rstd);

// w * (x * rstd), in the reference's order, so fp32 results match it to the last bit or two.
void scale_scalar(const float* x, const float* w, float* y, int64_t n, float rstd) {
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * rstd);
}

#ifdef SOPRANO_X86_DISPATCH
__attribute__((target("avx2,fma"))) void scale_avx2(const float* x, const float* w, float* y,
                                                    int64_t n, float rstd) {
  const __m256 r = _mm256_set1_ps(rstd);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 normed = _mm256_mul_ps(_mm256_loadu_ps(x + i), r);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), normed));
  }
  for (; i < n; ++i) y[i] = w[i] * (x[i] * rstd);
}
#endif

ScaleKernel pick_scale() {
#ifdef SOPRANO_X86_DISPATCH
  if (cpu_features().avx2 && cpu_features().fma) return scale_avx2;
#endif
  return scale_scalar;
}

// Below this many elements a parallel region costs more than it saves (decode runs 1 row).
constexpr int64_t kMinParallelElems = 1 << 15;

}  // namespace

void rms_norm(const RmsNormParams& p) {
  require(p.dtype == DType::F32, "rms_norm_cpu",
          std::string("only float32 is supported, got ") + dtype_name(p.dtype));
  static const ScaleKernel scale = pick_scale();
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  auto* y = static_cast<float*>(p.out);
  const auto hidden = static_cast<float>(p.hidden);
  // Each row is read fully before its output is written, so out may alias x (in place).
#pragma omp parallel for schedule(static) if (p.rows * p.hidden >= kMinParallelElems) \
    num_threads(num_threads())
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = x + r * p.x_row_stride;
    const float ms = vec().dot(xr, xr, p.hidden) / hidden;
    scale(xr, w, y + r * p.out_row_stride, p.hidden, 1.f / std::sqrt(ms + p.eps));
  }
}

}  // namespace soprano::cpu
