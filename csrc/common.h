// What every op's api layer and kernels share: the dtype names that cross from Python, the
// argument checks that turn a bad pointer or size into a Python ValueError (pybind11 maps
// std::invalid_argument to it) before it can crash a kernel, and the x86 runtime dispatch (one
// wheel must run on any x86-64 CPU, so SIMD kernels carry function-level target attributes and
// are picked by the features probed here). .cu files include it too, so nothing here may need
// x86 intrinsics outside the host-only guard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDACC__)
#define SOPRANO_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace soprano {

enum class DType { F32, F16, BF16 };

inline std::size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    default: return "bfloat16";
  }
}

// `op` leads every error message so a ValueError names the binding that raised it.
[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// Builds `what` even when ok; checks on a per-call or per-row path use fail() behind an if.
inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) fail(op, what);
}

// Names follow torch's (str(torch.float16) minus "torch.") so the Python side passes them as-is.
inline DType parse_dtype(const std::string& name, const char* op) {
  if (name == "float32") return DType::F32;
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  fail(op, "dtype must be float32, float16 or bfloat16, got '" + name + "'");
}

// A raw address from Python as a typed pointer. `align` defaults to T's, and is the element
// size for void pointers whose element type is a runtime DType.
template <typename T>
T* checked_ptr(std::uintptr_t p, const char* op, const char* name,
               std::size_t align = alignof(T)) {
  if (p == 0) fail(op, std::string(name) + " is a null pointer");
  if (p % align != 0)
    fail(op, std::string(name) + " is not aligned to its " + std::to_string(align) +
                 "-byte element size");
  return reinterpret_cast<T*>(p);
}

// The x86 extensions the kernels can use, each true only when the CPU has it and the OS saves
// its register state (XCR0); all false off x86. AMX kernels must still ask Linux for the tile
// state (arch_prctl ARCH_REQ_XCOMP_PERM) before their first tile instruction.
struct CpuFeatures {
  bool avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512_bf16, avx512_vnni, avx_vnni,
      amx_tile, amx_bf16, amx_int8;
};

// Probed on the first call; later calls return the same object.
const CpuFeatures& cpu_features();

// Whether Linux lets this process use the tile registers (AMX's tile data state, asked for on
// the first call, answered from then on); false off x86 and on CPUs without AMX.
bool tile_data_permitted();

// What the AVX2 kernels that convert fp16 with F16C need.
inline bool has_avx2_fma_f16c() {
  const CpuFeatures& f = cpu_features();
  return f.avx2 && f.fma && f.f16c;
}

}  // namespace soprano
