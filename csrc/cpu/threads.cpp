// See threads.h.
#include "cpu/threads.h"

#include <atomic>
#include <string>

#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace soprano::cpu {
namespace {

std::atomic<int> g_threads{0};  // 0: not set
thread_local int t_threads = 0;  // 0: the process's count

}  // namespace

int num_threads() {
  if (t_threads > 0) return t_threads;
  const int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  require(n >= 1, "set_num_threads", "n must be >= 1, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

void set_thread_threads(int n) {
  require(n >= 0, "set_thread_threads", "n must be >= 0, got " + std::to_string(n));
  t_threads = n;
}

}  // namespace soprano::cpu
