// CUDA dequantize of GGUF blocks (layouts and arithmetic: gguf_blocks.h), bit-exact against
// gguf-py in fp32: the shared decoders use __fmul_rn/__fadd_rn/__fsub_rn on the device, which
// nvcc never contracts into an FMA. One thread per group of eight consecutive values (a 32-value
// block is 4 threads, a 256-value super-block one warp), so each thread writes one 16-byte
// vector (two for fp32) and a warp's stores are contiguous. The block's scale bytes are read by
// every thread of its group; they come from L1.
#include "cuda/gguf_dequant.h"

#include <string>

#include "cuda/kernel_common.cuh"
#include "gguf_blocks.h"

namespace soprano::cuda {
namespace {

using gguf::Layout;
using gguf::QType;

constexpr int kThreads = 256;

template <typename O>
__device__ __forceinline__ void store8(const float* v, O* out) {
  if constexpr (sizeof(O) == 4) {
    auto* o = reinterpret_cast<Vec<float, 4>*>(out);
    o[0] = {{v[0], v[1], v[2], v[3]}};
    o[1] = {{v[4], v[5], v[6], v[7]}};
  } else {
    Vec<O, 8> o;
#pragma unroll
    for (int k = 0; k < 8; ++k) o.v[k] = from_float<O>(v[k]);
    *reinterpret_cast<Vec<O, 8>*>(out) = o;
  }
}

// Thread t writes values 8t .. 8t+7 (fewer in F16/BF16's last group).
template <QType T, typename O>
__global__ void dequant_kernel(const DequantParams p) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first = 8 * t;
  if (first >= p.n) return;
  O* out = static_cast<O*>(p.out) + first;
  float v[8];
  if constexpr (Layout<T>::kBlock == 1) {
    const uint8_t* raw = p.raw + 2 * first;
    if (first + 8 > p.n) {
      for (int k = 0; first + k < p.n; ++k) out[k] = from_float<O>(gguf::decode1<T>(raw + 2 * k));
      return;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = gguf::decode1<T>(raw + 2 * k);
  } else {
    constexpr int kGroups = Layout<T>::kBlock / 8;
    gguf::decode8<T>(p.raw + t / kGroups * Layout<T>::kBytes, static_cast<int>(t % kGroups), v);
  }
  store8(v, out);
}

template <QType T, typename O>
void launch(const DequantParams& p, cudaStream_t stream) {
  const int64_t groups = (p.n + 7) / 8;
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  dequant_kernel<T, O><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
}

template <QType T>
void launch(const DequantParams& p, cudaStream_t stream) {
  switch (p.out_dtype) {
    case DType::F32: launch<T, float>(p, stream); break;
    case DType::F16: launch<T, __half>(p, stream); break;
    case DType::BF16: launch<T, __nv_bfloat16>(p, stream); break;
  }
}

}  // namespace

void dequantize(const DequantParams& p, std::uintptr_t stream_handle) {
  // 2^31 - 1 blocks of 256 threads of 8 values
  require(p.n / (8 * kThreads) < 0x7fffffff, "dequantize_cuda",
          "too many values for one grid: " + std::to_string(p.n));
  if (p.n == 0) return;
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.qtype) {
    case QType::F16: launch<QType::F16>(p, stream); break;
    case QType::BF16: launch<QType::BF16>(p, stream); break;
    case QType::Q8_0: launch<QType::Q8_0>(p, stream); break;
    case QType::Q4_0: launch<QType::Q4_0>(p, stream); break;
    case QType::Q4_1: launch<QType::Q4_1>(p, stream); break;
    case QType::Q5_0: launch<QType::Q5_0>(p, stream); break;
    case QType::Q5_1: launch<QType::Q5_1>(p, stream); break;
    case QType::Q4_K: launch<QType::Q4_K>(p, stream); break;
    case QType::Q5_K: launch<QType::Q5_K>(p, stream); break;
    case QType::Q6_K: launch<QType::Q6_K>(p, stream); break;
  }
  check_launch("dequantize");
}

}  // namespace soprano::cuda
