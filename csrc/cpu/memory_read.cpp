// The read-rate probe (memory_read.h). Each thread reads one contiguous share, as a GEMV's
// thread reads its rows, 4 KB at a time with prefetch_ahead, into eight independent sums so the
// adds never wait on each other.
#include "cpu/memory_read.h"

#include <algorithm>
#include <cstring>

#include "cpu/prefetch.h"
#include "cpu/threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace soprano::cpu {

namespace {

constexpr int64_t kChunk = 4096;

uint64_t read_share(const uint8_t* p, int64_t bytes) {
  uint64_t sums[8] = {};
  for (int64_t off = 0; off < bytes; off += kChunk) {
    const int64_t n = std::min(kChunk, bytes - off);
    prefetch_ahead(p + off, n);
    for (int64_t i = 0; i + 64 <= n; i += 64)
      for (int k = 0; k < 8; ++k) {
        uint64_t word;
        std::memcpy(&word, p + off + i + 8 * k, sizeof word);
        sums[k] += word;
      }
    for (int64_t i = n / 64 * 64; i < n; i += 8) {
      uint64_t word;
      std::memcpy(&word, p + off + i, sizeof word);
      sums[0] += word;
    }
  }
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  return total;
}

}  // namespace

uint64_t read_words(const uint8_t* p, int64_t bytes) {
  uint64_t total = 0;
#pragma omp parallel num_threads(num_threads()) reduction(+ : total)
  {
#ifdef _OPENMP
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int64_t team = 1, me = 0;
#endif
    const int64_t words = bytes / 8;
    const int64_t begin = words * me / team * 8, end = words * (me + 1) / team * 8;
    total += read_share(p + begin, end - begin);
  }
  return total;
}

}  // namespace soprano::cpu
