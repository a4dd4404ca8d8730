// The Python face of soprano._C. Arguments are raw pointers (Python ints), sizes and stream
// handles, never torch tensors, so the module does not link libtorch; soprano/_ext.py turns
// tensors into these arguments.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/linear.h"
#include "cpu/rms_norm.h"
#include "cuda/rms_norm.h"
#include "rms_norm_params.h"

namespace py = pybind11;
using namespace py::literals;
using soprano::DType;

namespace {

void rms_norm_cpu(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t out, int64_t rows,
                  int64_t hidden, int64_t x_row_stride, int64_t out_row_stride, double eps) {
  soprano::cpu::rms_norm(soprano::make_rms_norm_params(x, weight, out, rows, hidden, x_row_stride,
                                                       out_row_stride, eps, DType::F32));
}

void rms_norm_cuda(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t out, int64_t rows,
                   int64_t hidden, int64_t x_row_stride, int64_t out_row_stride, double eps,
                   const std::string& dtype, std::uintptr_t stream) {
#ifdef SOPRANO_WITH_CUDA
  soprano::cuda::rms_norm(soprano::make_rms_norm_params(x, weight, out, rows, hidden, x_row_stride,
                                                        out_row_stride, eps,
                                                        soprano::parse_dtype(dtype)),
                          stream);
#else
  throw std::runtime_error("soprano._C was built without CUDA (SOPRANO_CUDA=OFF or no nvcc)");
#endif
}

void linear_w16_cpu(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y, int64_t M, int64_t N,
                    int64_t K, int64_t x_row_stride, int64_t y_row_stride,
                    const std::string& wdtype) {
  soprano::cpu::linear_w16(
      soprano::cpu::make_linear_params(x, w, y, M, N, K, x_row_stride, y_row_stride, wdtype));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "soprano native kernels; see soprano/_ext.py for the tensor-level wrappers";
  m.def("has_cuda", [] {
#ifdef SOPRANO_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether CUDA kernels were compiled in (not whether a GPU is present).");
  m.def("rms_norm", &rms_norm_cpu, "fp32 RMSNorm on CPU, rows of `hidden` elements.", "x"_a,
        "weight"_a, "out"_a, "rows"_a, "hidden"_a, "x_row_stride"_a, "out_row_stride"_a, "eps"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("linear_w16", &linear_w16_cpu,
        "y[M, N] = x[M, K] @ w[N, K]^T on CPU: fp32 x and y, bfloat16 or float16 w.", "x"_a,
        "w"_a, "y"_a, "M"_a, "N"_a, "K"_a, "x_row_stride"_a, "y_row_stride"_a, "wdtype"_a,
        py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm_cuda", &rms_norm_cuda, "RMSNorm on the GPU, enqueued on `stream`.", "x"_a,
        "weight"_a, "out"_a, "rows"_a, "hidden"_a, "x_row_stride"_a, "out_row_stride"_a, "eps"_a,
        "dtype"_a, "stream"_a);
}
