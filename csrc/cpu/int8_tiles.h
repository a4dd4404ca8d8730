// int8 dot products on the CPU's tile unit (AMX-INT8) for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K
// weights in their x8 layouts: the int8 dots of quant_linear.h for many rows of x (a batched
// step, a prefill), where the vector kernels are bound by their instructions (~48 multiply-adds
// a cycle) rather than by the weights' bytes. One tile instruction does 16 x 16 x 32 of them.
//
// The results are the 512-bit VNNI kernel's bits: a block's integer dot is exact either way, and
// it is scaled and summed in fp32 in the same order (acc = fma(dw * dx, float(dot), acc), block
// by block, and the offset sums of Q4_0, Q6_K and the K-quants' mins likewise), so a row gets
// the same bits alone, in any batch and on either unit.
#pragma once

#include <cstdint>

#include "cpu/act_blocks.h"

namespace soprano::cpu {

// Whether this process can run the tile dots: AMX-INT8, AVX-512 BW and F16C on the CPU, and the
// kernel's leave to use tile data.
bool int8_tiles_available();

// A thread's tile registers set up for q8_0x8_tile_dots, and released after its last call.
void configure_int8_tiles();
void release_int8_tiles();

// 16 weight rows of a Q8_0x8 (or, q4_0, a Q4_0x8) matrix, its x8 group at g and the next gs
// bytes on (nb blocks a row), against rows [0, M) of x (nb blocks a row; rows up to the next
// multiple of 16 readable), into y[m * y_row_stride + j] for j < 16.
void x8_tile_dots(bool q4_0, const uint8_t* g, int64_t gs, const BlockQ8* x, int64_t M,
                  int64_t nb, float* y, int64_t y_row_stride);

// The same for a Q4_Kx8, Q5_Kx8 or Q6_Kx8 matrix (`layout`; nb blocks of 256 a row) against x's
// 256-value blocks.
void kx8_tile_dots(int layout, const uint8_t* g, int64_t gs, const BlockQ8K* x, int64_t M,
                   int64_t nb, float* y, int64_t y_row_stride);

}  // namespace soprano::cpu
