"""Timing helpers shared by the kernel benchmarks: CPU loops timed with perf_counter, the read
rate of a plain copy (the bandwidth floor's denominator, measured in the same run as what it
judges) and the CPU's name for the report header (as ``soprano-tts env`` reports it)."""
import time

from soprano.bench import copy_read_rate
from soprano.ops.report import cpu_name

__all__ = ["copy_read_rate", "cpu_name", "time_cpu"]


def time_cpu(fn, repeats: int) -> list[float]:
    """Seconds per call, one sample per repeat; each sample loops long enough (~20 ms) that
    timer resolution does not matter."""
    fn()
    start = time.perf_counter()
    fn()
    n = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return samples
