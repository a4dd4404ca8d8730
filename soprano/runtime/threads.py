"""The CPU threads of one process: how many the native kernels and torch's own ops use.

A decode step is bandwidth-bound, and two hyperthreads of one core share its load ports, so the
default is the physical cores this process may run on, not the logical CPUs. One count serves
every thread of the process (the server's step and decoder threads too): ``soprano._C`` keeps it
globally, where OpenMP's own setting is per calling thread. torch is imported only to set its
count, so the torch-free engine (``soprano.lean``) reads the count here too.
"""
import os
from pathlib import Path

ENV = "SOPRANO_THREADS"


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may use; the CPU count where
    Linux's topology files are not readable."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus) or os.cpu_count() or 1
    return len(cores) or os.cpu_count() or 1


def requested_threads(threads: int | None = None) -> int:
    """``threads``, else ``SOPRANO_THREADS``, else the physical cores; ValueError when < 1."""
    where = "threads"
    if threads is None and os.environ.get(ENV, "").strip():
        where, text = ENV, os.environ[ENV].strip()
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{ENV} must be an integer >= 1, got '{text}'") from None
    if threads is None:
        return physical_cores()
    if threads < 1:
        raise ValueError(f"{where} must be >= 1, got {threads}")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Set the native kernels' and torch's intra-op threads (see ``requested_threads``) and
    return the count."""
    import torch

    from ..ops import native
    n = requested_threads(threads)
    native.set_num_threads(n)
    torch.set_num_threads(n)
    return n
