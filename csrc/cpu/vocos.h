// The Vocos decoder's embed and ConvNeXt blocks on CPU, over gathered rows (vocos_params.h):
// one call per layer instead of a dozen torch ops, each GEMM's bias, GELU and gamma residual fused
// into its epilogue, the depthwise convolution and LayerNorm fused in one pass over the rows.
#pragma once

#include <cstdint>
#include <vector>

#include "vocos_params.h"

namespace soprano::cpu {

using soprano::ConvNeXtParams;
using soprano::EmbedNormParams;
using soprano::GatherRows;

void convnext_block(const ConvNeXtParams& p);
void embed_norm(const EmbedNormParams& p);

// The decoder's layers for one pass over pieces of many streams in one call: per layer, each
// stream's pending rows, its new rows and, at its end, the right zero padding are packed and go
// through the layer; the rows a later piece still needs become the stream's new pending rows;
// then the final LayerNorm and the head. The same arithmetic as soprano.model.vocos's op-by-op
// run_layers, without its ~20 Python-level ops per layer.
//
// A stream's pending rows live in one buffer of pending_floats(): per layer l, up to 2 radius_l
// rows of its width at offset(l), with their count in counts[l].
struct VocosLayers {
  EmbedNormParams embed;                // in and y set per pass
  std::vector<ConvNeXtParams> blocks;   // likewise
  const float* norm_weight;             // the final LayerNorm [D]
  const float* norm_bias;
  float eps;
  const void* head;                     // [head_rows, D]: float (head_dtype) or GGUF blocks
  DType head_dtype;
  int head_qtype;                       // ggml type of GGUF blocks, else 0
  bool head_bf16_dots;                  // bf16 head_dtype for the tile unit (cpu/bf16_dots.h)
  const float* head_bias;
  int64_t head_rows;

  struct Stream {
    const float* pending;                // pending_floats() and counts [layers()], as they are
    const int64_t* counts;
    float* next_pending;                 // what the next piece needs, written here
    int64_t* next_counts;
    const float* frames;                 // the new interpolated frames [new_rows, C]
    int64_t new_rows;
    bool final;                          // no frames follow: pad the right edge, emit all
  };

  int64_t layers() const { return 1 + static_cast<int64_t>(blocks.size()); }
  int64_t radius(int64_t l) const;
  int64_t width(int64_t l) const;
  int64_t offset(int64_t l) const;
  int64_t pending_floats() const { return offset(layers()); }

  // Head rows of every stream, packed in stream order into spec (room for spec_rows rows);
  // returns each stream's row count.
  std::vector<int64_t> run(const std::vector<Stream>& streams, float* spec,
                           int64_t spec_rows) const;
};

}  // namespace soprano::cpu
