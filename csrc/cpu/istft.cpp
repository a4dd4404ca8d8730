// The CPU ISTFT head's fused passes (istft.h). The spectrum needs e^x, cos and sin of eight
// lanes at a time: libm's scalar calls cost ~20 ns each, 3 per bin, and a second of audio has
// 64 frames x 1025 bins.
#include "cpu/istft.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include "pocketfft_hdronly.h"

#include "common.h"
#include "cpu/exp_avx2.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

void spectrum_scalar(const float* lm, const float* ph, float* out, int64_t b0, int64_t b1,
                     float max_magnitude) {
  for (int64_t b = b0; b < b1; ++b) {
    const float mag = std::min(std::exp(lm[b]), max_magnitude);
    out[2 * b] = mag * std::cos(ph[b]);
    out[2 * b + 1] = mag * std::sin(ph[b]);
  }
}

#ifdef SOPRANO_X86_DISPATCH
// Phases beyond this fall back to libm: the 3-part pi/2 reduction below loses bits past it.
constexpr float kMaxReducedPhase = 8192.f;

// sin and cos of eight lanes: x = q pi/2 + r with |r| <= pi/4 (Cody-Waite in three parts),
// Cephes' minimax polynomials for sin r and cos r, then the quadrant q mod 4 picks and signs.
__attribute__((target("avx2,fma"))) inline void sincos_avx2(__m256 x, __m256* s, __m256* c) {
  const __m256 q = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.63661977236758134f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(q, _mm256_set1_ps(1.5703125f), x);
  r = _mm256_fnmadd_ps(q, _mm256_set1_ps(4.837512969970703125e-4f), r);
  r = _mm256_fnmadd_ps(q, _mm256_set1_ps(7.54978995489188216e-8f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 ps = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891e-4f), r2,
                              _mm256_set1_ps(8.3321608736e-3f));
  ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(-1.6666654611e-1f));
  const __m256 sr = _mm256_fmadd_ps(_mm256_mul_ps(ps, r2), r, r);
  __m256 pc = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948e-5f), r2,
                              _mm256_set1_ps(-1.388731625493765e-3f));
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(4.166664568298827e-2f));
  const __m256 cr = _mm256_fmadd_ps(_mm256_mul_ps(pc, r2), r2,
                                    _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), r2,
                                                     _mm256_set1_ps(1.f)));
  const __m256i qi = _mm256_cvtps_epi32(q);
  // odd quadrants swap sin and cos; quadrants 2, 3 negate sin, quadrants 1, 2 negate cos
  const __m256 swap = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256 sin_sign = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(2)), 30));
  const __m256 cos_sign = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_and_si256(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30));
  *s = _mm256_xor_ps(_mm256_blendv_ps(sr, cr, swap), sin_sign);
  *c = _mm256_xor_ps(_mm256_blendv_ps(cr, sr, swap), cos_sign);
}

__attribute__((target("avx2,fma"))) void spectrum_avx2(const float* lm, const float* ph,
                                                       float* out, int64_t bins,
                                                       float max_magnitude) {
  const __m256 cap = _mm256_set1_ps(max_magnitude);
  const __m256 limit = _mm256_set1_ps(kMaxReducedPhase);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t b = 0;
  for (; b + 8 <= bins; b += 8) {
    const __m256 p = _mm256_loadu_ps(ph + b);
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(p, abs_mask), limit, _CMP_GT_OQ))) {
      spectrum_scalar(lm, ph, out, b, b + 8, max_magnitude);
      continue;
    }
    const __m256 mag = _mm256_min_ps(exp_avx2(_mm256_loadu_ps(lm + b)), cap);
    __m256 s, c;
    sincos_avx2(p, &s, &c);
    const __m256 re = _mm256_mul_ps(mag, c), im = _mm256_mul_ps(mag, s);
    // interleave: (re0 im0 re1 im1 ...) for lanes 0-3, then 4-7
    const __m256 lo = _mm256_unpacklo_ps(re, im), hi = _mm256_unpackhi_ps(re, im);
    _mm256_storeu_ps(out + 2 * b, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 2 * b + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  spectrum_scalar(lm, ph, out, b, bins, max_magnitude);
}
#endif

// Below this many bins in all, one thread.
constexpr int64_t kMinParallelBins = 1 << 13;
// Rows a thread takes through the inverse DFT at once: pocketfft runs the transforms of several
// rows side by side in its vector lanes, and a block's spectrum (8 x 8 KB) stays in L2.
constexpr int64_t kFrameBlock = 8;

// One head row -> its spectrum [bins] complex, DC and Nyquist zeroed.
void spectrum_row(const float* row, int64_t bins, float max_magnitude, float* out) {
#ifdef SOPRANO_X86_DISPATCH
  static const bool avx2 = cpu_features().avx2 && cpu_features().fma;
  if (avx2)
    spectrum_avx2(row, row + bins, out, bins, max_magnitude);
  else
#endif
    spectrum_scalar(row, row + bins, out, 0, bins, max_magnitude);
  out[0] = out[1] = 0.f;
  out[2 * (bins - 1)] = out[2 * bins - 1] = 0.f;
}

}  // namespace

void istft_spectrum(const SpectrumParams& p) {
#pragma omp parallel for schedule(static) if (p.N * p.bins >= kMinParallelBins) \
    num_threads(num_threads())
  for (int64_t n = 0; n < p.N; ++n)
    spectrum_row(p.spec + n * p.spec_row_stride, p.bins, p.max_magnitude,
                 p.out + 2 * n * p.bins);
}

void istft_frames(const FramesParams& p) {
  const int64_t n_fft = p.n_fft, bins = n_fft / 2 + 1;
  const int64_t blocks = (p.N + kFrameBlock - 1) / kFrameBlock;
  const float scale = 1.f / static_cast<float>(n_fft);
#pragma omp parallel for schedule(static) if (blocks > 1 && p.N * bins >= kMinParallelBins) \
    num_threads(num_threads())
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t r0 = block * kFrameBlock, rows = std::min(kFrameBlock, p.N - r0);
    thread_local std::vector<std::complex<float>> spectrum;
    spectrum.resize(kFrameBlock * bins);
    for (int64_t r = 0; r < rows; ++r)
      spectrum_row(p.spec + (r0 + r) * p.spec_row_stride, bins, p.max_magnitude,
                   reinterpret_cast<float*>(spectrum.data() + r * bins));
    float* out = p.out + r0 * n_fft;
    pocketfft::c2r<float>({static_cast<size_t>(rows), static_cast<size_t>(n_fft)},
                          {static_cast<ptrdiff_t>(bins * sizeof(std::complex<float>)),
                           sizeof(std::complex<float>)},
                          {static_cast<ptrdiff_t>(n_fft * sizeof(float)), sizeof(float)}, 1,
                          false, spectrum.data(), out, scale);
    if (p.window)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < n_fft; ++i) out[r * n_fft + i] *= p.window[i];
  }
}

void istft_overlap_add(const OverlapAddParams& p) {
  const int64_t len = p.hop * (p.F - 1), trim = p.n_fft / 2;
  const int64_t blocks = (len + p.hop - 1) / p.hop;
  // Output block j covers padded positions trim + [j hop, (j + 1) hop); frame g starts at g hop.
#pragma omp parallel for collapse(2) schedule(static) if (p.B * len >= kMinParallelBins) \
    num_threads(num_threads())
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t j = 0; j < blocks; ++j) {
      const float* frames = p.frames + b * p.F * p.n_fft;
      float* out = p.out + b * len;
      const int64_t s0 = j * p.hop, s1 = std::min(len, s0 + p.hop);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t pos = s + trim;
        const int64_t g_lo = pos >= p.n_fft ? (pos - p.n_fft) / p.hop + 1 : 0;
        const int64_t g_hi = std::min(p.F - 1, pos / p.hop);
        float sum = 0.f, env = 0.f;
        for (int64_t g = g_lo; g <= g_hi; ++g) {
          const int64_t i = pos - g * p.hop;
          const float w = p.window[i];
          sum += frames[g * p.n_fft + i] * w;
          env += w * w;
        }
        out[s] = sum / env;
      }
    }
  }
}

int64_t istft_overlap_add_stream(const StreamOverlapAddParams& p) {
  const int64_t N = p.n_fft, H = p.hop, first = p.first_frame * H;
  const int64_t length = p.n ? H * (p.n - 1) + N : N - H;
  thread_local std::vector<float> summed;
  summed.assign(length, 0.f);
  // Per sample, the latest frame first, then the tail: torch's fold order, which the Python
  // version uses.
  for (int64_t f = p.n - 1; f >= 0; --f)
    for (int64_t i = 0; i < N; ++i) summed[f * H + i] += p.frames[f * N + i];
  for (int64_t i = 0; i < N - H; ++i) summed[i] += p.tail[i];
  std::copy(summed.begin() + H * p.n, summed.begin() + H * p.n + (N - H), p.next_tail);
  // The summed squared window at padded position q over frames 0..last, in the order
  // streaming._envelope sums it.
  auto envelope = [&](int64_t q, int64_t last) {
    float total = 0.f;
    for (int64_t back = 0; back < N / H; ++back) {
      const int64_t frame = q / H - back;
      if (frame < 0 || frame > last) continue;
      const float w = p.window[q - frame * H];
      total += w * w;
    }
    return total;
  };
  const int64_t lo = std::max(first, N / 2), hi = first + H * p.n + (p.final ? H : 0);
  const int64_t last = p.first_frame + p.n - 1;
  for (int64_t q = lo; q < hi; ++q) {
    // With every later frame present the envelope repeats every hop from n_fft - hop on.
    const float env = p.final ? envelope(q, last) : envelope(q < N ? q : N - H + q % H, N);
    p.out[q - lo] = summed[q - first] / env;
  }
  return std::max<int64_t>(0, hi - lo);
}

}  // namespace soprano::cpu
