"""CPU linear layers of one decode step: fp32 torch vs the 16-bit-weight C++ kernel.

A decode step multiplies one activation row by every weight matrix once, so its speed is weight
bytes over DRAM bandwidth. To time that rather than cache hits, each sample runs the matmuls of
all layers (17 copies of each Soprano shape, ~300 MB in fp32) the way a step does.
Backends: `torch_fp32` (F.linear on fp32 weights: what the engine did before), `reference`
(ops.linear_reference: upcast then F.linear) and `cpu_cpp` (bf16 weights read natively).
Run after `pip install .`:  python bench/bench_linear.py [--repeats N] [--rows M]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from soprano import _ext
from soprano.ops import linear_reference
from timing import cpu_name, time_cpu

LAYERS = 17
# (N, K) of one Qwen3 layer of Soprano: q|k|v, o, gate|up, down; then the LM head once.
LAYER_SHAPES = [(768, 512), (512, 512), (4608, 512), (512, 2304)]
HEAD_SHAPE = (8192, 512)


def step_weights(dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = LAYER_SHAPES * LAYERS + [HEAD_SHAPE]
    return [(torch.randn(n, k, generator=gen) * 0.02).to(dtype) for n, k in shapes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rows", type=int, default=1, help="activation rows (batch)")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    w32, w16 = step_weights(torch.float32), step_weights(torch.bfloat16)
    xs = {k: torch.randn(args.rows, k) for k in {k for _, k in LAYER_SHAPES + [HEAD_SHAPE]}}
    backends = {
        "torch_fp32": (w32, lambda x, w: F.linear(x, w)),
        "reference": (w16, linear_reference),
    }
    if _ext.has_native():
        backends["cpu_cpp"] = (w16, _ext.linear_cpu)
    print(f"one decode step's matmuls, M={args.rows}")
    base = None
    for label, (weights, fn) in backends.items():
        def step(weights=weights, fn=fn):
            for w in weights:
                fn(xs[w.shape[1]], w)
        samples = time_cpu(step, args.repeats)
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        lo, med = min(samples), statistics.median(samples)
        base = base or med
        print(f"  {label:<10} min {lo * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms  "
              f"{nbytes / lo / 1e9:6.1f} GB/s  {base / med:5.2f}x vs torch_fp32 (median)")


if __name__ == "__main__":
    main()
