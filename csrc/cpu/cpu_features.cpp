// The CPU feature probe of common.h, in one place so every kernel dispatches on the same answer
// and Python can report it (soprano._C.cpu_features()).
#include "common.h"

#ifdef SOPRANO_X86_DISPATCH
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace soprano {
namespace {

#ifdef SOPRANO_X86_DISPATCH
// XCR0 bits: the register state the OS saves across context switches. Where it is off, the
// instructions that use that state raise #UD, whatever CPUID says.
constexpr uint64_t kXcr0Avx = (1u << 1) | (1u << 2);  // XMM, YMM
constexpr uint64_t kXcr0Avx512 = kXcr0Avx | (1u << 5) | (1u << 6) | (1u << 7);  // opmask, ZMM
constexpr uint64_t kXcr0Amx = (1u << 17) | (1u << 18);  // XTILECFG, XTILEDATA

uint64_t read_xcr0() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return 0;
  uint32_t lo, hi;
  // xgetbv by opcode: the intrinsic needs -mxsave, and this file builds for any x86-64.
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// GCC >= 12 knows every name below. libgcc already folds the AVX and AVX-512 state into its
// answers; the explicit XCR0 masks make the AMX answer as safe and the rule visible.
bool request_tile_data() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return cpu_features().amx_tile && syscall(SYS_arch_prctl, kArchReqXcompPerm,
                                            kXfeatureXtiledata) == 0;
}

CpuFeatures probe() {
  __builtin_cpu_init();
  const uint64_t xcr0 = read_xcr0();
  const bool avx = (xcr0 & kXcr0Avx) == kXcr0Avx;
  const bool avx512 = (xcr0 & kXcr0Avx512) == kXcr0Avx512;
  const bool amx = (xcr0 & kXcr0Amx) == kXcr0Amx;
  CpuFeatures f{};
  f.avx2 = avx && __builtin_cpu_supports("avx2");
  f.fma = avx && __builtin_cpu_supports("fma");
  f.f16c = avx && __builtin_cpu_supports("f16c");
  f.avx_vnni = avx && __builtin_cpu_supports("avxvnni");
  f.avx512f = avx512 && __builtin_cpu_supports("avx512f");
  f.avx512bw = avx512 && __builtin_cpu_supports("avx512bw");
  f.avx512vl = avx512 && __builtin_cpu_supports("avx512vl");
  f.avx512_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  f.avx512_vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  f.amx_tile = amx && __builtin_cpu_supports("amx-tile");
  f.amx_bf16 = amx && __builtin_cpu_supports("amx-bf16");
  f.amx_int8 = amx && __builtin_cpu_supports("amx-int8");
  return f;
}
#else
CpuFeatures probe() { return {}; }
bool request_tile_data() { return false; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = probe();
  return f;
}

bool tile_data_permitted() {
  static const bool ok = request_tile_data();
  return ok;
}

}  // namespace soprano
