// The attention kernels of attention.h. Attention is flash-style: a block of queries keeps an
// online softmax (running max m, sum l, accumulator acc) while tiles of kTile keys stream past,
// so K and V are read once per block, whatever the number of queries in it. The queries of a
// block are every query head of one kv head (GQA: G = heads / kv_heads heads share each load),
// times one decode row or several prompt rows. The tile kernels (scores, accumulate and the
// softmax's max, exp and rescale) are AVX2+FMA where the CPU has it, portable scalar code
// otherwise, picked once at runtime like vec.cpp's.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/exp_avx2.h"
#include "cpu/threads.h"
#include "cpu/vec.h"

namespace soprano::cpu {
namespace {

constexpr const char* kQkOp = "qk_norm_rope_cpu";
constexpr const char* kDecodeOp = "attention_decode_cpu";
constexpr const char* kPrefillOp = "attention_prefill_cpu";

// Keys per tile: a tile's K (32 KB at head_dim 128) stays in L1/L2 while the query passes reuse
// it; against 32 keys, the per-tile softmax bookkeeping costs a 300-token prefill ~4% more.
constexpr int64_t kTile = 64;
// Queries (prompt rows x the G heads of a kv head) per prefill block sharing each K/V tile: six
// passes of the tile kernels, 9 rows of Qwen3's 4 heads per kv head.
constexpr int64_t kBlockQueries = 36;
// Below kSplitBelowRows rows, a decode row's keys are split into pieces of at least
// kMinSplitKeys keys, one per thread at most, so a step of one row still keeps every thread
// streaming K and V. At one piece per 128 keys, a Qwen3 step's one kv head ran on one thread
// below 256 keys while the other waited (Q4_0 step over 43-242 keys, Intel Xeon: 1.25-1.37 ms
// at 128, 1.21-1.27 at 32). From 8 rows the rows alone fill the threads, and splitting them
// too cost a batch-16 Q8_0 step ~4%; 8 is also where the step's float matmuls stop giving a
// row the bits it gets alone (the engine's promise), so below it a row's pieces depend on its
// own length only.
constexpr int64_t kMinSplitKeys = 32;
constexpr int64_t kSplitBelowRows = 8;
// Below this much work (qk_norm_rope: elements of q, k and v; attention: multiply-adds) a
// parallel region costs more than it saves: a decode step's one row runs on one thread.
constexpr int64_t kMinParallelWork = 1 << 15;

void require_f32(DType d, const char* op) {
  if (d != DType::F32)
    fail(op, std::string("the CPU kernels support float32 only, got ") + dtype_name(d));
}

// `value`, read from an index array at `where` (a row or a prompt) `at`, must be in [lo, hi].
void check_index(const char* op, const char* where, int64_t at, const char* what, int64_t value,
                 int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    fail(op, std::string(where) + " " + std::to_string(at) + ": " + what + " " +
                 std::to_string(value) + " outside [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]");
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- tile kernels -------------------------------------------------------------------------
// Queries are rows of dp floats (head_dim rounded up to 8, zero-padded), already multiplied by
// the softmax scale; keys and values are cache rows of d floats.

struct TileKernels {
  // s[j * ss + t] = q[j] . k[t] for j < nq, t < n
  void (*scores)(const float* q, int64_t nq, int64_t dp, const float* k, int64_t n, int64_t d,
                 float* s, int64_t ss);
  // acc[j * dp + i] += sum_t p[j * ps + t] v[t * d + i] for j < nq, i < d
  void (*accumulate)(const float* p, int64_t ps, int64_t nq, const float* v, int64_t n,
                     int64_t d, float* acc, int64_t dp);
  // x[i] = e^(x[i] - m) for i < n; returns their sum
  float (*exp_sum)(float* x, int64_t n, float m);
  float (*max)(const float* x, int64_t n);          // n >= 1
  void (*scale)(float* x, int64_t n, float a);      // x *= a
};

void scores_scalar(const float* q, int64_t nq, int64_t dp, const float* k, int64_t n, int64_t d,
                   float* s, int64_t ss) {
  for (int64_t j = 0; j < nq; ++j)
    for (int64_t t = 0; t < n; ++t) {
      float acc = 0.f;
      for (int64_t i = 0; i < d; ++i) acc += q[j * dp + i] * k[t * d + i];
      s[j * ss + t] = acc;
    }
}

void accumulate_scalar(const float* p, int64_t ps, int64_t nq, const float* v, int64_t n,
                       int64_t d, float* acc, int64_t dp) {
  for (int64_t j = 0; j < nq; ++j)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < d; ++i) acc[j * dp + i] += p[j * ps + t] * v[t * d + i];
}

float exp_sum_scalar(float* x, int64_t n, float m) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  return sum;
}

float max_scalar(const float* x, int64_t n) { return *std::max_element(x, x + n); }

void scale_scalar(float* x, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

#ifdef SOPRANO_X86_DISPATCH
// Lanes 0..n-1 set (n in 1..8): loads of a row's last partial 8 floats stop at the row's end.
__attribute__((target("avx2,fma"))) inline __m256i lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The eight horizontal sums of v[0..7], as one vector.
__attribute__((target("avx2,fma"))) inline __m256 hsum8(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Queries per pass of the AVX2 tile kernels: six is the most whose accumulators (12 ymm for two
// keys, or for 16 floats of six rows) leave registers for the operands, and twelve independent
// FMA chains cover the FMA latency.
constexpr int64_t kPass = 6;

// NQ queries against two keys at a time: each 8 floats of a key are loaded once for NQ FMAs,
// each 8 of a query once for two, and the 2 NQ dot products reduce together in hsum8s.
template <int NQ>
__attribute__((target("avx2,fma"))) void scores_avx2_n(const float* q, int64_t dp,
                                                       const float* k, int64_t n, int64_t d,
                                                       float* s, int64_t ss) {
  const int64_t full = d & ~int64_t{7};
  const __m256i tail = lanes(d - full);
  for (int64_t t = 0; t < n; t += 2) {
    const float* k0 = k + t * d;
    const float* k1 = t + 1 < n ? k0 + d : k0;  // an odd last key is scored twice
    __m256 acc[16];  // [key][query], zero past 2 NQ for the hsum8s
    for (__m256& a : acc) a = _mm256_setzero_ps();
    for (int64_t i = 0; i < full; i += 8) {
      const __m256 x0 = _mm256_loadu_ps(k0 + i), x1 = _mm256_loadu_ps(k1 + i);
      for (int j = 0; j < NQ; ++j) {
        const __m256 qj = _mm256_loadu_ps(q + j * dp + i);
        acc[j] = _mm256_fmadd_ps(qj, x0, acc[j]);
        acc[NQ + j] = _mm256_fmadd_ps(qj, x1, acc[NQ + j]);
      }
    }
    if (full < d) {
      const __m256 x0 = _mm256_maskload_ps(k0 + full, tail);
      const __m256 x1 = _mm256_maskload_ps(k1 + full, tail);
      for (int j = 0; j < NQ; ++j) {
        const __m256 qj = _mm256_loadu_ps(q + j * dp + full);
        acc[j] = _mm256_fmadd_ps(qj, x0, acc[j]);
        acc[NQ + j] = _mm256_fmadd_ps(qj, x1, acc[NQ + j]);
      }
    }
    alignas(32) float sums[16];
    _mm256_store_ps(sums, hsum8(acc));
    if (2 * NQ > 8) _mm256_store_ps(sums + 8, hsum8(acc + 8));
    for (int j = 0; j < NQ; ++j) {
      s[j * ss + t] = sums[j];
      if (t + 1 < n) s[j * ss + t + 1] = sums[NQ + j];
    }
  }
}

__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, int64_t nq, int64_t dp,
                                                     const float* k, int64_t n, int64_t d,
                                                     float* s, int64_t ss) {
  for (int64_t j = 0; j < nq; j += kPass) {
    const float* qj = q + j * dp;
    float* sj = s + j * ss;
    switch (std::min(kPass, nq - j)) {
      case 6: scores_avx2_n<6>(qj, dp, k, n, d, sj, ss); break;
      case 5: scores_avx2_n<5>(qj, dp, k, n, d, sj, ss); break;
      case 4: scores_avx2_n<4>(qj, dp, k, n, d, sj, ss); break;
      case 3: scores_avx2_n<3>(qj, dp, k, n, d, sj, ss); break;
      case 2: scores_avx2_n<2>(qj, dp, k, n, d, sj, ss); break;
      default: scores_avx2_n<1>(qj, dp, k, n, d, sj, ss); break;
    }
  }
}

// NQ accumulators of 16 floats stay in registers while the tile's values stream past: each 16
// floats of a value are loaded once for 2 NQ FMAs.
template <int NQ>
__attribute__((target("avx2,fma"))) void accumulate_avx2_n(const float* p, int64_t ps,
                                                           const float* v, int64_t n, int64_t d,
                                                           float* acc, int64_t dp) {
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    __m256 a[NQ][2];
    for (int j = 0; j < NQ; ++j) {
      a[j][0] = _mm256_loadu_ps(acc + j * dp + i);
      a[j][1] = _mm256_loadu_ps(acc + j * dp + i + 8);
    }
    for (int64_t t = 0; t < n; ++t) {
      const __m256 x0 = _mm256_loadu_ps(v + t * d + i), x1 = _mm256_loadu_ps(v + t * d + i + 8);
      for (int j = 0; j < NQ; ++j) {
        const __m256 w = _mm256_broadcast_ss(p + j * ps + t);
        a[j][0] = _mm256_fmadd_ps(w, x0, a[j][0]);
        a[j][1] = _mm256_fmadd_ps(w, x1, a[j][1]);
      }
    }
    for (int j = 0; j < NQ; ++j) {
      _mm256_storeu_ps(acc + j * dp + i, a[j][0]);
      _mm256_storeu_ps(acc + j * dp + i + 8, a[j][1]);
    }
  }
  for (; i < d; i += 8) {  // acc rows are dp >= i + 8 long; values end at d
    const __m256i m = lanes(std::min<int64_t>(8, d - i));
    __m256 a[NQ];
    for (int j = 0; j < NQ; ++j) a[j] = _mm256_loadu_ps(acc + j * dp + i);
    for (int64_t t = 0; t < n; ++t) {
      const __m256 x = _mm256_maskload_ps(v + t * d + i, m);
      for (int j = 0; j < NQ; ++j)
        a[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j * ps + t), x, a[j]);
    }
    for (int j = 0; j < NQ; ++j) _mm256_storeu_ps(acc + j * dp + i, a[j]);
  }
}

__attribute__((target("avx2,fma"))) void accumulate_avx2(const float* p, int64_t ps,
                                                         int64_t nq, const float* v, int64_t n,
                                                         int64_t d, float* acc, int64_t dp) {
  for (int64_t j = 0; j < nq; j += kPass) {
    const float* pj = p + j * ps;
    float* aj = acc + j * dp;
    switch (std::min(kPass, nq - j)) {
      case 6: accumulate_avx2_n<6>(pj, ps, v, n, d, aj, dp); break;
      case 5: accumulate_avx2_n<5>(pj, ps, v, n, d, aj, dp); break;
      case 4: accumulate_avx2_n<4>(pj, ps, v, n, d, aj, dp); break;
      case 3: accumulate_avx2_n<3>(pj, ps, v, n, d, aj, dp); break;
      case 2: accumulate_avx2_n<2>(pj, ps, v, n, d, aj, dp); break;
      default: accumulate_avx2_n<1>(pj, ps, v, n, d, aj, dp); break;
    }
  }
}

__attribute__((target("avx2,fma"))) float exp_sum_avx2(float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes_sum[8];
  _mm256_store_ps(lanes_sum, sum);
  float total = 0.f;
  for (float s : lanes_sum) total += s;
  for (; i < n; ++i) total += (x[i] = std::exp(x[i] - m));
  return total;
}

__attribute__((target("avx2,fma"))) float max_avx2(const float* x, int64_t n) {
  float top = x[0];
  int64_t i = 0;
  if (n >= 8) {
    __m256 m = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    top = _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)));
  }
  for (; i < n; ++i) top = std::max(top, x[i]);
  return top;
}

__attribute__((target("avx2,fma"))) void scale_avx2(float* x, int64_t n, float a) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), va));
  for (; i < n; ++i) x[i] *= a;
}
#endif

TileKernels pick_tile_kernels() {
#ifdef SOPRANO_X86_DISPATCH
  if (cpu_features().avx2 && cpu_features().fma)
    return {scores_avx2, accumulate_avx2, exp_sum_avx2, max_avx2, scale_avx2};
#endif
  return {scores_scalar, accumulate_scalar, exp_sum_scalar, max_scalar, scale_scalar};
}

const TileKernels& tile_kernels() {
  static const TileKernels k = pick_tile_kernels();
  return k;
}

// ---- flash-style blocks -------------------------------------------------------------------

// Asks for the next tile's keys and values (`floats` of each) while this tile computes: on the
// EPYC this was measured on, a decode over a cache that is not in L3 streams ~10% faster.
inline void prefetch(const float* k, const float* v, int64_t floats) {
  for (int64_t i = 0; i < floats; i += 16) {
    __builtin_prefetch(k + i);
    __builtin_prefetch(v + i);
  }
}

// The online-softmax state of up to `capacity` queries and their scratch, one per thread.
class QueryBlock {
 public:
  QueryBlock(int64_t capacity, int64_t d)
      : d_(d), dp_(round_up(d, 8)), q_(capacity * dp_), acc_(capacity * dp_), m_(capacity),
        l_(capacity), s_(capacity * kTile), lim_(capacity) {}

  // Empties the block; queries are then added one by one.
  void clear() { nq_ = 0; }

  // A query (d floats, scaled here) that attends to keys 0..lim-1.
  void add(const float* q, float scale, int64_t lim) {
    float* row = q_.data() + nq_ * dp_;
    for (int64_t i = 0; i < d_; ++i) row[i] = q[i] * scale;
    std::fill(row + d_, row + dp_, 0.f);
    std::fill(acc_.data() + nq_ * dp_, acc_.data() + (nq_ + 1) * dp_, 0.f);
    m_[nq_] = -INFINITY;
    l_[nq_] = 0.f;
    lim_[nq_] = lim;
    ++nq_;
  }

  // Streams keys and values t_begin..t_end-1 (rows of d floats from position 0 at k and v)
  // through every query's online softmax. Full tiles end at t_end, where a causal block's
  // last tile is the one its mask cuts.
  void attend(const float* k, const float* v, int64_t t_begin, int64_t t_end) {
    const TileKernels& kr = tile_kernels();
    const int64_t partial = (t_end - t_begin) % kTile;
    for (int64_t t0 = t_begin; t0 < t_end;) {
      const int64_t n = t0 == t_begin && partial ? partial : kTile;
      if (t0 + n < t_end)
        prefetch(k + (t0 + n) * d_, v + (t0 + n) * d_, std::min(kTile, t_end - t0 - n) * d_);
      kr.scores(q_.data(), nq_, dp_, k + t0 * d_, n, d_, s_.data(), kTile);
      for (int64_t j = 0; j < nq_; ++j) {
        float* s = s_.data() + j * kTile;
        const int64_t valid = std::clamp<int64_t>(lim_[j] - t0, 0, n);
        if (valid > 0) {
          const float top = std::max(m_[j], kr.max(s, valid));
          const float alpha = std::exp(m_[j] - top);  // 0 on the first tile (m = -inf)
          l_[j] = l_[j] * alpha + kr.exp_sum(s, valid, top);
          if (alpha != 1.f) kr.scale(acc_.data() + j * dp_, d_, alpha);
          m_[j] = top;
        }
        std::fill(s + valid, s + n, 0.f);  // masked (causal) keys weigh nothing
      }
      kr.accumulate(s_.data(), kTile, nq_, v + t0 * d_, n, d_, acc_.data(), dp_);
      t0 += n;
    }
  }

  // Query j's normalized output (d floats); every query must have seen at least one key.
  void write(int64_t j, float* out) const {
    const float inv = 1.f / l_[j];
    const float* a = acc_.data() + j * dp_;
    for (int64_t i = 0; i < d_; ++i) out[i] = a[i] * inv;
  }

  // Query j's unnormalized partial state (m, l, then d floats of acc), for a split-K combine.
  void save(int64_t j, float* part) const {
    part[0] = m_[j];
    part[1] = l_[j];
    std::copy(acc_.data() + j * dp_, acc_.data() + j * dp_ + d_, part + 2);
  }

 private:
  int64_t d_, dp_, nq_ = 0;
  std::vector<float> q_, acc_, m_, l_, s_;
  std::vector<int64_t> lim_;
};

// ---- qk_norm_rope -------------------------------------------------------------------------

// RMSNorm of one head (fp32 statistics, then the weight, the reference's order) and half-split
// RoPE: out[i] = y[i] cos[i] - y[i + h] sin[i], out[i + h] = y[i + h] cos[i + h] + y[i] sin[i + h].
void norm_rope(const float* x, const float* w, const float* cos, const float* sin, float* out,
               int64_t d, float eps) {
  float y[256];  // head_dim <= 256 (make_attention_shape)
  const float rstd = 1.f / std::sqrt(vec().dot(x, x, d) / static_cast<float>(d) + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = w[i] * (x[i] * rstd);
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = y[i] * cos[i] - y[i + half] * sin[i];
    out[i + half] = y[i + half] * cos[i + half] + y[i] * sin[i + half];
  }
}

// Checks positions and slots, and that rows sharing a cache entry would write the same bytes:
// CUDA-graph buckets pad a batch with identical rows aimed at one spare entry, while two
// different writes to one entry have no defined winner. Returns which rows skip their k/v
// write (an identical row writes it), empty when none.
std::vector<char> check_qk_indices(const QkNormRopeParams& p) {
  const int64_t L = p.shape.max_len, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t max_pos = std::min(L, p.max_positions);
  std::vector<std::pair<int64_t, int64_t>> entries(p.rows);  // (slot * L + position, row)
  for (int64_t r = 0; r < p.rows; ++r) {
    check_index(kQkOp, "row", r, "position", p.positions[r], 0, max_pos - 1);
    check_index(kQkOp, "row", r, "slot", p.slots[r], 0, p.shape.num_slots - 1);
    entries[r] = {p.slots[r] * L + p.positions[r], r};
  }
  std::sort(entries.begin(), entries.end());
  std::vector<char> skip;
  const auto* qkv = static_cast<const float*>(p.qkv);
  const int64_t kv_offset = p.shape.heads * D, kv_bytes = 2 * KVH * D * sizeof(float);
  for (std::size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].first != entries[i - 1].first) continue;
    const int64_t first = entries[i - 1].second, r = entries[i].second;
    if (std::memcmp(qkv + first * p.qkv_row_stride + kv_offset,
                    qkv + r * p.qkv_row_stride + kv_offset, kv_bytes) != 0)
      fail(kQkOp, "rows " + std::to_string(first) + " and " + std::to_string(r) +
                      " both write position " + std::to_string(p.positions[r]) +
                      " of cache slot " + std::to_string(p.slots[r]) + ", different values");
    skip.resize(p.rows);
    skip[r] = 1;
  }
  return skip;
}

}  // namespace

void qk_norm_rope(const QkNormRopeParams& p) {
  require_f32(p.dtype, kQkOp);
  if (p.rows == 0) return;
  const std::vector<char> skip = check_qk_indices(p);
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t L = p.shape.max_len, per_row = NH + KVH;
  const auto* qkv = static_cast<const float*>(p.qkv);
  const auto* qw = static_cast<const float*>(p.q_weight);
  const auto* kw = static_cast<const float*>(p.k_weight);
  auto* q_out = static_cast<float*>(p.q_out);
  auto* k_cache = static_cast<float*>(p.k_cache);
  auto* v_cache = static_cast<float*>(p.v_cache);
  // One item per q head and per k head; a k head's item also copies its v head.
#pragma omp parallel for schedule(static) \
    if (p.rows * (NH + 2 * KVH) * D >= kMinParallelWork) \
    num_threads(num_threads())
  for (int64_t i = 0; i < p.rows * per_row; ++i) {
    const int64_t r = i / per_row, h = i % per_row, pos = p.positions[r];
    const float* row = qkv + r * p.qkv_row_stride;
    const float* cos = p.cos + pos * D;
    const float* sin = p.sin + pos * D;
    if (h < NH) {
      norm_rope(row + h * D, qw, cos, sin, q_out + (r * NH + h) * D, D, p.eps);
    } else if (skip.empty() || !skip[r]) {
      const int64_t g = h - NH, at = ((p.slots[r] * KVH + g) * L + pos) * D;
      norm_rope(row + h * D, kw, cos, sin, k_cache + at, D, p.eps);
      std::copy(row + (NH + KVH + g) * D, row + (NH + KVH + g + 1) * D, v_cache + at);
    }
  }
}

void attention_decode(const AttentionDecodeParams& p) {
  require_f32(p.dtype, kDecodeOp);
  if (p.batch == 0) return;
  int64_t keys = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    check_index(kDecodeOp, "row", b, "slot", p.slots[b], 0, p.shape.num_slots - 1);
    check_index(kDecodeOp, "row", b, "length", p.lengths[b], 1, p.span);
    keys += p.lengths[b];
  }
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t G = NH / KVH, L = p.shape.max_len, units = p.batch * KVH;
  // Each (row, kv head) unit's keys in pieces chosen by its own length and the thread count,
  // not by the other rows: below kSplitBelowRows a row gets the same bits alone or batched.
  const int64_t threads = p.batch < kSplitBelowRows ? num_threads() : 1;
  std::vector<int64_t> first_piece(units + 1, 0);
  for (int64_t unit = 0; unit < units; ++unit)
    first_piece[unit + 1] = first_piece[unit] +
                            std::clamp<int64_t>(p.lengths[unit / KVH] / kMinSplitKeys, 1, threads);
  const int64_t tasks = first_piece[units];
  std::vector<int64_t> unit_of(tasks);
  for (int64_t unit = 0; unit < units; ++unit)
    std::fill(unit_of.begin() + first_piece[unit], unit_of.begin() + first_piece[unit + 1], unit);
  const int64_t part_size = D + 2;  // m, l, acc of one query head
  std::vector<float> parts(tasks > units ? tasks * G * part_size : 0);
  const auto* q = static_cast<const float*>(p.q);
  const auto* k_cache = static_cast<const float*>(p.k_cache);
  const auto* v_cache = static_cast<const float*>(p.v_cache);
  auto* out = static_cast<float*>(p.out);
#pragma omp parallel if (tasks > 1 && 2 * keys * NH * D >= kMinParallelWork) \
    num_threads(num_threads())
  {
    QueryBlock block(G, D);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t unit = unit_of[task], split = task - first_piece[unit];
      const int64_t splits = first_piece[unit + 1] - first_piece[unit];
      const int64_t b = unit / KVH, h = unit % KVH, n = p.lengths[b];
      const int64_t chunk = (n + splits - 1) / splits;
      const int64_t t0 = split * chunk, t1 = std::min(n, t0 + chunk);
      block.clear();
      for (int64_t g = 0; g < G; ++g) block.add(q + (b * NH + h * G + g) * D, p.scale, n);
      const int64_t base = (p.slots[b] * KVH + h) * L * D;
      block.attend(k_cache + base, v_cache + base, t0, t1);
      for (int64_t g = 0; g < G; ++g) {
        if (splits == 1)
          block.write(g, out + (b * NH + h * G + g) * D);
        else
          block.save(g, parts.data() + (task * G + g) * part_size);
      }
    }
    // out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s over a split unit's pieces.
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < units; ++unit) {
      const int64_t splits = first_piece[unit + 1] - first_piece[unit];
      if (splits == 1) continue;
      const int64_t b = unit / KVH, h = unit % KVH;
      for (int64_t g = 0; g < G; ++g) {
        const float* first = parts.data() + (first_piece[unit] * G + g) * part_size;
        float top = -INFINITY;
        for (int64_t s = 0; s < splits; ++s) top = std::max(top, first[s * G * part_size]);
        float* o = out + (b * NH + h * G + g) * D;
        std::fill(o, o + D, 0.f);
        float total = 0.f;
        for (int64_t s = 0; s < splits; ++s) {
          const float* part = first + s * G * part_size;
          const float w = std::exp(part[0] - top);
          total += w * part[1];
          vec().axpy(w, part + 2, o, D);
        }
        for (int64_t i = 0; i < D; ++i) o[i] /= total;
      }
    }
  }
}

void attention_prefill(const AttentionPrefillParams& p) {
  require_f32(p.dtype, kPrefillOp);
  if (p.tokens == 0 || p.prompts == 0) return;
  const int64_t* cu = p.cu_seqlens;
  if (cu[0] != 0) fail(kPrefillOp, "cu_seqlens[0] must be 0, got " + std::to_string(cu[0]));
  for (int64_t i = 0; i < p.prompts; ++i) {
    check_index(kPrefillOp, "prompt", i, "length", cu[i + 1] - cu[i], 0, p.max_seqlen);
    check_index(kPrefillOp, "prompt", i, "slot", p.slots[i], 0, p.shape.num_slots - 1);
  }
  if (cu[p.prompts] != p.tokens)
    fail(kPrefillOp, "cu_seqlens ends at " + std::to_string(cu[p.prompts]) + ", not at tokens (" +
                         std::to_string(p.tokens) + ")");
  const int64_t NH = p.shape.heads, KVH = p.shape.kv_heads, D = p.shape.head_dim;
  const int64_t G = NH / KVH, L = p.shape.max_len, rows = std::max<int64_t>(1, kBlockQueries / G);
  // (prompt, kv head, first row) of each block, the latest rows first: they see the most keys,
  // so the dynamic schedule starts the longest blocks first and ends on short ones.
  struct Task {
    int64_t prompt, head, row;
  };
  std::vector<Task> tasks;
  int64_t pairs = 0;  // causal (query row, key) pairs, the work
  for (int64_t i = 0; i < p.prompts; ++i) {
    const int64_t n = cu[i + 1] - cu[i];
    pairs += n * (n + 1) / 2 * KVH;
    for (int64_t h = 0; h < KVH; ++h)
      for (int64_t r = 0; r < n; r += rows) tasks.push_back({i, h, r});
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.row > b.row; });
  const auto* q = static_cast<const float*>(p.q);
  const auto* k_cache = static_cast<const float*>(p.k_cache);
  const auto* v_cache = static_cast<const float*>(p.v_cache);
  auto* out = static_cast<float*>(p.out);
  const auto count = static_cast<int64_t>(tasks.size());
#pragma omp parallel if (count > 1 && 2 * pairs * G * D >= kMinParallelWork) \
    num_threads(num_threads())
  {
    QueryBlock block(rows * G, D);
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < count; ++i) {
      const Task& t = tasks[i];
      const int64_t start = cu[t.prompt];
      const int64_t end = std::min(cu[t.prompt + 1] - start, t.row + rows);
      block.clear();
      for (int64_t r = t.row; r < end; ++r)
        for (int64_t g = 0; g < G; ++g)
          block.add(q + ((start + r) * NH + t.head * G + g) * D, p.scale, r + 1);
      const int64_t base = (p.slots[t.prompt] * KVH + t.head) * L * D;
      block.attend(k_cache + base, v_cache + base, 0, end);
      for (int64_t r = t.row, j = 0; r < end; ++r)
        for (int64_t g = 0; g < G; ++g, ++j)
          block.write(j, out + ((start + r) * NH + t.head * G + g) * D);
    }
  }
}

}  // namespace soprano::cpu
