"""The backbone's decode step as the engine runs it (its runner: CUDA graphs on a GPU), per
backend, batch and position, side by side in one run.

On the random-weight real-shape checkpoint: each backend (``torch``: the reference ops, with
attention over the whole cache under a mask; ``cuda``; ``triton``) builds its own runner and
cache; every row is prefilled with a 42-token prompt and stepped at positions 60 and 1000, so
the rows show whether a step's cost follows the sequences' lengths. Times are per step
(LM only: no sampling, no decoder), min and median over ``--repeats`` samples. ``--profile``
adds, per backend on a GPU, the kernels one eager batch-1 step launches (what a graph replays):
their count and the ones that take the most time.

    python bench/decode_step.py [--device cuda] [--batch 1 --batch 64] [--backend NAME ...]
                                [--profile]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from soprano.model.loader import load_backbone
from soprano.ops import OpTable
from soprano.ops.table import backend_available
from soprano.runtime.kv_cache import KVCache
from soprano.runtime.runners import make_runner
from soprano.testing import write_checkpoint


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, device: str, repeats: int, calls: int = 50) -> list[float]:
    step()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        sync(device)
        samples.append((time.perf_counter() - start) / calls)
    return samples


def profile_step(step, top: int = 12) -> None:
    """Kernels of one step, from the CUDA profiler: count, total GPU time, the top ones."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels)
    print(f"  {len(kernels)} kernels, {total:.0f} us of GPU time per eager step")
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    for name, times in ranked:
        print(f"  {sum(times):8.1f} us  {len(times):4d}x  {name[:90]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, action="append", help="repeatable; default 1, 8, 64")
    ap.add_argument("--backend", action="append", help="repeatable; default every usable one")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", help="model dir (default: a generated real-shape one)")
    ap.add_argument("--profile", action="store_true", help="list one eager step's kernels")
    args = ap.parse_args()
    path = Path(args.checkpoint or write_checkpoint(tempfile.mkdtemp() + "/real", "real"))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    batches = args.batch or [1, 8, 64]
    backends = args.backend or [b for b in ("torch", "cuda", "triton")
                                if backend_available(b, args.device)[0]]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"decode step on {args.device} ({name}), {str(dtype)[6:]}, torch {torch.__version__}")
    print("| backend | runner | batch | position | min ms | median ms |")
    print("|---|---|---|---|---|---|")
    for backend in backends:
        time_backend(path, backend, args.device, dtype, batches, args.repeats, args.profile)
        if args.device == "cuda":
            torch.cuda.empty_cache()


def time_backend(path, backend, device, dtype, batches, repeats, profile) -> None:
    """One backend's table rows (and profile): its own model, cache and runner."""
    bb = load_backbone(path, OpTable(device, dtype, backend))
    cache = KVCache(bb.cfg, max(batches), dtype, device)
    runner = make_runner(bb, cache)
    for slot in range(max(batches)):
        runner.prefill(torch.arange(10, 52), slot)
    for batch in batches:
        for position in (60, 1000):
            tokens = torch.full((batch,), 7)
            positions = torch.full((batch,), position)
            slots = torch.arange(batch)
            s = time_step(lambda: runner.step(tokens, positions, slots), device, repeats)
            print(f"| {backend} | {runner.name} | {batch} | {position} | "
                  f"{min(s) * 1e3:.3f} | {statistics.median(s) * 1e3:.3f} |", flush=True)
    if profile and device == "cuda":
        print(f"{backend}: one eager step, batch 1 at position 60")
        one, at = torch.tensor([7], device=device), torch.tensor([60], device=device)
        profile_step(lambda: bb.step(one, at, torch.tensor([0], device=device), cache, 61))

if __name__ == "__main__":
    main()
