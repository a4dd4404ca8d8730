// The Vocos embed and ConvNeXt blocks on CPU (vocos.h). A block is three passes over its rows:
// depthwise conv + LayerNorm per row (threads over rows), then the two pointwise GEMMs of the
// packed-panel linear kernel (or quant_linear, for GGUF blocks) with GELU, and gamma + residual,
// in their epilogues. LayerNorm statistics are fp32 two-pass (mean, then the centred sum of
// squares), as torch computes them.
#include "cpu/vocos.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/linear.h"
#include "cpu/quant_linear.h"
#include "cpu/threads.h"

namespace soprano::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kMinParallelElems = 1 << 14;

void layer_norm_row(float* y, const float* w, const float* b, int64_t n, float eps) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += y[i];
  const float mean = sum / static_cast<float>(n);
  float sq = 0.f;
  for (int64_t i = 0; i < n; ++i) sq += (y[i] - mean) * (y[i] - mean);
  const float rstd = 1.f / std::sqrt(sq / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (y[i] - mean) * rstd * w[i] + b[i];
}

// Scratch that keeps its pages between calls: a fresh multi-megabyte buffer per block costs
// more in page faults than its LayerNorm.
float* scratch(std::vector<float>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// The decoder's matrices (K 512, 768, 2304) stream faster through the few-rows kernel up to
// ~32 rows: 8 blocks with cold weights took 7.2 / 11.0 / 13.1 ms at 8 / 24 / 32 rows against
// the packed kernel's 10.4 / 12.3 / 13.9 (AMD EPYC, AVX2, 2026-11-30); the backbone's batch-16
// step (K 512) is the other way round (28.8 ms packed, 30.2 few-rows). With AVX-512 (Intel
// Xeon, 2026-12-01, 8 blocks, few-rows / packed ms): fp16 at 24 / 31 / 40 rows 6.1 / 8.5 /
// 10.1 against 8.8 / 9.0 / 11.7; Q8_0 blocks 8.3 / 10.8 / 12.5 against 9.0 / 9.2 / 10.6.
constexpr int64_t kDecoderPackedFromRows = 32;

LinearParams gemm(const float* x, const void* w, float* y, int64_t M, int64_t N, int64_t K,
                  DType wtype, Epilogue epilogue, const float* bias, bool bf16_dots = false) {
  LinearParams p{x, w, y, M, N, K, K, N, wtype};
  p.epilogue = epilogue;
  p.bias = bias;
  p.packed_from_rows = kDecoderPackedFromRows;
  p.row_tiles = true;
  p.bf16_dots = bf16_dots;
  return p;
}

// A float matrix through linear(), GGUF blocks (qtype != 0) through quant_linear() with fp32
// rows (see QuantLinearParams::fp32_rows).
void multiply(const LinearParams& p, int qtype) {
  if (qtype == 0) return linear(p);
  quant_linear({p, static_cast<gguf::QType>(qtype), QuantIsa::kAuto, true});
}

}  // namespace

void convnext_block(const ConvNeXtParams& p) {
  const GatherRows& in = p.in;
  const int64_t M = in.M, D = in.width, k = in.k;
  if (M == 0) return;
  // Taps as [k, D], so the inner loop runs over contiguous channels.
  std::vector<float> taps(k * D);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t t = 0; t < k; ++t) taps[t * D + d] = p.dw_weight[d * k + t];
  thread_local std::vector<float> normed_buf, residual_buf, hidden_buf;
  float* normed = scratch(normed_buf, M * D);
  float* residual = scratch(residual_buf, M * D);
  float* hidden = scratch(hidden_buf, M * p.hidden);
#pragma omp parallel for schedule(static) if (M * D * k >= kMinParallelElems) \
    num_threads(num_threads())
  for (int64_t m = 0; m < M; ++m) {
    float* y = normed + m * D;
    std::memcpy(y, p.dw_bias, D * sizeof(float));
    const float* first = in.x + in.src[m] * D;
    for (int64_t t = 0; t < k; ++t) {
      const float* xr = first + t * D;
      const float* wt = taps.data() + t * D;
      for (int64_t d = 0; d < D; ++d) y[d] += wt[d] * xr[d];
    }
    std::memcpy(residual + m * D, first + (k / 2) * D, D * sizeof(float));
    layer_norm_row(y, p.norm_weight, p.norm_bias, D, p.eps);
  }
  multiply(gemm(normed, p.w1, hidden, M, p.hidden, D, p.wtype, Epilogue::kBiasGelu, p.b1,
                p.bf16_dots),
           p.w1_qtype);
  LinearParams out = gemm(hidden, p.w2, p.y, M, D, p.hidden, p.wtype,
                          Epilogue::kBiasScaleResidual, p.b2, p.bf16_dots);
  out.scale = p.gamma;
  out.residual = residual;
  out.residual_row_stride = D;
  multiply(out, p.w2_qtype);
}

void embed_norm(const EmbedNormParams& p) {
  const GatherRows& in = p.in;
  const int64_t M = in.M, C = in.width, k = in.k;
  if (M == 0) return;
  // The conv's input row for output m: channel-major taps (c k + t), the weight's [C, k] order.
  thread_local std::vector<float> gathered_buf;
  const float* x = in.x + in.src[0] * C;
  bool contiguous = k == 1;
  for (int64_t m = 1; contiguous && m < M; ++m) contiguous = in.src[m] == in.src[0] + m;
  if (!contiguous) {
    float* gathered = scratch(gathered_buf, M * C * k);
#pragma omp parallel for schedule(static) if (M * C * k >= kMinParallelElems) \
    num_threads(num_threads())
    for (int64_t m = 0; m < M; ++m) {
      const float* first = in.x + in.src[m] * C;
      float* g = gathered + m * C * k;
      for (int64_t t = 0; t < k; ++t)
        for (int64_t c = 0; c < C; ++c) g[c * k + t] = first[t * C + c];
    }
    x = gathered;
  }
  // The packed GEMM at every row count: its bits for a row do not depend on M, so a streamed
  // piece's first block sees the one-shot decode's exact input. A bf16-dots block rounds that
  // input, and a last-bit difference there would flip roundings into ~1e-3 of audio.
  LinearParams embed = gemm(x, p.weight, p.y, M, p.D, C * k, p.wtype, Epilogue::kBias, p.bias);
  embed.packed_from_rows = 1;
  linear(embed);
#pragma omp parallel for schedule(static) if (M * p.D >= kMinParallelElems) \
    num_threads(num_threads())
  for (int64_t m = 0; m < M; ++m)
    layer_norm_row(p.y + m * p.D, p.norm_weight, p.norm_bias, p.D, p.eps);
}

int64_t VocosLayers::radius(int64_t l) const {
  return (l == 0 ? embed.in.k : blocks[l - 1].in.k) / 2;
}

int64_t VocosLayers::width(int64_t l) const {
  return l == 0 ? embed.in.width : blocks[l - 1].in.width;
}

int64_t VocosLayers::offset(int64_t l) const {
  int64_t floats = 0;
  for (int64_t i = 0; i < l; ++i) floats += 2 * radius(i) * width(i);
  return floats;
}

std::vector<int64_t> VocosLayers::run(const std::vector<Stream>& streams, float* spec,
                                      int64_t spec_rows) const {
  constexpr const char* op = "vocos_layers_cpu";
  const int64_t B = static_cast<int64_t>(streams.size()), D = embed.D;
  // Each stream's rows entering the current layer, and where they are.
  std::vector<const float*> rows_in(B);
  std::vector<int64_t> n_in(B), n_out(B);
  for (int64_t b = 0; b < B; ++b) {
    rows_in[b] = streams[b].frames;
    n_in[b] = streams[b].new_rows;
  }
  thread_local std::vector<float> packed_buf, out_buf;
  thread_local std::vector<int64_t> src;
  for (int64_t l = 0; l < layers(); ++l) {
    const int64_t r = radius(l), w = width(l), off = offset(l);
    int64_t total = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t c = streams[b].counts[l];
      if (c < 0 || c > 2 * r)
        fail(op, "a stream's pending count for layer " + std::to_string(l) + " is " +
                     std::to_string(c) + ", outside 0.." + std::to_string(2 * r));
      total += c + n_in[b] + (streams[b].final ? r : 0);
    }
    float* packed = scratch(packed_buf, total * w);
    src.clear();
    int64_t start = 0;
    for (int64_t b = 0; b < B; ++b) {
      const Stream& s = streams[b];
      const int64_t c = s.counts[l], size = c + n_in[b] + (s.final ? r : 0);
      float* dst = packed + start * w;
      std::memcpy(dst, s.pending + off, c * w * sizeof(float));
      std::memcpy(dst + c * w, rows_in[b], n_in[b] * w * sizeof(float));
      std::fill(dst + (c + n_in[b]) * w, dst + size * w, 0.f);
      n_out[b] = std::max<int64_t>(0, size - 2 * r);
      for (int64_t m = 0; m < n_out[b]; ++m) src.push_back(start + m);
      // The rows a later centre still needs: all but the n_out first, at most 2r.
      std::memcpy(s.next_pending + off, dst + n_out[b] * w, (size - n_out[b]) * w * sizeof(float));
      s.next_counts[l] = size - n_out[b];
      start += size;
    }
    const int64_t M = static_cast<int64_t>(src.size());
    // The rows in were read into `packed`, so the layer may overwrite them.
    float* out = scratch(out_buf, M * D);
    const GatherRows in{packed, total, w, src.data(), M, 2 * r + 1};
    if (l == 0) {
      EmbedNormParams p = embed;
      p.in = in;
      p.y = out;
      embed_norm(p);
    } else {
      ConvNeXtParams p = blocks[l - 1];
      p.in = in;
      p.y = out;
      convnext_block(p);
    }
    int64_t at = 0;
    for (int64_t b = 0; b < B; ++b) {
      rows_in[b] = out + at * D;
      n_in[b] = n_out[b];
      at += n_out[b];
    }
  }
  const int64_t M = static_cast<int64_t>(src.size());
  if (M > spec_rows)
    fail(op, "the pass gives " + std::to_string(M) + " head rows, spec has room for " +
                 std::to_string(spec_rows));
  if (M == 0) return n_out;
  float* rows = out_buf.data();
#pragma omp parallel for schedule(static) if (M * D >= kMinParallelElems) \
    num_threads(num_threads())
  for (int64_t m = 0; m < M; ++m) layer_norm_row(rows + m * D, norm_weight, norm_bias, D, eps);
  multiply(gemm(rows, head, spec, M, head_rows, D, head_dtype, Epilogue::kBias, head_bias,
                head_bf16_dots),
           head_qtype);
  return n_out;
}

}  // namespace soprano::cpu
