// The whole-step CPU decoder (see qwen3_step.h). Matmuls go through cpu::linear and the norms
// through cpu::rms_norm, so they share those kernels' SIMD dispatch and OpenMP threading; the
// small per-head work (q/k norm + rotary, attention over the cache) is parallel over
// (row, head) pairs.
#include "cpu/qwen3_step.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "cpu/linear.h"
#include "cpu/rms_norm.h"
#include "cpu/vec.h"

namespace soprano::cpu {
namespace {

void norm_rows(const float* x, const float* w, float* out, int64_t rows, int64_t n,
               int64_t stride, float eps) {
  rms_norm({x, w, out, rows, n, stride, stride, eps, DType::F32});
}

void matmul(const float* x, const void* w, float* y, int64_t M, int64_t N, int64_t K,
            DType wt) {
  linear({x, w, y, M, N, K, K, N, wt});
}

// Per-head RMSNorm (weight included) then half-split rotary embedding, in place on one head.
void norm_rope(float* x, const float* w, const float* cos, const float* sin, int64_t d,
               float eps) {
  norm_rows(x, w, x, 1, d, d, eps);
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

}  // namespace

Qwen3StepCpu::Qwen3StepCpu(Qwen3Weights w, KVCacheView cache)
    : w_(std::move(w)), cache_(cache) {}

void Qwen3StepCpu::attention(int64_t layer, const DecodeBatch& b) {
  const int64_t NH = w_.heads, KVH = w_.kv_heads, D = w_.head_dim, L = cache_.max_len;
  const int64_t qkv_width = (NH + 2 * KVH) * D, group = NH / KVH;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const Qwen3LayerWeights& lw = w_.layers[layer];
  const VecKernels& v = vec();
  const int64_t pairs = b.rows * (NH + KVH);
  // q and k heads: norm + rotary in place; k and v then go to the cache.
#pragma omp parallel for schedule(static) if (pairs >= 4)
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t r = i / (NH + KVH), h = i % (NH + KVH);
    const int64_t pos = b.positions[r];
    float* head = qkv_.data() + r * qkv_width + h * D;
    norm_rope(head, h < NH ? lw.q_norm : lw.k_norm, w_.cos + pos * D, w_.sin + pos * D, D,
              w_.eps);
    if (h >= NH) {
      const int64_t g = h - NH;
      const int64_t base = ((layer * cache_.slots + b.slots[r]) * KVH + g) * L + pos;
      std::copy(head, head + D, cache_.k + base * D);
      const float* value = qkv_.data() + r * qkv_width + (NH + KVH + g) * D;
      std::copy(value, value + D, cache_.v + base * D);
    }
  }
  // One query per (row, head) against its slot's positions 0..pos; softmax in fp32.
#pragma omp parallel for schedule(dynamic) if (b.rows * NH >= 2)
  for (int64_t i = 0; i < b.rows * NH; ++i) {
    const int64_t r = i / NH, h = i % NH, n = b.positions[r] + 1;
    const int64_t base = ((layer * cache_.slots + b.slots[r]) * KVH + h / group) * L;
    const float* keys = cache_.k + base * D;
    const float* values = cache_.v + base * D;
    const float* q = qkv_.data() + r * qkv_width + h * D;
    float* s = scores_.data() + i * L;
    float top = -INFINITY;
    for (int64_t t = 0; t < n; ++t) {
      s[t] = v.dot(q, keys + t * D, D) * scale;
      top = std::max(top, s[t]);
    }
    float total = 0.f;
    for (int64_t t = 0; t < n; ++t) total += (s[t] = std::exp(s[t] - top));
    float* out = attn_.data() + r * NH * D + h * D;
    std::fill(out, out + D, 0.f);
    for (int64_t t = 0; t < n; ++t) v.axpy(s[t] / total, values + t * D, out, D);
  }
}

void Qwen3StepCpu::step(const DecodeBatch& b) {
  const int64_t B = b.rows, H = w_.hidden, I = w_.intermediate, NH = w_.heads, D = w_.head_dim;
  const int64_t qkv_width = (NH + 2 * w_.kv_heads) * D;
  x_.resize(B * H);
  h_.resize(B * H);
  tmp_.resize(B * H);
  qkv_.resize(B * qkv_width);
  attn_.resize(B * NH * D);
  gate_up_.resize(B * 2 * I);
  act_.resize(B * I);
  scores_.resize(B * NH * cache_.max_len);
  for (int64_t r = 0; r < B; ++r)
    std::copy(w_.embed + b.tokens[r] * H, w_.embed + (b.tokens[r] + 1) * H, x_.data() + r * H);
  for (int64_t l = 0; l < static_cast<int64_t>(w_.layers.size()); ++l) {
    const Qwen3LayerWeights& lw = w_.layers[l];
    norm_rows(x_.data(), lw.attn_norm, h_.data(), B, H, H, w_.eps);
    matmul(h_.data(), lw.wqkv, qkv_.data(), B, qkv_width, H, w_.wtype);
    attention(l, b);
    matmul(attn_.data(), lw.wo, tmp_.data(), B, H, NH * D, w_.wtype);
    for (int64_t i = 0; i < B * H; ++i) x_[i] += tmp_[i];
    norm_rows(x_.data(), lw.ffn_norm, h_.data(), B, H, H, w_.eps);
    matmul(h_.data(), lw.w_gate_up, gate_up_.data(), B, 2 * I, H, w_.wtype);
    for (int64_t r = 0; r < B; ++r) {
      const float* gate = gate_up_.data() + r * 2 * I;
      vec().silu_mul(gate, gate + I, act_.data() + r * I, I);
    }
    matmul(act_.data(), lw.w_down, tmp_.data(), B, H, I, w_.wtype);
    for (int64_t i = 0; i < B * H; ++i) x_[i] += tmp_[i];
  }
  const int64_t out_rows = B - b.first_output_row;
  norm_rows(x_.data() + b.first_output_row * H, w_.final_norm, b.hidden, out_rows, H, H, w_.eps);
  matmul(b.hidden, w_.lm_head, b.logits, out_rows, w_.vocab, H, w_.wtype);
}

}  // namespace soprano::cpu
