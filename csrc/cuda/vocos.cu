// The Vocos decoder on CUDA in fp32 (the decoder's precision, as upstream): a row kernel for
// depthwise conv + LayerNorm (one block per output row), and one tiled GEMM, out = A @ W^T,
// whose A loader and epilogue make it each of the decoder's matmuls:
//   A: plain rows | conv taps gathered through src (the embed) | the ISTFT head's spectrum,
//      computed from log-magnitude and phase as it loads (exp, clip, cos, sin);
//   epilogue: + bias | + bias, erf-GELU | residual + gamma (acc + bias) | x window | none.
// 64x64 tiles, 16-deep K steps through shared memory, 4x4 outputs per thread, FMA in fp32: no
// TF32, whose 10-bit mantissa the reference's 2e-5 tolerance does not allow. Then a kernel for
// the overlap-add, envelope division and trim. src values are checked by the Python wrapper
// and clamped here (a kernel cannot raise).
#include "cuda/vocos.h"

#include <algorithm>
#include <string>

#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

enum AMode { kRows = 0, kTaps = 1, kSpectrum = 2 };
enum Epi { kBias = 0, kBiasGelu = 1, kResidual = 2, kWindow = 3, kNone = 4 };

constexpr int kTile = 64, kDepth = 16, kThreads = 256;

struct GemmArgs {
  const float* a;        // rows [M, K] | tap rows [R, K / taps] | spectrum rows [M, K]
  const int64_t* src;    // kTaps, kResidual: the first tap row of output m
  int64_t src_rows;      // rows src may reach (clamp bound)
  int64_t taps;          // kTaps: conv taps; kResidual: row offset of the centre tap
  const void* w;         // [N, K]
  const float* bias;     // [N] (kWindow: the window)
  const float* gamma;    // kResidual
  const float* residual; // kResidual: rows [R, N]
  float max_magnitude;   // kSpectrum
  int64_t M, N, K;
  float* out;            // [M, N]
};

// Output row m: the depthwise conv of rows src[m].. (taps of them; 0: row m as it is), then
// LayerNorm. Each thread keeps its channels in registers between the two reductions.
template <int kMaxPerThread>
__global__ void norm_rows_kernel(const float* x, const int64_t* src, int64_t rows,
                                 const float* w, const float* b, const float* nw,
                                 const float* nb, float* out, int64_t D, int64_t taps,
                                 float eps) {
  const int64_t m = blockIdx.x;
  const float* first = x + m * D;
  if (taps > 0) first = x + clamp_index(src[m], 0, rows - taps) * D;
  float v[kMaxPerThread];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    v[i] = 0.f;
    if (d < D) {
      if (taps > 0) {
        float acc = b[d];
        for (int64_t t = 0; t < taps; ++t) acc += w[d * taps + t] * first[t * D + d];
        v[i] = acc;
      } else {
        v[i] = first[d];
      }
    }
    sum += v[i];
  }
  const float mean = block_sum(sum) / static_cast<float>(D);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (d < D) sq += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(block_sum(sq) / static_cast<float>(D) + eps);
#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (d < D) out[m * D + d] = (v[i] - mean) * rstd * nw[d] + nb[d];
  }
}

template <int kMode>
__device__ __forceinline__ float load_a(const GemmArgs& g, int64_t m, int64_t k) {
  if (m >= g.M || k >= g.K) return 0.f;
  if constexpr (kMode == kRows) {
    return g.a[m * g.K + k];
  } else if constexpr (kMode == kTaps) {
    const int64_t row = clamp_index(g.src[m], 0, g.src_rows - g.taps) + k % g.taps;
    return g.a[row * (g.K / g.taps) + k / g.taps];
  } else {
    const int64_t bins = g.K / 2, bin = k < bins ? k : k - bins;
    const float* row = g.a + m * g.K;
    const float mag = fminf(expf(row[bin]), g.max_magnitude);
    float s, c;
    sincosf(row[bins + bin], &s, &c);
    return mag * (k < bins ? c : s);
  }
}

template <int kMode, int kEpi, typename W>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmArgs g) {
  __shared__ float as[kDepth][kTile + 4];
  __shared__ float ws[kDepth][kTile + 4];
  const W* w = static_cast<const W*>(g.w);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < g.K; k0 += kDepth) {
#pragma unroll
    for (int r = 0; r < kTile * kDepth / kThreads; ++r) {
      const int idx = threadIdx.x + r * kThreads;
      const int row = idx / kDepth, kk = idx % kDepth;
      as[kk][row] = load_a<kMode>(g, m0 + row, k0 + kk);
      const int64_t n = n0 + row, k = k0 + kk;
      ws[kk][row] = n < g.N && k < g.K ? to_float(w[n * g.K + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= g.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= g.N) continue;
      float v = acc[i][j];
      if constexpr (kEpi == kWindow) v *= g.bias[n];
      if constexpr (kEpi <= kResidual) v += g.bias[n];
      if constexpr (kEpi == kBiasGelu) v = 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
      if constexpr (kEpi == kResidual) {
        const int64_t row = clamp_index(g.src[m], 0, g.src_rows - 1 - g.taps) + g.taps;
        v = g.residual[row * g.N + n] + g.gamma[n] * v;
      }
      g.out[m * g.N + n] = v;
    }
  }
}

template <int kMode, int kEpi>
void gemm(const GemmArgs& g, DType wtype, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((g.N + kTile - 1) / kTile),
                  static_cast<unsigned>((g.M + kTile - 1) / kTile));
  switch (wtype) {
    case DType::F32: gemm_kernel<kMode, kEpi, float><<<grid, kThreads, 0, stream>>>(g); break;
    case DType::F16: gemm_kernel<kMode, kEpi, __half><<<grid, kThreads, 0, stream>>>(g); break;
    case DType::BF16:
      gemm_kernel<kMode, kEpi, __nv_bfloat16><<<grid, kThreads, 0, stream>>>(g);
      break;
  }
}

void norm_rows(const float* x, const int64_t* src, int64_t rows, const float* w, const float* b,
               const float* nw, const float* nb, float* out, int64_t M, int64_t D,
               int64_t taps, float eps, cudaStream_t stream) {
  constexpr int kPerThread = 4;
  const int threads = static_cast<int>(
      std::min<int64_t>(1024, ((D + kPerThread - 1) / kPerThread + 31) / 32 * 32));
  norm_rows_kernel<kPerThread><<<static_cast<unsigned>(M), threads, 0, stream>>>(
      x, src, rows, w, b, nw, nb, out, D, taps, eps);
}

// out[b, s] for one sample per thread: the frames covering padded position s + n_fft / 2,
// windowed, summed and divided by their summed squared window.
__global__ void overlap_add_kernel(const OverlapAddParams p, int64_t length) {
  const int64_t b = blockIdx.y;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= length) return;
  const int64_t pos = s + p.n_fft / 2;
  const int64_t g_lo = pos >= p.n_fft ? (pos - p.n_fft) / p.hop + 1 : 0;
  const int64_t g_hi = min(p.F - 1, pos / p.hop);
  float sum = 0.f, env = 0.f;
  for (int64_t g = g_lo; g <= g_hi; ++g) {
    const int64_t i = pos - g * p.hop;
    const float w = p.window[i];
    sum += p.frames[(b * p.F + g) * p.n_fft + i] * w;
    env += w * w;
  }
  p.out[b * length + s] = sum / env;
}

void check_rows(const char* op, int64_t M, int64_t D) {
  require(M <= 0x7fffffff && (M + kTile - 1) / kTile <= 65535, op,
          "too many rows for one launch: " + std::to_string(M));
  require(D <= 4096, op, "D must be <= 4096, got " + std::to_string(D));
}

}  // namespace

void convnext_block(const ConvNeXtParams& p, void* workspace, std::uintptr_t stream_handle) {
  const GatherRows& in = p.in;
  const int64_t M = in.M, D = in.width;
  if (M == 0) return;
  check_rows("convnext_block_cuda", M, D);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  float* normed = static_cast<float*>(workspace);
  float* hidden = normed + M * D;
  norm_rows(in.x, in.src, in.rows, p.dw_weight, p.dw_bias, p.norm_weight, p.norm_bias, normed,
            M, D, in.k, p.eps, stream);
  gemm<kRows, kBiasGelu>({normed, nullptr, 0, 0, p.w1, p.b1, nullptr, nullptr, 0.f, M,
                          p.hidden, D, hidden}, p.wtype, stream);
  gemm<kRows, kResidual>({hidden, in.src, in.rows, in.k / 2, p.w2, p.b2, p.gamma, in.x, 0.f, M,
                          D, p.hidden, p.y}, p.wtype, stream);
  check_launch("convnext_block");
}

void embed_norm(const EmbedNormParams& p, std::uintptr_t stream_handle) {
  const GatherRows& in = p.in;
  if (in.M == 0) return;
  check_rows("embed_norm_cuda", in.M, p.D);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  gemm<kTaps, kBias>({in.x, in.src, in.rows, in.k, p.weight, p.bias, nullptr, nullptr, 0.f, in.M,
                      p.D, in.width * in.k, p.y}, p.wtype, stream);
  norm_rows(p.y, nullptr, 0, nullptr, nullptr, p.norm_weight, p.norm_bias, p.y, in.M, p.D, 0,
            p.eps, stream);
  check_launch("embed_norm");
}

void istft_frames(const IstftFramesParams& p, std::uintptr_t stream_handle) {
  if (p.N == 0) return;
  check_rows("istft_frames_cuda", p.N, 0);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const GemmArgs g{p.spec, nullptr, 0, 0, p.basis, p.window, nullptr, nullptr, p.max_magnitude,
                   p.N, p.n_fft, 2 * p.bins, p.out};
  if (p.window != nullptr)
    gemm<kSpectrum, kWindow>(g, DType::F32, stream);
  else
    gemm<kSpectrum, kNone>(g, DType::F32, stream);
  check_launch("istft_frames");
}

void istft_overlap_add(const OverlapAddParams& p, std::uintptr_t stream_handle) {
  const int64_t length = p.hop * (p.F - 1);
  if (p.B == 0 || length == 0) return;
  require(p.B <= 65535, "istft_overlap_add_cuda", "B must be <= 65535, got " +
                                                      std::to_string(p.B));
  const dim3 grid(static_cast<unsigned>((length + 255) / 256), static_cast<unsigned>(p.B));
  overlap_add_kernel<<<grid, 256, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(p, length);
  check_launch("istft_overlap_add");
}

}  // namespace soprano::cuda
