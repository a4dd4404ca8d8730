// CPU linear layer over GGUF-quantized weights kept in their stored blocks: y[M, N] = x[M, K] @
// dequant(w)[N, K]^T. A decode step streams every weight once, so its time is the weight bytes
// over memory bandwidth; Q8_0 reads 8.5 bits a weight and Q4_K 4.5, against bf16's 16.
//
// Few rows of x (a decode step, a batched one): each row is quantized once per call to int8 per
// block (32 values for Q8_0/Q4_0, 256 with 16-value sums for the K-quants), then every weight
// block, unpacked once for up to four rows, is dotted against them in integers (AVX2 maddubs, or
// AVX-512 VNNI's dpbusd where the CPU has it) and scaled once per block in fp32, as llama.cpp does;
// the epilogue (bias, GELU, gamma residual) follows each block of output columns. Many rows (a
// prefill: from 16, 32 for the K-quants): a task's weight rows are dequantized to fp32 and go
// through linear()'s packed-panel GEMM, exact fp32 math.
//
// The x8 layouts (kQ8_0x8 ... kQ6_Kx8, gguf_dequant_params.h: 8 rows' blocks interleaved, as a
// CPU table lays them out at load) put one weight row in each lane of a vector: a block's dots
// for 8 rows need no horizontal sum and one scale vector, 1.3-2.3x the plain kernels. They keep
// the int8 dots at every row count (they beat the packed GEMM there too). With 512-bit vectors
// (AVX-512 BW + VNNI) and from 4 rows of x, two groups (16 rows) share a vector, the same bits.
// Weight streams are prefetched ahead (prefetch.h).
#pragma once

#include <cstdint>
#include <string>

#include "common.h"
#include "gguf_blocks.h"
#include "cpu/linear_params.h"
#include "gguf_dequant_params.h"

namespace soprano::cpu {

// Which instruction set the integer dots use: the best the CPU has, or one named (tests run
// every path this CPU can; asking for one it lacks is a ValueError). kAvx512Vnni: VNNI on
// 256-bit vectors (AVX512-VL), 8 rows of an x8 layout per vector; kAvx512: 512-bit vectors,
// 16 rows (two x8 groups) per vector, the same bits; kAmx: kAvx512, with Q8_0x8, Q4_0x8 and
// Q4_Kx8 on the tile unit (int8_tiles.h, the same bits again) at every row count. Auto takes the
// tiles where the CPU has AMX-INT8, from 5 rows of x for Q8_0x8 and 16 for the others.
enum class QuantIsa { kAuto, kPortable, kAvx2, kAvx512Vnni, kAvx512, kAmx };

// linear()'s params (sizes, strides, epilogue; lin.w: N rows of K / block blocks, lin.wtype
// unused, lin.packed_from_rows 0 for the measured default below) and the blocks' type.
struct QuantLinearParams {
  LinearParams lin;
  gguf::QType qtype;
  QuantIsa isa = QuantIsa::kAuto;
  // Few rows too: each weight row decoded to fp32 and dotted with fp32 x (linear_decoded; plain
  // Q8_0 rows decoded in registers, linear_q8_0_rows, the same bits), no int8 rounding of x.
  // The decoder's choice: its audio turns that rounding into noise ~33 dB under the signal (a
  // Q8_0 decoder, streamed against one-shot), where the backbone's hidden states lose ~1.6 dB
  // of their 42.
  bool fp32_rows = false;
};

// Whether quant_linear multiplies this ggml type (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
bool quant_linear_takes(int qtype);

// The isa a name picks ("auto", "portable", "avx2", "avx512vnni", "avx512", "amx"); a ValueError
// when this CPU cannot run it.
QuantIsa parse_quant_isa(const std::string& name, const char* op);

// The instruction set kAuto resolves to on this CPU, by name.
const char* quant_isa_name(QuantIsa isa);

QuantLinearParams make_quant_linear_params(std::uintptr_t x, std::uintptr_t w, std::uintptr_t y,
                                           int64_t M, int64_t N, int64_t K,
                                           int64_t x_row_stride, int64_t y_row_stride, int qtype,
                                           const std::string& isa, bool fp32_rows = false);

void quant_linear(const QuantLinearParams& p);

// x [M, K] as the int8 dots see it, per block of `block` values (32 or 256, dividing K): scales
// d [M, K / block] and values q [M, K]; `portable`: the scalar code of CPUs without AVX2 (a test
// hook: both must give the same bits).
void quantize_rows(const float* x, int64_t M, int64_t K, int block, float* d, int8_t* q,
                   bool portable);

}  // namespace soprano::cpu
