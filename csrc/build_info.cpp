// The facts of build_info.h come from the preprocessor, so they describe this translation unit;
// CMake gives every source of _C the same flags, so they describe the module.
#include "build_info.h"

#ifdef SOPRANO_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace soprano {

BuildInfo build_info() {
  BuildInfo b{};
#if defined(__clang__)
  b.compiler = "Clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "GCC " __VERSION__;
#else
  b.compiler = "unknown";
#endif
  b.cxx_standard = __cplusplus;
#ifdef _OPENMP
  b.openmp = true;
  b.openmp_version = _OPENMP;
#endif
#ifdef SOPRANO_WITH_CUDA
  b.cuda = true;
  b.cuda_version =
      std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  b.cuda_archs = SOPRANO_CUDA_ARCHS;
#endif
  return b;
}

}  // namespace soprano
