"""RMSNorm backends side by side, so a kernel change shows its speedup against the torch
reference on the same machine in one run.

CPU: the reference vs cpu_cpp (fp32), timed with perf_counter loops. GPU (when present): the
reference vs triton vs cuda_cpp in fp32/fp16/bf16, timed with triton.testing.do_bench, plus a
host loop that includes Python dispatch (what a batch-1 decode step pays).
Run after `pip install .`:  python bench/bench_rms_norm.py [--repeats N]
"""
import argparse
import statistics
import time

import torch

from soprano.ops import native
from soprano.ops import rms_norm_reference
from timing import cpu_name, time_cpu

EPS = 1e-6
SHAPES = [(1, 512), (1, 1024), (64, 1024), (1024, 1024), (8192, 1024), (4096, 4096)]


def time_gpu(fn, repeats: int) -> list[float]:
    from triton.testing import do_bench
    return [do_bench(fn, warmup=10, rep=50) * 1e-3 for _ in range(repeats)]


def time_host_loop(fn, n: int = 200) -> float:
    """Seconds per call for back-to-back calls, synchronizing once: bound by Python and launch
    overhead for small rows."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def report(label: str, samples: list[float], nbytes: int, extra: str = "") -> None:
    lo, med = min(samples), statistics.median(samples)
    print(f"  {label:<10} min {lo * 1e6:9.2f} us  median {med * 1e6:9.2f} us  "
          f"{nbytes / lo / 1e9:8.1f} GB/s{extra}")


def run(device: str, dtypes, backends: dict, timer, repeats: int) -> None:
    for dtype in dtypes:
        for rows, hidden in SHAPES:
            x = torch.randn(rows, hidden, device=device, dtype=dtype)
            w = torch.randn(hidden, device=device, dtype=dtype)
            out = torch.empty_like(x)
            nbytes = (2 * rows * hidden + hidden) * x.element_size()
            print(f"{device} {str(dtype)[6:]} rows={rows} hidden={hidden}")
            for label, fn in backends.items():
                call = (lambda fn=fn: fn(x, w, EPS)) if label == "reference" else \
                    (lambda fn=fn: fn(x, w, EPS, out=out))
                extra = (f"  host loop {time_host_loop(call) * 1e6:7.2f} us"
                         if device == "cuda" else "")
                report(label, timer(call, repeats), nbytes, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    cpu = {"reference": rms_norm_reference}
    if native.has_cpu():
        cpu["cpu_cpp"] = native.rms_norm_cpu
    run("cpu", (torch.float32,), cpu, time_cpu, args.repeats)

    if not torch.cuda.is_available():
        print("no GPU: triton and cuda_cpp not timed")
        return
    print(f"GPU: {torch.cuda.get_device_name()}")
    from soprano.kernels.rms_norm import rms_norm as triton_rms_norm
    gpu = {"reference": rms_norm_reference, "triton": triton_rms_norm}
    if native.has_cuda():
        gpu["cuda_cpp"] = native.rms_norm_cuda
    run("cuda", (torch.float32, torch.float16, torch.bfloat16), gpu, time_gpu, args.repeats)


if __name__ == "__main__":
    main()
