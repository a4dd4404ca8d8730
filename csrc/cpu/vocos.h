// The Vocos decoder's embed and ConvNeXt blocks on CPU, over gathered rows (vocos_params.h):
// one call per layer instead of a dozen torch ops, each GEMM's bias, GELU and gamma residual fused
// into its epilogue, the depthwise convolution and LayerNorm fused in one pass over the rows.
#pragma once

#include "vocos_params.h"

namespace soprano::cpu {

using soprano::ConvNeXtParams;
using soprano::EmbedNormParams;
using soprano::GatherRows;

void convnext_block(const ConvNeXtParams& p);
void embed_norm(const EmbedNormParams& p);

}  // namespace soprano::cpu
