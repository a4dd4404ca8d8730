"""The Vocos decoder's cost per token: one-shot, streamed by our stateful decoder, streamed by
re-decoding windows (the scheme it replaced) and by upstream's 9-state re-decode, per backend;
plus the first chunk's decode time and the one-shot decode against its FLOP floor.

Streaming schedules: ``stream c1`` sends a chunk per token (``infer_stream``'s default),
``stream 1->4`` starts at 1 token and doubles to 4, ``stream 1->16`` doubles on to 16 (the
server's default). ``windowed``
re-decodes, for each chunk of the same schedule, the states from ``margin`` samples before the
chunk to the newest state (exact, as our decoder did until 2026-11-30). ``upstream`` decodes the
last 9 states for each token (upstream's infer_stream, chunk 1). The floor is the one-shot
decode's matmul FLOPs at the rate our packed GEMM (``linear``) reaches in the same run on the
decoder's largest matmul, timed in the same alternation. Min and median over ``--runs``,
alternating the variants.

    python bench/decoder.py [--checkpoint DIR | --gguf FILE] [--tokens 200] [--runs 5]
                            [--backend cpu ...]

``--gguf``: a decoder GGUF (``mmproj-*.gguf``) instead, its matrices kept as they are for a
quantized model (bf16 dots where the CPU has AMX-BF16).
"""
import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from soprano.gguf.load import load_gguf_decoder
from soprano.model.loader import load_decoder
from soprano.model.vocos import HOP, N_FFT, SAMPLES_PER_TOKEN
from soprano.ops import OpTable, backend_available
from soprano.runtime.streaming import StreamingDecoder, decode_pieces


def stateful(decoder, states, chunk, first):
    stream = StreamingDecoder(decoder, chunk, first)
    pieces = [stream.push_piece(h) for h in states] + [stream.finish_piece()]
    for piece in pieces:
        if piece is not None:
            decode_pieces(decoder, [piece])


def windowed(decoder, states, chunk, first):
    """The replaced scheme: the same chunk schedule, each chunk re-decoding its window."""
    margin = HOP * (decoder.receptive_frames - 1) + N_FFT // 2
    size, due, emitted = first, first + math.ceil(margin / SAMPLES_PER_TOKEN), 0
    total = len(states)
    cuts = []
    for t in range(1, total + 1):
        if t >= due:
            size = min(chunk, 2 * size)
            due = t + size
            cuts.append((t, SAMPLES_PER_TOKEN * (t - 1) - margin))
    cuts.append((total, SAMPLES_PER_TOKEN * (total - 1)))
    for end, upto in cuts:
        if upto <= emitted:
            continue
        start = max(0, (emitted - margin) // SAMPLES_PER_TOKEN)
        decoder(states[start:end].T[None])
        emitted = upto


def upstream(decoder, states):
    """Upstream's infer_stream at chunk 1: the last 2 x 4 + 1 states decoded for each token."""
    for t in range(5, len(states) + 1):
        decoder(states[max(0, t - 9):t].T[None])


def first_chunk(decoder, states):
    stream = StreamingDecoder(decoder, 1, 1)
    piece = None
    for h in states[:4]:
        piece = stream.push_piece(h)
    start = time.perf_counter()
    decode_pieces(decoder, [piece])
    return time.perf_counter() - start


def gemm_call(device):
    """Our linear (the packed kernel on a CPU) on the decoder's 797 x 768 @ 768 x 2304, and its
    FLOPs."""
    table = OpTable(device, torch.float32)
    x = torch.randn(797, 768, device=device)
    w = (torch.randn(2304, 768, device=device) * 0.02).half()
    return (lambda: table.linear(x, w)), 2 * 797 * 768 * 2304


def decoder_flops(decoder, tokens) -> int:
    w = decoder.w
    frames = 4 * (tokens - 1) + 1
    size = lambda m: math.prod(m.shape)  # a tensor, or a matrix kept in blocks or bf16
    macs = size(w.embed_weight) + size(w.head_weight) + sum(
        size(b.w1) + size(b.w2) for b in w.blocks)
    return 2 * frames * macs


def timed(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a checkpoint dir (default: a generated real-shape one)")
    ap.add_argument("--gguf", help="a decoder GGUF file, instead of the checkpoint's decoder")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", action="append", help="repeatable; default torch and auto")
    args = ap.parse_args()
    ckpt = args.checkpoint
    if ckpt is None and args.gguf is None:
        from soprano.testing import write_checkpoint
        ckpt = write_checkpoint(Path(tempfile.mkdtemp()) / "real", "real")
    from timing import cpu_name
    name = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"device {args.device} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, {args.tokens} tokens, decoder of {args.gguf or ckpt}")
    states = torch.randn(args.tokens, 512, generator=torch.Generator().manual_seed(0))
    states = states.to(args.device)
    gemm, gemm_flops = gemm_call(args.device)
    per_token = args.tokens - 1
    for backend in args.backend or ["torch", "auto"]:
        if backend != "auto" and not backend_available(backend, args.device)[0]:
            continue
        ops = OpTable(args.device, torch.float32, backend)
        decoder = (load_gguf_decoder(args.gguf, 512, ops) if args.gguf
                   else load_decoder(Path(ckpt), 512, ops))
        variants = {
            "one-shot": lambda d=decoder: d(states.T[None]),
            "stream c1": lambda d=decoder: stateful(d, states, 1, 1),
            "stream 1->4": lambda d=decoder: stateful(d, states, 4, 1),
            "stream 1->16": lambda d=decoder: stateful(d, states, 16, 1),
            "windowed c1": lambda d=decoder: windowed(d, states, 1, 1),
            "windowed 1->4": lambda d=decoder: windowed(d, states, 4, 1),
            "upstream 9-state": lambda d=decoder: upstream(d, states),
        }
        samples = {k: [] for k in variants}
        gemm_times = []
        firsts = {"stateful first chunk": [], "windowed first window": []}
        for fn in variants.values():
            fn()
        for _ in range(args.runs):
            gemm_times.append(timed(gemm, args.device))
            for k, fn in variants.items():
                samples[k].append(timed(fn, args.device) * 1e3 / per_token)
            firsts["stateful first chunk"].append(first_chunk(decoder, states) * 1e3)
            firsts["windowed first window"].append(
                timed(lambda d=decoder: d(states[:4].T[None]), args.device) * 1e3)
        one_shot = statistics.median(samples["one-shot"])
        rate = gemm_flops / min(gemm_times)
        floor = decoder_flops(decoder, args.tokens) / rate * 1e3 / per_token
        print(f"\nbackend {backend} ({decoder.ops.describe()['convnext_block']} blocks):")
        print(f"| variant | ms/token min | median | vs one-shot |\n|---|---|---|---|")
        for k, s in samples.items():
            print(f"| {k} | {min(s):.2f} | {statistics.median(s):.2f} | "
                  f"{statistics.median(s) / one_shot:.2f}x |")
        print(f"one-shot at {min(samples['one-shot']) / floor:.2f}x its FLOP floor (min vs "
              f"{floor:.2f} ms/token at our linear's {rate / 1e9:.0f} GFLOP/s, best of the run)")
        for k, s in firsts.items():
            print(f"{k}: {min(s):.1f} / {statistics.median(s):.1f} ms (min / median)")


if __name__ == "__main__":
    main()
