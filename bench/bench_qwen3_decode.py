"""The fused CPU decode step and prefill (csrc/cpu/qwen3_step.cpp) vs the op-by-op step.

On the random-weight real-shape checkpoint (bf16 matrices, fp32 activations): one decode step
at batch 1, 4 and 16 (rows in different cache slots at position ~60) and the prefill of a
42-token prompt, each timed for both paths in alternation in one run (this machine is shared:
compare the ratio). Decode steps are weight-bound, so the step's GB/s is the 151 MB of matrices
over its time.

    python bench/bench_qwen3_decode.py [--repeats N] [--checkpoint DIR]
"""
import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from soprano.model.loader import load_backbone
from soprano.testing import write_checkpoint
from timing import cpu_name, time_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--checkpoint", help="model dir (default: a generated real-shape one)")
    args = ap.parse_args()
    path = Path(args.checkpoint or write_checkpoint(tempfile.mkdtemp() + "/real", "real"))
    bb = load_backbone(path, "cpu", torch.float32)
    matrix_bytes = sum(t.numel() * t.element_size() for lw in bb.layers
                       for t in (lw.wqkv, lw.wo, lw.w_gate_up, lw.w_down))
    matrix_bytes += bb.lm_head.numel() * bb.lm_head.element_size()
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; "
          f"{matrix_bytes / 1e6:.0f} MB of matrices ({bb.layers[0].wqkv.dtype})")
    prompt = torch.arange(10, 52)
    for batch in (1, 4, 16):
        fused_cache, ops_cache = bb.new_cache(batch), bb.new_cache(batch)
        for slot in range(batch):
            bb.prefill(prompt, fused_cache, slot)
            bb.prefill_ops(prompt, ops_cache, slot)
        tokens = torch.full((batch,), 7)
        positions = torch.full((batch,), 60)
        mask = (torch.arange(61)[None, :] <= positions[:, None])[:, None, None, :]
        report(f"decode step, batch {batch}", args.repeats, matrix_bytes,
               lambda: bb.decode(tokens, positions, fused_cache, 61, mask),
               lambda: bb.decode_ops(tokens, positions, ops_cache, 61, mask))
    fused_cache, ops_cache = bb.new_cache(1), bb.new_cache(1)
    report("prefill, 42 tokens", args.repeats, None,
           lambda: bb.prefill(prompt, fused_cache, 0),
           lambda: bb.prefill_ops(prompt, ops_cache, 0))


def report(label, repeats, nbytes, fused, op_by_op) -> None:
    samples = {"fused": [], "op by op": []}
    for _ in range(repeats):  # alternate, so both see the same machine
        samples["fused"] += time_cpu(fused, 1)
        samples["op by op"] += time_cpu(op_by_op, 1)
    print(label)
    base = statistics.median(samples["op by op"])
    for name, s in samples.items():
        lo, med = min(s), statistics.median(s)
        rate = f"  {nbytes / lo / 1e9:5.1f} GB/s" if nbytes else ""
        print(f"  {name:<9} min {lo * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms{rate}  "
              f"{base / med:5.2f}x vs op by op (median)")


if __name__ == "__main__":
    main()
