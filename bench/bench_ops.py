"""Every op of the backend table on every backend usable here, at Soprano's shapes.

One row per (op, shape, backend): min and median time per call over several runs, and the
ratio to the torch reference measured in the same run (this machine is shared: compare
ratios). Triton on a CPU runs in its interpreter, which is for tests, not speed: it is timed
only with ``--triton-interpreter``. Composed ops (``qwen3_step``) are timed by
``bench_qwen3_decode.py``.

    python bench/bench_ops.py [--repeats N] [--device cpu|cuda] [--triton-interpreter]
"""
import argparse
import os
import statistics
import sys

import torch


def cases(device):
    """(op, label, args) at the shapes a Soprano step or decoder window uses."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device, dtype)

    H, D, NH, KVH, L = 512, 128, 4, 1, 1024
    cos, sin = rnd(42, D), rnd(42, D)
    cache = rnd(17, KVH, L, D)
    yield "rms_norm", "x [1, 512]", (rnd(1, H), rnd(H), 1e-6)
    yield "rms_norm", "x [42, 512]", (rnd(42, H), rnd(H), 1e-6)
    for wdtype in (torch.bfloat16, torch.float32):
        w = str(wdtype).removeprefix("torch.")
        yield "linear", f"[1, 512] x w_gate_up {w}", (rnd(1, H), rnd(4608, H, dtype=wdtype))
        yield "linear", f"[42, 512] x wqkv {w}", (rnd(42, H), rnd(768, H, dtype=wdtype))
    yield "qk_norm_rope", "q [1, 4, 42, 128]", (rnd(1, NH, 42, D), rnd(D), cos, sin, 1e-6)
    yield "attention", "prefill 42 tokens", (rnd(1, NH, 42, D), rnd(1, KVH, 42, D),
                                             rnd(1, KVH, 42, D), None, True)
    lengths = torch.full((16,), 60, device=device)
    slots = torch.arange(16, device=device)
    yield "attention_decode", "16 rows at 60", (rnd(16, NH, D), cache, cache, slots, lengths,
                                                 61)
    yield "istft", "17 frames", (rnd(1, 1025, 17).abs(), rnd(1, 1025, 17), 2048, 512,
                                 torch.hann_window(2048, device=device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--triton-interpreter", action="store_true",
                    help="on a CPU, also time Triton kernels in the interpreter")
    args = ap.parse_args()
    if args.device == "cpu" and args.triton_interpreter:
        os.environ["TRITON_INTERPRET"] = "1"  # before soprano.kernels is imported
    from soprano.ops import IMPLS, OPS, backend_available
    from timing import cpu_name, time_cpu
    name = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"device {args.device} ({name}), torch threads {torch.get_num_threads()}")
    print("| op | shape | backend | min ms | median ms | vs torch (median) |")
    print("|---|---|---|---|---|---|")
    for op, label, call_args in cases(args.device):
        x = call_args[0]
        wdtype = call_args[1].dtype if OPS[op].has_weight else None
        fns = {"torch": OPS[op].reference}
        for impl in IMPLS.get(op, []):
            if (impl.accepts(args.device, x.dtype, wdtype)
                    and backend_available(impl.backend, args.device)[0]
                    and (impl.backend != "triton" or args.device != "cpu"
                         or args.triton_interpreter)):
                fns[impl.backend] = impl.fn
        samples = {name: [] for name in fns}
        for _ in range(args.repeats):  # alternate, so every backend sees the same machine
            for name, fn in fns.items():
                samples[name] += time_cpu(lambda: sync(fn(*call_args), args.device), 1)
        base = statistics.median(samples["torch"])
        for name, s in samples.items():
            med = statistics.median(s)
            print(f"| {op} | {label} | {name} | {min(s) * 1e3:.3f} | {med * 1e3:.3f} | "
                  f"{base / med:.2f}x |")
    sys.stdout.flush()


def sync(out, device):
    if device == "cuda":
        torch.cuda.synchronize()
    return out


if __name__ == "__main__":
    main()
