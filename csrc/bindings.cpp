// The Python face of soprano._C. Arguments are raw pointers (Python ints), sizes and stream
// handles, never torch tensors, so the module does not link libtorch; soprano/_ext.py turns
// tensors into these arguments. Each binding only converts: the ops' make_*_params functions
// check the arguments, and pybind11 turns their std::invalid_argument into ValueError.
// Names: <op>_<device> for functions, <Op><Device> for classes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "attention_params.h"
#include "build_info.h"
#include "common.h"
#include "gguf_dequant_params.h"
#include "cpu/attention.h"
#include "cpu/bf16_dots.h"
#include "cpu/int8_tiles.h"
#include "cpu/gguf_dequant.h"
#include "cpu/greedy.h"
#include "cpu/istft.h"
#include "cpu/linear.h"
#include "cpu/memory_read.h"
#include "cpu/quant_linear.h"
#include "cpu/qwen3_step.h"
#include "cpu/rms_norm.h"
#include "cpu/threads.h"
#include "cpu/vocos.h"
#include "cuda/attention.h"
#include "cuda/gguf_dequant.h"
#include "cuda/rms_norm.h"
#include "cuda/vocos.h"
#include "rms_norm_params.h"

namespace py = pybind11;
using namespace py::literals;
using soprano::DType;

namespace {

#ifndef SOPRANO_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error("soprano._C was built without CUDA (SOPRANO_CUDA=OFF or no nvcc)");
}
#endif

void rms_norm_cpu(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t out, int64_t rows,
                  int64_t hidden, int64_t x_row_stride, int64_t out_row_stride, double eps) {
  soprano::cpu::rms_norm(soprano::make_rms_norm_params(
      "rms_norm_cpu", x, weight, out, rows, hidden, x_row_stride, out_row_stride, eps,
      DType::F32));
}

void rms_norm_cuda(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t out, int64_t rows,
                   int64_t hidden, int64_t x_row_stride, int64_t out_row_stride, double eps,
                   const std::string& dtype, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "rms_norm_cuda";
  soprano::cuda::rms_norm(
      soprano::make_rms_norm_params(op, x, weight, out, rows, hidden, x_row_stride,
                                    out_row_stride, eps, soprano::parse_dtype(dtype, op)),
      stream);
#else
  no_cuda();
#endif
}

void qk_norm_rope_cpu(std::uintptr_t qkv, int64_t qkv_row_stride, std::uintptr_t q_weight,
                      std::uintptr_t k_weight, std::uintptr_t cos, std::uintptr_t sin,
                      std::uintptr_t positions, std::uintptr_t slots, std::uintptr_t q_out,
                      std::uintptr_t k_cache, std::uintptr_t v_cache, int64_t rows,
                      int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t num_slots,
                      int64_t max_len, int64_t max_positions, double eps,
                      const std::string& dtype) {
  constexpr const char* op = "qk_norm_rope_cpu";
  soprano::cpu::qk_norm_rope(soprano::make_qk_norm_rope_params(
      op, qkv, qkv_row_stride, q_weight, k_weight, cos, sin, positions, slots, q_out, k_cache,
      v_cache, rows, heads, kv_heads, head_dim, num_slots, max_len, max_positions, eps,
      soprano::parse_dtype(dtype, op)));
}

void attention_decode_cpu(std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
                          std::uintptr_t slots, std::uintptr_t lengths, std::uintptr_t out,
                          int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                          int64_t num_slots, int64_t max_len, int64_t span,
                          const std::string& dtype) {
  constexpr const char* op = "attention_decode_cpu";
  soprano::cpu::attention_decode(soprano::make_attention_decode_params(
      op, q, k_cache, v_cache, slots, lengths, out, batch, heads, kv_heads, head_dim, num_slots,
      max_len, span, soprano::parse_dtype(dtype, op)));
}

void attention_prefill_cpu(std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
                           std::uintptr_t cu_seqlens, std::uintptr_t slots, std::uintptr_t out,
                           int64_t tokens, int64_t prompts, int64_t max_seqlen, int64_t heads,
                           int64_t kv_heads, int64_t head_dim, int64_t num_slots,
                           int64_t max_len, const std::string& dtype) {
  constexpr const char* op = "attention_prefill_cpu";
  soprano::cpu::attention_prefill(soprano::make_attention_prefill_params(
      op, q, k_cache, v_cache, cu_seqlens, slots, out, tokens, prompts, max_seqlen, heads,
      kv_heads, head_dim, num_slots, max_len, soprano::parse_dtype(dtype, op)));
}

void qk_norm_rope_cuda(std::uintptr_t qkv, int64_t qkv_row_stride, std::uintptr_t q_weight,
                       std::uintptr_t k_weight, std::uintptr_t cos, std::uintptr_t sin,
                       std::uintptr_t positions, std::uintptr_t slots, std::uintptr_t q_out,
                       std::uintptr_t k_cache, std::uintptr_t v_cache, int64_t rows,
                       int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t num_slots,
                       int64_t max_len, int64_t max_positions, double eps,
                       const std::string& dtype, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "qk_norm_rope_cuda";
  soprano::cuda::qk_norm_rope(
      soprano::make_qk_norm_rope_params(op, qkv, qkv_row_stride, q_weight, k_weight, cos, sin,
                                        positions, slots, q_out, k_cache, v_cache, rows, heads,
                                        kv_heads, head_dim, num_slots, max_len, max_positions,
                                        eps, soprano::parse_dtype(dtype, op)),
      stream);
#else
  no_cuda();
#endif
}

int64_t attention_decode_cuda_workspace(int64_t batch, int64_t heads, int64_t head_dim,
                                        int64_t span) {
#ifdef SOPRANO_WITH_CUDA
  return soprano::cuda::attention_decode_workspace(batch, heads, head_dim, span);
#else
  no_cuda();
#endif
}

void attention_decode_cuda(std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
                           std::uintptr_t slots, std::uintptr_t lengths, std::uintptr_t out,
                           int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                           int64_t num_slots, int64_t max_len, int64_t span,
                           const std::string& dtype, std::uintptr_t workspace,
                           std::size_t workspace_bytes, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "attention_decode_cuda";
  soprano::cuda::attention_decode(
      soprano::make_attention_decode_params(op, q, k_cache, v_cache, slots, lengths, out, batch,
                                            heads, kv_heads, head_dim, num_slots, max_len, span,
                                            soprano::parse_dtype(dtype, op)),
      reinterpret_cast<void*>(workspace), workspace_bytes, stream);
#else
  no_cuda();
#endif
}

void attention_prefill_cuda(std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache,
                            std::uintptr_t cu_seqlens, std::uintptr_t slots, std::uintptr_t out,
                            int64_t tokens, int64_t prompts, int64_t max_seqlen, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, int64_t num_slots,
                            int64_t max_len, const std::string& dtype, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "attention_prefill_cuda";
  soprano::cuda::attention_prefill(
      soprano::make_attention_prefill_params(op, q, k_cache, v_cache, cu_seqlens, slots, out,
                                             tokens, prompts, max_seqlen, heads, kv_heads,
                                             head_dim, num_slots, max_len,
                                             soprano::parse_dtype(dtype, op)),
      stream);
#else
  no_cuda();
#endif
}

void linear_cpu(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y, int64_t M, int64_t N,
                int64_t K, int64_t x_row_stride, int64_t y_row_stride,
                const std::string& wdtype, const std::string& isa, bool bf16_dots,
                int64_t packed_from_rows) {
  soprano::cpu::LinearParams p = soprano::cpu::make_linear_params(
      x, w, y, M, N, K, x_row_stride, y_row_stride, soprano::parse_dtype(wdtype, "linear_cpu"));
  p.isa = soprano::cpu::parse_linear_isa(isa, "linear_cpu");
  p.bf16_dots = bf16_dots;
  soprano::require(packed_from_rows >= 0, "linear_cpu",
                   "packed_from_rows must be >= 0, got " + std::to_string(packed_from_rows));
  p.packed_from_rows = packed_from_rows;
  soprano::cpu::linear(p);
}

// w: N rows of GGUF blocks of ggml type qtype; isa: auto, portable, avx2, avx512vnni or avx512;
// fp32_rows: the decoder's fp32 math (row tiles over decoded rows) instead of int8 dots.
void quant_linear_cpu(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y, int64_t M, int64_t N,
                      int64_t K, int64_t x_row_stride, int64_t y_row_stride, int qtype,
                      const std::string& isa, bool fp32_rows) {
  soprano::cpu::quant_linear(soprano::cpu::make_quant_linear_params(
      x, w, y, M, N, K, x_row_stride, y_row_stride, qtype, isa, fp32_rows));
}

void quantize_rows_cpu(std::uintptr_t x, int64_t M, int64_t K, int block, std::uintptr_t d,
                       std::uintptr_t q, bool portable) {
  constexpr const char* op = "quantize_rows_cpu";
  soprano::require(M >= 0 && (block == 32 || block == 256) && K > 0 && K % block == 0, op,
                   "needs M >= 0, block 32 or 256 and K a multiple of it, got M " +
                       std::to_string(M) + ", K " + std::to_string(K) + ", block " +
                       std::to_string(block));
  if (M == 0) return;
  soprano::cpu::quantize_rows(soprano::checked_ptr<const float>(x, op, "x"), M, K, block,
                              soprano::checked_ptr<float>(d, op, "d"),
                              soprano::checked_ptr<int8_t>(q, op, "q"), portable);
}

void convnext_block_cpu(std::uintptr_t x, int64_t rows, int64_t D, std::uintptr_t src,
                        int64_t M, int64_t k, std::uintptr_t dw_weight, std::uintptr_t dw_bias,
                        std::uintptr_t norm_weight, std::uintptr_t norm_bias, std::uintptr_t w1,
                        std::uintptr_t b1, std::uintptr_t w2, std::uintptr_t b2,
                        std::uintptr_t gamma, const std::string& w1type,
                        const std::string& w2type, double eps, std::uintptr_t y) {
  soprano::cpu::convnext_block(soprano::make_convnext_params(
      "convnext_block_cpu", x, rows, D, src, M, k, dw_weight, dw_bias, norm_weight, norm_bias,
      w1, b1, w2, b2, gamma, w1type, w2type, eps, y, true));
}

void embed_norm_cpu(std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t src, int64_t M,
                    int64_t k, std::uintptr_t weight, const std::string& wdtype, int64_t D,
                    std::uintptr_t bias, std::uintptr_t norm_weight, std::uintptr_t norm_bias,
                    double eps, std::uintptr_t y) {
  soprano::cpu::embed_norm(soprano::make_embed_norm_params(
      "embed_norm_cpu", x, rows, C, src, M, k, weight, wdtype, D, bias, norm_weight, norm_bias,
      eps, y, true));
}

void istft_spectrum_cpu(std::uintptr_t spec, int64_t N, int64_t bins, int64_t spec_row_stride,
                        double max_magnitude, std::uintptr_t out) {
  constexpr const char* op = "istft_spectrum_cpu";
  soprano::require(N >= 0 && bins >= 2 && spec_row_stride >= 2 * bins, op,
                   "needs N >= 0, bins >= 2 and spec_row_stride >= 2 bins, got N " +
                       std::to_string(N) + ", bins " + std::to_string(bins) + ", stride " +
                       std::to_string(spec_row_stride));
  if (N == 0) return;
  soprano::cpu::istft_spectrum({soprano::checked_ptr<const float>(spec, op, "spec"), N, bins,
                                spec_row_stride, static_cast<float>(max_magnitude),
                                soprano::checked_ptr<float>(out, op, "out")});
}

void istft_frames_cpu(std::uintptr_t spec, std::uintptr_t window, int64_t N, int64_t n_fft,
                      int64_t spec_row_stride, double max_magnitude, std::uintptr_t out) {
  constexpr const char* op = "istft_frames_cpu";
  soprano::require(N >= 0 && n_fft >= 2 && n_fft % 2 == 0 && spec_row_stride >= n_fft + 2, op,
                   "needs N >= 0, an even n_fft >= 2 and spec_row_stride >= n_fft + 2, got N " +
                       std::to_string(N) + ", n_fft " + std::to_string(n_fft) + ", stride " +
                       std::to_string(spec_row_stride));
  if (N == 0) return;
  soprano::cpu::istft_frames({soprano::checked_ptr<const float>(spec, op, "spec"),
                              window ? soprano::checked_ptr<const float>(window, op, "window")
                                     : nullptr,
                              N, n_fft, spec_row_stride, static_cast<float>(max_magnitude),
                              soprano::checked_ptr<float>(out, op, "out")});
}

void greedy_tokens_cpu(std::uintptr_t logits, std::uintptr_t seen, std::uintptr_t slots,
                       int64_t rows, int64_t vocab, int64_t num_slots, double penalty,
                       std::uintptr_t out) {
  constexpr const char* op = "greedy_tokens_cpu";
  soprano::require(rows >= 0 && num_slots > 0, op,
                   "needs rows >= 0 and num_slots > 0, got " + std::to_string(rows) + ", " +
                       std::to_string(num_slots));
  if (rows == 0) return;
  soprano::cpu::greedy_tokens({soprano::checked_ptr<const float>(logits, op, "logits"),
                               soprano::checked_ptr<const bool>(seen, op, "seen"),
                               soprano::checked_ptr<const int64_t>(slots, op, "slots"), rows,
                               vocab, num_slots, static_cast<float>(penalty),
                               soprano::checked_ptr<int64_t>(out, op, "out")});
}

int64_t istft_overlap_add_stream_cpu(std::uintptr_t frames, std::uintptr_t window,
                                     std::uintptr_t tail, int64_t n, int64_t first_frame,
                                     int64_t n_fft, int64_t hop, bool final,
                                     std::uintptr_t next_tail, std::uintptr_t out) {
  constexpr const char* op = "istft_overlap_add_stream_cpu";
  soprano::require(n >= 0 && first_frame >= 0 && hop > 0 && n_fft >= 2 * hop &&
                       n_fft % hop == 0, op,
                   "needs n, first_frame >= 0, hop > 0 and n_fft a multiple of hop, at least "
                   "2 hop; got n " + std::to_string(n) + ", first_frame " +
                       std::to_string(first_frame) + ", n_fft " + std::to_string(n_fft) +
                       ", hop " + std::to_string(hop));
  return soprano::cpu::istft_overlap_add_stream(
      {n ? soprano::checked_ptr<const float>(frames, op, "frames") : nullptr,
       soprano::checked_ptr<const float>(window, op, "window"),
       soprano::checked_ptr<const float>(tail, op, "tail"), n, first_frame, n_fft, hop, final,
       soprano::checked_ptr<float>(next_tail, op, "next_tail"),
       soprano::checked_ptr<float>(out, op, "out")});
}

void istft_overlap_add_cpu(std::uintptr_t frames, std::uintptr_t window, int64_t B, int64_t F,
                           int64_t n_fft, int64_t hop, std::uintptr_t out) {
  constexpr const char* op = "istft_overlap_add_cpu";
  // Every padded position keeps at least one frame (a nonzero envelope) only when frames
  // overlap, as they do for any window torch.istft accepts here.
  soprano::require(B >= 0 && F >= 2 && hop > 0 && n_fft >= 2 * hop && n_fft % hop == 0, op,
                   "needs B >= 0, F >= 2, hop > 0 and n_fft a multiple of hop, at least 2 hop; "
                   "got B " + std::to_string(B) + ", F " + std::to_string(F) + ", n_fft " +
                       std::to_string(n_fft) + ", hop " + std::to_string(hop));
  if (B == 0) return;
  soprano::cpu::istft_overlap_add({soprano::checked_ptr<const float>(frames, op, "frames"),
                                   soprano::checked_ptr<const float>(window, op, "window"), B,
                                   F, n_fft, hop, soprano::checked_ptr<float>(out, op, "out")});
}

// The CUDA decoder ops take the same raw arguments as the CPU ones plus a stream (src values
// are checked by the Python wrapper: they live on the GPU).
void convnext_block_cuda(std::uintptr_t x, int64_t rows, int64_t D, std::uintptr_t src,
                         int64_t M, int64_t k, std::uintptr_t dw_weight, std::uintptr_t dw_bias,
                         std::uintptr_t norm_weight, std::uintptr_t norm_bias, std::uintptr_t w1,
                         std::uintptr_t b1, std::uintptr_t w2, std::uintptr_t b2,
                         std::uintptr_t gamma, const std::string& w1type,
                         const std::string& w2type, double eps, std::uintptr_t y,
                         std::uintptr_t workspace, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "convnext_block_cuda";
  const soprano::ConvNeXtParams p = soprano::make_convnext_params(
      op, x, rows, D, src, M, k, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1, w2, b2,
      gamma, w1type, w2type, eps, y, false);
  if (M > 0)
    soprano::cuda::convnext_block(p, soprano::checked_ptr<float>(workspace, op, "workspace"),
                                  stream);
#else
  no_cuda();
#endif
}

void embed_norm_cuda(std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t src, int64_t M,
                     int64_t k, std::uintptr_t weight, const std::string& wdtype, int64_t D,
                     std::uintptr_t bias, std::uintptr_t norm_weight, std::uintptr_t norm_bias,
                     double eps, std::uintptr_t y, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  soprano::cuda::embed_norm(soprano::make_embed_norm_params(
      "embed_norm_cuda", x, rows, C, src, M, k, weight, wdtype, D, bias, norm_weight, norm_bias,
      eps, y, false), stream);
#else
  no_cuda();
#endif
}

void istft_frames_cuda(std::uintptr_t spec, std::uintptr_t basis, std::uintptr_t window,
                       int64_t N, int64_t n_fft, double max_magnitude, std::uintptr_t out,
                       std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  using soprano::checked_ptr;
  constexpr const char* op = "istft_frames_cuda";
  soprano::require(N >= 0 && n_fft >= 2 && n_fft % 2 == 0, op,
                   "needs N >= 0 and an even n_fft, got N " + std::to_string(N) + ", n_fft " +
                       std::to_string(n_fft));
  if (N == 0) return;
  soprano::cuda::istft_frames(
      {checked_ptr<const float>(spec, op, "spec"), checked_ptr<const float>(basis, op, "basis"),
       window ? checked_ptr<const float>(window, op, "window") : nullptr, N, n_fft / 2 + 1,
       n_fft, static_cast<float>(max_magnitude), checked_ptr<float>(out, op, "out")},
      stream);
#else
  no_cuda();
#endif
}

void istft_overlap_add_cuda(std::uintptr_t frames, std::uintptr_t window, int64_t B, int64_t F,
                            int64_t n_fft, int64_t hop, std::uintptr_t out,
                            std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  using soprano::checked_ptr;
  constexpr const char* op = "istft_overlap_add_cuda";
  soprano::require(B >= 0 && F >= 2 && hop > 0 && n_fft >= 2 * hop && n_fft % hop == 0, op,
                   "needs B >= 0, F >= 2 and n_fft a multiple of hop, at least 2 hop; got B " +
                       std::to_string(B) + ", F " + std::to_string(F) + ", n_fft " +
                       std::to_string(n_fft) + ", hop " + std::to_string(hop));
  if (B == 0) return;
  soprano::cuda::istft_overlap_add({checked_ptr<const float>(frames, op, "frames"),
                                    checked_ptr<const float>(window, op, "window"), B, F, n_fft,
                                    hop, checked_ptr<float>(out, op, "out")},
                                   stream);
#else
  no_cuda();
#endif
}

// raw: n_bytes of GGUF blocks holding n values of ggml type qtype; out: [n] in dtype.
void dequantize_cpu(std::uintptr_t raw, int64_t n_bytes, int qtype, int64_t n,
                    std::uintptr_t out, const std::string& dtype, bool portable) {
  constexpr const char* op = "dequantize_cpu";
  const DType out_dtype = soprano::parse_dtype(dtype, op);
  soprano::cpu::dequantize(soprano::make_dequant_params(op, raw, n_bytes, qtype, n, out,
                                                        out_dtype, soprano::dtype_size(out_dtype)),
                           portable);
}

void dequantize_cuda(std::uintptr_t raw, int64_t n_bytes, int qtype, int64_t n,
                     std::uintptr_t out, const std::string& dtype, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  constexpr const char* op = "dequantize_cuda";
  soprano::cuda::dequantize(soprano::make_dequant_params(op, raw, n_bytes, qtype, n, out,
                                                         soprano::parse_dtype(dtype, op), 16),
                            stream);
#else
  no_cuda();
#endif
}

soprano::cpu::Qwen3StepCpu make_qwen3_step_cpu(
    int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate,
    int64_t vocab, int64_t max_positions, double eps, const soprano::cpu::MatrixParts& parts,
    std::uintptr_t embed, std::uintptr_t final_norm, std::uintptr_t lm_head, std::uintptr_t cos,
    std::uintptr_t sin, const std::vector<soprano::cpu::Qwen3LayerPtrs>& layers,
    std::uintptr_t k_cache, std::uintptr_t v_cache, int64_t slots, int64_t max_len) {
  using namespace soprano::cpu;
  return {make_qwen3_weights(hidden, heads, kv_heads, head_dim, intermediate, vocab,
                             max_positions, eps, parts, embed,
                             final_norm, lm_head, cos, sin, layers),
          make_kv_cache_view(k_cache, v_cache, slots, max_len)};
}

void qwen3_step_cpu(soprano::cpu::Qwen3StepCpu& d, std::uintptr_t tokens,
                    std::uintptr_t positions, std::uintptr_t slots, int64_t rows,
                    int64_t first_output_row, std::uintptr_t hidden, std::uintptr_t logits,
                    int64_t slot_rows) {
  d.step(soprano::cpu::make_decode_batch(d.weights(), d.cache(), tokens, positions, slots, rows,
                                         first_output_row, hidden, logits, slot_rows));
}

// A ConvNeXt block's k, its vectors and matrices, and the matrices' types.
using VocosBlockPtrs =
    std::tuple<int64_t, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t,
               std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t,
               std::string, std::string>;

soprano::cpu::VocosLayers make_vocos_layers_cpu(
    int64_t C, int64_t D, int64_t embed_k, std::uintptr_t embed_weight,
    const std::string& embed_dtype, std::uintptr_t embed_bias, std::uintptr_t norm_weight,
    std::uintptr_t norm_bias, const std::vector<VocosBlockPtrs>& blocks,
    std::uintptr_t final_norm_weight, std::uintptr_t final_norm_bias, std::uintptr_t head,
    const std::string& head_type, int64_t head_rows, std::uintptr_t head_bias, double eps) {
  constexpr const char* op = "vocos_layers_cpu";
  // Each layer takes a radius of rows on either side of a centre: odd kernels only.
  soprano::require(embed_k % 2 == 1, op, "the embed's kernel must have an odd width, got " +
                                             std::to_string(embed_k));
  for (const auto& block : blocks)
    soprano::require(std::get<0>(block) % 2 == 1, op,
                     "every block's kernel must have an odd width, got " +
                         std::to_string(std::get<0>(block)));
  soprano::cpu::VocosLayers v;
  v.embed = soprano::make_embed_weights(op, C, embed_k, embed_weight, embed_dtype, D, embed_bias,
                                        norm_weight, norm_bias, eps);
  for (const auto& [k, dw_weight, dw_bias, bnorm_weight, bnorm_bias, w1, b1, w2, b2, gamma,
                    w1type, w2type] : blocks)
    v.blocks.push_back(soprano::make_convnext_weights(op, D, k, dw_weight, dw_bias, bnorm_weight,
                                                      bnorm_bias, w1, b1, w2, b2, gamma, w1type,
                                                      w2type, eps, true));
  v.norm_weight = soprano::checked_ptr<const float>(final_norm_weight, op, "final_norm_weight");
  v.norm_bias = soprano::checked_ptr<const float>(final_norm_bias, op, "final_norm_bias");
  v.eps = static_cast<float>(eps);
  soprano::require(head_rows > 0, op, "head_rows must be > 0, got " + std::to_string(head_rows));
  v.head_dtype = soprano::DType::F32;
  v.head_bf16_dots = head_type == soprano::kBf16Dots;
  soprano::check_bf16_dots(op, v.head_bf16_dots, true, D);
  v.head_qtype = soprano::parse_matrix_type(v.head_bf16_dots ? "bfloat16" : head_type, op, "head",
                                            true, v.head_dtype);
  if (v.head_qtype != 0 && D % soprano::layout_info(v.head_qtype).block != 0)
    soprano::fail(op, "head: rows of " + std::to_string(D) + " values are not whole " +
                          soprano::layout_info(v.head_qtype).name + " blocks");
  if (v.head_qtype != 0 && head_rows % soprano::layout_rows(v.head_qtype) != 0)
    soprano::fail(op, "head: " + std::to_string(head_rows) + " rows are not whole groups of " +
                          std::to_string(soprano::layout_rows(v.head_qtype)) + " for " +
                          soprano::layout_info(v.head_qtype).name);
  v.head = soprano::checked_ptr<const void>(
      head, op, "head", v.head_qtype ? 1 : soprano::dtype_size(v.head_dtype));
  v.head_bias = soprano::checked_ptr<const float>(head_bias, op, "head_bias");
  v.head_rows = head_rows;
  return v;
}

// Per stream: its pending rows and counts, where the next ones go, its new frames and whether it
// ends. Returns each stream's head rows, written to spec in stream order.
std::vector<int64_t> vocos_layers_cpu(const soprano::cpu::VocosLayers& v,
                                      const std::vector<std::uintptr_t>& pending,
                                      const std::vector<std::uintptr_t>& counts,
                                      const std::vector<std::uintptr_t>& next_pending,
                                      const std::vector<std::uintptr_t>& next_counts,
                                      const std::vector<std::uintptr_t>& frames,
                                      const std::vector<int64_t>& new_rows,
                                      const std::vector<bool>& final, std::uintptr_t spec,
                                      int64_t spec_rows) {
  constexpr const char* op = "vocos_layers_cpu";
  const std::size_t B = pending.size();
  soprano::require(counts.size() == B && next_pending.size() == B && next_counts.size() == B &&
                       frames.size() == B && new_rows.size() == B && final.size() == B,
                   op, "every per-stream list must have one entry per stream");
  std::vector<soprano::cpu::VocosLayers::Stream> streams;
  for (std::size_t b = 0; b < B; ++b) {
    soprano::require(new_rows[b] >= 0, op, "new_rows must be >= 0");
    streams.push_back({soprano::checked_ptr<const float>(pending[b], op, "pending"),
                       soprano::checked_ptr<const int64_t>(counts[b], op, "counts"),
                       soprano::checked_ptr<float>(next_pending[b], op, "next_pending"),
                       soprano::checked_ptr<int64_t>(next_counts[b], op, "next_counts"),
                       new_rows[b] ? soprano::checked_ptr<const float>(frames[b], op, "frames")
                                   : nullptr,
                       new_rows[b], final[b]});
  }
  return v.run(streams, spec_rows ? soprano::checked_ptr<float>(spec, op, "spec") : nullptr,
               spec_rows);
}

py::dict cpu_features() {
  const soprano::CpuFeatures& f = soprano::cpu_features();
  return py::dict("avx2"_a = f.avx2, "fma"_a = f.fma, "f16c"_a = f.f16c, "avx512f"_a = f.avx512f,
                  "avx512bw"_a = f.avx512bw, "avx512vl"_a = f.avx512vl,
                  "avx512_bf16"_a = f.avx512_bf16, "avx512_vnni"_a = f.avx512_vnni,
                  "avx_vnni"_a = f.avx_vnni, "amx_tile"_a = f.amx_tile,
                  "amx_bf16"_a = f.amx_bf16, "amx_int8"_a = f.amx_int8);
}

py::dict build_info() {
  const soprano::BuildInfo b = soprano::build_info();
  return py::dict("compiler"_a = b.compiler, "cxx_standard"_a = b.cxx_standard,
                  "openmp"_a = b.openmp, "openmp_version"_a = b.openmp_version,
                  "cuda"_a = b.cuda, "cuda_version"_a = b.cuda_version,
                  "cuda_archs"_a = b.cuda_archs);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "soprano native kernels; see soprano/_ext.py for the tensor-level wrappers";
  m.def("has_cuda", [] { return soprano::build_info().cuda; },
        "Whether CUDA kernels were compiled in (not whether a GPU is present).");
  m.def("cpu_features", &cpu_features,
        "The x86 extensions the CPU has and the OS enables, name -> bool (all False off x86).");
  m.def("build_info", &build_info,
        "How this module was built: compiler, cxx_standard, openmp, openmp_version, cuda, "
        "cuda_version, cuda_archs.");
  m.def("num_threads", &soprano::cpu::num_threads,
        "OpenMP threads the CPU kernels use (omp_get_max_threads; 1 without OpenMP).");
  m.def("set_num_threads", &soprano::cpu::set_num_threads,
        "Set the CPU kernels' OpenMP threads for calls from this thread; n >= 1.", "n"_a);
  m.def("set_thread_threads", &soprano::cpu::set_thread_threads,
        "Set the CPU kernels' threads for calls from the calling thread only, over the "
        "process's count; 0 goes back to it.", "n"_a);
  m.def("read_words",
        [](uintptr_t p, int64_t bytes) {
          soprano::require(bytes >= 0 && bytes % 8 == 0, "read_words",
                           "bytes must be a multiple of 8, got " + std::to_string(bytes));
          py::gil_scoped_release release;
          return soprano::cpu::read_words(reinterpret_cast<const uint8_t*>(p), bytes);
        },
        "Sum of the 64-bit words of `bytes` bytes at address `p`, read by the CPU kernels' "
        "threads (a read-rate probe).", "p"_a, "bytes"_a);
  m.def("rms_norm_cpu", &rms_norm_cpu, "fp32 RMSNorm on CPU, rows of `hidden` elements.", "x"_a,
        "weight"_a, "out"_a, "rows"_a, "hidden"_a, "x_row_stride"_a, "out_row_stride"_a, "eps"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm_cuda", &rms_norm_cuda, "RMSNorm on the GPU, enqueued on `stream`.", "x"_a,
        "weight"_a, "out"_a, "rows"_a, "hidden"_a, "x_row_stride"_a, "out_row_stride"_a, "eps"_a,
        "dtype"_a, "stream"_a);
  m.def("qk_norm_rope_cpu", &qk_norm_rope_cpu,
        "fp32 per-head RMSNorm + half-split RoPE of q and k, k and v into the cache, on CPU.",
        "qkv"_a, "qkv_row_stride"_a, "q_weight"_a, "k_weight"_a, "cos"_a, "sin"_a,
        "positions"_a, "slots"_a, "q_out"_a, "k_cache"_a, "v_cache"_a, "rows"_a, "heads"_a,
        "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a, "max_positions"_a, "eps"_a,
        "dtype"_a, py::call_guard<py::gil_scoped_release>());
  m.def("attention_decode_cpu", &attention_decode_cpu,
        "fp32 decode attention on CPU: one query per row against its cache slot.", "q"_a,
        "k_cache"_a, "v_cache"_a, "slots"_a, "lengths"_a, "out"_a, "batch"_a, "heads"_a,
        "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a, "span"_a, "dtype"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("attention_prefill_cpu", &attention_prefill_cpu,
        "fp32 causal varlen attention of packed prompts over their cached keys, on CPU.", "q"_a,
        "k_cache"_a, "v_cache"_a, "cu_seqlens"_a, "slots"_a, "out"_a, "tokens"_a, "prompts"_a,
        "max_seqlen"_a, "heads"_a, "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a,
        "dtype"_a, py::call_guard<py::gil_scoped_release>());
  m.def("qk_norm_rope_cuda", &qk_norm_rope_cuda,
        "Per-head RMSNorm + half-split RoPE of q and k, k and v into the cache, on the GPU.",
        "qkv"_a, "qkv_row_stride"_a, "q_weight"_a, "k_weight"_a, "cos"_a, "sin"_a,
        "positions"_a, "slots"_a, "q_out"_a, "k_cache"_a, "v_cache"_a, "rows"_a, "heads"_a,
        "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a, "max_positions"_a, "eps"_a,
        "dtype"_a, "stream"_a);
  m.def("attention_decode_cuda_workspace", &attention_decode_cuda_workspace,
        "Bytes of scratch attention_decode_cuda needs (its split-K partials).", "batch"_a,
        "heads"_a, "head_dim"_a, "span"_a);
  m.def("attention_decode_cuda", &attention_decode_cuda,
        "Flash-decoding on the GPU: one query per row against its cache slot.", "q"_a,
        "k_cache"_a, "v_cache"_a, "slots"_a, "lengths"_a, "out"_a, "batch"_a, "heads"_a,
        "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a, "span"_a, "dtype"_a,
        "workspace"_a, "workspace_bytes"_a, "stream"_a);
  m.def("attention_prefill_cuda", &attention_prefill_cuda,
        "Causal varlen attention of packed prompts over their cached keys, on the GPU.", "q"_a,
        "k_cache"_a, "v_cache"_a, "cu_seqlens"_a, "slots"_a, "out"_a, "tokens"_a, "prompts"_a,
        "max_seqlen"_a, "heads"_a, "kv_heads"_a, "head_dim"_a, "num_slots"_a, "max_len"_a,
        "dtype"_a, "stream"_a);
  m.def("linear_cpu", &linear_cpu,
        "y[M, N] = x[M, K] @ w[N, K]^T on CPU: fp32 x and y, float32, bfloat16 or float16 w; "
        "isa auto, avx2 or avx512 pins the vector width; bf16_dots: x rounded to bf16 and "
        "dotted on the tile unit (bfloat16 w, K % 32 == 0; AMX-BF16 only); packed_from_rows: "
        "the packed GEMM from this many rows of x on (0: the default).",
        "x"_a, "w"_a, "y"_a, "M"_a, "N"_a, "K"_a, "x_row_stride"_a, "y_row_stride"_a,
        "wdtype"_a, "isa"_a = "auto", "bf16_dots"_a = false, "packed_from_rows"_a = 0,
        py::call_guard<py::gil_scoped_release>());
  m.def("bf16_dots_available", &soprano::cpu::bf16_dots_available,
        "Whether linear_cpu's bf16_dots runs here: AMX-BF16 on the CPU and the OS's leave to "
        "use tile data (asked for on the first call).");
  m.def("quant_linear_cpu", &quant_linear_cpu,
        "y[M, N] = x[M, K] @ dequant(w)[N, K]^T on CPU, w in GGUF blocks (Q8_0, Q4_0, Q4_K, "
        "Q5_K, Q6_K): int8 dots for few rows, dequantized fp32 GEMM for many (isa auto: the "
        "best of avx2, avx512vnni, avx512 and, for Q8_0x8, Q4_0x8, Q4_Kx8, amx; or one pinned); "
        "fp32_rows: fp32 math on decoded rows at every row count (the decoder's).",
        "x"_a, "w"_a, "y"_a, "M"_a, "N"_a, "K"_a, "x_row_stride"_a, "y_row_stride"_a,
        "qtype"_a, "isa"_a = "auto", "fp32_rows"_a = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("quant_isa", [] { return std::string(soprano::cpu::quant_isa_name(
                              soprano::cpu::QuantIsa::kAuto)); },
        "The instruction set quant_linear's integer dots use on this CPU.");
  m.def("int8_tiles_available", &soprano::cpu::int8_tiles_available,
        "Whether quant_linear's Q8_0x8, Q4_0x8 and Q4_Kx8 dots run on the tile unit here (isa "
        "amx; auto from 5, 16 and 16 rows of x): AMX-INT8 on the CPU and the OS's leave to use "
        "tile data.");
  m.def("quantize_rows_cpu", &quantize_rows_cpu,
        "x [M, K] fp32 -> the int8 dots' activation blocks: scales d [M, K / block], values q "
        "[M, K] int8. portable: the scalar code (a test hook).", "x"_a, "M"_a, "K"_a, "block"_a,
        "d"_a, "q"_a, "portable"_a = false, py::call_guard<py::gil_scoped_release>());
  m.def("convnext_block_cpu", &convnext_block_cpu,
        "A Vocos ConvNeXt block on CPU over gathered fp32 rows (output m's taps: rows src[m].."
        "src[m]+k-1 of x); w1/w2 each a float dtype or GGUF blocks (Q8_0, Q4_0, Q4_K, Q5_K, "
        "Q6_K).", "x"_a, "rows"_a, "D"_a, "src"_a, "M"_a, "k"_a, "dw_weight"_a, "dw_bias"_a,
        "norm_weight"_a, "norm_bias"_a, "w1"_a, "b1"_a, "w2"_a, "b2"_a, "gamma"_a, "w1type"_a,
        "w2type"_a, "eps"_a, "y"_a, py::call_guard<py::gil_scoped_release>());
  m.def("embed_norm_cpu", &embed_norm_cpu,
        "The Vocos embed conv (C -> D, k taps from rows src[m]..) and LayerNorm on CPU.", "x"_a,
        "rows"_a, "C"_a, "src"_a, "M"_a, "k"_a, "weight"_a, "wdtype"_a, "D"_a, "bias"_a,
        "norm_weight"_a, "norm_bias"_a, "eps"_a, "y"_a, py::call_guard<py::gil_scoped_release>());
  m.def("istft_spectrum_cpu", &istft_spectrum_cpu,
        "Head rows (log-magnitude | phase) -> complex64 spectrum rows, DC and Nyquist zeroed.",
        "spec"_a, "N"_a, "bins"_a, "spec_row_stride"_a, "max_magnitude"_a, "out"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("istft_frames_cpu", &istft_frames_cpu,
        "Head rows (log-magnitude | phase) -> inverse-DFT frames [N, n_fft] (the spectrum with "
        "DC and Nyquist zeroed, pocketfft's inverse real DFT), windowed unless window is 0.",
        "spec"_a, "window"_a, "N"_a, "n_fft"_a, "spec_row_stride"_a, "max_magnitude"_a, "out"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("greedy_tokens_cpu", &greedy_tokens_cpu,
        "Greedy tokens: per row, the argmax of row slots[r] of logits [num_slots, vocab] with "
        "the repetition penalty applied where seen (bool, same shape) is set.", "logits"_a,
        "seen"_a, "slots"_a, "rows"_a, "vocab"_a, "num_slots"_a, "penalty"_a, "out"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("istft_overlap_add_stream_cpu", &istft_overlap_add_stream_cpu,
        "A streamed piece's overlap-add: n windowed frames after first_frame earlier ones, "
        "the tail in and out, final samples divided by the envelope; returns the sample count "
        "written to out (room for hop (n + 1)).", "frames"_a, "window"_a, "tail"_a, "n"_a,
        "first_frame"_a, "n_fft"_a, "hop"_a, "final"_a, "next_tail"_a, "out"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("istft_overlap_add_cpu", &istft_overlap_add_cpu,
        "Window, overlap-add, envelope division and centre trim of inverse-DFT frames.",
        "frames"_a, "window"_a, "B"_a, "F"_a, "n_fft"_a, "hop"_a, "out"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("convnext_block_cuda", &convnext_block_cuda,
        "A Vocos ConvNeXt block on the GPU (fp32 rows, src on the GPU), enqueued on `stream`; "
        "workspace holds 4 M D floats.", "x"_a, "rows"_a, "D"_a, "src"_a, "M"_a, "k"_a,
        "dw_weight"_a, "dw_bias"_a, "norm_weight"_a, "norm_bias"_a, "w1"_a, "b1"_a, "w2"_a,
        "b2"_a, "gamma"_a, "w1type"_a, "w2type"_a, "eps"_a, "y"_a, "workspace"_a, "stream"_a);
  m.def("embed_norm_cuda", &embed_norm_cuda,
        "The Vocos embed conv and LayerNorm on the GPU, enqueued on `stream`.", "x"_a, "rows"_a,
        "C"_a, "src"_a, "M"_a, "k"_a, "weight"_a, "wdtype"_a, "D"_a, "bias"_a, "norm_weight"_a,
        "norm_bias"_a, "eps"_a, "y"_a, "stream"_a);
  m.def("istft_frames_cuda", &istft_frames_cuda,
        "Head rows -> inverse-DFT frames (windowed unless window is 0) on the GPU.", "spec"_a,
        "basis"_a, "window"_a, "N"_a, "n_fft"_a, "max_magnitude"_a, "out"_a, "stream"_a);
  m.def("istft_overlap_add_cuda", &istft_overlap_add_cuda,
        "Window, overlap-add, envelope division and centre trim on the GPU.", "frames"_a,
        "window"_a, "B"_a, "F"_a, "n_fft"_a, "hop"_a, "out"_a, "stream"_a);
  m.def("dequantize_cpu", &dequantize_cpu,
        "GGUF blocks -> floats on CPU: n_bytes of ggml type qtype holding n values, into out "
        "([n] in dtype). portable: the kernels of CPUs without AVX2/F16C (a test hook).",
        "raw"_a, "n_bytes"_a, "qtype"_a, "n"_a, "out"_a, "dtype"_a, "portable"_a = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("dequantize_cuda", &dequantize_cuda,
        "GGUF blocks -> floats on the GPU (out 16-byte aligned), enqueued on `stream`.", "raw"_a,
        "n_bytes"_a, "qtype"_a, "n"_a, "out"_a, "dtype"_a, "stream"_a);
  py::class_<soprano::cpu::VocosLayers>(
      m, "VocosLayersCpu",
      "A Vocos decoder's embed, ConvNeXt blocks, final LayerNorm and head over pieces of many "
      "streams, one call a pass (weights must outlive it).")
      .def(py::init(&make_vocos_layers_cpu), "C"_a, "D"_a, "embed_k"_a, "embed_weight"_a,
           "embed_dtype"_a, "embed_bias"_a, "norm_weight"_a, "norm_bias"_a, "blocks"_a,
           "final_norm_weight"_a, "final_norm_bias"_a, "head"_a, "head_type"_a, "head_rows"_a,
           "head_bias"_a, "eps"_a)
      .def_property_readonly("pending_floats", &soprano::cpu::VocosLayers::pending_floats)
      .def("run", &vocos_layers_cpu, "One pass: per stream its pending rows and counts, the "
           "buffers for the next ones, its new frames and whether it ends; head rows to spec. "
           "Returns each stream's head rows.", "pending"_a, "counts"_a, "next_pending"_a,
           "next_counts"_a, "frames"_a, "new_rows"_a, "final"_a, "spec"_a, "spec_rows"_a,
           py::call_guard<py::gil_scoped_release>());
  py::class_<soprano::cpu::Qwen3StepCpu>(
      m, "Qwen3StepCpu",
      "Whole Qwen3 decode steps on CPU over fixed weights and a fixed fp32 KV cache (pointers "
      "must outlive it).")
      .def(py::init(&make_qwen3_step_cpu), "hidden"_a, "heads"_a, "kv_heads"_a, "head_dim"_a,
           "intermediate"_a, "vocab"_a, "max_positions"_a, "eps"_a, "parts"_a, "embed"_a,
           "final_norm"_a, "lm_head"_a, "cos"_a, "sin"_a, "layers"_a, "k_cache"_a, "v_cache"_a,
           "slots"_a, "max_len"_a)
      .def("step", &qwen3_step_cpu, "One step for `rows` rows: int64 tokens, positions, slots "
           "in; fp32 hidden and logits of rows first_output_row.. out (slot_rows > 0: buffers of "
           "that many rows, each row's outputs at its slot's).", "tokens"_a, "positions"_a,
           "slots"_a, "rows"_a, "first_output_row"_a, "hidden"_a, "logits"_a,
           "slot_rows"_a = 0, py::call_guard<py::gil_scoped_release>());
}
