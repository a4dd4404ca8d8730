// See threads.h.
#include "cpu/threads.h"

#include <string>

#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace soprano::cpu {

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  require(n >= 1, "set_num_threads", "n must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

}  // namespace soprano::cpu
