// The OpenMP thread count of the CPU kernels, readable and settable from Python without torch
// (the module never links libtorch), so a server can size the native kernels to its CPU share.
#pragma once

namespace soprano::cpu {

// omp_get_max_threads(); 1 without OpenMP.
int num_threads();

// omp_set_num_threads(n); n < 1 is a ValueError. OpenMP keeps the setting per calling thread,
// so it applies to kernels called from the thread that set it. When torch is imported first,
// the module resolves libgomp to torch's copy, so this also sets torch's intra-op threads.
void set_num_threads(int n);

}  // namespace soprano::cpu
