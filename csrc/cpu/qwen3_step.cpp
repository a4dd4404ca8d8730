// The whole-step CPU decoder (see qwen3_step.h). Matmuls go through cpu::linear, the norms
// through cpu::rms_norm and attention through cpu::qk_norm_rope and cpu::attention_decode, so
// the step shares those kernels' SIMD dispatch and OpenMP threading.
#include "cpu/qwen3_step.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "cpu/attention.h"
#include "cpu/linear.h"
#include "cpu/quant_linear.h"
#include "cpu/rms_norm.h"
#include "cpu/threads.h"
#include "cpu/vec.h"

namespace soprano::cpu {
namespace {

void norm_rows(const float* x, const float* w, float* out, int64_t rows, int64_t n,
               int64_t stride, float eps) {
  rms_norm({x, w, out, rows, n, stride, stride, eps, DType::F32});
}

// Below this many values a parallel region costs more than the work saves.
constexpr int64_t kMinParallelElems = 1 << 15;

// act[r] = silu(gate) * up of each row's [gate | up]: by rows across the threads, as a
// prefill's 42 rows x 2304 would otherwise keep all but one thread waiting.
void silu_mul_rows(const float* gate_up, float* act, int64_t rows, int64_t I) {
  const auto silu_mul = vec().silu_mul;
#pragma omp parallel for schedule(static) if (rows > 1 && rows * I >= kMinParallelElems) \
    num_threads(num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * I;
    silu_mul(gate, gate + I, act + r * I, I);
  }
}

// Each part fills its own columns of y, whose rows stay N wide.
void matmul(const float* x, const Matrix& w, float* y, int64_t M, int64_t N, int64_t K) {
  int64_t col = 0;
  for (const MatrixPart& part : w.parts) {
    float* out = y + col;
    const int64_t n = part.rows;
    switch (part.type) {
      case 0: linear({x, part.data, out, M, n, K, K, N, DType::F32}); break;
      case 1: linear({x, part.data, out, M, n, K, K, N, DType::F16}); break;
      case 30: linear({x, part.data, out, M, n, K, K, N, DType::BF16}); break;
      default:
        quant_linear({{x, part.data, out, M, n, K, K, N, DType::F32},
                      static_cast<gguf::QType>(part.type)});
    }
    col += n;
  }
}

}  // namespace

Qwen3StepCpu::Qwen3StepCpu(Qwen3Weights w, KVCacheView cache)
    : w_(std::move(w)), cache_(cache) {}

void Qwen3StepCpu::attention(int64_t layer, const DecodeBatch& b, int64_t span) {
  const int64_t NH = w_.heads, KVH = w_.kv_heads, D = w_.head_dim;
  const AttentionShape shape{NH, KVH, D, cache_.slots, cache_.max_len};
  const int64_t layer_offset = layer * cache_.slots * KVH * cache_.max_len * D;
  float* k_cache = cache_.k + layer_offset;
  float* v_cache = cache_.v + layer_offset;
  const Qwen3LayerWeights& lw = w_.layers[layer];
  QkNormRopeParams rope{};
  rope.qkv = qkv_.data();
  rope.qkv_row_stride = (NH + 2 * KVH) * D;
  rope.q_weight = lw.q_norm;
  rope.k_weight = lw.k_norm;
  rope.cos = w_.cos;
  rope.sin = w_.sin;
  rope.positions = b.positions;
  rope.slots = b.slots;
  rope.q_out = q_.data();
  rope.k_cache = k_cache;
  rope.v_cache = v_cache;
  rope.rows = b.rows;
  rope.max_positions = w_.max_positions;
  rope.shape = shape;
  rope.eps = w_.eps;
  rope.dtype = DType::F32;
  qk_norm_rope(rope);
  // Every row's k and v are in the cache before any row attends (see DecodeBatch).
  AttentionDecodeParams attend{};
  attend.q = q_.data();
  attend.k_cache = k_cache;
  attend.v_cache = v_cache;
  attend.slots = b.slots;
  attend.lengths = lengths_.data();
  attend.out = attn_.data();
  attend.batch = b.rows;
  attend.span = span;
  attend.shape = shape;
  attend.scale = 1.f / std::sqrt(static_cast<float>(D));
  attend.dtype = DType::F32;
  attention_decode(attend);
}

void Qwen3StepCpu::step(const DecodeBatch& b) {
  const int64_t B = b.rows, H = w_.hidden, I = w_.intermediate, NH = w_.heads, D = w_.head_dim;
  const int64_t qkv_width = (NH + 2 * w_.kv_heads) * D;
  x_.resize(B * H);
  h_.resize(B * H);
  tmp_.resize(B * H);
  qkv_.resize(B * qkv_width);
  q_.resize(B * NH * D);
  attn_.resize(B * NH * D);
  gate_up_.resize(B * 2 * I);
  act_.resize(B * I);
  // Row r attends to its slot's positions 0..positions[r].
  lengths_.resize(B);
  for (int64_t r = 0; r < B; ++r) lengths_[r] = b.positions[r] + 1;
  const int64_t span = *std::max_element(lengths_.begin(), lengths_.end());
  for (int64_t r = 0; r < B; ++r)
    std::copy(w_.embed + b.tokens[r] * H, w_.embed + (b.tokens[r] + 1) * H, x_.data() + r * H);
  for (int64_t l = 0; l < static_cast<int64_t>(w_.layers.size()); ++l) {
    const Qwen3LayerWeights& lw = w_.layers[l];
    norm_rows(x_.data(), lw.attn_norm, h_.data(), B, H, H, w_.eps);
    matmul(h_.data(), lw.wqkv, qkv_.data(), B, qkv_width, H);
    attention(l, b, span);
    matmul(attn_.data(), lw.wo, tmp_.data(), B, H, NH * D);
    for (int64_t i = 0; i < B * H; ++i) x_[i] += tmp_[i];
    norm_rows(x_.data(), lw.ffn_norm, h_.data(), B, H, H, w_.eps);
    matmul(h_.data(), lw.w_gate_up, gate_up_.data(), B, 2 * I, H);
    silu_mul_rows(gate_up_.data(), act_.data(), B, I);
    matmul(act_.data(), lw.w_down, tmp_.data(), B, H, I);
    for (int64_t i = 0; i < B * H; ++i) x_[i] += tmp_[i];
  }
  const int64_t out_rows = B - b.first_output_row, V = w_.vocab;
  float* hidden = b.hidden;
  float* logits = b.logits;
  if (b.slot_rows > 0) {  // contiguous rows for the LM head, then each to its slot's
    out_hidden_.resize(out_rows * H);
    out_logits_.resize(out_rows * V);
    hidden = out_hidden_.data();
    logits = out_logits_.data();
  }
  norm_rows(x_.data() + b.first_output_row * H, w_.final_norm, hidden, out_rows, H, H, w_.eps);
  matmul(hidden, w_.lm_head, logits, out_rows, V, H);
  if (b.slot_rows > 0) {
    for (int64_t r = 0; r < out_rows; ++r) {
      const int64_t slot = b.slots[b.first_output_row + r];
      std::copy(hidden + r * H, hidden + (r + 1) * H, b.hidden + slot * H);
      std::copy(logits + r * V, logits + (r + 1) * V, b.logits + slot * V);
    }
  }
}

}  // namespace soprano::cpu
