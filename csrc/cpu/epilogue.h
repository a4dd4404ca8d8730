// The linear layer's epilogues (linear_params.h): bias, erf-GELU and the gamma residual applied
// to a block of output columns right after its dot products, instead of as separate passes over
// y in torch. AVX-512 or AVX2 where the CPU has it (the same bits); the scalar code matches
// torch's order of operations.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"
#include "cpu/exp_avx2.h"
#include "cpu/linear_params.h"

namespace soprano::cpu {

inline void epilogue_scalar(const LinearParams& p, float* y, const float* res, int64_t n0,
                            int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    float v = y[n] + p.bias[n];
    if (p.epilogue == Epilogue::kBiasGelu) v = 0.5f * v * (1.f + std::erf(v * 0.7071067811865476f));
    if (p.epilogue == Epilogue::kBiasScaleResidual) v = res[n] + p.scale[n] * v;
    y[n] = v;
  }
}

#ifdef SOPRANO_X86_DISPATCH
// erf for eight lanes: Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), odd in x.
__attribute__((target("avx2,fma"))) inline __m256 erf_avx2(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f),
                                 _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f),
                                                 _mm256_set1_ps(1.f)));
  __m256 poly = _mm256_set1_ps(1.061405429f);
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  poly = _mm256_mul_ps(poly, t);
  const __m256 e = exp_avx2(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a));
  const __m256 y = _mm256_fnmadd_ps(poly, e, _mm256_set1_ps(1.f));
  return _mm256_or_ps(y, sign);
}

// erf_avx2's steps on sixteen lanes: the same bits lane for lane.
__attribute__((target("avx512f,avx2,fma"))) inline __m512 erf_avx512(__m512 x) {
  const __m512 sign = _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)));
  const __m512 a = _mm512_abs_ps(x);
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f),
                                 _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f),
                                                 _mm512_set1_ps(1.f)));
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
  const __m512 y = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.f));
  return _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(y), _mm512_castps_si512(sign)));
}

__attribute__((target("avx2,fma"))) inline void epilogue_row_avx2(const LinearParams& p,
                                                                  float* y, const float* res,
                                                                  int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8) {
    __m256 v = _mm256_add_ps(_mm256_loadu_ps(y + n), _mm256_loadu_ps(p.bias + n));
    if (p.epilogue == Epilogue::kBiasGelu) {
      const __m256 e = erf_avx2(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)));
      v = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v),
                        _mm256_add_ps(_mm256_set1_ps(1.f), e));
    } else if (p.epilogue == Epilogue::kBiasScaleResidual) {
      v = _mm256_fmadd_ps(_mm256_loadu_ps(p.scale + n), v, _mm256_loadu_ps(res + n));
    }
    _mm256_storeu_ps(y + n, v);
  }
  epilogue_scalar(p, y, res, n, n1);
}

// epilogue_row_avx2 sixteen columns at a time (its eight-wide steps for the rest): the same
// bits.
__attribute__((target("avx512f,avx2,fma"))) inline void epilogue_row_avx512(
    const LinearParams& p, float* y, const float* res, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    __m512 v = _mm512_add_ps(_mm512_loadu_ps(y + n), _mm512_loadu_ps(p.bias + n));
    if (p.epilogue == Epilogue::kBiasGelu) {
      const __m512 e = erf_avx512(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
      v = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v),
                        _mm512_add_ps(_mm512_set1_ps(1.f), e));
    } else if (p.epilogue == Epilogue::kBiasScaleResidual) {
      v = _mm512_fmadd_ps(_mm512_loadu_ps(p.scale + n), v, _mm512_loadu_ps(res + n));
    }
    _mm512_storeu_ps(y + n, v);
  }
  epilogue_row_avx2(p, y, res, n, n1);
}
#endif

// Columns [n0, n1) of row m of y.
inline void apply_epilogue_row(const LinearParams& p, int64_t m, int64_t n0, int64_t n1) {
  if (p.epilogue == Epilogue::kNone) return;
  float* y = p.y + m * p.y_row_stride;
  const float* res = p.residual ? p.residual + m * p.residual_row_stride : nullptr;
#ifdef SOPRANO_X86_DISPATCH
  static const bool avx2 = cpu_features().avx2 && cpu_features().fma;
  static const bool avx512 = avx2 && cpu_features().avx512f;
  if (avx512) return epilogue_row_avx512(p, y, res, n0, n1);
  if (avx2) return epilogue_row_avx2(p, y, res, n0, n1);
#endif
  epilogue_scalar(p, y, res, n0, n1);
}

// Columns [n0, n1) of every row of y.
inline void apply_epilogue(const LinearParams& p, int64_t n0, int64_t n1) {
  for (int64_t m = 0; p.epilogue != Epilogue::kNone && m < p.M; ++m)
    apply_epilogue_row(p, m, n0, n1);
}

}  // namespace soprano::cpu
