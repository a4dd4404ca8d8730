// The OpenMP thread count of the CPU kernels, readable and settable from Python without torch
// (the module never links libtorch), so a server can size the native kernels to its CPU share.
#pragma once

namespace soprano::cpu {

// The threads every parallel region of the CPU kernels uses (their num_threads clause): the
// count set_num_threads gave, from whichever thread calls; until then omp_get_max_threads()
// (OMP_NUM_THREADS, else the CPUs). 1 without OpenMP.
int num_threads();

// Sets it for every thread (OpenMP's own setting is per calling thread, so a server's step and
// decoder threads would each see the default), and omp_set_num_threads(n) for the caller; n < 1
// is a ValueError.
void set_num_threads(int n);

// The calling thread's own count, over the process's (0: back to the process's); n < 0 is a
// ValueError. A server's decoder workers run beside its step thread: teams of their own on the
// same cores only make the threads take turns.
void set_thread_threads(int n);

}  // namespace soprano::cpu
