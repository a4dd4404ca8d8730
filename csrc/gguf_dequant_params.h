// The dequantize api layer (CPU and CUDA): the raw arguments from Python checked once, here,
// into the params the kernels read. A byte count that does not match the values asked for
// would make a kernel read past the tensor; caught here it is a Python ValueError.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"
#include "gguf_blocks.h"

namespace soprano {

struct DequantParams {
  const uint8_t* raw;  // n / block whole blocks
  gguf::QType qtype;
  int64_t n;           // values, a multiple of the type's block
  void* out;           // [n] in out_dtype
  DType out_dtype;
};

struct QTypeInfo {
  const char* name;  // nullptr: not a type dequantize decodes
  int64_t block, bytes;
};

inline QTypeInfo qtype_info(int qtype) {
  using gguf::Layout;
  using gguf::QType;
  switch (static_cast<QType>(qtype)) {
#define SOPRANO_QTYPE(T) \
  case QType::T: return {#T, Layout<QType::T>::kBlock, Layout<QType::T>::kBytes};
    SOPRANO_QTYPE(F16) SOPRANO_QTYPE(BF16) SOPRANO_QTYPE(Q8_0) SOPRANO_QTYPE(Q4_0)
    SOPRANO_QTYPE(Q4_1) SOPRANO_QTYPE(Q5_0) SOPRANO_QTYPE(Q5_1) SOPRANO_QTYPE(Q4_K)
    SOPRANO_QTYPE(Q5_K) SOPRANO_QTYPE(Q6_K)
#undef SOPRANO_QTYPE
  }
  return {nullptr, 0, 0};
}

// Q4_0 with the blocks of 8 consecutive rows interleaved: this project's in-memory layout for
// the CPU's matmuls, not a ggml type (soprano.ops.quantized.interleave_rows8 writes it). Per 8
// rows and block: the rows' 8 fp16 scales, then 4 chunks of 32 bytes, chunk c holding nibble
// bytes 4c..4c+3 of each row in row order. One 32-byte load then holds four values of each of
// 8 rows, so a block's integer dots land one row per lane, with one scale vector for the 8 and
// no horizontal sums (llama.cpp repacks Q4_0 the same way for its CPU GEMV).
constexpr int kQ4_0x8 = 0x1002;
// Q4_K the same way, per 8 rows and 256-value block: the rows' 8 fp16 d, their 8 fp16 dmin, the
// 6-bit scales decoded to bytes [sub-block][row] (64), the mins likewise (64), then the nibbles
// as 4 chunks of 8 groups of 32 bytes, chunk c group i holding bytes 32c + 4i .. 32c + 4i + 3 of
// each row. 148 bytes per row and block where Q4_K has 144: the decoded scales cost 2.8%.
constexpr int kQ4_Kx8 = 0x100c;
// Q5_K as Q4_Kx8, with the fifth bits (qh) as 8 groups of 32 bytes between the mins and the
// nibbles, group i holding qh bytes 4i .. 4i + 3 of each row: 180 bytes per row and block.
constexpr int kQ5_Kx8 = 0x100d;
// Q8_0 likewise: the 8 rows' fp16 d, then 8 groups of 32 bytes, group i holding bytes 4i ..
// 4i + 3 of each row's 32 int8. Q8_0's own bytes.
constexpr int kQ8_0x8 = 0x1008;
// Q6_K likewise: the 8 rows' fp16 d, their int8 scales as [sub-block][row] (128), the high bits
// as 2 halves of 8 groups of 32 bytes (qh bytes 32h + 4i .. + 3 of each row), then the low
// nibbles as 4 chunks of 8 groups (ql bytes 32k + 4i .. + 3). Q6_K's own bytes.
constexpr int kQ6_Kx8 = 0x100e;

// Rows a type's layout groups (its row counts must be multiples): 8 for the x8 layouts, else 1.
inline int64_t layout_rows(int qtype) {
  return qtype == kQ4_0x8 || qtype == kQ4_Kx8 || qtype == kQ5_Kx8 || qtype == kQ8_0x8 ||
                 qtype == kQ6_Kx8
             ? 8
             : 1;
}

// qtype_info, and the block (values, bytes per row) of the x8 layouts.
inline QTypeInfo layout_info(int qtype) {
  if (qtype == kQ8_0x8) return {"Q8_0x8", 32, 34};
  if (qtype == kQ4_0x8) return {"Q4_0x8", 32, 18};
  if (qtype == kQ4_Kx8) return {"Q4_Kx8", 256, 148};
  if (qtype == kQ5_Kx8) return {"Q5_Kx8", 256, 180};
  if (qtype == kQ6_Kx8) return {"Q6_Kx8", 256, 210};
  return qtype_info(qtype);
}

// `op` is the binding's name (dequantize_cpu, dequantize_cuda), which leads every error.
// `out_align`: the byte alignment the backend's stores need.
inline DequantParams make_dequant_params(const char* op, std::uintptr_t raw, int64_t n_bytes,
                                         int qtype, int64_t n, std::uintptr_t out,
                                         DType out_dtype, std::size_t out_align) {
  const QTypeInfo t = qtype_info(qtype);
  if (t.name == nullptr)
    fail(op, "ggml type " + std::to_string(qtype) +
                 " is not one dequantize decodes (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
                 "Q4_K, Q5_K, Q6_K)");
  if (n < 0 || n % t.block != 0 || n_bytes != n / t.block * t.bytes)
    fail(op, std::string(t.name) + " takes " + std::to_string(t.bytes) + " bytes per block of " +
                 std::to_string(t.block) + ": " + std::to_string(n) +
                 " values are not a whole number of blocks of " + std::to_string(n_bytes) +
                 " bytes");
  DequantParams p{nullptr, static_cast<gguf::QType>(qtype), n, nullptr, out_dtype};
  // No values, no reads: an empty tensor's pointer may be null.
  if (n > 0) {
    p.raw = checked_ptr<const uint8_t>(raw, op, "raw");
    p.out = checked_ptr<void>(out, op, "out", out_align);
  }
  return p;
}

}  // namespace soprano
