// The blocks a row of x becomes for the int8 dots (quant_linear.cpp quantizes into them; the
// vector and tile kernels read them): per block an fp32 scale d and int8 values q, x ~ d q.
#pragma once

#include <cstdint>

namespace soprano::cpu {

struct BlockQ8 {  // 32 activations, met by Q8_0 and Q4_0 weights
  float d;
  int32_t sum;
  int8_t q[32];
};

struct BlockQ8K {  // 256 activations, met by the K-quants
  float d;
  int16_t bsums[16];
  int8_t q[256];
};

}  // namespace soprano::cpu
