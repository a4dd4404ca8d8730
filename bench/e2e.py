"""End-to-end benchmark: our ``infer`` vs upstream soprano-tts 0.2.0 on the same checkpoint.

Both engines run in worker processes (upstream's import name is also ``soprano``) that load the
model once and then time one ``infer`` per request; requests alternate between the two workers so
machine noise hits both alike. Each run generates a fixed number of tokens (upstream's generate
is capped the same way). Reports x real time, ms per generated token and the worker's peak RSS,
best and median over the runs. On a CPU it also reports each engine's ms/token over its
bandwidth floor (its matrix bytes over a copy's read rate, measured between the runs): that
ratio holds across machines and days where the ratio to upstream moves with the memory speed.

    python bench/e2e.py [--checkpoint DIR] [--tokens 128] [--runs 5] [--device cpu|cuda]
                        [--upstream-dir .upstream]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank today."


def worker(kind: str, checkpoint: str, tokens: int, device: str):
    import torch
    if kind == "upstream":
        sys.meta_path = [f for f in sys.meta_path if "soprano" not in repr(f).lower()]
        from transformers import GenerationMixin
        real_generate = GenerationMixin.generate

        def fixed_length(self, *a, **k):
            k["max_new_tokens"] = k["min_new_tokens"] = tokens
            return real_generate(self, *a, **k)

        GenerationMixin.generate = fixed_length
        from soprano.tts import SopranoTTS
        tts = SopranoTTS(backend="transformers", device=device, model_path=checkpoint)

        def infer():
            return tts.infer(TEXT).float().numpy()
    else:
        from soprano import SopranoTTS
        tts = SopranoTTS(checkpoint, device=device, cuda_graphs=kind != "ours-eager")
        tts.infer(TEXT, max_new_tokens=8)

        def infer():
            return tts.infer(TEXT, max_new_tokens=tokens)
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        audio = infer()
        wall = time.perf_counter() - start
        print(json.dumps({"wall": wall, "samples": int(audio.shape[-1]),
                          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
              flush=True)


def start_worker(kind, checkpoint, tokens, device, upstream_dir):
    env = dict(os.environ)
    if kind == "upstream":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(upstream_dir),
                                                          env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--worker", kind, "--checkpoint", checkpoint,
           "--tokens", str(tokens), "--device", device]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tempfile.gettempdir())
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} worker died during start-up")
        if line.startswith("{"):
            return proc


def request(proc) -> dict:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("worker died")
        if line.startswith("{"):
            return json.loads(line)


def read_rate() -> float:
    """GB/s a 256 MB copy reads on this machine now (torch's threads): what streaming the
    weights can reach, measured beside the engines so a slow day shows in both."""
    import torch
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best / 1e9


def matrix_bytes(checkpoint: str, element_size: int) -> int:
    """Bytes a decode step streams: every backbone matrix (the embedding gives one row), held
    at ``element_size`` bytes per weight."""
    from safetensors import safe_open
    with safe_open(str(Path(checkpoint) / "model.safetensors"), "pt") as f:
        return sum(element_size * f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1]
                   for k in f.keys()
                   if len(f.get_slice(k).get_shape()) == 2 and "embed_tokens" not in k)


def summarize(rows, tokens):
    xrt = [r["samples"] / 32000 / r["wall"] for r in rows]
    ms = [r["wall"] * 1000 / tokens for r in rows]
    return {"xrt_best": max(xrt), "xrt_median": statistics.median(xrt), "ms_min": min(ms),
            "ms_median": statistics.median(ms), "rss_mb": max(r["rss_mb"] for r in rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model dir (default: a generated real-shape one)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--upstream-dir", default=str(REPO / ".upstream"))
    ap.add_argument("--worker", choices=["ours", "ours-eager", "upstream"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.checkpoint, args.tokens, args.device)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from soprano.testing import write_checkpoint
        checkpoint = write_checkpoint(Path(tempfile.mkdtemp()) / "real", "real")
    # on a GPU also our eager decode, to show what the CUDA graphs buy
    kinds = ["ours", "upstream"] + (["ours-eager"] if args.device == "cuda" else [])
    procs = {k: start_worker(k, checkpoint, args.tokens, args.device, args.upstream_dir)
             for k in kinds}
    rows = {k: [] for k in kinds}
    rates = []
    for _ in range(args.runs):
        for k in kinds:
            rows[k].append(request(procs[k]))
        if args.device == "cpu":
            rates.append(read_rate())
    for p in procs.values():
        p.stdin.close()
        p.wait()
    import torch
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"{where}, real-shape checkpoint, "
          f"{args.tokens} tokens, {args.runs} runs (best / median)")
    print("| engine | x real time | ms/token | peak RSS MB |")
    print("|---|---|---|---|")
    stats = {k: summarize(rows[k], args.tokens) for k in kinds}
    for k in kinds:
        s = stats[k]
        print(f"| {k} | {s['xrt_best']:.2f} / {s['xrt_median']:.2f} | {s['ms_min']:.1f} / "
              f"{s['ms_median']:.1f} | {s['rss_mb']:.0f} |")
    print(f"speed-up (median x real time): "
          f"{stats['ours']['xrt_median'] / stats['upstream']['xrt_median']:.2f}x")
    if rates:
        # ours streams the 16-bit matrices as stored, upstream (transformers on CPU) fp32 ones
        rate = statistics.median(rates)
        for k, size in (("ours", 2), ("upstream", 4)):
            floor_ms = matrix_bytes(checkpoint, size) / rate / 1e6
            print(f"{k}: {stats[k]['ms_median'] / floor_ms:.2f}x its bandwidth floor "
                  f"({matrix_bytes(checkpoint, size) / 1e6:.0f} MB of matrices at a copy's "
                  f"{rate:.1f} GB/s read rate = {floor_ms:.1f} ms/token)")


if __name__ == "__main__":
    main()
