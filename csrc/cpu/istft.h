// The Vocos ISTFT head on CPU in fused passes. Spectrum: log-magnitude and phase rows -> the
// complex spectrum (exp, clip, cos, sin, DC and Nyquist zeroed), for an inverse real DFT done
// elsewhere (torch.fft, where MKL's beats pocketfft). Frames: the spectrum, pocketfft's inverse
// real DFT (third_party/pocketfft) and the window, a block of rows at a time per thread.
// Overlap-add: window (when the frames are not windowed yet), overlap-add, division by the
// summed squared window and the centre trim, each output sample written once.
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

struct FramesParams {
  const float* spec;  // [N, n_fft + 2] rows: log-magnitude | phase, row stride spec_row_stride
  const float* window;  // [n_fft], or null: frames left unwindowed (for istft_overlap_add)
  int64_t N, n_fft, spec_row_stride;
  float max_magnitude;
  float* out;  // [N, n_fft]
};

using soprano::OverlapAddParams;

// A streamed piece's overlap-add (soprano.runtime.streaming's _overlap_add in one pass): n
// windowed frames following first_frame earlier ones, the earlier frames' overlap-add tail
// (n_fft - hop samples) carried in and out, each sample that no later frame can touch divided
// by the summed squared window (at the end, `final`, of the frames that exist) and the first
// n_fft / 2 padded samples of the stream dropped.
struct StreamOverlapAddParams {
  const float* frames;  // [n, n_fft], windowed
  const float* window;  // [n_fft]
  const float* tail;    // [n_fft - hop]
  int64_t n, first_frame, n_fft, hop;
  bool final;
  float* next_tail;  // [n_fft - hop]
  float* out;        // room for hop (n + 1) samples
};

void istft_spectrum(const SpectrumParams& p);
void istft_frames(const FramesParams& p);
void istft_overlap_add(const OverlapAddParams& p);
// Returns the samples written to out.
int64_t istft_overlap_add_stream(const StreamOverlapAddParams& p);

}  // namespace soprano::cpu
