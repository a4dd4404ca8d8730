// How this build of soprano._C was made (compiler, OpenMP, CUDA), for bug reports and for
// checking that a wheel has the backends a deployment expects.
#pragma once

#include <string>

namespace soprano {

struct BuildInfo {
  std::string compiler;      // e.g. "GCC 12.2.0"
  long cxx_standard;         // __cplusplus
  bool openmp;
  int openmp_version;        // _OPENMP (yyyymm), 0 without OpenMP
  bool cuda;                 // CUDA kernels compiled in (not whether a GPU is present)
  std::string cuda_version;  // CUDA runtime the kernels were built against, e.g. "13.0"
  std::string cuda_archs;    // CMAKE_CUDA_ARCHITECTURES, e.g. "80-real 90"
};

BuildInfo build_info();

}  // namespace soprano
