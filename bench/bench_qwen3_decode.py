"""The fused CPU step and prefill (the cpu backend's qwen3_step) vs the op-by-op step.

On the random-weight real-shape checkpoint (bf16 matrices, fp32 activations): one decode step
at batch 1, 4 and 16 (rows in different cache slots at position ~60) and the prefill of a
42-token prompt, each timed for both paths in alternation in one run (this machine is shared:
compare the ratio). Decode steps are weight-bound, so the step's GB/s is the 151 MB of matrices
over its time, and its bandwidth floor is the time the kernels' threads take to read a buffer of
those bytes (``soprano.bench.read_rate``), measured in the same run: the decode rows print their
min time as a multiple of that floor.

    python bench/bench_qwen3_decode.py [--repeats N] [--checkpoint DIR]
"""
import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from soprano.bench import read_rate
from soprano.model.loader import load_backbone
from soprano.ops import OpTable, native
from soprano.runtime.kv_cache import KVCache
from soprano.runtime.runners import EagerRunner, FusedCpuRunner
from soprano.testing import write_checkpoint
from timing import cpu_name, time_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--checkpoint", help="model dir (default: a generated real-shape one)")
    args = ap.parse_args()
    path = Path(args.checkpoint or write_checkpoint(tempfile.mkdtemp() + "/real", "real"))
    bb = load_backbone(path, OpTable("cpu", torch.float32))
    matrix_bytes = sum(t.numel() * t.element_size() for t in bb.weights.matrices)
    rate = read_rate(matrix_bytes, native.num_threads(), args.repeats)
    floor = matrix_bytes / rate
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; "
          f"{matrix_bytes / 1e6:.0f} MB of matrices ({bb.weights.lm_head.dtype}); "
          f"{native.num_threads()} threads read them at {rate / 1e9:.1f} GB/s: "
          f"floor {floor * 1e3:.2f} ms")
    prompt = torch.arange(10, 52)

    def runners(slots):
        fused_cache, ops_cache = (KVCache(bb.cfg, slots, torch.float32, "cpu") for _ in "fo")
        fused = bb.ops.fused_step(bb.weights, fused_cache.k, fused_cache.v)
        return FusedCpuRunner(fused, fused_cache), EagerRunner(bb, ops_cache)

    for batch in (1, 4, 16):
        fused, eager = runners(batch)
        for slot in range(batch):
            fused.prefill(prompt, slot)
            eager.prefill(prompt, slot)
        tokens = torch.full((batch,), 7)
        positions = torch.full((batch,), 60)
        slots = torch.arange(batch)
        report(f"decode step, batch {batch}", args.repeats, matrix_bytes, floor,
               lambda: fused.step(tokens, positions, slots),
               lambda: eager.step(tokens, positions, slots))
    fused, eager = runners(1)
    report("prefill, 42 tokens", args.repeats, None, None,
           lambda: fused.prefill(prompt, 0), lambda: eager.prefill(prompt, 0))


def report(label, repeats, nbytes, floor, fused, op_by_op) -> None:
    samples = {"fused": [], "op by op": []}
    for _ in range(repeats):  # alternate, so both see the same machine
        samples["fused"] += time_cpu(fused, 1)
        samples["op by op"] += time_cpu(op_by_op, 1)
    print(label)
    base = statistics.median(samples["op by op"])
    for name, s in samples.items():
        lo, med = min(s), statistics.median(s)
        rate = f"  {nbytes / lo / 1e9:5.1f} GB/s" if nbytes else ""
        to_floor = f"  {lo / floor:4.2f}x floor" if floor else ""
        print(f"  {name:<9} min {lo * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms{rate}{to_floor}  "
              f"{base / med:5.2f}x vs op by op (median)")


if __name__ == "__main__":
    main()
