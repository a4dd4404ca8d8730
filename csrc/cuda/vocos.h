// CUDA entry points of the Vocos decoder ops. Plain C++ (no CUDA headers) so the host compiler
// can build bindings.cpp; streams arrive as the integer handles torch reports.
#pragma once

#include <cstdint>

#include "vocos_params.h"

namespace soprano::cuda {

// Each enqueues on `stream` of the calling thread's current device. convnext_block's
// workspace holds [M, D] + [M, 3D] floats.
void convnext_block(const ConvNeXtParams& p, void* workspace, std::uintptr_t stream);
void embed_norm(const EmbedNormParams& p, std::uintptr_t stream);
void istft_frames(const IstftFramesParams& p, std::uintptr_t stream);
void istft_overlap_add(const OverlapAddParams& p, std::uintptr_t stream);

}  // namespace soprano::cuda
