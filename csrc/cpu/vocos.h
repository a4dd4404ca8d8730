// The Vocos decoder's embed and ConvNeXt blocks on CPU, over gathered rows (vocos_params.h): one
// call per layer instead of a dozen torch ops, each GEMM's bias, GELU and gamma residual fused
// into its epilogue, the depthwise convolution and LayerNorm fused in one pass over the rows.
#pragma once

#include "cpu/vocos_params.h"

namespace soprano::cpu {

void convnext_block(const ConvNeXtParams& p);
void embed_norm(const EmbedNormParams& p);

}  // namespace soprano::cpu
