// The Vocos ISTFT head on CPU, around torch's FFT: the inverse real DFT itself is torch.fft.irfft
// (pocketfft or MKL, called from Python), while the passes on either side are fused here. In
// front: log-magnitude and phase rows -> the complex spectrum (exp, clip, cos, sin, DC and
// Nyquist zeroed) in one pass. Behind: window, overlap-add, division by the summed squared
// window and the centre trim in one pass, each output sample written once.
#pragma once

#include <cstdint>

#include "vocos_params.h"

namespace soprano::cpu {

struct SpectrumParams {
  const float* spec;  // [N, 2 bins] rows: log-magnitude | phase, row stride spec_row_stride
  int64_t N, bins, spec_row_stride;
  float max_magnitude;
  float* out;  // [N, bins] complex64 (interleaved re, im)
};

using soprano::OverlapAddParams;

void istft_spectrum(const SpectrumParams& p);
void istft_overlap_add(const OverlapAddParams& p);

}  // namespace soprano::cpu
