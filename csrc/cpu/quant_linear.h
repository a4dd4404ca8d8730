// CPU linear layer over GGUF-quantized weights kept in their stored blocks: y[M, N] = x[M, K] @
// dequant(w)[N, K]^T. A decode step streams every weight once, so its time is the weight bytes
// over memory bandwidth; Q8_0 reads 8.5 bits a weight and Q4_K 4.5, against bf16's 16.
//
// Few rows of x (a decode step, a batched one): each row is quantized once per call to int8 per
// block (32 values for Q8_0/Q4_0, 256 with 16-value sums for the K-quants), then every weight
// block, unpacked once for up to four rows, is dotted against them in integers (AVX2 maddubs, or
// AVX-512 VNNI's dpbusd where the CPU has it) and scaled once per block in fp32, as llama.cpp
// does. Many rows (a prefill: from 16, 32 for the K-quants): six weight rows at a time are
// dequantized to fp32 and go through linear()'s packed-panel GEMM, exact fp32 math.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"
#include "gguf_blocks.h"
#include "gguf_dequant_params.h"

namespace soprano::cpu {

// Which instruction set the integer dots use: the best the CPU has, or one named (tests run
// every path this CPU can; asking for one it lacks is a ValueError).
enum class QuantIsa { kAuto, kPortable, kAvx2, kAvx512Vnni };

struct QuantLinearParams {
  const float* x;
  const uint8_t* w;  // N rows of K / block blocks
  float* y;
  int64_t M, N, K;
  int64_t x_row_stride;
  int64_t y_row_stride;
  gguf::QType qtype;
  QuantIsa isa = QuantIsa::kAuto;
  // From this many rows of x on, dequantize + the packed fp32 GEMM (0: the measured default).
  int64_t packed_from_rows = 0;
};

// Whether quant_linear multiplies this ggml type (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
bool quant_linear_takes(int qtype);

// The isa a name picks ("auto", "portable", "avx2", "avx512vnni"); a ValueError when this CPU
// cannot run it.
QuantIsa parse_quant_isa(const std::string& name, const char* op);

// The instruction set kAuto resolves to on this CPU, by name.
const char* quant_isa_name(QuantIsa isa);

QuantLinearParams make_quant_linear_params(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y,
                                           int64_t M, int64_t N, int64_t K,
                                           int64_t x_row_stride, int64_t y_row_stride, int qtype,
                                           const std::string& isa);

void quant_linear(const QuantLinearParams& p);

}  // namespace soprano::cpu
