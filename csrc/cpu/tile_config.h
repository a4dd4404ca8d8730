// The tile unit's configuration (AMX, palette 1), shared by the tile kernels: each thread loads
// one before its first tile instruction and releases the tiles after its last.
#pragma once

#ifdef SOPRANO_X86_DISPATCH
#include <immintrin.h>

#include <cstdint>

namespace soprano::cpu {

struct alignas(64) TileConfig {  // ldtilecfg's 64-byte operand
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes of a row, per tile
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) inline void load_tile_config(const TileConfig& c) {
  // GCC (12) does not see ldtilecfg read the whole operand: in a function of its own it dropped
  // the stores that filled it in, leaving every tile unconfigured (and the first tile
  // instruction a SIGILL). The empty asm makes them happen first.
  asm volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

}  // namespace soprano::cpu
#endif
