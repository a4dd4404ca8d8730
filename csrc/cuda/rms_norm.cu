// CUDA RMSNorm for fp32/fp16/bf16 with fp32 accumulation: one block per row, 16-byte vector
// loads when pointers, strides and hidden allow it, a scalar path otherwise.
#include "cuda/rms_norm.h"

#include <algorithm>
#include <string>

#include "cuda/kernel_common.cuh"

namespace soprano::cuda {
namespace {

template <typename T, int N>
__global__ void rms_norm_kernel(const RmsNormParams p) {
  using V = Vec<T, N>;
  const int64_t row = blockIdx.x;
  const V* x = reinterpret_cast<const V*>(static_cast<const T*>(p.x) + row * p.x_row_stride);
  const V* w = static_cast<const V*>(p.weight);
  V* y = reinterpret_cast<V*>(static_cast<T*>(p.out) + row * p.out_row_stride);
  const int64_t nvec = p.hidden / N;

  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const V xv = x[i];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float f = to_float(xv.v[k]);
      ss += f * f;
    }
  }
  const float rstd = rsqrtf(block_sum(ss) / static_cast<float>(p.hidden) + p.eps);

  // The second read of x hits L1/L2; the same thread reads and writes each element, so out may
  // alias x.
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const V xv = x[i], wv = w[i];
    V yv;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      // Round the normalized value to T before the weight, as Qwen3 (and the reference) do.
      const T normed = from_float<T>(to_float(xv.v[k]) * rstd);
      yv.v[k] = from_float<T>(to_float(wv.v[k]) * to_float(normed));
    }
    y[i] = yv;
  }
}

template <typename T>
void launch(const RmsNormParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorize = p.hidden % kVec == 0 && p.x_row_stride % kVec == 0 &&
                         p.out_row_stride % kVec == 0 && aligned16(p.x) && aligned16(p.weight) &&
                         aligned16(p.out);
  const int64_t per_row = vectorize ? p.hidden / kVec : p.hidden;
  // About one vector per thread for model-sized rows; longer rows loop.
  const int threads = static_cast<int>(std::min<int64_t>(1024, (per_row + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (vectorize)
    rms_norm_kernel<T, kVec><<<grid, threads, 0, stream>>>(p);
  else
    rms_norm_kernel<T, 1><<<grid, threads, 0, stream>>>(p);
}

}  // namespace

void rms_norm(const RmsNormParams& p, std::uintptr_t stream_handle) {
  require(p.rows <= 0x7fffffff, "rms_norm_cuda",
          "rows must fit the grid (< 2^31), got " + std::to_string(p.rows));
  if (p.rows == 0) return;
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.dtype) {
    case DType::F32: launch<float>(p, stream); break;
    case DType::F16: launch<__half>(p, stream); break;
    case DType::BF16: launch<__nv_bfloat16>(p, stream); break;
  }
  check_launch("rms_norm");
}

}  // namespace soprano::cuda
