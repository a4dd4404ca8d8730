// CPU RMSNorm in fp32. One wheel must run on any x86-64 (and non-x86) CPU, so the AVX2+FMA row
// kernels are compiled with function-level target attributes and picked at runtime; the portable
// scalar ones are the fallback.
#include "cpu/rms_norm.h"

#include <cmath>
#include <stdexcept>
#include <string>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SOPRANO_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace soprano::cpu {
namespace {

struct RowKernels {
  float (*sum_squares)(const float* x, int64_t n);
  void (*scale)(const float* x, const float* w, float* y, int64_t n, float rstd);
};

float sum_squares_scalar(const float* x, int64_t n) {
  // Eight partial sums: the compiler may vectorize this without -ffast-math, and the rounding
  // stays close to the AVX2 path.
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k] * x[i + k];
  float s = 0.f;
  for (; i < n; ++i) s += x[i] * x[i];
  for (float a : acc) s += a;
  return s;
}

// w * (x * rstd), in the reference's order, so fp32 results match it to the last bit or two.
void scale_scalar(const float* x, const float* w, float* y, int64_t n, float rstd) {
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * rstd);
}

#ifdef SOPRANO_X86_DISPATCH
__attribute__((target("avx2,fma"))) float sum_squares_avx2(const float* x, int64_t n) {
  // Two accumulators hide the FMA latency.
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  if (i + 8 <= n) {
    const __m256 v = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v, v, a0);
    i += 8;
  }
  const __m256 a = _mm256_add_ps(a0, a1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float total = _mm_cvtss_f32(s);
  for (; i < n; ++i) total += x[i] * x[i];
  return total;
}

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

RowKernels pick_kernels() {
#ifdef SOPRANO_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {sum_squares_avx2, scale_avx2};
#endif
  return {sum_squares_scalar, scale_scalar};
}

// Below this many elements a parallel region costs more than it saves (decode runs 1 row).
constexpr int64_t kMinParallelElems = 1 << 15;

}  // namespace

void rms_norm(const RmsNormParams& p) {
  if (p.dtype != DType::F32)
    throw std::invalid_argument(std::string("rms_norm (cpu): only float32 is supported, got ") +
                                dtype_name(p.dtype));
  static const RowKernels k = pick_kernels();
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  auto* y = static_cast<float*>(p.out);
  const auto hidden = static_cast<float>(p.hidden);
  // Each row is read fully before its output is written, so out may alias x (in place).
#pragma omp parallel for schedule(static) if (p.rows * p.hidden >= kMinParallelElems)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = x + r * p.x_row_stride;
    const float ms = k.sum_squares(xr, p.hidden) / hidden;
    k.scale(xr, w, y + r * p.out_row_stride, p.hidden, 1.f / std::sqrt(ms + p.eps));
  }
}

}  // namespace soprano::cpu
