// The Vocos ops' api layer (CPU and CUDA): raw arguments from Python checked once, here, into
// the params the kernels read. On the CPU every src row is checked against the input (a
// ValueError, not a read out of bounds); CUDA's src lives on the GPU, so its Python wrapper
// checks the values and the kernels clamp them.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>

#include "common.h"
#include "gguf_dequant_params.h"

namespace soprano {

// Output m's taps are input rows src[m] .. src[m] + k - 1 (rows packed from many sequences
// with their zero padding, as soprano.ops.reference.convnext_block describes).
struct GatherRows {
  const float* x;
  int64_t rows, width;
  const int64_t* src;
  int64_t M, k;
};

struct ConvNeXtParams {
  GatherRows in;  // width D
  const float* dw_weight;  // [D, k]
  const float* dw_bias;
  const float* norm_weight;
  const float* norm_bias;
  const void* w1;  // [3D, D], wtype
  const float* b1;
  const void* w2;  // [D, 3D], wtype
  const float* b2;
  const float* gamma;
  DType wtype;     // of float w1 / w2
  int w1_qtype;    // ggml type of w1 when it is GGUF blocks (quant_linear's), else 0
  int w2_qtype;
  int64_t hidden;  // 3D
  float eps;
  float* y;  // [M, D]
  // w1, w2 bf16 ("bfloat16_dots"), multiplied with their activations rounded to bf16 on the
  // CPU's tile unit (cpu/bf16_dots.h).
  bool bf16_dots = false;
};

struct EmbedNormParams {
  GatherRows in;  // width C
  const void* weight;  // [D, C, k], wtype
  DType wtype;
  const float* bias;
  const float* norm_weight;
  const float* norm_bias;
  int64_t D;
  float eps;
  float* y;  // [M, D]
};

inline GatherRows make_gather_rows(const char* op, std::uintptr_t x, int64_t rows, int64_t width,
                                   std::uintptr_t src, int64_t M, int64_t k, bool host_src) {
  require(rows >= 0 && width > 0 && M >= 0 && k > 0, op,
          "rows, M >= 0 and width, k > 0 needed, got rows " + std::to_string(rows) +
              ", width " + std::to_string(width) + ", M " + std::to_string(M) + ", k " +
              std::to_string(k));
  GatherRows g{M ? checked_ptr<const float>(x, op, "x") : nullptr, rows, width,
               M ? checked_ptr<const int64_t>(src, op, "src") : nullptr, M, k};
  for (int64_t m = 0; host_src && m < M; ++m)
    require(g.src[m] >= 0 && g.src[m] + k <= rows, op,
            "src[" + std::to_string(m) + "] = " + std::to_string(g.src[m]) + " needs rows " +
                std::to_string(g.src[m]) + ".." + std::to_string(g.src[m] + k - 1) +
                " of x, which has " + std::to_string(rows));
  return g;
}

// A pointwise matrix's type by name: a float dtype ("float32", "float16", "bfloat16") or, where
// `blocks` allows, a ggml type quant_linear multiplies ("Q8_0", "Q4_0", "Q4_K", "Q5_K",
// "Q6_K"). Returns the ggml type id of blocks, else 0 with `dtype` set.
inline int parse_matrix_type(const std::string& name, const char* op, const char* what,
                             bool blocks, DType& dtype) {
  for (const int id : {8, kQ8_0x8, 2, kQ4_0x8, 12, kQ4_Kx8, 13, kQ5_Kx8, 14, kQ6_Kx8})
    if (name == layout_info(id).name) {
      if (!blocks)
        fail(op, std::string(what) + ": GGUF blocks (" + name + ") are multiplied on the CPU "
                 "only; give the GPU float weights");
      return id;
    }
  if (name != "float32" && name != "float16" && name != "bfloat16")
    fail(op, std::string(what) + " type must be float32, float16, bfloat16" +
                 (blocks ? ", Q8_0, Q4_0, Q4_K, Q5_K or Q6_K" : "") + ", got '" + name + "'");
  dtype = parse_dtype(name, op);
  return 0;
}

// A matrix of bf16 weights that the CPU's tile unit multiplies with its activations rounded to
// bf16 (cpu/bf16_dots.h): a quantized decoder's blocks and head.
constexpr const char* kBf16Dots = "bfloat16_dots";

// cpu: the CPU kernels run (only they have bf16 dots); K: the matrix's values a row.
inline void check_bf16_dots(const char* op, bool bf16_dots, bool cpu, int64_t K) {
  require(!bf16_dots || cpu, op, std::string(kBf16Dots) + " matrices are multiplied on the CPU "
                                 "only");
  require(!bf16_dots || K % 32 == 0, op,
          std::string(kBf16Dots) + " needs rows of a multiple of 32 values, got " +
              std::to_string(K));
}

// A block's weights checked, its rows (in, y) left for each call to set. blocks: GGUF blocks
// allowed (the CPU kernels multiply them).
inline ConvNeXtParams make_convnext_weights(
    const char* op, int64_t D, int64_t k, std::uintptr_t dw_weight, std::uintptr_t dw_bias,
    std::uintptr_t norm_weight, std::uintptr_t norm_bias, std::uintptr_t w1, std::uintptr_t b1,
    std::uintptr_t w2, std::uintptr_t b2, std::uintptr_t gamma, const std::string& w1type,
    const std::string& w2type, double eps, bool blocks) {
  require(D > 0 && k > 0, op, "D and k must be > 0, got D " + std::to_string(D) + ", k " +
                                  std::to_string(k));
  const bool bf16_dots = w1type == kBf16Dots;
  require(bf16_dots == (w2type == kBf16Dots), op,
          std::string("w1 and w2 must both be ") + kBf16Dots + " or neither, got " + w1type +
              " and " + w2type);
  check_bf16_dots(op, bf16_dots, blocks, D);
  DType wtype = DType::F32, w2dtype = DType::F32;
  const int w1_qtype = parse_matrix_type(bf16_dots ? "bfloat16" : w1type, op, "w1", blocks, wtype);
  const int w2_qtype = parse_matrix_type(bf16_dots ? "bfloat16" : w2type, op, "w2", blocks,
                                         w2dtype);
  if (w1_qtype == 0 && w2_qtype == 0 && w2dtype != wtype)
    fail(op, "w1 and w2 must share a float dtype, got " + w1type + " and " + w2type);
  if (w2_qtype == 0) wtype = w2dtype;
  // Rows of blocks: D (w1's K) and 3D (w2's) whole blocks of their types.
  for (const auto& [qtype, N, K, what] : {std::tuple{w1_qtype, 3 * D, D, "w1"},
                                          std::tuple{w2_qtype, D, 3 * D, "w2"}}) {
    if (qtype != 0 && K % layout_info(qtype).block != 0)
      fail(op, std::string(what) + ": rows of " + std::to_string(K) + " values are not whole " +
                   layout_info(qtype).name + " blocks");
    if (qtype != 0 && N % layout_rows(qtype) != 0)
      fail(op, std::string(what) + ": " + std::to_string(N) + " rows are not whole groups of " +
                   std::to_string(layout_rows(qtype)) + " for " + layout_info(qtype).name);
  }
  const std::size_t w1_align = w1_qtype ? 1 : dtype_size(wtype);
  const std::size_t w2_align = w2_qtype ? 1 : dtype_size(wtype);
  return {{nullptr, 0, D, nullptr, 0, k},
          checked_ptr<const float>(dw_weight, op, "dw_weight"),
          checked_ptr<const float>(dw_bias, op, "dw_bias"),
          checked_ptr<const float>(norm_weight, op, "norm_weight"),
          checked_ptr<const float>(norm_bias, op, "norm_bias"),
          checked_ptr<const void>(w1, op, "w1", w1_align),
          checked_ptr<const float>(b1, op, "b1"),
          checked_ptr<const void>(w2, op, "w2", w2_align),
          checked_ptr<const float>(b2, op, "b2"), checked_ptr<const float>(gamma, op, "gamma"),
          wtype, w1_qtype, w2_qtype, 3 * D, static_cast<float>(eps), nullptr, bf16_dots};
}

inline ConvNeXtParams make_convnext_params(
    const char* op, std::uintptr_t x, int64_t rows, int64_t D, std::uintptr_t src, int64_t M,
    int64_t k, std::uintptr_t dw_weight, std::uintptr_t dw_bias, std::uintptr_t norm_weight,
    std::uintptr_t norm_bias, std::uintptr_t w1, std::uintptr_t b1, std::uintptr_t w2,
    std::uintptr_t b2, std::uintptr_t gamma, const std::string& w1type,
    const std::string& w2type, double eps, std::uintptr_t y, bool host_src) {
  // host_src: the CPU kernels, which also multiply GGUF blocks
  const GatherRows in = make_gather_rows(op, x, rows, D, src, M, k, host_src);
  ConvNeXtParams p = make_convnext_weights(op, D, k, dw_weight, dw_bias, norm_weight, norm_bias,
                                           w1, b1, w2, b2, gamma, w1type, w2type, eps, host_src);
  p.in = in;
  if (M > 0) p.y = checked_ptr<float>(y, op, "y");
  return p;
}

// The embed's weights checked, its rows (in, y) left for each call to set.
inline EmbedNormParams make_embed_weights(const char* op, int64_t C, int64_t k,
                                          std::uintptr_t weight, const std::string& wdtype,
                                          int64_t D, std::uintptr_t bias,
                                          std::uintptr_t norm_weight, std::uintptr_t norm_bias,
                                          double eps) {
  const DType wtype = parse_dtype(wdtype, op);
  require(D > 0 && C > 0 && k > 0, op, "C, D and k must be > 0, got C " + std::to_string(C) +
                                           ", D " + std::to_string(D) + ", k " +
                                           std::to_string(k));
  return {{nullptr, 0, C, nullptr, 0, k},
          checked_ptr<const void>(weight, op, "weight", dtype_size(wtype)), wtype,
          checked_ptr<const float>(bias, op, "bias"),
          checked_ptr<const float>(norm_weight, op, "norm_weight"),
          checked_ptr<const float>(norm_bias, op, "norm_bias"), D, static_cast<float>(eps),
          nullptr};
}

inline EmbedNormParams make_embed_norm_params(
    const char* op, std::uintptr_t x, int64_t rows, int64_t C, std::uintptr_t src, int64_t M,
    int64_t k, std::uintptr_t weight, const std::string& wdtype, int64_t D, std::uintptr_t bias,
    std::uintptr_t norm_weight, std::uintptr_t norm_bias, double eps, std::uintptr_t y,
    bool host_src) {
  const GatherRows in = make_gather_rows(op, x, rows, C, src, M, k, host_src);
  EmbedNormParams p =
      make_embed_weights(op, C, k, weight, wdtype, D, bias, norm_weight, norm_bias, eps);
  p.in = in;
  if (M > 0) p.y = checked_ptr<float>(y, op, "y");
  return p;
}

// The ISTFT head on the GPU: the inverse DFT as a GEMM against basis [n_fft, 2 bins] (cos rows
// then -sin rows, 2/n scaled, DC and Nyquist zero), the head's exp/clip/cos/sin on load.
struct IstftFramesParams {
  const float* spec;  // [N, 2 bins]: log-magnitude | phase
  const float* basis;
  const float* window;  // [n_fft], or null: frames left unwindowed (for overlap_add)
  int64_t N, bins, n_fft;
  float max_magnitude;
  float* out;  // [N, n_fft], windowed
};

// Window, overlap-add, division by the summed squared window, centre trim.
struct OverlapAddParams {
  const float* frames;  // [B, F, n_fft] inverse-DFT frames, not yet windowed
  const float* window;  // [n_fft]
  int64_t B, F, n_fft, hop;
  float* out;  // [B, hop (F - 1)]
};

}  // namespace soprano
