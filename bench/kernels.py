"""Every kernel of the backend table side by side: the torch reference, each backend usable
here, and torch's own fused op where it has one (``F.rms_norm``,
``F.scaled_dot_product_attention``), at the shapes a Soprano step, prefill or decoder pass
uses.

One row per (op, shape, backend): min and median time per call over ``--repeats`` samples taken
in alternation (this machine is shared: compare within a run), GB/s of the bytes the op must
move, TFLOP/s for prefill, the fraction of the memory rate a plain copy reaches in the same run,
and the speed-up over the torch reference (medians). The copy rate is a CPU copy's read rate
(numpy), or a GPU copy's read + write traffic (HBM). The Triton interpreter is timed on a CPU
only with ``--triton-interpreter`` (it is a test vehicle). The whole fused step is timed by
``bench_qwen3_decode.py``.

    python bench/kernels.py [--op OP ...] [--backend NAME ...] [--device cpu|cuda]
                            [--dtype bfloat16] [--repeats N] [--markdown] [--triton-interpreter]
"""
import argparse
import itertools
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

# Soprano's backbone: hidden, query heads, kv heads, head dim, cache length, layers
H, NH, KVH, D, L, LAYERS = 512, 4, 1, 128, 1024, 17
# (N, K) of one layer's matrices (q|k|v, o, gate|up, down), then the LM head
LAYER_SHAPES = [(768, 512), (512, 512), (4608, 512), (512, 2304)]
HEAD_SHAPE = (8192, 512)


@dataclass
class Case:
    """How to call an op's implementations on one shape: ``bind(fn)`` -> a zero-argument call."""
    op: str
    label: str
    bind: Callable[[Callable], Callable[[], Any]]
    dtype: torch.dtype
    nbytes: int
    flops: int = 0
    wdtype: torch.dtype | None = None
    baselines: dict[str, Callable[[], Any]] = field(default_factory=dict)


def _rnd(gen, device, dtype, *shape):
    return torch.randn(*shape, generator=gen).to(device, dtype)


def rms_norm_cases(gen, device, dtype):
    rows = (1, 42) if device == "cpu" else (1, 64, 8192)
    for n in rows:
        x, w = _rnd(gen, device, dtype, n, H), _rnd(gen, device, dtype, H)
        yield Case("rms_norm", f"x [{n}, {H}]", lambda fn, x=x, w=w: lambda: fn(x, w, 1e-6),
                   dtype, 2 * x.numel() * x.element_size(),
                   baselines={"F.rms_norm": lambda x=x, w=w: F.rms_norm(x, (H,), w, 1e-6)})


def linear_cases(gen, device, dtype):
    """A decode step's matmuls (every layer's, ~300 MB in fp32), so a sample times weight bytes
    over memory bandwidth rather than cache hits."""
    for rows in (1, 16):
        for wdtype in (torch.bfloat16, dtype) if dtype != torch.bfloat16 else (dtype,):
            weights = [(_rnd(gen, device, torch.float32, n, k) * 0.02).to(wdtype)
                       for n, k in LAYER_SHAPES * LAYERS + [HEAD_SHAPE]]
            xs = {k: _rnd(gen, device, dtype, rows, k) for k in (512, 2304)}
            nbytes = sum(w.numel() * w.element_size() for w in weights)

            def bind(fn, weights=weights, xs=xs):
                return lambda: [fn(xs[w.shape[1]], w) for w in weights]
            w_name = str(wdtype).removeprefix("torch.")
            yield Case("linear", f"step matmuls, {rows} rows, w {w_name}", bind, dtype, nbytes,
                       2 * rows * nbytes // weights[0].element_size(), wdtype=wdtype)


def _cache(gen, device, dtype, slots):
    return [_rnd(gen, device, dtype, slots, KVH, L, D) for _ in "kv"]


def qk_norm_rope_cases(gen, device, dtype):
    from types import SimpleNamespace

    from soprano.model.qwen3 import rope_tables
    cos, sin = rope_tables(SimpleNamespace(head_dim=D, rope_theta=1e6), L, device)
    rows_list = (1, 16, 42) if device == "cpu" else (1, 64, 4096)
    for rows in rows_list:
        slots_n = max(rows // 42 + 1, 17) if rows > 64 else 17
        kc, vc = _cache(gen, device, dtype, slots_n)
        qkv = _rnd(gen, device, dtype, rows, (NH + 2 * KVH) * D)
        qw, kw = _rnd(gen, device, dtype, D), _rnd(gen, device, dtype, D)
        flat = torch.randperm(slots_n * L, generator=gen)[:rows].to(device)
        pos, slots = flat % L, flat // L
        args = (qkv, qw, kw, cos, sin, pos, slots, kc, vc, 1e-6)
        nbytes = (qkv.numel() + rows * NH * D) * qkv.element_size() + 2 * rows * D * 4
        yield Case("qk_norm_rope", f"{rows} rows", lambda fn, a=args: lambda: fn(*a), dtype,
                   nbytes)


def attention_decode_cases(gen, device, dtype):
    """Hot: the rows' K/V stay in the CPU's caches between calls. Cold (CPU): every call reads
    other slots of a 256-slot cache (256 MB), so K/V come from memory, as in a real step
    whose 17 layers' caches do not fit."""
    shapes = ((1, 60, False), (1, 512, False), (16, 512, False), (1, 512, True),
              (16, 512, True)) if device == "cpu" else \
        ((1, 1024, False), (64, 1024, False), (128, 1024, False))
    for batch, length, cold in shapes:
        kc, vc = _cache(gen, device, dtype, 256 if cold else batch + 1)
        q = _rnd(gen, device, dtype, batch, NH, D)
        lengths = torch.full((batch,), length, device=device)
        span = None if device == "cuda" else length  # a graph's whole-cache launch on a GPU
        nbytes = 2 * batch * KVH * length * D * q.element_size()
        flops = 4 * batch * NH * length * D
        if cold:
            rotation = itertools.cycle(torch.arange(256).view(-1, batch))

            def bind(fn, q=q, kc=kc, vc=vc, lengths=lengths, span=span, rotation=rotation):
                return lambda: fn(q, kc, vc, next(rotation), lengths, span)
            yield Case("attention_decode", f"{batch} rows at {length}, cold", bind, dtype,
                       nbytes, flops)
            continue
        slots = torch.randperm(batch + 1, generator=gen)[:batch].to(device)
        k_rows, v_rows = kc[slots, :, :length], vc[slots, :, :length]
        sdpa = (lambda q=q, k=k_rows, v=v_rows: F.scaled_dot_product_attention(
            q[:, :, None], k, v, enable_gqa=True))
        yield Case("attention_decode", f"{batch} rows at {length}",
                   lambda fn, a=(q, kc, vc, slots, lengths, span): lambda: fn(*a), dtype,
                   nbytes, flops, baselines={"sdpa (pre-gathered)": sdpa})


def attention_prefill_cases(gen, device, dtype):
    prompts = ([42], [300]) if device == "cpu" else ([42], [1024], [512] * 8)
    for lengths in prompts:
        kc, vc = _cache(gen, device, dtype, len(lengths))
        cu = torch.tensor([0] + lengths).cumsum(0).to(device)
        q = _rnd(gen, device, dtype, int(cu[-1]), NH, D)
        slots = torch.arange(len(lengths), device=device)
        causal_pairs = sum(n * (n + 1) // 2 for n in lengths)
        nbytes = (2 * q.numel() + 2 * KVH * D * sum(lengths)) * q.element_size()
        views = [(q[int(a):int(b)].transpose(0, 1)[None], kc[i:i + 1, :, :n], vc[i:i + 1, :, :n])
                 for i, (a, b, n) in enumerate(zip(cu[:-1], cu[1:], lengths))]

        def sdpa(views=views):
            return [F.scaled_dot_product_attention(qq, k, v, is_causal=True, enable_gqa=True)
                    for qq, k, v in views]
        label = f"{len(lengths)} x {lengths[0]} tokens"
        yield Case("attention_prefill", label,
                   lambda fn, a=(q, kc, vc, cu, slots, max(lengths)): lambda: fn(*a), dtype,
                   nbytes, 4 * causal_pairs * NH * D, baselines={"sdpa (per prompt)": sdpa})


# The decoder's rows: a streamed token (4 frames + the 2 a k=3 conv keeps), a first chunk, a
# batch step of 32 streams, a one-shot sentence of 200 tokens (797 frames).
DECODER_ROWS = (4, 13, 128, 797)
DECODER_DIM = 768


def _block_args(gen, device, rows):
    D = DECODER_DIM
    x = _rnd(gen, device, torch.float32, rows + 2, D)
    src = torch.arange(rows, device=device)
    vec = [_rnd(gen, device, torch.float32, n) for n in (3 * D, D, D, D, 3 * D, D, D)]
    w1 = (_rnd(gen, device, torch.float32, 3 * D, D) * 0.02).half()
    w2 = (_rnd(gen, device, torch.float32, D, 3 * D) * 0.02).half()
    return (x, src, vec[0].view(D, 1, 3), vec[1], vec[2], vec[3], w1, vec[4], w2, vec[5],
            vec[6], 1e-6)


def _bf16_dots_baseline(args) -> dict:
    """The CPU block over the same matrices as bf16 dots (a quantized decoder's form on CPUs
    with AMX-BF16), where this CPU has them."""
    from soprano.ops import native, native_vocos
    from soprano.ops.bf16_dots import Bf16DotsMatrix
    if args[0].device.type != "cpu" or not native.has_bf16_dots():
        return {}
    dots = list(args)
    for i in (6, 8):
        dots[i] = Bf16DotsMatrix(args[i].bfloat16())
    return {"cpu, bf16 dots": lambda: native_vocos.convnext_block_cpu(*dots)}


def convnext_block_cases(gen, device, dtype):
    """One ConvNeXt block (fp16 matrices, as the published decoder.pth stores them; as bf16
    dots too where the CPU has AMX-BF16)."""
    for rows in DECODER_ROWS:
        args = _block_args(gen, device, rows)
        macs = 2 * rows * 3 * DECODER_DIM * DECODER_DIM
        yield Case("convnext_block", f"{rows} frames, D {DECODER_DIM}",
                   lambda fn, a=args: lambda: fn(*a), torch.float32,
                   2 * 3 * DECODER_DIM * DECODER_DIM * 2 + 3 * rows * DECODER_DIM * 4,
                   2 * macs, baselines=_bf16_dots_baseline(args))


def embed_norm_cases(gen, device, dtype):
    for rows in DECODER_ROWS:
        x = _rnd(gen, device, torch.float32, rows, 512)
        w = (_rnd(gen, device, torch.float32, DECODER_DIM, 512, 1) * 0.02).half()
        args = (x, torch.arange(rows, device=device), w,
                *[_rnd(gen, device, torch.float32, DECODER_DIM) for _ in range(3)], 1e-6)
        yield Case("embed_norm", f"{rows} frames, k 1", lambda fn, a=args: lambda: fn(*a),
                   torch.float32, w.numel() * 2 + rows * (512 + DECODER_DIM) * 4,
                   2 * rows * 512 * DECODER_DIM)


def istft_frames_cases(gen, device, dtype):
    window = torch.hann_window(2048, device=device)
    for rows in DECODER_ROWS:
        spec = _rnd(gen, device, torch.float32, rows, 2050)
        yield Case("istft_frames", f"{rows} frames", lambda fn, a=(spec, window): lambda: fn(*a),
                   torch.float32, spec.numel() * 4 + rows * 2048 * 4)


def istft_cases(gen, device, dtype):
    window = torch.hann_window(2048, device=device)
    for frames in (17, 797):
        spec = _rnd(gen, device, torch.float32, 1, frames, 2050)
        yield Case("istft", f"{frames} frames", lambda fn, a=(spec, window, 512): lambda: fn(*a),
                   torch.float32, spec.numel() * 4 + 512 * (frames - 1) * 4)


# K-quants' fp16 scale fields (byte offsets in a block): gguf-py cannot quantize to them, so
# their blocks are random bytes with these set to realistic scales.
K_SCALES = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _gguf_bytes(gen, name, shape):
    import gguf
    import numpy as np
    qtype = gguf.GGMLQuantizationType[name]
    if name not in K_SCALES:
        values = (torch.randn(*shape, generator=gen) * 0.02).numpy()
        return torch.from_numpy(gguf.quants.quantize(values, qtype).reshape(-1).view(np.uint8))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = torch.randint(0, 256, (shape[0] * shape[1] // block, size), generator=gen,
                           dtype=torch.uint8)
    for at in K_SCALES[name]:
        blocks[:, at:at + 2] = (torch.rand(blocks.shape[0], 1, generator=gen) * 1e-3).half() \
            .view(torch.uint8)
    return blocks.reshape(-1)


def dequantize_cases(gen, device, dtype):
    """Every GGUF type of a [32768, 512] weight (16 M values, 64 MB in fp32: past the CPU's
    caches), to the run's dtype; GB/s counts the blocks read and the values written. Each call
    returns a fresh tensor, as a loader needs, so the baseline "fresh tensor" (torch.empty, then
    fill_) is the floor: on a CPU its page faults cost more than decoding (THP_MEM_ALLOC_ENABLE=1
    lets torch back it with huge pages)."""
    from gguf import GGMLQuantizationType

    from soprano.ops.reference import DEQUANT_TYPES
    shape = (32768, 512)
    n = shape[0] * shape[1]

    def fresh():
        return torch.empty(n, dtype=dtype, device=device).fill_(0)
    for name in DEQUANT_TYPES:
        raw = _gguf_bytes(gen, name, shape).to(device)
        qtype = int(GGMLQuantizationType[name])
        yield Case("dequantize", f"{name} [{shape[0]}, {shape[1]}]",
                   lambda fn, a=(raw, qtype, n, dtype): lambda: fn(*a), dtype,
                   raw.numel() + n * dtype.itemsize, baselines={"fresh tensor": fresh})


def quant_linear_cases(gen, device, dtype):
    """A decode step's matmuls (every layer's and the LM head) over weights kept in GGUF blocks,
    in the ggml layout and in the x8 layout a CPU table loads them into, at 1 row (a decode
    step), 16 (a batched one) and 42 (a prefill); bytes are the blocks read. The reference
    dequantizes every call, so "linear, w bf16" (the 16-bit kernel on the same shapes) is the
    baseline to beat; where the CPU has AMX-INT8, "int8 dots, avx512" is the 512-bit vector
    kernel on the same x8 weights (auto takes the tile unit for Q8_0 from 5 rows, for Q5_K from
    8, for the others from 16)."""
    from soprano.ops import native, native_gguf
    from soprano.ops.quantized import GGML_MATMUL_TYPES, QuantMatrix, interleave_rows8
    if device != "cpu":
        return
    shapes = LAYER_SHAPES * LAYERS + [HEAD_SHAPE]
    for rows in (1, 16, 42):
        xs = {k: _rnd(gen, device, dtype, rows, k) for k in (512, 2304)}
        bf16 = [(_rnd(gen, device, torch.float32, n, k) * 0.02).bfloat16() for n, k in shapes]
        for name, qtype in GGML_MATMUL_TYPES.items():
            plain = [QuantMatrix(_gguf_bytes(gen, name, (n, k)).reshape(n, -1), qtype, (n, k))
                     for n, k in shapes]
            for layout, weights in ((name, plain), (f"{name}x8", [interleave_rows8(w)
                                                                  for w in plain])):
                def bind(fn, weights=weights, xs=xs):
                    return lambda: [fn(xs[w.shape[1]], w) for w in weights]

                def bf16_step(xs=xs):
                    return [native.linear_cpu(xs[w.shape[1]], w) for w in bf16]

                def vector_dots(weights=weights, xs=xs):
                    return [native_gguf.quant_linear_cpu(xs[w.shape[1]], w, isa="avx512")
                            for w in weights]
                baselines = {"linear, w bf16": bf16_step}
                if layout.endswith("x8") and native_gguf.has_int8_tiles():
                    baselines["int8 dots, avx512"] = vector_dots
                yield Case("quant_linear", f"step matmuls, {rows} rows, {layout}", bind, dtype,
                           sum(w.nbytes for w in weights),
                           2 * rows * sum(n * k for n, k in shapes), baselines=baselines)


CASES = {"rms_norm": rms_norm_cases, "linear": linear_cases, "qk_norm_rope": qk_norm_rope_cases,
         "attention_decode": attention_decode_cases,
         "attention_prefill": attention_prefill_cases, "embed_norm": embed_norm_cases,
         "convnext_block": convnext_block_cases, "istft_frames": istft_frames_cases,
         "istft": istft_cases, "dequantize": dequantize_cases,
         "quant_linear": quant_linear_cases}


def timer(device: str, repeats: int):
    """Seconds per call, one sample per call of the returned function."""
    if device == "cpu":
        from timing import time_cpu
        return lambda fn: time_cpu(fn, 1)[0]
    from triton.testing import do_bench
    return lambda fn: do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e-3


def copy_rate(device: str, repeats: int) -> tuple[float, str]:
    """Bytes per second a plain copy reaches here: a numpy copy's read rate on a CPU, read +
    write traffic on a GPU."""
    if device == "cpu":
        from timing import copy_read_rate
        return copy_read_rate(repeats), "numpy copy, bytes read"
    src = torch.ones(1 << 28, device=device)
    dst = torch.empty_like(src)
    best = min(timer(device, repeats)(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.nbytes / best, "torch copy, bytes read + written"


def implementations(case: Case, device: str, only: set[str] | None, interpreter: bool):
    from soprano.ops import IMPLS, OPS, backend_available
    fns = {"torch": OPS[case.op].reference}
    for impl in IMPLS.get(case.op, []):
        if (impl.accepts(device, case.dtype, case.wdtype)
                and backend_available(impl.backend, device)[0]
                and (impl.backend != "triton" or device != "cpu" or interpreter)):
            fns[impl.backend] = impl.fn
    calls = {name: case.bind(fn) for name, fn in fns.items()}
    calls.update(case.baselines)
    return {n: c for n, c in calls.items() if only is None or n == "torch" or n in only}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", action="append", choices=list(CASES), help="repeatable; default all")
    ap.add_argument("--backend", action="append",
                    help="time only these (repeatable); the torch reference is always timed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="activations (default: float32 on cpu, "
                    "bfloat16 on cuda, as the engine runs)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--markdown", action="store_true", help="a markdown table")
    ap.add_argument("--triton-interpreter", action="store_true",
                    help="on a CPU, also time Triton kernels in the interpreter")
    args = ap.parse_args()
    if args.device == "cpu" and args.triton_interpreter:
        os.environ["TRITON_INTERPRET"] = "1"  # before soprano.kernels is imported
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    from timing import cpu_name
    name = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name()
    rate, how = copy_rate(args.device, args.repeats)
    print(f"device {args.device} ({name}), {str(dtype)[6:]}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; copy {rate / 1e9:.1f} GB/s ({how})")
    cols = ["op", "shape", "backend", "min us", "median us", "GB/s", "% of copy", "TFLOP/s",
            "vs torch"]
    if args.markdown:
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    else:
        print(f"{'op':<18} {'shape':<28} {'backend':<20} {'min us':>10} {'median us':>10} "
              f"{'GB/s':>8} {'% copy':>7} {'TFLOP/s':>8} {'vs torch':>8}")
    gen = torch.Generator().manual_seed(0)
    time_one = timer(args.device, args.repeats)
    only = set(args.backend) if args.backend else None
    for op in args.op or list(CASES):
        for case in CASES[op](gen, args.device, dtype):
            calls = implementations(case, args.device, only, args.triton_interpreter)
            samples = {n: [] for n in calls}
            for _ in range(args.repeats):  # alternate, so every backend sees the same machine
                for n, call in calls.items():
                    samples[n].append(time_one(call))
            base = statistics.median(samples["torch"])
            for n, s in samples.items():
                lo, med = min(s), statistics.median(s)
                row = [op, case.label, n, f"{lo * 1e6:.1f}", f"{med * 1e6:.1f}",
                       f"{case.nbytes / lo / 1e9:.1f}", f"{100 * case.nbytes / lo / rate:.0f}%",
                       f"{case.flops / lo / 1e12:.2f}" if case.flops else "",
                       f"{base / med:.2f}x"]
                if args.markdown:
                    print("| " + " | ".join(row) + " |")
                else:
                    print(f"{row[0]:<18} {row[1]:<28} {row[2]:<20} {row[3]:>10} {row[4]:>10} "
                          f"{row[5]:>8} {row[6]:>7} {row[7]:>8} {row[8]:>8}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
